"""A reference for generation tests: one plain forward over given token ids, with the capture's
own recorder and an independent steering hook (no KV cache, no circuitboard steering code)."""

from __future__ import annotations

from typing import Any

import torch

from circuitboard.capture import _memory
from circuitboard.capture._hooks import Recorder
from circuitboard.capture._run import _capture_mode, model_info
from circuitboard.capture.adapters import get_adapter


def single_forward(
    model: Any,
    ids: list[int],
    *,
    what: Any = "all",
    add: dict[int, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(tensors, logits)`` of one forward over ``ids``; ``add={layer: [pos, d_model]}`` is
    added to those blocks' inputs (registered before the recorder, as generation does)."""
    adapter = get_adapter(model)
    info = model_info(model, adapter)
    kinds = _memory.parse_what(what)
    handles = []
    for li, delta in (add or {}).items():

        def hook(mod, args, kwargs, delta=delta):
            x = args[0] if args else kwargs["hidden_states"]
            y = x + delta.to(x.dtype)[None]
            return ((y, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": y})

        handles.append(adapter.block(model, li).register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad(), _capture_mode(model, eager="pattern" in kinds):
            rec = Recorder(
                model, adapter, info, list(range(info.n_layers)), kinds, 1, torch.float32
            )
            try:
                rec.rows = [(0, len(ids))]
                out = model(input_ids=torch.tensor([ids]), use_cache=False)
            finally:
                rec.close()
    finally:
        for h in handles:
            h.remove()
    return rec.store[0], out.logits[0].float()


def max_diff(gen_cap: Any, tensors: dict[str, torch.Tensor], logits: torch.Tensor) -> float:
    """The worst error over the logits (absolute) and every captured tensor, relative to that
    tensor's scale: ``max|a - b| / max(1, max|b|)``. The scale matters on real models, whose
    first-token residual reaches ~2e4 (SmolLM2), where one float32 step is ~2e-3."""
    assert set(gen_cap.tensors) == set(tensors), set(gen_cap.tensors) ^ set(tensors)
    worst = float((gen_cap.logits - logits).abs().max())
    for name, t in tensors.items():
        assert gen_cap[name].shape == t.shape, (name, gen_cap[name].shape, t.shape)
        err = float((gen_cap[name].float() - t.float()).abs().max())
        worst = max(worst, err / max(1.0, float(t.abs().max())))
    return worst
