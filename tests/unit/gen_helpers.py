"""A reference for generation tests: one plain forward over given token ids, with the capture's
own recorder and an independent steering hook (no KV cache, no circuitboard steering code)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from circuitboard.capture import _memory
from circuitboard.capture._attn_interface import attention_hooks
from circuitboard.capture._hooks import Recorder
from circuitboard.capture._patterns import Patterns
from circuitboard.capture._run import _capture_mode, model_info
from circuitboard.capture.adapters import get_adapter


def single_forward(
    model: Any,
    ids: list[int],
    *,
    what: Any = "all",
    add: dict[int, torch.Tensor] | None = None,
    qk: bool = True,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(tensors, logits)`` of one forward over ``ids``; ``add={layer: [pos, d_model]}`` is
    added to those blocks' inputs (registered before the recorder, as generation does).

    ``qk=True`` records queries / keys through the attention interface, as a capture does, and
    ``tensors`` then also holds every layer's pattern recomputed from them; ``qk=False`` is
    eager attention with its own weights (the ground truth for patterns)."""
    adapter = get_adapter(model)
    info = model_info(model, adapter)
    kinds = _memory.parse_what(what)
    layers = list(range(info.n_layers))
    handles = []
    for li, delta in (add or {}).items():

        def hook(mod, args, kwargs, delta=delta):
            x = args[0] if args else kwargs["hidden_states"]
            y = x + delta.to(x.dtype)[None]
            return ((y, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": y})

        handles.append(adapter.block(model, li).register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad(), _capture_mode(model, eager="pattern" in kinds and not qk):
            rec = Recorder(model, adapter, info, layers, kinds, 1, torch.float32, qk=qk)
            try:
                ctx = attention_hooks(model, rec.attention_hooks()) if rec.qk else None
                with ctx or contextlib.nullcontext():
                    rec.rows = [(0, len(ids))]
                    out = model(input_ids=torch.tensor([ids]), use_cache=False)
            finally:
                rec.close()
    finally:
        for h in handles:
            h.remove()
    tensors = dict(rec.store[0])
    if rec.qk:
        patterns = Patterns(rec.store[0], rec.specs[0])
        for li in patterns.layers():
            tensors[f"blocks.{li}.attn.hook_pattern"] = patterns.full(li)
    return tensors, out.logits[0].float()


def max_diff(gen_cap: Any, tensors: dict[str, torch.Tensor], logits: torch.Tensor) -> float:
    """The worst error over the logits (absolute) and every tensor of the reference (patterns
    included, recomputed on demand from the generation's queries and keys), relative to that
    tensor's scale: ``max|a - b| / max(1, max|b|)``. The scale matters on real models, whose
    first-token residual reaches ~2e4 (SmolLM2), where one float32 step is ~2e-3."""
    assert set(tensors) <= set(gen_cap.names()), set(tensors) - set(gen_cap.names())
    worst = float((gen_cap.logits - logits).abs().max())
    for name, t in tensors.items():
        mine = gen_cap[name]
        assert mine.shape == t.shape, (name, mine.shape, t.shape)
        err = float((mine.float() - t.float()).abs().max())
        worst = max(worst, err / max(1.0, float(t.abs().max())))
    return worst
