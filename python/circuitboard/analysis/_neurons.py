"""MLP neurons over a dataset: running top-k examples, activation histograms, logit effects.

A neuron's activation is the input of its layer's MLP output projection (TransformerLens'
``blocks.{l}.mlp.hook_post``), read with a forward pre-hook. Torch is imported inside the
functions, so a saved :class:`TopActivations` can be viewed without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..capture._prompts import as_ids, is_loaded_model, split_prompts
from ._histograms import (
    _parse_hist_range,
    histogram_edges,
)
from ._mlp_parts import (
    _blocks,
    _d_mlp,
    _w_out,
    mlp_out_proj,
    through_final_norm,
    top_logit_effects,
)
from ._neuron_scan import (
    finish_top_activations,
    plan_texts,
    scan_texts,
)
from ._top_activations import TopActivations


def _neuron_list(model: Any, neurons: Any, layers: Any) -> list[tuple[int, int]]:
    n_layers = len(_blocks(model))
    out: list[tuple[int, int]] = []
    if layers is not None:
        for layer in [layers] if isinstance(layers, int) else layers:
            out.extend((int(layer), i) for i in range(_d_mlp(model, int(layer))))
    if neurons is not None:
        if (
            isinstance(neurons, tuple)
            and len(neurons) == 2
            and all(isinstance(x, (int, np.integer)) for x in neurons)
        ):
            neurons = [neurons]
        for item in neurons:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise TypeError(
                    f"neurons must be a list of (layer, index) pairs; got the item {item!r}. "
                    "Example: neurons=[(3, 120), (5, 7)]; for whole layers use layers=[3, 5]."
                )
            out.append((int(item[0]), int(item[1])))
    if not out:
        raise ValueError(
            "top_activations needs neurons=[(layer, index), ...] or layers=[...]; got neither."
        )
    seen: dict[tuple[int, int], None] = {}
    for layer, i in out:
        if not 0 <= layer < n_layers:
            raise IndexError(f"neuron ({layer}, {i}): layer out of range 0..{n_layers - 1}.")
        d = _d_mlp(model, layer)
        if not 0 <= i < d:
            raise IndexError(
                f"neuron ({layer}, {i}): index out of range, layer {layer} has {d} neurons."
            )
        seen.setdefault((layer, i), None)
    return list(seen)


def _texts(texts: Any) -> list[Any]:
    """The texts, each a non-empty string or token ids (a list of ints, or a row of a 2-D
    integer tensor)."""
    if isinstance(texts, str):
        raise TypeError(
            "texts must be a list of strings; got a single string. Wrap it: texts=[text]."
        )
    if hasattr(texts, "shape"):
        texts = split_prompts(texts, "texts")[0]
    out = list(texts)
    for i, t in enumerate(out):
        ids = None if isinstance(t, str) else as_ids(t)
        if ids is not None:
            out[i] = ids
        elif not isinstance(t, str) or not t:
            raise TypeError(
                f"texts must be non-empty strings or token ids (lists of ints); texts[{i}] is "
                f"{t!r}. cb.load_texts() gives a ready-made list."
            )
    if not out:
        raise ValueError("texts is empty; pass at least one string (e.g. cb.load_texts()).")
    return out


def _progress(total: int, enabled: bool, desc: str = "top activations") -> Any:
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, unit="text")
        except ImportError:
            pass
    return None


def model_name(model: Any) -> str:
    """The name a result records for ``model``."""
    return getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__


def top_activations(
    model: Any,
    tokenizer: Any,
    texts: Iterable[str],
    neurons: Any = None,
    *,
    layers: Any = None,
    k: int = 20,
    context: tuple[int, int] = (24, 8),
    batch_size: int = 16,
    max_length: int = 128,
    bins: int = 50,
    hist_range: tuple[float, float] | None = None,
    n_logits: int = 12,
    through_norm: bool = True,
    skip_special: bool = True,
    progress: bool = True,
    engine: str = "serial",
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    shards: int | None = None,
    checkpoint: Any = None,
    ray_address: str | None = None,
    features: Any = None,
    cofiring: bool = True,
) -> TopActivations:
    """Run ``model`` over ``texts`` and keep, per neuron, its top-``k`` texts and a histogram.

    Texts are tokenized one by one (truncated to ``max_length``), sorted by length and run in
    padded batches; only the running top-``k`` (with a context window), fixed-bin histogram
    counts and running moments are kept, so memory does not grow with the number of texts.
    The forward pass stops after the deepest requested layer. Every statistic is mergeable
    (:meth:`TopActivations.merge`), so the same plan runs sharded on several workers and gives
    the same examples, values and histograms as one pass.

    Parameters
    ----------
    model, tokenizer : a Hugging Face causal LM and its tokenizer; or a
        :class:`circuitboard.ModelSpec` and ``None``, so that workers load their own.
    texts : list of str (e.g. :func:`circuitboard.load_texts`).
    neurons : list of ``(layer, index)`` pairs; or ``layers=[...]`` for every neuron of them.
    k : examples kept per neuron (one per text: the text's maximum; equal maxima rank by text
        index).
    context : tokens kept before and after each example's maximum.
    bins : histogram bins.
    hist_range : ``(low, high)`` edges for every neuron (values beyond them are counted in
        ``hist_below`` / ``hist_above``); default ``None``: each neuron's bins follow its data,
        from its minimum to its maximum in at most ``bins`` bins of a power-of-two width, so
        shards merge exactly into what one pass gives.
    n_logits : promoted / suppressed tokens kept per neuron (direct logit effect).
    through_norm : multiply by the final norm's weight before the unembedding.
    skip_special : ignore special tokens (BOS, pad, ...) as examples and in the histogram.
    features : ``(sae, ids)`` (``ids`` None: every feature)
        Dictionary features instead of neurons: the same statistics of ``sae.encode`` at its
        hook (the forward stops there), entries keyed ``(sae.layer, feature)``, logit effects
        through the decoder rows (:mod:`circuitboard.analysis._feature_scan`).
    cofiring : with ``features=``, also count per selected feature the tokens on which each
        feature of the dictionary fires with it (``top.cofire``, ``top.cofiring(layer, f)``;
        ``[ids, d_sae]`` int64, summed exactly across shards). ``False`` skips it.
    engine, workers, gpus_per_worker, shards, checkpoint, ray_address
        Where the batches run: ``"serial"`` (this process), ``"processes"`` (a local process
        pool) or ``"ray"``; see :func:`circuitboard.compare` for the shared options.

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> top = top_activations(model, tok, ["a b c", "the lazy dog"], [(0, 3), (1, 5)], k=2,
    ...                       progress=False)
    >>> top.values.shape, bool(top.examples(1, 5)[0]["value"] == top.values[1, 0])
    ((2, 2), True)
    """
    texts = _texts(texts)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}.")
    if not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an int of at least 2; got {bins!r}.")
    rng = _parse_hist_range(hist_range)
    options = dict(
        neurons=neurons,
        layers=layers,
        k=k,
        context=(int(context[0]), int(context[1])),
        batch_size=batch_size,
        max_length=max_length,
        bins=bins,
        hist_range=rng,
        n_logits=n_logits,
        through_norm=through_norm,
        skip_special=skip_special,
    )
    if features is not None:
        from ._feature_scan import feature_selection

        if neurons is not None or layers is not None:
            raise ValueError("give features=(sae, ids) or neurons= / layers=, not both.")
        options["features"] = feature_selection(features)
        options["cofiring"] = bool(cofiring)
    if (
        engine != "serial"
        or shards is not None
        or checkpoint is not None
        or (tokenizer is None and not is_loaded_model(model))
    ):
        from ..scale import Sharding
        from ._neuron_jobs import top_activations_sharded

        return top_activations_sharded(
            model,
            tokenizer,
            texts,
            options,
            Sharding(engine, workers, gpus_per_worker, shards, checkpoint, ray_address),
            progress=progress,
        )
    plan = plan_texts(
        tokenizer, texts, max_length=max_length, batch_size=batch_size, skip_special=skip_special
    )
    sel, edges, effects, name = neuron_setup(model, options)
    bar = _progress(len(texts), progress)
    try:
        part = scan_texts(
            model,
            sel,
            [plan.batch_inputs(b) for b in range(len(plan.batches))],
            edges=edges,
            bins=options["bins"],
            k=k,
            context=options["context"],
            special=plan.special,
            pad_id=plan.pad_id,
            bar=bar,
            features=options["features"][0] if options.get("features") else None,
            cofiring=options.get("cofiring", False),
        )
    finally:
        if bar is not None:
            bar.close()
    return finish_top_activations(part, texts, tokenizer, effects, name)


def neuron_setup(
    model: Any, options: dict[str, Any]
) -> tuple[list[tuple[int, int]], np.ndarray | None, dict[str, np.ndarray], str]:
    """What every shard shares, computed once: neurons, histogram edges, logit effects, name."""
    if options.get("features"):
        from ._feature_scan import feature_logit_effects

        sae, ids = options["features"]
        layer = getattr(sae, "layer", None)
        layer = int(sae.hook.split(".")[1]) if layer is None else int(layer)
        sel = [(layer, i) for i in ids]
        edges = histogram_edges(len(sel), bins=options["bins"], hist_range=options["hist_range"])
        effects: dict[str, Any] = feature_logit_effects(
            model, sae, ids, k=options["n_logits"], through_norm=options["through_norm"]
        )
        effects["dictionary"] = dictionary_info(sae)
        return sel, edges, effects, model_name(model)
    sel = _neuron_list(model, options["neurons"], options["layers"])
    edges = histogram_edges(len(sel), bins=options["bins"], hist_range=options["hist_range"])
    effects = logit_effects(model, sel, k=options["n_logits"], through_norm=options["through_norm"])
    return sel, edges, effects, model_name(model)


def dictionary_info(sae: Any) -> dict[str, Any]:
    """What records of a dictionary's features keep of it: its hook, size and labels."""
    from ..capture._saes import sae_hook
    from ._features import feature_labels

    return {
        "hook": sae_hook(sae),
        "d_sae": int(sae.d_sae),
        "labels": {str(i): v for i, v in feature_labels(sae).items()},
    }


def neuron_directions(
    model: Any, neurons: Sequence[tuple[int, int]], *, through_norm: bool = True
) -> Any:
    """``[n, d_model]`` float64 output directions ``W_out[neuron]``, as the unembedding sees them.

    With ``through_norm`` they are multiplied by the final norm's weight (``1 + w`` for Gemma)
    and, for LayerNorm, centred (the norm removes the mean). The norm's input-dependent scale
    is not applied: these are direct effects per unit of activation up to that scale.
    """
    import torch

    rows = []
    for layer, i in neurons:
        rows.append(_w_out(mlp_out_proj(model, layer))[int(i)].to("cpu", torch.float64))
    d = torch.stack(rows)
    return through_final_norm(model, d) if through_norm else d


def logit_effects(
    model: Any,
    neurons: Sequence[tuple[int, int]],
    *,
    k: int = 12,
    through_norm: bool = True,
) -> dict[str, np.ndarray]:
    """Tokens each neuron directly promotes and suppresses: ``W_out[neuron] @ W_U``.

    Returns ``promoted_ids`` / ``promoted`` (largest first) and ``suppressed_ids`` /
    ``suppressed`` (most negative first), each ``[n, k]``; ``through_norm`` as in
    :func:`neuron_directions`.

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> model, _ = tiny_model("llama")
    >>> eff = logit_effects(model, [(0, 1)], k=3)
    >>> eff["promoted"].shape, bool(eff["promoted"][0, 0] >= eff["promoted"][0, 1])
    ((1, 3), True)
    """
    neurons = [(int(a), int(b)) for a, b in neurons]
    return top_logit_effects(
        model, neurons, lambda part: neuron_directions(model, part, through_norm=through_norm), k
    )
