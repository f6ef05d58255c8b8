"""`Runner`: batched, patched forwards of one model that return logits at one position only.

A :class:`Runner` wraps a Hugging Face model (any capture adapter) and runs it with
:func:`~circuitboard.intervene._hooks.write_hooks`: eval mode (restored after), no KV cache,
no padding (one prompt, or rows of equal length), ``torch.no_grad()`` unless an edit has
``op="grad"``. Logits are computed only at the metric position (the unembedding sees one
position per row), as float32 ``[B, vocab]``.

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
>>> from tests.unit.tiny_models import tiny_llama
>>> from circuitboard.intervene import Runner, Site, logit_diff
>>> model, tok = tiny_llama()
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
from ..capture.adapters._base import get_module
from ._hooks import Edit, write_hooks
from ._metric import Metric, evaluate
from ._sites import Site

DEFAULT_BATCH_TOKENS = 8192
"""Default rows per forward: about this many tokens (rows × prompt length)."""


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
    layers = [-1 if e.site.kind == "embed" else e.site.layer for e in edits]
    return min(layers) if layers else None


class Runner:
    """Run ``model`` with write hooks; logits only at the metric position (see the module)."""

    def __init__(self, model: Any) -> None:
        from ..capture._run import model_info

        self.model = model
        self.adapter = get_adapter(model)
        self.info = model_info(model, self.adapter)
        self.device = get_module(model, self.adapter.embed).weight.device
        self.n_layers = self.adapter.n_blocks(model)
        self.forwards = 0
        """Forwards run so far (each counts once whatever its batch)."""
        self.row_layers = 0
        """Block evaluations × rows run so far (cost in units of one block on one row)."""

    def _ids(self, ids: Any) -> torch.Tensor:
        t = torch.as_tensor(ids, dtype=torch.long)
        return (t[None] if t.ndim == 1 else t).to(self.device)

    def logits(
        self,
        ids: Any,
        edits: Sequence[Edit] = (),
        *,
        at: int | torch.Tensor = -1,
        expand_at: int | None = None,
        batch: int | None = None,
    ) -> torch.Tensor:
        """Float32 logits ``[B, vocab]`` at position ``at`` of a (patched) forward."""
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
                logits_at=at,
            ):
                out = self.model(input_ids=x, use_cache=False)
        self.forwards += 1
        rows = batch if expand_at is not None else x.shape[0]
        start = expand_at or 0
        self.row_layers += x.shape[0] * start + rows * (self.n_layers - start)
        lg = out.logits if hasattr(out, "logits") else out[0]
        return lg[:, -1].float()

    def read(
        self, ids: Any, sites: Sequence[Site], *, at: int = -1, edits: Sequence[Edit] = ()
    ) -> tuple[dict[Site, torch.Tensor], torch.Tensor]:
        """One forward of one prompt reading ``sites``: ``({site: [P, *rest]}, logits [vocab])``.

        ``edits`` (optional) are applied in the same forward, before the reads of later sites.
        """
        reads = [Edit(s, op="read") for s in dict.fromkeys(sites)]
        logits = self.logits(ids, [*edits, *reads], at=at)
        return {e.site: e.activation[0] for e in reads}, logits[0]

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
    ) -> torch.Tensor:
        """The metric of each patched run ``[len(runs)]`` (float32, on CPU).

        Each run is a list of edits for one forward of the one-row prompt ``ids``; their
        ``rows`` are set by the runner. Runs are sorted by their lowest edited block and
        chunked; with ``share_prefix`` each chunk's forward starts with one row and expands at
        that block. ``progress(n)`` is called after each chunk with the runs done in it.
        """
        x = self._ids(ids)
        if x.shape[0] != 1:
            raise ValueError(f"patched() takes one prompt; got {x.shape[0]} rows.")
        if batch_size is None:
            batch_size = max(1, DEFAULT_BATCH_TOKENS // x.shape[1])
        order = sorted(range(len(runs)), key=lambda i: _min_layer(runs[i]) or 0)
        out = torch.empty(len(runs))
        for c in range(0, len(order), batch_size):
            chunk = order[c : c + batch_size]
            edits: list[Edit] = []
            for row, i in enumerate(chunk):
                for e in runs[i]:
                    edits.append(Edit(e.site, e.op, e.value, rows=row))
            low = _min_layer(edits)
            expand = share_prefix and low is not None and low > 0
            with torch.no_grad():
                if expand:
                    lg = self.logits(x, edits, at=at, expand_at=low, batch=len(chunk))
                else:
                    lg = self.logits(x.expand(len(chunk), -1), edits, at=at)
                out[torch.tensor(chunk)] = evaluate(metric, lg).detach().cpu()
            if progress is not None:
                progress(len(chunk))
        return out


__all__ = ["DEFAULT_BATCH_TOKENS", "Runner", "eval_mode"]
