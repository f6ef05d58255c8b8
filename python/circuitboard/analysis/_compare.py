"""Per-category statistics of model components and their differences (effect sizes, t).

Every statistic is kept as mergeable running moments (count, mean, M2; Welford / Chan), so a
category's prompts can be processed in any number of shards, on any machine, and reduced
later with :meth:`Comparison.merge` or :meth:`RunningStats.merge`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._threads import one_thread
from ..capture._prompts import is_loaded_model, split_prompts
from ._compare_samples import (
    _NEEDS,
    FEATURES,
    _check_categories,
    _image_of,
    _parse_pos,
    _parse_stats,
    feature_info,
    feature_stat,
    is_feature_stat,
)
from ._compare_samples import STATS as STATS
from ._compare_samples import samples_from_capture as samples_from_capture
from ._comparison import Comparison, _Accumulator
from ._running_stats import Effect as Effect
from ._running_stats import RunningStats as RunningStats
from ._running_stats import effect_size as effect_size


# Many batched forwards of a few prompts each: one torch thread while the machine is busy (two
# wait on each other at every op's barrier there), the default on an idle one. Worker processes
# set their own threads (cb.ModelSpec(threads=...)).
@one_thread(when_busy=True)
def compare(
    model: Any,
    tokenizer: Any,
    categories: Mapping[str, Sequence[str]],
    *,
    pos: int | str | None = None,
    layers: int | Sequence[int] | None = None,
    stats: Sequence[str] | None = None,
    batch_size: int = 8,
    dtype: Any = None,
    progress: bool | None = None,
    engine: str = "serial",
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    shards: int | None = None,
    checkpoint: Any = None,
    ray_address: str | None = None,
    saes: Any = None,
) -> Comparison:
    """Which heads, layers, neurons and dictionary features behave differently between
    categories of prompts.

    Runs the model on every prompt (in batches of ``batch_size``, so memory holds one batch's
    activations and the running statistics, never all captures) and keeps, per category and
    component, mergeable mean / variance of:

    - ``head_write``: ``‖z_h · W_O_h‖``, the norm of head ``h``'s write to the residual stream;
    - ``attn_first`` / ``attn_prev``: attention to the first / the previous token;
    - ``attn_entropy``: entropy of the head's attention distribution (nats);
    - ``attn_out`` / ``mlp_out``: norm of each layer's attention / MLP output;
    - ``neurons``: every MLP neuron's activation (``blocks.{l}.mlp.hook_post``);
    - ``features`` (with ``saes=``): every feature's activation of each dictionary, held as
      ``"features:<hook>"`` ``[d_sae]`` (e.g. ``"features:blocks.9.hook_resid_post"``).

    Parameters
    ----------
    model, tokenizer
        A Hugging Face causal LM and its tokenizer (see :func:`circuitboard.capture`), or an
        image classifier (ViT) and its image processor (None for the default vision model).
    categories
        ``{name: [prompt, ...]}``: at least 2 categories with at least one prompt each (2+ for
        effect sizes). For an image model, ``{name: images}`` (an array ``[N, H, W]`` /
        ``[N, C, H, W]`` or a list of images, validated as :func:`circuitboard.capture`
        does); ``attn_prev`` is left out (patches have no previous token), and two image
        statistics are added: ``attn_patches`` (attention from the sample position to CLS
        and each patch, ``[layers, heads, tokens]``) and ``pixels`` (the mean image).
    pos
        Which token of each prompt is a sample: an index (default ``-1``, the last token; the
        answer position of a prompt), ``"all"`` (every token is a sample) or ``"mean"`` (each
        prompt's mean over its tokens is one sample). For images the default is ``0``, CLS
        (what the classifier reads); ``"all"`` makes every patch a sample.
    layers
        Model layers to compare (default all).
    stats
        Subset of the statistic names above (default all; ``neurons`` dominates memory:
        3 × layers × d_mlp float64 per category). ``["features"]`` compares only the
        dictionaries' features.
    saes
        Dictionaries (``cb.SAE``, transcoders, SAELens objects; one or a list) run on the
        activations they read, as :func:`circuitboard.capture` runs them: their feature
        activations are compared with the same statistics as neurons (the dictionaries only
        read; the model's forward is its own). They travel to every worker with the jobs.
    batch_size
        Prompts per forward pass.
    dtype
        Capture dtype (default float32; ``torch.float16`` halves activation memory).
    engine
        Where the prompts run: ``"serial"`` (this process), ``"processes"`` (a pool of local
        processes, each with its own model) or ``"ray"`` (Ray actors, each holding one model;
        ``pip install "circuitboard[ray]"``). Every engine runs the same plan: prompts cut
        into blocks of ``4 * batch_size`` (one capture each), blocks grouped into ``shards``,
        shard results merged in plan order, so the numbers (and saved bytes) are the same
        on every engine for the same shards.
    workers
        Worker processes or actors (default: the CPU cores, up to 8; Ray: one per CPU, or per
        ``gpus_per_worker`` GPUs, of the cluster).
    gpus_per_worker
        GPUs each worker holds (Ray); a model larger than one GPU loads over all of them with
        ``ModelSpec(..., device_map="auto")``.
    shards
        Pieces the work is cut into (default: one for ``"serial"``, four per worker otherwise);
        a shard is the unit of retry, checkpoint and progress.
    checkpoint
        A folder: each finished shard is written there, and a run interrupted (killed, out of
        time) resumes from it with the same call; a folder of another run is refused.
    ray_address
        Join a running cluster (``"auto"`` after ``ray start``, or ``"ray://host:10001"``);
        default: the connected one, else a local Ray.

    Pass a :class:`circuitboard.ModelSpec` as ``model`` (and ``None`` as tokenizer) so that
    each worker loads its own model; a loaded model is pickled to each worker instead.

    Returns
    -------
    Comparison
        ``.effect(a, b, stat)`` (Cohen's d, Welch's t, differences), ``.top(...)``,
        ``.merge(...)`` for shards; view it with :func:`circuitboard.compare_view`.

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> cmp = compare(model, tok, {"A": ["a b", "the store"], "B": ["Mary and John", "1 2 3"]})
    >>> cmp.effect("A", "B", "head_write").d.shape
    (2, 4)

    Digit classes of an image model (samples at CLS):

    >>> import numpy as np
    >>> from circuitboard.testing import tiny_model
    >>> vit, _ = tiny_model("vit", channels=1)
    >>> imgs = np.random.default_rng(0).random((6, 8, 8))
    >>> cmp = compare(vit, None, {"A": imgs[:3], "B": imgs[3:]})
    >>> cmp.pos, cmp.image, cmp.effect("A", "B", "attn_patches").d.shape
    (0, {'grid': [2, 2], 'patch': 4}, (2, 4, 5))

    Which dictionary features separate two groups:

    >>> import circuitboard as cb
    >>> model, tok = tiny_model("llama")
    >>> sae = cb.SAE(32, 48, kind="topk", k=4, hook="blocks.1.hook_resid_post", seed=0)
    >>> cmp = compare(model, tok, {"A": ["a b", "the store"], "B": ["1 2", "3 4 5"]},
    ...               saes=[sae], stats=["features"])
    >>> cmp.effect("A", "B", "features").d.shape, cmp.top("A", "B", "features", k=1)[0]["hook"]
    ((48,), 'blocks.1.hook_resid_post')
    """
    image = _is_image_model(model)
    if image:
        categories = _image_categories(model, categories)
        if engine != "serial" or shards is not None or checkpoint is not None:
            raise ValueError(
                "compare of an image model runs in this process only; drop engine=, shards= "
                "and checkpoint= (a few thousand small images take seconds)."
            )
        pos = 0 if pos is None else pos
    else:
        _check_categories(categories)
        # Each category: strings or token ids (lists of ints, a 2-D integer tensor).
        categories = {
            name: split_prompts(prompts, f"category {name!r}: prompts")[0]
            if not isinstance(prompts, str)
            else prompts
            for name, prompts in categories.items()
        }
        pos = -1 if pos is None else pos
    _parse_pos(pos)
    stats = _with_features(stats, saes, image)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
    sharded = engine != "serial" or shards is not None or checkpoint is not None
    if sharded or (tokenizer is None and not image and not is_loaded_model(model)):
        from ..scale import Sharding
        from ._compare_jobs import compare_sharded

        return compare_sharded(
            model,
            tokenizer,
            categories,
            dict(
                pos=pos, layers=layers, stats=stats, batch_size=batch_size, dtype=dtype, saes=saes
            ),
            Sharding(engine, workers, gpus_per_worker, shards, checkpoint, ray_address),
            progress=progress,
        )
    total = sum(len(p) for p in categories.values())
    show = progress if progress is not None else total >= 64
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="circuitboard compare", unit="prompt")
    blocks = [(name, categories[name][a:b]) for name, a, b in plan_blocks(categories, batch_size)]
    try:
        return compare_blocks(
            model,
            tokenizer,
            blocks,
            pos=pos,
            layers=layers,
            stats=stats,
            batch_size=batch_size,
            dtype=dtype,
            bar=bar,
            saes=saes,
        )
    finally:
        if bar is not None:
            bar.close()


def _with_features(stats: Any, saes: Any, image: bool) -> Any:
    """``stats=`` checked, with ``"features"`` allowed (and added by default) when ``saes=``
    is given; returns the stats to pass on (``None``: the defaults, features included)."""
    items = None if stats is None else ([stats] if isinstance(stats, str) else list(stats))
    if saes is None:
        if items is not None and FEATURES in items:
            raise ValueError(
                "stats= asks for 'features' but no dictionaries were given; pass saes=[sae] "
                "(e.g. cb.load_default_saes()) or leave 'features' out."
            )
        _parse_stats(items, image=image)
        return stats
    if image:
        raise ValueError(
            "saes= compares dictionary features of a language model; an image model's compare "
            "takes no dictionaries. Drop saes=."
        )
    rest = None if items is None else [s for s in items if s != FEATURES]
    if rest:
        _parse_stats(rest, image=image)
    if items is not None and FEATURES not in items:
        raise ValueError(
            f"saes= was given but stats={items} leaves out 'features'; add 'features' to "
            "stats= (or drop saes=)."
        )
    return items


def _is_image_model(model: Any) -> bool:
    from ..capture.adapters import get_adapter

    try:
        return get_adapter(model).modality == "image"
    except Exception:  # a ModelSpec or anything capture refuses later, with its own error
        return False


def _image_categories(model: Any, categories: Any) -> dict[str, np.ndarray]:
    """``{name: [N, C, H, W] in [0, 1]}``, each category validated as capture validates images;
    errors name the category (text given to an image model, mixed sizes, bad values)."""
    from ..capture._images import as_images

    if not isinstance(categories, Mapping):
        raise TypeError(
            f"categories must be a dict {{name: images}}; got {type(categories).__name__}. "
            'Example: {"3": threes, "8": eights} with arrays [N, H, W].'
        )
    if len(categories) < 2:
        raise ValueError(
            f"compare needs at least 2 categories; got {len(categories)} ({list(categories)})."
        )
    out = {}
    for name, items in categories.items():
        if not isinstance(name, str):
            raise TypeError(f"category names must be strings; got {name!r}.")
        if isinstance(items, list | tuple):
            if not items:
                raise ValueError(f"category {name!r} has no images; give at least one (2+).")
            shapes = {np.shape(x) for x in items if not isinstance(x, str)}
            if len(shapes) > 1:
                raise ValueError(
                    f"category {name!r} mixes image sizes {sorted(shapes)}; resize every image "
                    f"to the model's {model.config.image_size}×{model.config.image_size} first."
                )
        try:
            arr = as_images(model, items)
        except ValueError as err:
            raise ValueError(f"category {name!r}: {err}") from None
        if len(arr) == 0:
            raise ValueError(f"category {name!r} has no images; give at least one (2+).")
        out[name] = arr
    return out


def plan_blocks(
    categories: Mapping[str, Sequence[str]], batch_size: int
) -> list[tuple[str, int, int]]:
    """``(category, start, stop)`` of every block of prompts, in order: one capture call each.

    The block is the unit every engine shares: statistics are folded block by block, so a
    run cut into shards at block boundaries repeats the one-process computation shard by
    shard.
    """
    chunk = 4 * batch_size
    return [
        (name, start, min(start + chunk, len(prompts)))
        for name, prompts in categories.items()
        for start in range(0, len(prompts), chunk)
    ]


def compare_blocks(
    model: Any,
    tokenizer: Any,
    blocks: Sequence[tuple[str, Sequence[str]]],
    *,
    pos: int | str = -1,
    layers: int | Sequence[int] | None = None,
    stats: Sequence[str] | None = None,
    batch_size: int = 8,
    dtype: Any = None,
    bar: Any = None,
    saes: Any = None,
) -> Comparison:
    """The :class:`Comparison` of consecutive blocks ``(category, prompts)`` (see
    :func:`plan_blocks`): one shard of a run, or the whole run; ``saes``: dictionaries whose
    features are compared too (``stats`` may then hold ``"features"``)."""
    import torch

    from ..capture import capture
    from ..capture._run import _parse_layers
    from ..capture.adapters import get_adapter

    adapter = get_adapter(model)
    sae_list = [] if saes is None else list(saes) if isinstance(saes, list | tuple) else [saes]
    features = feature_info(sae_list)
    plain = None if stats is None else [s for s in stats if s != FEATURES]
    stat_list = (
        _parse_stats(plain, image=adapter.modality == "image") if plain is None or plain else []
    )
    stat_list += [feature_stat(h) for h in features]
    layer_list = _parse_layers(layers, adapter.n_blocks(model))
    kinds = sorted({k for s in stat_list if not is_feature_stat(s) for k in _NEEDS[s]})
    kinds = kinds or ["scale"]  # features only: the smallest tensor a capture records
    dt = torch.float32 if dtype is None else dtype
    acc = _Accumulator(stat_list, layer_list, pos)
    info = None
    names: list[str] = []
    for name, prompts in blocks:
        caps = capture(
            model,
            tokenizer,
            list(prompts),
            layers=layer_list,
            what=kinds,
            dtype=dt,
            batch_size=batch_size,
            max_memory=None,
            progress=False,
            saes=sae_list or None,
        )
        for cap in caps:
            acc.add(name, cap)
        info = caps[0].info
        image = _image_of({name: caps})
        if bar is not None:
            bar.update(len(caps))
        del caps
        acc.flush(name)
        if name not in names:
            names.append(name)
    return acc.result(names, info.n_heads, info.d_mlp, info.model_name, image, features)
