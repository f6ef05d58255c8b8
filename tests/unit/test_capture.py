"""Capture exactness on every adapter's tiny model: numbers equal the model's own forward."""

from __future__ import annotations

import pytest
import torch

import circuitboard as cb
from circuitboard.capture.adapters import get_adapter

from .tiny_models import CAUSAL, FACTORIES

PROMPT = "When Mary and John went to the store, John gave a drink to"
PROMPTS = [PROMPT, "Héllo wörld 日本語 🙂", "the"]
F32 = {"dtype": torch.float32}


@pytest.fixture(scope="module", params=list(FACTORIES))
def tiny(request: pytest.FixtureRequest):
    model, tok = FACTORIES[request.param]()
    return request.param, model, tok


def _ids(cap: cb.Capture) -> torch.Tensor:
    return cap.token_ids[None]


def _hooks(model: torch.nn.Module) -> list[tuple[str, list[int], list[int]]]:
    """Every forward / pre-forward hook id on every module (transformers adds its own)."""
    return [
        (n, list(m._forward_hooks), list(m._forward_pre_hooks)) for n, m in model.named_modules()
    ]


def test_logits_equal_plain_forward(tiny):
    name, model, tok = tiny
    cap = cb.capture(model, tok, PROMPT, **F32)
    with torch.no_grad():
        ref = model(_ids(cap)).logits[0]
    assert cap.logits.dtype == torch.float32
    torch.testing.assert_close(cap.logits, ref, atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation == ("eager" if name == "gemma2" else "sdpa")


def test_last_resid_post_reproduces_logits(tiny):
    _, model, tok = tiny
    cap = cb.capture(model, tok, PROMPT, **F32)
    adapter = get_adapter(model)
    last = cap[f"blocks.{cap.info.n_layers - 1}.hook_resid_post"]
    with torch.no_grad():
        logits = adapter.logits_from_resid(model, last, cap.info.final_logit_softcap)
    torch.testing.assert_close(logits, cap.logits, atol=1e-5, rtol=1e-5)


def test_pattern_equals_eager_output_attentions(tiny):
    _, model, tok = tiny
    cap = cb.capture(model, tok, PROMPT, **F32)
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(_ids(cap), output_attentions=True)
    finally:
        model.set_attn_implementation(before)
    assert len(out.attentions) == cap.info.n_layers
    for layer, ref in enumerate(out.attentions):
        pat = cap[f"blocks.{layer}.attn.hook_pattern"]
        assert pat.shape == (cap.info.n_heads, cap.n_tokens, cap.n_tokens)
        torch.testing.assert_close(pat, ref[0], atol=1e-6, rtol=1e-5)
    if cap.info.causal:
        assert torch.all(pat.triu(1) == 0)
    else:
        assert torch.all(pat.triu(1)[:, :-1, 1:].abs().sum() > 0)


def test_raising_forward_removes_hooks_and_restores(tiny):
    name, model, tok = tiny
    adapter = get_adapter(model)
    before = model.config._attn_implementation
    hooks_before = _hooks(model)

    def boom(*_):
        raise RuntimeError("boom in layer 1")

    handle = adapter.block(model, 1).register_forward_hook(boom)
    model.train()
    try:
        with pytest.raises(RuntimeError, match="boom in layer 1"):
            cb.capture(model, tok, PROMPT)
    finally:
        handle.remove()
        training = model.training
        model.eval()
    assert training
    assert _hooks(model) == hooks_before
    assert model.config._attn_implementation == before


def test_residual_stream_bookkeeping(tiny):
    """Component tensors add up the way the architecture says (pre-norm models)."""
    name, model, tok = tiny
    cap = cb.capture(model, tok, PROMPT, what="all", **F32)
    info, W = cap.info, cap.weights
    if name == "bert":  # post-norm: each residual add is followed by the block's LayerNorm
        for layer in range(info.n_layers):
            blk, p = model.bert.encoder.layer[layer], f"blocks.{layer}."
            pre, mid = cap[p + "hook_resid_pre"], cap[p + "hook_resid_mid"]
            with torch.no_grad():
                mid_ref = blk.attention.output.LayerNorm(cap[p + "hook_attn_out"] + pre)
                post_ref = blk.output.LayerNorm(cap[p + "hook_mlp_out"] + mid)
            torch.testing.assert_close(mid, mid_ref, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(cap[p + "hook_resid_post"], post_ref, atol=1e-5, rtol=1e-5)
        return
    emb = cap["hook_embed"] + (cap["hook_pos_embed"] if "hook_pos_embed" in cap else 0)
    torch.testing.assert_close(emb, cap["blocks.0.hook_resid_pre"], atol=1e-6, rtol=1e-6)
    for layer in range(info.n_layers):
        p = f"blocks.{layer}."
        pre, mid, post = (
            cap[p + "hook_resid_pre"],
            cap[p + "hook_resid_mid"],
            cap[p + "hook_resid_post"],
        )
        attn_out, mlp_out = cap[p + "hook_attn_out"], cap[p + "hook_mlp_out"]
        torch.testing.assert_close(mid, pre + attn_out, atol=1e-5, rtol=1e-5)
        if info.parallel_attn_mlp:
            torch.testing.assert_close(post, pre + attn_out + mlp_out, atol=1e-5, rtol=1e-5)
        else:
            torch.testing.assert_close(post, mid + mlp_out, atol=1e-5, rtol=1e-5)
        if name != "gemma2":  # Gemma 2 normalizes the attention / MLP writes
            heads = cap.per_head_writes(layer).sum(1) + W[p + "attn.b_O"].float()
            torch.testing.assert_close(heads, attn_out, atol=1e-5, rtol=1e-5)
            mlp = cap[p + "mlp.hook_post"] @ W[p + "mlp.W_out"] + W[p + "mlp.b_out"]
            torch.testing.assert_close(mlp, mlp_out, atol=1e-5, rtol=1e-5)
        assert cap[p + "attn.hook_z"].shape == (cap.n_tokens, info.n_heads, info.d_head)
        assert cap[p + "mlp.hook_post"].shape == (cap.n_tokens, info.d_mlp)


def test_final_scale_and_unembed_weights(tiny):
    """resid * hook_scale * w (+ b) through W_U + b_U gives the logits (frozen-scale DLA)."""
    name, model, tok = tiny
    cap = cb.capture(model, tok, PROMPT, **F32)
    info, W = cap.info, cap.weights
    x = cap[f"blocks.{info.n_layers - 1}.hook_resid_post"]
    if name == "bert":  # the MLM head transforms resid_post (dense, GELU) before its LayerNorm
        t = model.cls.predictions.transform
        with torch.no_grad():
            x = t.transform_act_fn(t.dense(x))
    if info.norm == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    w = W["ln_final.w"] + (1 if info.norm == "gemma_rmsnorm" else 0)
    normed = x * cap["ln_final.hook_scale"] * w + W["ln_final.b"]
    logits = normed @ W["unembed.W_U"] + W["unembed.b_U"]
    if info.final_logit_softcap:
        logits = torch.tanh(logits / info.final_logit_softcap) * info.final_logit_softcap
    torch.testing.assert_close(logits, cap.logits, atol=1e-4, rtol=1e-4)
    assert cap["ln_final.hook_scale"].shape == (cap.n_tokens, 1)


def test_weights_are_views_of_parameters(tiny):
    _, model, tok = tiny
    cap = cb.capture(model, tok, "a b", what="logits")
    info, W = cap.info, cap.weights
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for key in ("blocks.0.attn.W_O", "blocks.0.mlp.W_out", "unembed.W_U", "embed.W_E"):
        assert W[key].untyped_storage().data_ptr() in params, key
    assert W["blocks.0.attn.W_O"].shape == (info.n_heads, info.d_head, info.d_model)
    assert W["blocks.0.attn.W_V"].shape == (info.n_kv_heads, info.d_model, info.d_head)
    assert W["blocks.0.mlp.W_out"].shape == (info.d_mlp, info.d_model)
    assert W["unembed.W_U"].shape == (info.d_model, info.d_vocab)


def test_batch_equals_single(tiny):
    _, model, tok = tiny
    caps = cb.capture(model, tok, PROMPTS, batch_size=3, **F32)
    for p, cap in zip(PROMPTS, caps, strict=True):
        one = cb.capture(model, tok, p, **F32)
        assert cap.tokens == one.tokens and cap.n_tokens == len(cap.token_ids)
        assert cap.names() == one.names()
        for k in cap:
            torch.testing.assert_close(cap[k], one[k], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cap.logits, one.logits, atol=1e-4, rtol=1e-4)


def test_tokens_join_back_to_prompt(tiny):
    _, model, tok = tiny
    for p in PROMPTS:
        cap = cb.capture(model, tok, p, what="logits")
        special = set(tok.all_special_tokens)
        text = "".join(
            t
            for t, i in zip(cap.tokens, cap.token_ids.tolist(), strict=True)
            if not (t in special and i in tok.all_special_ids)
        )
        assert text == p
        assert cap.token_ids.tolist() == tok(p)["input_ids"]


@pytest.mark.parametrize("name", CAUSAL[:2] + ["gemma2"])
def test_generation_captures_prompt_and_new_tokens(name):
    model, tok = FACTORIES[name]()
    n_prompt = len(tok(PROMPT)["input_ids"])
    model.train()  # GPT-2 has dropout: generation must run in eval mode too
    cap = cb.capture(model, tok, PROMPT, max_new_tokens=4, **F32)
    assert model.training
    assert cap.n_prompt_tokens == n_prompt and cap.n_generated == 4
    assert cap.n_tokens == len(cap.tokens) == n_prompt + 4
    assert cap["blocks.0.attn.hook_pattern"].shape[-1] == n_prompt + 4
    # greedy: each generated token is the argmax of the previous position's logits
    gen = cap.token_ids[n_prompt:]
    torch.testing.assert_close(cap.logits[n_prompt - 1 : -1].argmax(-1), gen)
    full = tok.decode(cap.token_ids[n_prompt:].tolist())
    assert "".join(cap.tokens[n_prompt:]) == full
