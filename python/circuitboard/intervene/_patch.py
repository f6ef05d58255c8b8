"""`patch()`: activation patching (exact, batched) and attribution patching (gradients, IG).

Exact patching runs one patched forward per site, many sites per forward (the batch
dimension), each forward starting its rows at the lowest block it patches (blocks below run
once); in a causal model the tokens before the first difference are run once as a KV cache
and only the rest is recomputed per site (not for ``q``/``k``/``v``/``pattern``, whose
tensors span the cached keys). Attribution patching estimates every site of a kind to first
order from one forward of both prompts (two batch rows) and one backward. Integrated
gradients (``method="ig"``) interpolate each layer's sites together between the two runs
(midpoint rule, ``steps`` points) and report how far the sum over each layer is from exactly
patching that whole layer (its completeness error).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .._threads import one_thread
from ._patch_inputs import (
    DIRECTIONS,
    METHODS,
    SITES,
    _check_choice,
    _PairResult,
    _prepare_pairs,
    patch_layout,
)
from ._patch_methods import (
    _Grid,
    _run_pair,
)
from ._patch_result import _assemble
from ._result import Patching
from ._runner import Runner

PROGRESS_FROM = 20_000  # show a progress bar from this many patched token-rows on


# Many batched forwards: on a busy 2-core machine two torch threads wait on each other at
# every op's barrier (oversubscription), 3-8x slower than one; on an idle machine two help.
@one_thread(when_busy=True)
def patch(
    model: Any,
    tokenizer: Any,
    clean: str | Sequence[str],
    corrupted: str | Sequence[str],
    *,
    answer: str | int | Sequence[str | int] | None = None,
    wrong: str | int | Sequence[str | int] | None = None,
    metric: Callable[[torch.Tensor], Any] | None = None,
    site: str = "resid_pre",
    method: str = "exact",
    direction: str = "denoise",
    layers: int | Sequence[int] | None = None,
    positions: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    progress: bool | None = None,
    steps: int = 16,
    compare_exact: bool = False,
    engine: str = "serial",
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    shards: int | None = None,
    checkpoint: Any = None,
    ray_address: str | None = None,
    reference: Sequence[str] | None = None,
    seed: int = 0,
    saes: Any = None,
) -> Patching:
    """Patch activations between a clean and a corrupted prompt and measure what comes back.

    Parameters
    ----------
    model, tokenizer
        A Hugging Face model of any supported architecture and its tokenizer; for an image
        classifier (ViT) its image processor, or None when the model carries its pixel
        normalization (``cb.load_default_vision_model()``).
    clean, corrupted
        Two prompts of equal token length, or two equal-length lists of such pairs (results
        are averaged over pairs; per-pair values are kept in ``pair_values``). For an image
        model: two images (``[H, W]`` / ``[C, H, W]``, values in [0, 1] or uint8), or two
        equal-length batches of them; positions are CLS (0) and the patches in raster order
        (``tokens`` holds ``"row,col"``), and as a ViT has no causal mask every cell is run.
    answer, wrong
        One-token strings or token ids (or one per pair) for the default metric, the logit
        difference ``logit(answer) − logit(wrong)`` at the last position. For an image model:
        class ids (``3``) or labels (``"3"``), read from the class logits at CLS.
    metric
        Instead: any callable of the float32 logits at the last position ``[vocab]`` (an
        image model: the class logits ``[classes]``) returning one number (differentiable for
        ``attribution`` / ``ig``).
    site
        ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out`` →
        ``values[layer, position]``; ``heads`` (each head's output ``z`` at all positions) →
        ``[layer, head]``; ``heads_pos`` → ``[layer, position, head]``; ``q``, ``k``, ``v``,
        ``pattern`` (each head's queries / keys / values / attention weights at every
        position, through the model's attention function) → ``[layer, head]`` (``k`` / ``v``:
        key-value heads; ``kv_groups`` says which query heads each serves); ``neurons`` (MLP
        neurons, at ``positions`` or at every position) → ``[layer, neuron]``; exact patching
        of neurons is one run per neuron (46,080 on the default model), so use
        ``method="attribution"`` there and exact on the few it ranks first.
    method
        ``"exact"`` (one patched forward per site, batched), ``"attribution"`` (first-order
        estimate of every site from one forward on each prompt and one backward) or ``"ig"``
        (integrated gradients with ``steps`` midpoint steps per layer; reports its
        completeness error).
    direction
        ``"denoise"``: run the corrupted prompt, patch in clean activations (is the site
        sufficient?). ``"noise"``: run the clean prompt, patch in corrupted activations (is it
        necessary?). Both normalize to clean = 1, corrupted = 0.
    layers, positions
        Restrict the layers / positions (negative counts from the end). Positions before the
        first differing token are exactly 0 in a causal model and are not run.
    batch_size
        Patched runs per forward (default: about 4,096 tokens per forward).
    progress
        Show a progress bar (default: for large exact runs).
    steps
        Interpolation steps for ``method="ig"``.
    compare_exact
        With ``attribution`` / ``ig``: also run exact patching and report the correlation.
    engine
        Where a list of pairs runs: ``"serial"`` (this process), ``"processes"`` (a pool of
        local processes, each with its own model) or ``"ray"`` (Ray actors; ``pip install
        "circuitboard[ray]"``). Every engine runs the same plan: consecutive pairs form
        ``shards``, each pair is patched exactly as one run patches it, and the per-pair
        results are put together in pair order, so the result (and its saved bytes) is the
        same for every engine and every shard count. ``values`` stays the mean over pairs of
        each pair's normalized effect; ``cost`` then holds only ``forwards`` (run time:
        ``circuitboard.scale.last_run()``). A custom ``metric`` travels pickled by value
        (cloudpickle); one that cannot is refused before any worker starts.
    workers, gpus_per_worker, shards, checkpoint, ray_address
        As for :func:`circuitboard.compare`: worker count, GPUs per worker, pieces of work
        (default one for ``"serial"``, four per worker otherwise; the unit of retry,
        checkpoint and progress), a folder from which an interrupted run resumes, and the
        Ray cluster to join. Pass a :class:`circuitboard.ModelSpec` as ``model``
        (``tokenizer=None``) so that each worker loads its own model.

    reference, seed
        With ``corrupted="resample"``: each clean prompt runs against a reference prompt of its
        length drawn with ``seed``, in both directions (``sufficiency`` and ``necessity`` side
        by side). With ``corrupted="mean"`` (``direction="noise"``): each site takes its
        per-position mean over ``reference``; 0 is the reference prompts' mean metric.

    saes
        With ``site="features"``: the dictionary (``cb.SAE``) whose features are patched, each
        at every position with the error term kept; returns a
        :class:`~circuitboard.intervene._feature_patch.FeaturePatching` (``method`` "exact" or
        "attribution"; one pair).
    Returns
    -------
    Patching
        ``values`` (normalized), ``raw``, endpoints, conventions, ``top(k)``, ``save()``.

    Examples
    --------
    >>> import circuitboard as cb
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> clean = "When Mary and John went to the store, John gave a drink to"
    >>> corrupted = "When Mary and John went to the store, Mary gave a drink to"
    >>> res = cb.patch(model, tok, clean, corrupted, answer=" Mary", wrong=" John")
    >>> res.values.shape  # [layer, position]
    (2, 20)
    >>> round(float(res.values[0, res.first_diff]), 4)  # the swapped token at layer 0: all of it
    1.0
    >>> float(abs(res.values[:, :res.first_diff]).max())  # before the first difference: exactly 0
    0.0
    >>> heads = cb.patch(model, tok, clean, corrupted, answer=" Mary", wrong=" John",
    ...                  site="heads", method="attribution")
    >>> heads.values.shape, heads.top(1)[0]["label"][:2]
    ((2, 4), 'L0')

    Between two images (a ViT: CLS plus patches; classes by id or label):

    >>> import numpy as np
    >>> from circuitboard.testing import tiny_model
    >>> vit, _ = tiny_model("vit", channels=1)
    >>> a, b = np.random.default_rng(0).random((2, 8, 8))
    >>> img = cb.patch(vit, None, a, b, answer="class 1", wrong="class 2", site="resid_post")
    >>> img.values.shape, img.tokens["clean"]  # [layer, CLS + 4 patches]
    ((2, 5), ['CLS', '0,0', '0,1', '1,0', '1,1'])
    >>> # the classifier reads CLS only: after the last block, CLS is everything (the
    >>> # patches are 0 up to float32 rounding of differently batched products)
    >>> round(float(img.values[-1, 0]), 4), bool(abs(img.values[-1, 1:]).max() < 1e-5)
    (1.0, True)

    Many pairs, cut into shards (the same bytes on ``engine="processes"`` or ``"ray"``):

    >>> names = [(" Mary", " John"), (" John", " Mary")] * 2
    >>> cl = [f"When{a} and{b} went to the store,{b} gave a drink to" for a, b in names]
    >>> co = [f"When{a} and{b} went to the store,{a} gave a drink to" for a, b in names]
    >>> kw = dict(answer=[a for a, _ in names], wrong=[b for _, b in names], site="heads")
    >>> one = cb.patch(model, tok, cl, co, **kw)
    >>> two = cb.patch(model, tok, cl, co, shards=2, **kw)
    >>> bool((one.values == two.values).all()), two.pair_values.shape
    (True, (4, 2, 4))
    """
    if site == "features" or saes is not None:
        if site != "features":
            raise ValueError(f"saes= goes with site='features'; got site={site!r}.")
        from ._feature_patch import patch_features

        return patch_features(  # type: ignore[return-value]
            model, tokenizer, clean, corrupted, saes=saes, answer=answer, wrong=wrong,
            metric=metric, method=method, direction=direction, batch_size=batch_size or 32,
        )  # fmt: skip
    _check_choice(site, SITES, "site")
    _check_choice(method, METHODS, "method")
    _check_choice(direction, DIRECTIONS, "direction")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}.")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
    from ..scale import ModelSpec

    options = dict(answer=answer, wrong=wrong, metric=metric, site=site, method=method)
    options.update(direction=direction, layers=layers, positions=positions, steps=steps)
    options.update(batch_size=batch_size, compare_exact=compare_exact)
    sharded = engine != "serial" or shards is not None or checkpoint is not None
    if isinstance(corrupted, str) and corrupted in ("mean", "resample"):  # issue 29
        from ._patch_distribution import patch_over_reference

        if sharded or isinstance(model, ModelSpec):
            raise ValueError(
                f"corrupted={corrupted!r} runs in this process; drop engine=, shards= and "
                "checkpoint= (or patch explicit prompt pairs on an engine)."
            )
        return patch_over_reference(
            model, tokenizer, clean, corrupted, reference, seed, options, progress
        )
    if sharded or isinstance(model, ModelSpec):
        from ..scale import Sharding
        from ._patch_jobs import patch_sharded

        return patch_sharded(
            model,
            tokenizer,
            clean,
            corrupted,
            options,
            Sharding(engine, workers, gpus_per_worker, shards, checkpoint, ray_address),
            progress=progress,
        )
    return _patch_here(model, tokenizer, clean, corrupted, options, progress)


def _patch_here(
    model: Any,
    tokenizer: Any,
    clean: Any,
    corrupted: Any,
    options: dict[str, Any],
    progress: bool | None,
) -> Patching:
    """:func:`patch` in this process, pair after pair (``options``: as the sharded form gets
    them, :func:`patch`'s keywords from ``answer`` to ``compare_exact``)."""
    o = options
    site, method, direction, steps = o["site"], o["method"], o["direction"], o["steps"]
    batch_size, compare_exact = o["batch_size"], o["compare_exact"]
    runner = Runner(model)
    pairs = _prepare_pairs(
        tokenizer, clean, corrupted, o["answer"], o["wrong"], o["metric"], runner=runner
    )
    layer_list, pos_list = patch_layout(pairs, site, o["layers"], o["positions"], runner.n_layers)
    T0 = pairs[0].n_tokens
    t0, f0 = time.perf_counter(), runner.forwards
    results: list[_PairResult] = []
    bar = None
    n_cells = int(np.prod(_Grid(site, layer_list, pos_list, runner.info, T0).shape))
    show = (
        progress
        if progress is not None
        else (method == "exact" and n_cells * T0 * len(pairs) >= PROGRESS_FROM)
    )
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_cells * len(pairs), desc="circuitboard patch", unit="site")
    try:
        for pair in pairs:
            results.append(
                _run_pair(
                    runner,
                    pair,
                    site,
                    layer_list,
                    pos_list,
                    method,
                    direction,
                    steps,
                    batch_size,
                    compare_exact,
                    bar,
                )
            )
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    return _assemble(
        results,
        pairs,
        runner,
        site,
        method,
        direction,
        layer_list,
        pos_list,
        steps,
        {"forwards": runner.forwards - f0, "seconds": seconds},
    )


__all__ = ["DIRECTIONS", "METHODS", "SITES", "patch"]
