"""Capture during generation with the KV cache: a recorder for forwards that see only the new
positions, and the per-step rows put together into one capture over all tokens."""

from __future__ import annotations

from typing import Any

import torch

from ..capture._attn_interface import InterfaceUnavailable
from ..capture._capture import Capture
from ..capture._hooks import Recorder
from ..capture._patterns import LayerSpec, span_from_allowed


class _StepRecorder(Recorder):
    """The capture's recorder, for forwards that see only new positions (KV cache).

    Queries and keys (the attention-interface path) are recorded for the new positions only
    (the key tensor a cached forward hands the kernel holds every position so far: its last
    rows are the new ones), with each new query's allowed keys as ``[lo, hi)`` spans, so the
    pattern of prompt + continuation is recomputed later exactly as for one forward. On the
    eager path, each new query's row of weights over every key so far is kept and padded
    into the full pattern afterwards.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_specs: dict[int, list[tuple[torch.Tensor, torch.Tensor | None]]] = {}
        self.layer_scaling: dict[int, tuple[float, float | None]] = {}

    def put_pattern(self, name: str, w: torch.Tensor) -> None:
        for r, (idx, n) in enumerate(self.rows):
            self.store[idx][name] = self._copy(w[r, :, :n, :])

    def _qk_recorder(self, layer: int) -> Any:
        p = f"blocks.{layer}.attn."

        def on_qkv(call: Any) -> None:
            ((idx, n),) = self.rows
            q = call.query.transpose(1, 2)[0, -n:]  # [new, heads, d_head]
            k = call.key.transpose(1, 2)[0, -n:]  # the new positions' keys
            self.store[idx][p + "hook_q"] = self._copy(q, q.dtype)
            self.store[idx][p + "hook_k"] = self._copy(k, k.dtype)
            allowed = call.allowed()[0, :, -n:, :]  # [1 or heads, new, keys so far]
            if allowed.shape[0] > 1 and not bool((allowed == allowed[:1]).all()):
                raise InterfaceUnavailable(
                    f"layer {layer} has a different mask per head; circuitboard records one."
                )
            span, dense = span_from_allowed(allowed[0])
            self.step_specs.setdefault(layer, []).append(
                (span, None if dense is None else allowed[0].cpu().clone())
            )
            self.layer_scaling[layer] = (call.scaling, call.softcap)

        return on_qkv

    def full_specs(self, n: int, prefix: dict[int, Any] | None = None) -> dict[int, LayerSpec]:
        """Each layer's :class:`LayerSpec` over all ``n`` positions (``prefix``: the parent's
        specs, whose first rows a fork keeps)."""
        out = {}
        for layer, parts in self.step_specs.items():
            spans = [sp for sp, _ in parts]
            dense_rows = [d for _, d in parts]
            m0 = n - sum(int(sp.shape[0]) for sp in spans)
            old = prefix.get(layer) if prefix else None
            if old is not None and m0:
                spans.insert(0, old.span[:m0])
                dense_rows.insert(0, old.allowed[:m0, :m0] if old.allowed is not None else None)
            span = torch.cat(spans)
            allowed = None
            if any(d is not None for d in dense_rows):  # not one interval per query: dense
                allowed = torch.zeros(n, n, dtype=torch.bool)
                row = 0
                for sp, d in zip(spans, dense_rows, strict=True):
                    k = sp.shape[0]
                    if d is None:
                        cols = torch.arange(n)
                        d = (cols >= sp[:, :1]) & (cols < sp[:, 1:])
                    allowed[row : row + k, : d.shape[1]] = d[:, :n]
                    row += k
            scaling, softcap = self.layer_scaling[layer]
            out[layer] = LayerSpec(scaling, softcap, span, allowed)
        return out


def _assemble(chunks: list[dict[str, torch.Tensor]], n: int) -> dict[str, torch.Tensor]:
    """Concatenate per-forward row blocks along positions; patterns padded to ``[H, n, n]``."""
    out: dict[str, torch.Tensor] = {}
    for name in chunks[0]:
        parts = [c[name] for c in chunks]
        if name.endswith("attn.hook_pattern"):
            parts = [torch.nn.functional.pad(p, (0, n - p.shape[-1])) for p in parts]
            out[name] = torch.cat(parts, dim=1)
        else:
            out[name] = torch.cat(parts, dim=0)
    return out


def _prefix_chunk(cap: Capture, m: int) -> dict[str, torch.Tensor]:
    """The first ``m`` positions of a capture (patterns ``[H, m, m]``): a fork's shared part."""
    out = {}
    for name, t in cap.tensors.items():
        out[name] = t[:, :m, :m] if name.endswith("attn.hook_pattern") else t[:m]
    return out
