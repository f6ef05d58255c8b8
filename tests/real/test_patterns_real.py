"""On-demand patterns on the default model: equal to eager attention at 1,024 tokens."""

from __future__ import annotations

import pytest
import torch

import circuitboard as cb
from circuitboard.data import load_texts

pytestmark = pytest.mark.real

LAYERS = (0, 7, 15, 22, 29)


def long_prompt(tok, n_tokens: int) -> str:
    """The package's texts joined (repeated as needed), cut at a token boundary near n_tokens."""
    text = "\n\n".join(load_texts())
    while len(tok(text)["input_ids"]) < n_tokens + 8:
        text = text + "\n\n" + text
    offsets = tok(text, return_offsets_mapping=True)["offset_mapping"]
    return text[: offsets[n_tokens][0]]


def eager_weights(model, ids, layers):
    """Eager attention weights of ``layers`` (hooked on the attention modules' outputs)."""
    got, handles = {}, []
    for layer in layers:
        mod = model.model.layers[layer].self_attn
        handles.append(mod.register_forward_hook(lambda m, a, o, i=layer: got.__setitem__(i, o[1])))
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        model.set_attn_implementation(before)
        for h in handles:
            h.remove()
    return got


def test_patterns_equal_eager_at_1024_tokens(default_model):
    model, tok = default_model
    cap = cb.capture(model, tok, long_prompt(tok, 1024), what="pattern")
    assert 1020 <= cap.n_tokens <= 1030
    assert cap.info.attention_path == "interface" and cap.info.attn_implementation == "sdpa"
    ref = eager_weights(model, cap.token_ids[None], LAYERS)
    for layer in LAYERS:
        got = cap.pattern(layer)  # float32, computed in chunks of query rows
        torch.testing.assert_close(got, ref[layer][0].float(), atol=1e-5, rtol=0, msg=f"L{layer}")
    # stored: float32 queries (9 heads) and keys (3 kv heads) of 64 dims, linear in tokens
    stored = sum(t.numel() * t.element_size() for t in cap.tensors.values())
    assert stored == cap.n_tokens * 30 * (9 + 3) * 64 * 4  # eager patterns: 30*9*n*n*4 bytes
