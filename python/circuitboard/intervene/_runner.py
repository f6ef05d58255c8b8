"""`Runner`: batched, patched forwards of one model that return logits at one position only.

A :class:`Runner` wraps a Hugging Face model (any capture adapter) and runs it with
:func:`~circuitboard.intervene._hooks.write_hooks`: eval mode (restored after), no KV cache,
no padding (one prompt, or rows of equal length), ``torch.no_grad()`` unless an edit has
``op="grad"``. Logits are computed only at the metric position (the unembedding sees one
position per row), as float32 ``[B, vocab]``.

Image models (ViT) take normalized pixel values ``[C, H, W]`` / ``[B, C, H, W]`` where text
models take token ids; their classifier reads only CLS, so their logits are the model's class
logits ``[B, classes]`` whatever ``at`` says, and there is no KV cache (no causal mask).

Contract
--------
- :meth:`Runner.logits` ``(ids, edits, at=-1, expand_at=None, batch=None)``: ``ids`` is a
  ``LongTensor [T]`` / ``[B, T]``; with ``expand_at=l`` it is one row that block ``l`` repeats
  into ``batch`` rows (the prefix ``0..l-1`` runs once; see ``write_hooks``).
- :meth:`Runner.read` ``(ids, sites)``: one forward reading every site; returns
  ``({site: tensor [P, *rest]}, logits [vocab])`` for a one-row input.
- :meth:`Runner.patched` ``(ids, runs, metric, ...)``: many patched runs (each a list of
  edits for one row, rows filled in by the runner), chunked into forwards of at most
  ``batch_size`` rows, sharing the prefix below the lowest edited block of each chunk. Returns
  the metric per run ``[n_runs]``. This is the workhorse of exact patching and of circuit
  evaluation: give each run its own edits and let the runner batch them.

Examples
--------
>>> import torch
>>> from circuitboard.testing import tiny_model
>>> from circuitboard.intervene import Runner, Site, logit_diff
>>> model, tok = tiny_model("llama")
>>> r = Runner(model)
>>> ids = torch.tensor(tok("the store")["input_ids"])
>>> acts, logits = r.read(ids, [Site("resid_pre", 1)])
>>> acts[Site("resid_pre", 1)].shape == (len(ids), 32), logits.shape
(True, torch.Size([384]))
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ..capture.adapters import get_adapter
from ..capture.adapters._base import check_placement, execution_device, get_module
from ._hooks import Edit, check_applied, write_hooks
from ._metric import Metric, evaluate
from ._sites import Site

DEFAULT_BATCH_TOKENS = 4096
"""Default rows per forward: about this many tokens (rows × prompt length)."""
FORWARD_OVERHEAD_BLOCKS = 2.0
"""Modelled fixed cost of one forward, in (block on one row) units per block of the model."""


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Eval mode (no dropout) for the block; the training flag is restored after."""
    was = model.training
    try:
        model.eval()
        yield
    finally:
        model.train(was)


def _min_layer(edits: Sequence[Edit]) -> int | None:
    def depth(e: Edit) -> int:
        return {"embed": -1, "unembed_in": 10**9}.get(e.site.kind, e.site.layer)

    layers = [depth(e) for e in edits]
    return min(layers) if layers else None


class Runner:
    """Run ``model`` with write hooks; logits only at the metric position (see the module)."""

    def __init__(self, model: Any) -> None:
        from ..capture._run import model_info

        self.model = model
        self.adapter = get_adapter(model)
        self.info = model_info(model, self.adapter)
        check_placement(model)
        self.device = execution_device(get_module(model, self.adapter.embed))
        self.n_layers = self.adapter.n_blocks(model)
        self.image = self.adapter.modality == "image"
        """Pixel values in (ViT), not token ids; tokens are CLS plus the patches."""
        self.forwards = 0
        """Forwards run so far (each counts once whatever its batch)."""
        self.row_layers = 0
        """Block evaluations × rows run so far (cost in units of one block on one row)."""

    def _ids(self, ids: Any) -> torch.Tensor:
        if self.image:  # normalized pixels [C, H, W] / [B, C, H, W], in the model's dtype
            t = torch.as_tensor(ids)
            t = t[None] if t.ndim == 3 else t
            return t.to(device=self.device, dtype=next(self.model.parameters()).dtype)
        t = torch.as_tensor(ids, dtype=torch.long)
        return (t[None] if t.ndim == 1 else t).to(self.device)

    def n_tokens(self, x: torch.Tensor) -> int:
        """Positions of one row of a batched input ``x`` (tokens, or CLS plus the patches)."""
        if self.image:
            cfg = self.model.config
            return 1 + (int(cfg.image_size) // int(cfg.patch_size)) ** 2
        return int(x.shape[1])

    def _forward(self, x: torch.Tensor, cache: Any) -> Any:
        if self.image:
            return self.model(pixel_values=x)
        if cache is None:
            return self.model(input_ids=x, use_cache=False)
        return self.model(input_ids=x, cache=cache, use_cache=True)

    def logits(
        self,
        ids: Any,
        edits: Sequence[Edit] = (),
        *,
        at: int | torch.Tensor = -1,
        expand_at: int | None = None,
        batch: int | None = None,
        cache: Any = None,
    ) -> torch.Tensor:
        """Float32 logits ``[B, vocab]`` at position ``at`` of a (patched) forward.

        ``cache``: a KV cache of a shared prefix (see :meth:`prefix_cache`); ``ids`` are then
        the tokens after it and edits address their positions."""
        x = self._ids(ids)
        grad = any(e.op == "grad" for e in edits)
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx, eval_mode(self.model):
            with write_hooks(
                self.model,
                edits,
                adapter=self.adapter,
                expand_at=expand_at,
                batch=batch,
                logits_at=None if self.image else at,  # a ViT's classifier sees only CLS
            ):
                out = self._forward(x, cache)
        check_applied(edits)
        self.forwards += 1
        rows = batch if expand_at is not None else x.shape[0]
        start = expand_at or 0
        self.row_layers += x.shape[0] * start + rows * (self.n_layers - start)
        lg = out.logits if hasattr(out, "logits") else out[0]
        return (lg if lg.ndim == 2 else lg[:, -1]).float()

    def read(
        self, ids: Any, sites: Sequence[Site], *, at: int = -1, edits: Sequence[Edit] = ()
    ) -> tuple[dict[Site, torch.Tensor], torch.Tensor]:
        """One forward of one prompt reading ``sites``: ``({site: [P, *rest]}, logits [vocab])``.

        ``edits`` (optional) are applied in the same forward, before the reads of later sites.
        """
        reads = [Edit(s, op="read") for s in dict.fromkeys(sites)]
        logits = self.logits(ids, [*edits, *reads], at=at)
        return {e.site: e.activation[0] for e in reads}, logits[0]

    def prefix_cache(self, ids: Any, n: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Keys and values of every layer for the first ``n`` tokens of one prompt, or None
        when this model's cache cannot be rebuilt per batch (sliding-window or non-causal
        layers, no KV cache): then run without a prefix."""
        if not self.adapter.causal or n < 1:
            return None
        x = self._ids(ids)[:, :n]
        try:
            with torch.no_grad(), eval_mode(self.model):
                out = self.model(input_ids=x, use_cache=True)
        except (TypeError, ValueError):
            return None
        cache = getattr(out, "cache", None)
        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
            return None
        return [(layer.keys, layer.values) for layer in layers]

    def _cache(self, kv: list[tuple[torch.Tensor, torch.Tensor]], start: int, rows: int) -> Any:
        """A fresh cache of the prefix: one row below block ``start``, ``rows`` rows from it."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i, (k, v) in enumerate(kv):
            if i >= start and rows > 1:
                k = k.expand(rows, *k.shape[1:]).contiguous()
                v = v.expand(rows, *v.shape[1:]).contiguous()
            cache.update(k, v, i)
        return cache

    def _start(self, run: Sequence[Edit]) -> int:
        """The block a run's forward must start at: its lowest edited block (0 for embed)."""
        low = _min_layer(run)
        return 0 if low is None or low < 0 else min(low, self.n_layers - 1)

    def _chunks(self, starts: list[int], batch_size: int) -> list[tuple[int, int]]:
        """Split runs sorted by start block into forwards of at most ``batch_size`` rows,
        minimizing the modelled cost: per forward, a fixed overhead plus, per row, the blocks
        from its chunk's start on and the unembedding (about one block)."""
        n, L = len(starts), self.n_layers
        if n == 0:
            return []
        overhead = FORWARD_OVERHEAD_BLOCKS * L
        cand = sorted(
            {i for i in range(n) if i == 0 or starts[i] != starts[i - 1]}
            | {
                i
                for g in range(n)
                if g == 0 or starts[g] != starts[g - 1]
                for i in range(g, n, batch_size)
            }
            | {n}
        )
        best: dict[int, tuple[float, int]] = {0: (0.0, -1)}
        for j in cand[1:]:
            options = []
            for i in cand:
                if i >= j or j - i > batch_size or i not in best:
                    continue
                s = starts[i]
                options.append((best[i][0] + overhead + (j - i) * (L - s + 1) + s, i))
            if options:
                best[j] = min(options)
        bounds, j = [], n
        while j > 0:
            i = best[j][1]
            bounds.append((i, j))
            j = i
        return bounds[::-1]

    def patched(
        self,
        ids: Any,
        runs: Sequence[Sequence[Edit]],
        metric: Metric,
        *,
        at: int = -1,
        batch_size: int | None = None,
        share_prefix: bool = True,
        progress: Callable[[int], None] | None = None,
        prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """The metric of each patched run ``[len(runs)]`` (float32, on CPU).

        Each run is a list of edits for one forward of the one-row prompt ``ids``; their
        ``rows`` are set by the runner. Runs are sorted by their lowest edited block and
        chunked (fewest modelled block evaluations, see ``_chunks``); with ``share_prefix``
        each chunk's forward starts with one row and expands at its lowest block.
        ``progress(n)`` is called after each chunk with the runs done in it.

        ``prefix``: the KV cache of the prompt's first ``p`` tokens (:meth:`prefix_cache`),
        shared by every run, which then computes only ``ids[p:]``: edits address positions of
        that suffix (position 0 = token ``p``). Use it when no run changes the first ``p``
        positions (in a causal model, sites before the first token where two prompts differ).
        """
        x = self._ids(ids)
        if x.shape[0] != 1:
            raise ValueError(f"patched() takes one prompt; got {x.shape[0]} rows.")
        if prefix is not None:
            x = x[:, prefix[0][0].shape[-2] :]
        if batch_size is None:
            batch_size = max(1, DEFAULT_BATCH_TOKENS // self.n_tokens(x))
        depth = [self._start(runs[i]) for i in range(len(runs))]
        order = sorted(range(len(runs)), key=lambda i: depth[i])
        out = torch.empty(len(runs))
        for lo, hi in self._chunks([depth[i] for i in order], batch_size):
            chunk = order[lo:hi]
            edits: list[Edit] = []
            for row, i in enumerate(chunk):
                for e in runs[i]:
                    edits.append(Edit(e.site, e.op, e.value, rows=row))
            start = depth[chunk[0]]
            n = len(chunk)
            with torch.no_grad():
                if share_prefix and start > 0:
                    cache = self._cache(prefix, start, n) if prefix is not None else None
                    lg = self.logits(x, edits, at=at, expand_at=start, batch=n, cache=cache)
                else:
                    cache = self._cache(prefix, 0, n) if prefix is not None else None
                    lg = self.logits(x.expand(n, *x.shape[1:]), edits, at=at, cache=cache)
                out[torch.tensor(chunk)] = evaluate(metric, lg).detach().cpu()
            if progress is not None:
                progress(len(chunk))
        return out


__all__ = ["DEFAULT_BATCH_TOKENS", "Runner", "eval_mode"]
