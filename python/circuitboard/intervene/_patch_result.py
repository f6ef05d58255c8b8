"""How `patch` puts per-pair results together: a :class:`Patching` with values and notes."""

from __future__ import annotations

import numpy as np

from ._metric import normalize
from ._patch_inputs import (
    ATTN_SITES,
    POSITION_SITES,
    _Pair,
    _PairResult,
)
from ._result import AXES, Patching
from ._runner import Runner


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _assemble(
    results: list[_PairResult],
    pairs: list[_Pair],
    runner: Runner,
    site: str,
    method: str,
    direction: str,
    layers: list[int],
    positions: list[int] | None,
    steps: int,
    cost: dict[str, float],
) -> Patching:
    norm = [normalize(r.raw, r.clean, r.corrupted) for r in results]
    pair_values = np.stack(norm)
    values = pair_values.mean(0)
    ref = None
    corr = None
    if results[0].reference_raw is not None:
        ref = np.stack([normalize(r.reference_raw, r.clean, r.corrupted) for r in results]).mean(0)
        live = ~np.all(np.stack([r.skipped for r in results]), axis=0)
        corr = _pearson(values[live], ref[live])
    completeness = comp_err = None
    if results[0].completeness is not None:
        completeness = np.mean([r.completeness / (r.clean - r.corrupted) for r in results], axis=0)
        comp_err = float(np.abs(completeness).max())
    p0 = pairs[0]
    notes = [
        "denoise: the corrupted prompt runs with clean activations patched in (is the site "
        "sufficient?)"
        if direction == "denoise"
        else "noise: the clean prompt runs with corrupted activations patched in (is the site "
        "necessary?)",
        "values = (m − m_corrupted) / (m_clean − m_corrupted): clean = 1, corrupted = 0"
        + (" (noise: a site that matters drops below 1)" if direction == "noise" else ""),
    ]
    if method == "attribution":
        notes.append(
            "attribution patching: first-order estimate m_base + (a_source − a_base)·∂m/∂a at "
            "the base run, every site from one forward per prompt and one backward"
        )
    if method == "ig":
        notes.append(
            f"integrated gradients: each layer's sites interpolated together between the two "
            f"runs ({steps} midpoint steps); completeness = Σ layer − exact(whole layer)"
        )
    skipped_all = np.all(np.stack([r.skipped for r in results]), axis=0)
    if runner.adapter.causal and p0.first_diff > 0 and skipped_all.any():
        notes.append(
            f"positions 0–{p0.first_diff - 1} come before the first differing token (position "
            f"{p0.first_diff}, {p0.clean_tokens[p0.first_diff]!r} vs "
            f"{p0.corrupt_tokens[p0.first_diff]!r}): sites there are exactly 0 and were not run"
        )
    if p0.image is not None:
        notes[0] = notes[0].replace("prompt", "image")
        notes.append(
            "image pair: tokens are CLS and the patches (row,col); a ViT has no causal mask, so "
            "every patch and CLS can carry the difference: every cell was run, no prefix shared"
        )
    if site in ("heads", "heads_pos"):
        notes.append("heads: each head's output (attn.hook_z, the input of W_O) is patched")
    info = runner.info
    kv_groups = None
    if site in ATTN_SITES:
        what = {
            "q": "queries (after rotary / query norm)",
            "k": "keys",
            "v": "values",
            "pattern": "attention weights",
        }[site]
        notes.append(
            f"{site}: each head's {what} at every position, as the model's attention function "
            "received them"
        )
    if site in ("k", "v"):
        g = info.n_heads // info.n_kv_heads
        kv_groups = {kv: list(range(kv * g, (kv + 1) * g)) for kv in range(info.n_kv_heads)}
        if g > 1:
            notes.append(
                f"grouped-query attention: {site} is patched per key-value head; KV head g "
                f"serves query heads {g}g..{g}g+{g - 1}"
            )
    m_desc = getattr(p0.metric, "description", getattr(p0.metric, "__name__", "metric"))
    n_heads = info.n_kv_heads if site in ("k", "v") else info.n_heads
    heads = list(range(n_heads)) if site in ("heads", "heads_pos", *ATTN_SITES) else None
    return Patching(
        values=values,
        raw=np.mean([r.raw for r in results], axis=0),
        site=site,
        method=method,
        direction=direction,
        metric=str(m_desc) + (" at CLS" if p0.image is not None else " at the last position"),
        axes=AXES["position"] if site in POSITION_SITES else AXES.get(site, AXES["heads"]),
        layers=layers,
        positions=positions,
        heads=heads,
        tokens={"clean": list(p0.clean_tokens), "corrupted": list(p0.corrupt_tokens)},
        clean_value=float(np.mean([r.clean for r in results])),
        corrupted_value=float(np.mean([r.corrupted for r in results])),
        first_diff=p0.first_diff,
        notes=notes,
        pair_values=pair_values,
        pair_raw=np.stack([r.raw for r in results]),
        pair_clean=np.array([r.clean for r in results]),
        pair_corrupted=np.array([r.corrupted for r in results]),
        reference=ref,
        correlation=corr,
        completeness=completeness,
        completeness_error=comp_err,
        steps=steps if method == "ig" else None,
        model_name=runner.info.model_name,
        kv_groups=kv_groups,
        cost=cost,
        image=p0.image,
        images=p0.pixels,
    )
