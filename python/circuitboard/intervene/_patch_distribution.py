"""`cb.patch(..., corrupted="mean" | "resample", reference=...)`: patching against a
distribution of prompts instead of one corrupted prompt, reporting necessity with sufficiency.

- ``"resample"``: each clean prompt is paired with a reference prompt of the same token length,
  drawn with ``seed`` (never the clean prompt itself); then both directions run, so the result
  holds ``sufficiency`` (denoising) and ``necessity`` (noising) side by side.
- ``"mean"``: each site's corrupted activation is its mean over the reference prompts, per
  position (they must have the clean prompt's token length). Only noising is defined (a run
  with every site at its mean does not exist): ``values`` = ``necessity``, normalized so that
  clean = 1 and the reference prompts' mean metric = 0.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..capture._tokens import tokenize
from ._hooks import Edit
from ._metric import evaluate
from ._patch_inputs import _PairResult, _prepare_pairs, patch_layout
from ._patch_methods import _exact, _Grid
from ._patch_result import _assemble
from ._result import Patching
from ._runner import Runner
from ._sites import Site

CORRUPTIONS = ("mean", "resample")


def _references(reference: Any) -> list[str]:
    refs = [reference] if isinstance(reference, str) else list(reference or [])
    if not refs or not all(isinstance(r, str) and r for r in refs):
        raise ValueError(
            "corrupted='mean' / 'resample' needs reference= prompts (a non-empty list of "
            "strings of the clean prompt's template), e.g. reference=[...the same sentence with "
            "other names...]."
        )
    return refs


def _draws(tokenizer: Any, clean: list[str], refs: list[str], seed: int) -> list[int]:
    """For each clean prompt, a seeded reference of the same token length (not itself)."""
    lengths = [len(tokenize(tokenizer, r)[0]) for r in refs]
    rng = np.random.default_rng(seed)
    out = []
    for i, c in enumerate(clean):
        n = len(tokenize(tokenizer, c)[0])
        pool = [j for j, r in enumerate(refs) if lengths[j] == n and r != c]
        if not pool:
            raise ValueError(
                f"corrupted='resample': clean prompt {i} has {n} tokens and no other reference "
                f"prompt has (their lengths: {sorted(set(lengths))}). Add reference prompts of "
                "its template."
            )
        out.append(pool[int(rng.integers(0, len(pool)))])
    return out


def patch_over_reference(
    model: Any,
    tokenizer: Any,
    clean: str | Sequence[str],
    corrupted: str,
    reference: Any,
    seed: int,
    options: dict[str, Any],
    progress: bool | None,
) -> Patching:
    """:func:`circuitboard.patch` with ``corrupted`` ``"mean"`` or ``"resample"`` (see the
    module); ``options`` as :func:`circuitboard.patch` passes them."""
    from ._patch import _patch_here

    refs = _references(reference)
    cl = [clean] if isinstance(clean, str) else list(clean)
    if corrupted == "resample":
        picks = _draws(tokenizer, cl, refs, seed)
        drawn = [refs[j] for j in picks]
        suff = _patch_here(
            model, tokenizer, cl, drawn, {**options, "direction": "denoise"}, progress
        )
        nec = _patch_here(model, tokenizer, cl, drawn, {**options, "direction": "noise"}, progress)
        main = suff if options["direction"] == "denoise" else nec
        notes = [
            f"corrupted='resample': clean prompt i runs against reference prompt {picks} "
            f"(seed {seed}); sufficiency (denoise) and necessity (noise) both computed",
            *main.notes,
        ]
        return dataclasses.replace(main, notes=notes, sufficiency=suff.values, necessity=nec.values)
    if options["direction"] != "noise":
        raise ValueError(
            "corrupted='mean' asks whether a site is necessary (direction='noise'): a run with "
            "every activation at its mean, to patch clean activations into, does not exist. Pass "
            "direction='noise', or corrupted='resample' for sufficiency and necessity together."
        )
    if options["method"] != "exact":
        raise ValueError(f"corrupted='mean' runs method='exact'; got method={options['method']!r}.")
    return _patch_mean(model, tokenizer, cl, refs, options)


def _patch_mean(
    model: Any, tokenizer: Any, clean: list[str], refs: list[str], o: dict[str, Any]
) -> Patching:
    runner = Runner(model)
    if runner.image:
        raise ValueError("corrupted='mean' takes text prompts; this is an image model.")
    pairs = _prepare_pairs(tokenizer, clean, clean, o["answer"], o["wrong"], o["metric"], runner)
    pairs = [dataclasses.replace(p, first_diff=0) for p in pairs]  # every position may differ
    site = o["site"]
    layers, positions = patch_layout(pairs, site, o["layers"], o["positions"], runner.n_layers)
    ref_ids = [torch.tensor(tokenize(tokenizer, r)[0]) for r in refs]
    t0, f0 = time.perf_counter(), runner.forwards
    results = []
    for i, pair in enumerate(pairs):
        T = pair.n_tokens
        if any(len(r) != T for r in ref_ids):
            raise ValueError(
                f"corrupted='mean' averages each site per position, so every reference prompt "
                f"needs clean prompt {i}'s {T} tokens; their lengths are "
                f"{sorted({len(r) for r in ref_ids})}. Use prompts of one template."
            )
        grid = _Grid(site, layers, positions, runner.info, T)
        reads = [Edit(Site(grid.kind, layer), "read") for layer in layers]
        lg = runner.logits(torch.stack(ref_ids), reads)
        m_ref = float(evaluate(pair.metric, lg).mean())
        mean = {e.site: e.activation.float().mean(0) for e in reads}
        m_clean = float(evaluate(pair.metric, runner.logits(pair.clean_ids))[0])
        raw, skipped = _exact(
            runner, pair, grid, pair.clean_ids, mean, m_clean, o["batch_size"], None
        )
        results.append(_PairResult(raw, m_clean, m_ref, skipped))
    cost = {"forwards": runner.forwards - f0, "seconds": time.perf_counter() - t0}
    res = _assemble(
        results, pairs, runner, site, "exact", "noise", layers, positions, o["steps"], cost
    )
    notes = [
        f"corrupted='mean': each site's activation replaced by its per-position mean over "
        f"{len(refs)} reference prompts; 0 = the reference prompts' mean metric "
        f"({np.mean([r.corrupted for r in results]):.4g}), 1 = clean",
        *res.notes,
    ]
    return dataclasses.replace(res, notes=notes, necessity=res.values)


__all__ = ["CORRUPTIONS", "patch_over_reference"]
