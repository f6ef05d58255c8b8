"""Capture exactness on the default model (SmolLM2-135M-Instruct: Llama, GQA, tied embeddings)."""

from __future__ import annotations

import pytest
import torch

import circuitboard as cb
from circuitboard.capture.adapters import get_adapter

pytestmark = pytest.mark.real

IOI = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def ioi32(default_model):
    model, tok = default_model
    return cb.capture(model, tok, IOI, dtype=torch.float32)


def test_logits_equal_plain_forward_and_answer_mary(default_model, ioi32):
    model, tok = default_model
    with torch.no_grad():
        ref = model(ioi32.token_ids[None]).logits[0]
    torch.testing.assert_close(ioi32.logits, ref, atol=1e-4, rtol=1e-4)
    top = int(ioi32.logits[-1].argmax())
    assert tok.decode([top]) == " Mary"
    assert abs(float(ioi32.logits[-1, top]) - 11.037) < 0.01
    assert "".join(ioi32.tokens) == IOI
    info = ioi32.info
    assert (info.n_layers, info.n_heads, info.n_kv_heads, info.d_model, info.d_mlp) == (
        30,
        9,
        3,
        576,
        1536,
    )


def test_last_resid_post_reproduces_logits(default_model, ioi32):
    model, _ = default_model
    last = ioi32["blocks.29.hook_resid_post"]
    with torch.no_grad():
        logits = get_adapter(model).logits_from_resid(model, last)
    torch.testing.assert_close(logits, ioi32.logits, atol=1e-4, rtol=1e-4)
    W = ioi32.weights
    frozen = last * ioi32["ln_final.hook_scale"] * W["ln_final.w"] @ W["unembed.W_U"]
    torch.testing.assert_close(frozen, ioi32.logits, atol=1e-3, rtol=1e-4)


def test_pattern_equals_eager_output_attentions(default_model, ioi32):
    model, _ = default_model
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(ioi32.token_ids[None], output_attentions=True)
    finally:
        model.set_attn_implementation(before)
    for layer, ref in enumerate(out.attentions):
        torch.testing.assert_close(ioi32[f"blocks.{layer}.attn.hook_pattern"], ref[0])


def test_raising_forward_restores_model(default_model):
    model, tok = default_model
    before = model.config._attn_implementation
    hooks = [(list(m._forward_hooks), list(m._forward_pre_hooks)) for m in model.modules()]

    def boom(*_):
        raise RuntimeError("boom")

    h = model.model.layers[7].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            cb.capture(model, tok, IOI)
    finally:
        h.remove()
    assert model.config._attn_implementation == before and not model.training
    assert [(list(m._forward_hooks), list(m._forward_pre_hooks)) for m in model.modules()] == hooks


def test_default_capture_float16_and_batch(default_model, ioi32):
    model, tok = default_model
    caps = cb.capture(model, tok, [IOI, "The quick brown fox"])
    cap = caps[0]
    # stored activations are float16; patterns are recomputed from the captured queries and
    # keys, which keep the model's dtype (float32 here)
    assert cap["blocks.3.hook_resid_pre"].dtype == torch.float16
    assert cap["blocks.3.attn.hook_pattern"].dtype == torch.float32
    torch.testing.assert_close(
        cap["blocks.3.attn.hook_pattern"].float(),
        ioi32["blocks.3.attn.hook_pattern"],
        atol=2e-3,
        rtol=0,
    )
    assert caps[1].n_tokens == len(tok("The quick brown fox")["input_ids"])


def test_generation(default_model):
    model, tok = default_model
    cap = cb.capture(model, tok, IOI, max_new_tokens=3, what=["pattern", "logits"], layers=[0])
    assert cap.n_generated == 3
    assert cap.tokens[cap.n_prompt_tokens] == " Mary"
    assert "".join(cap.tokens).startswith(IOI + " Mary")
