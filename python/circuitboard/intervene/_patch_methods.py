"""How `patch` measures one pair: exact patched runs, attribution patching, integrated gradients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ._hooks import Edit
from ._metric import evaluate, normalize
from ._patch_inputs import (
    ATTN_SITES,
    POSITION_SITES,
    _Pair,
    _PairResult,
)
from ._runner import Runner
from ._sites import Site


def _kind(site: str) -> str:
    return {"heads": "z", "heads_pos": "z", "neurons": "mlp_post"}.get(site, site)


class _Grid:
    """The cells of one result: their sites, how each takes its value from a layer's tensor,
    and how a layer's per-element contributions reduce to cells."""

    def __init__(
        self, site: str, layers: list[int], positions: list[int] | None, info: Any, T: int
    ) -> None:
        self.site, self.kind = site, _kind(site)
        self.layers, self.positions, self.T = layers, positions, T
        self.H = info.n_kv_heads if site in ("k", "v") else info.n_heads
        self.N = info.d_mlp
        if site in POSITION_SITES:
            self.shape = (len(layers), len(positions))
        elif site in ("heads", *ATTN_SITES):
            self.shape = (len(layers), self.H)
        elif site == "heads_pos":
            self.shape = (len(layers), len(positions), self.H)
        else:
            self.shape = (len(layers), self.N)

    def cells(self) -> list[tuple[tuple[int, ...], Site]]:
        out = []
        for li, layer in enumerate(self.layers):
            if self.site in POSITION_SITES:
                for pi, p in enumerate(self.positions):
                    out.append(((li, pi), Site(self.kind, layer, pos=p)))
            elif self.site in ("heads", *ATTN_SITES):
                for h in range(self.H):
                    out.append(((li, h), Site(self.kind, layer, head=h)))
            elif self.site == "heads_pos":
                for pi, p in enumerate(self.positions):
                    for h in range(self.H):
                        out.append(((li, pi, h), Site("z", layer, pos=p, head=h)))
            else:
                pos = None if self.positions is None else self.positions
                for n in range(self.N):
                    out.append(((li, n), Site("mlp_post", layer, pos=_one(pos), neuron=n)))
        return out

    def skipped(self, first_diff: int, causal: bool) -> np.ndarray:
        """Cells whose every position precedes the first differing token (causal models):
        their clean and corrupted values are equal, so patching them changes nothing."""
        mask = np.zeros(self.shape, dtype=bool)
        if not causal or self.positions is None:
            return mask
        before = np.array(self.positions) < first_diff
        if self.site == "neurons":
            mask[:] = before.all()
        elif self.site == "heads_pos":
            mask[:, before, :] = True
        elif self.site in POSITION_SITES:
            mask[:, before] = True
        return mask

    def reduce(self, contrib: torch.Tensor) -> torch.Tensor:
        """Per-element contributions of one layer ``[T, *rest]`` → that layer's cells."""
        if self.site in POSITION_SITES:
            return contrib.sum(-1)[self.positions]
        if self.site in ("heads", *ATTN_SITES):
            return contrib.sum((0, 2))
        if self.site == "heads_pos":
            return contrib.sum(-1)[self.positions]
        if self.positions is None:
            return contrib.sum(0)
        return contrib[self.positions].sum(0)


def _one(pos: list[int] | None) -> int | tuple[int, ...] | None:
    if pos is None:
        return None
    return pos[0] if len(pos) == 1 else tuple(pos)


def _value(src: torch.Tensor, site: Site, T: int) -> torch.Tensor:
    """The slice of a layer's source tensor ``[T, *rest]`` that a cell's site replaces."""
    x = src if site.pos is None else src[site.positions(T)]
    if site.head is not None:
        x = x[:, site.head]
    if site.neuron is not None:
        x = x[:, site.neuron]
    return x


def _shifted(site: Site, p: int, T: int) -> Site:
    """``site`` with positions counted from token ``p`` (those before ``p`` dropped)."""
    if site.pos is None:
        return site
    kept = tuple(q - p for q in site.positions(T) if q >= p)
    return replace(site, pos=kept[0] if len(kept) == 1 else kept)


def _skippable(grid: _Grid, site: Site, first_diff: int, causal: bool) -> bool:
    """A site whose every position precedes the first differing token cannot change anything
    in a causal model: its clean and corrupted values are equal."""
    if not causal:
        return False
    return max(site.positions(grid.T)) < first_diff


def _exact(
    runner: Runner,
    pair: _Pair,
    grid: _Grid,
    base: torch.Tensor,
    src_acts: dict[Site, torch.Tensor],
    m_base: float,
    batch_size: int | None,
    progress: Callable[[int], None] | None,
) -> tuple[np.ndarray, np.ndarray]:
    raw = np.full(grid.shape, m_base, dtype=np.float64)
    skipped = np.zeros(grid.shape, dtype=bool)
    # Tokens before the first difference are the same in both runs, and so (causal model) is
    # everything computed there: run them once, as a KV cache, and patch only what follows.
    p = pair.first_diff if grid.kind not in ATTN_SITES else 0
    kv = runner.prefix_cache(base, p) if p > 0 else None
    p = p if kv is not None else 0
    idx_run, runs = [], []
    for idx, site in grid.cells():
        if _skippable(grid, site, pair.first_diff, runner.adapter.causal):
            skipped[idx] = True
            continue
        src = src_acts[Site(grid.kind, site.layer)]
        if p:
            site = _shifted(site, p, grid.T)
            src = src[p:]
        idx_run.append(idx)
        runs.append([Edit(site, "replace", _value(src, site, grid.T - p))])
    if runs:
        vals = runner.patched(
            base, runs, pair.metric, batch_size=batch_size, progress=progress, prefix=kv
        )
        for idx, v in zip(idx_run, vals.tolist(), strict=True):
            raw[idx] = v
    return raw, skipped


def _endpoints(
    runner: Runner, pair: _Pair, grid: _Grid
) -> tuple[dict[Site, torch.Tensor], dict[Site, torch.Tensor], float, float]:
    """One two-row forward (clean, corrupted) reading every layer's site tensor."""
    reads = [Edit(Site(grid.kind, layer), "read") for layer in grid.layers]
    lg = runner.logits(torch.stack([pair.clean_ids, pair.corrupt_ids]), reads)
    m = evaluate(pair.metric, lg)
    clean = {e.site: e.activation[0] for e in reads}
    corr = {e.site: e.activation[1] for e in reads}
    m_clean, m_corr = float(m[0]), float(m[1])
    normalize(0.0, m_clean, m_corr)  # refuse early when the endpoints coincide
    return clean, corr, m_clean, m_corr


def _sources(runner: Runner, pair: _Pair, grid: _Grid, direction: str) -> dict[Site, torch.Tensor]:
    clean, corr, _, _ = _endpoints(runner, pair, grid)
    return clean if direction == "denoise" else corr


def _attribution(
    runner: Runner, pair: _Pair, grid: _Grid, direction: str
) -> tuple[np.ndarray, float, float]:
    """One forward of both prompts (two rows: source read, base differentiated) and one
    backward of the base row's metric; returns (raw estimates, m_clean, m_corrupted)."""
    src_row, base_row = (0, 1) if direction == "denoise" else (1, 0)
    ids = torch.stack([pair.clean_ids, pair.corrupt_ids])
    reads = [Edit(Site(grid.kind, layer), "read", rows=[src_row]) for layer in grid.layers]
    grads = [Edit(Site(grid.kind, layer), "grad", rows=[base_row]) for layer in grid.layers]
    m = evaluate(pair.metric, runner.logits(ids, [*reads, *grads]))
    m_clean, m_corr = float(m[0].detach()), float(m[1].detach())
    normalize(0.0, m_clean, m_corr)
    g_all = torch.autograd.grad(m[base_row], [e.delta for e in grads], allow_unused=True)
    raw = np.zeros(grid.shape)
    for li, (r, e, g) in enumerate(zip(reads, grads, g_all, strict=True)):
        g = torch.zeros_like(e.activation) if g is None else g
        contrib = (r.activation[0].float() - e.activation[0].float()) * g[0].float()
        raw[li] = grid.reduce(contrib).detach().cpu().numpy()
    return float(m[base_row].detach()) + raw, m_clean, m_corr


def _layer_chunks(layers: list[int], rows_per_layer: int, batch_size: int) -> list[list[int]]:
    per = max(1, batch_size // rows_per_layer)
    return [layers[i : i + per] for i in range(0, len(layers), per)]


def _ig(
    runner: Runner,
    pair: _Pair,
    grid: _Grid,
    base: torch.Tensor,
    base_acts: dict[Site, torch.Tensor],
    src: dict[Site, torch.Tensor],
    m_base: float,
    steps: int,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint-rule IG per layer; returns (raw estimates, per-layer sums in raw units)."""
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    raw = np.zeros(grid.shape)
    sums = np.zeros(len(grid.layers))
    for chunk in _layer_chunks(grid.layers, steps, batch_size):
        edits, grads_for = [], []
        for j, layer in enumerate(chunk):
            site = Site(grid.kind, layer)
            a0, a1 = base_acts[site], src[site]
            a = alphas.to(a0.device).view(-1, *[1] * a0.ndim)
            path = a0[None] + a * (a1 - a0)[None]
            rows = list(range(j * steps, (j + 1) * steps))
            edits.append(Edit(site, "replace", path, rows=rows))
            g = Edit(site, "grad", rows=rows)
            edits.append(g)
            grads_for.append((layer, g))
        lg = runner.logits(base, edits, expand_at=chunk[0], batch=len(chunk) * steps)
        total = evaluate(pair.metric, lg).sum()
        grads = torch.autograd.grad(total, [g.delta for _, g in grads_for], allow_unused=True)
        for (layer, e), g in zip(grads_for, grads, strict=True):
            site = Site(grid.kind, layer)
            g = torch.zeros_like(e.activation) if g is None else g
            contrib = (src[site] - base_acts[site]).float() * g.float().mean(0)
            li = grid.layers.index(layer)
            raw[li] = grid.reduce(contrib).detach().cpu().numpy()
            sums[li] = float(contrib.sum())
    return m_base + raw, sums


def _run_pair(
    runner: Runner,
    pair: _Pair,
    site: str,
    layers: list[int],
    positions: list[int] | None,
    method: str,
    direction: str,
    steps: int,
    batch_size: int | None,
    compare_exact: bool,
    bar: Any,
) -> _PairResult:
    T = pair.n_tokens
    grid = _Grid(site, layers, positions, runner.info, T)
    skipped = grid.skipped(pair.first_diff, runner.adapter.causal)
    if method == "attribution":
        raw, m_clean, m_corr = _attribution(runner, pair, grid, direction)
        m_base = m_corr if direction == "denoise" else m_clean
        raw[skipped] = m_base
        reference = None
        if compare_exact:
            src = _sources(runner, pair, grid, direction)
            base = pair.corrupt_ids if direction == "denoise" else pair.clean_ids
            reference, _ = _exact(runner, pair, grid, base, src, m_base, batch_size, None)
        return _PairResult(raw, m_clean, m_corr, skipped, reference, None)
    clean_acts, corr_acts, m_clean, m_corr = _endpoints(runner, pair, grid)
    if direction == "denoise":
        base, base_acts, src, m_base = pair.corrupt_ids, corr_acts, clean_acts, m_corr
    else:
        base, base_acts, src, m_base = pair.clean_ids, clean_acts, corr_acts, m_clean
    tick = bar.update if bar is not None else None
    reference = completeness = None
    bs = batch_size or max(1, 4096 // T)
    if method == "exact":
        raw, skipped = _exact(runner, pair, grid, base, src, m_base, batch_size, tick)
    else:
        raw, sums = _ig(runner, pair, grid, base, base_acts, src, m_base, steps, bs)
        whole = [
            [Edit(Site(grid.kind, layer), "replace", src[Site(grid.kind, layer)])]
            for layer in layers
        ]
        exact_layer = runner.patched(base, whole, pair.metric, batch_size=bs).numpy()
        completeness = sums - (exact_layer - m_base)
    raw[skipped] = m_base
    if method != "exact" and compare_exact:
        reference, _ = _exact(runner, pair, grid, base, src, m_base, batch_size, None)
    return _PairResult(raw, m_clean, m_corr, skipped, reference, completeness)
