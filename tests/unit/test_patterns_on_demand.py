"""Patterns recomputed from recorded queries/keys equal eager attention; the attention hooks'
contract (read / replace q, k, v and weights; always restored); saved captures keep q/k only."""

from __future__ import annotations

import pytest
import torch

import circuitboard as cb
from circuitboard.capture import _attn_interface as ai
from circuitboard.capture._patterns import pool_rows

from .tiny_models import ATTENTION_VARIANTS, FACTORIES, tiny_llama

MODELS = {**FACTORIES, **ATTENTION_VARIANTS}
PROMPTS = ["When Mary and John went to the store, John gave a drink to", "a b c"]


def _eager_reference(model, caps):
    """Eager ``output_attentions`` of the same right-padded batch the capture ran."""
    n = max(c.n_tokens for c in caps)
    ids = torch.zeros(len(caps), n, dtype=torch.long)
    mask = torch.zeros(len(caps), n, dtype=torch.long)
    for r, c in enumerate(caps):
        ids[r, : c.n_tokens] = c.token_ids
        mask[r, : c.n_tokens] = 1
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    finally:
        model.set_attn_implementation(before)
    return out.attentions


@pytest.mark.parametrize("name", MODELS)
def test_patterns_equal_eager_output_attentions(name):
    model, tok = MODELS[name]()
    before = model.config._attn_implementation
    caps = cb.capture(model, tok, PROMPTS, dtype=torch.float32)
    assert model.config._attn_implementation == before  # restored
    ref = _eager_reference(model, caps)
    for r, cap in enumerate(caps):
        assert cap.info.attention_path == "interface"
        assert cap.info.attn_implementation == before
        assert not any(k.endswith("hook_pattern") for k in cap.tensors)  # nothing T^2 stored
        n = cap.n_tokens
        for layer in range(cap.info.n_layers):
            want = ref[layer][r, :, :n, :n]
            got = cap[f"blocks.{layer}.attn.hook_pattern"]
            assert got.shape == want.shape and got.dtype == want.dtype
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
            q, k = cap[f"blocks.{layer}.attn.hook_q"], cap[f"blocks.{layer}.attn.hook_k"]
            assert q.shape == (n, cap.info.n_heads, cap.info.d_head)
            assert k.shape == (n, cap.info.n_kv_heads, cap.info.d_head)


def test_sliding_windows_and_padding_are_recorded_as_key_spans():
    model, tok = ATTENTION_VARIANTS["gemma3"]()  # layer 0 sliding (window 3), layer 1 global
    cap = cb.capture(model, tok, PROMPTS[0], what="pattern")
    n = cap.n_tokens
    i = torch.arange(n)
    torch.testing.assert_close(
        cap.patterns.specs[0].span, torch.stack([(i - 2).clamp(min=0), i + 1], -1).int()
    )
    torch.testing.assert_close(
        cap.patterns.specs[1].span, torch.stack([torch.zeros(n).long(), i + 1], -1).int()
    )
    model, tok = FACTORIES["bert"]()  # bidirectional; the short prompt was padded in its batch
    caps = cb.capture(model, tok, PROMPTS, what="pattern")
    for c in caps:
        span = c.patterns.specs[0].span
        assert span[:, 0].eq(0).all() and span[:, 1].eq(c.n_tokens).all()


def test_blocks_rows_and_overviews_equal_the_full_pattern():
    model, tok = tiny_llama()
    cap = cb.capture(model, tok, PROMPTS[0] * 3, dtype=torch.float32, what="pattern")
    full = cap["blocks.1.attn.hook_pattern"].float()
    n = cap.n_tokens
    torch.testing.assert_close(cap.pattern(1), full)
    torch.testing.assert_close(
        cap.pattern(1, head=2, queries=slice(5, 40), keys=slice(3, 17)), full[2, 5:40, 3:17]
    )
    torch.testing.assert_close(cap.pattern(1, head=[3, 0], queries=7), full[[3, 0], 7:8])
    chunks = list(cap.pattern_rows(1, chunk=7))
    assert [a for a, _ in chunks] == list(range(0, n, 7))
    torch.testing.assert_close(torch.cat([w for _, w in chunks], 1), full)
    for size in (8, 13, n + 5):
        t = min(n, size)
        edges = (torch.arange(t + 1) * n) // t
        cells = [(a, b) for a, b in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)]
        mean = torch.stack(
            [
                torch.stack([full[:, a:b, c:d].sum(-1).mean(-1) for c, d in cells], -1)
                for a, b in cells
            ],
            1,
        )
        peak = torch.stack(
            [
                torch.stack([full[:, a:b, c:d].amax((-1, -2)) for c, d in cells], -1)
                for a, b in cells
            ],
            1,
        )
        torch.testing.assert_close(cap.pattern_overview(1, size=size), mean)
        torch.testing.assert_close(
            cap.pattern_overview(1, head=1, size=size, reduce="max"), peak[1]
        )
        # the same pooling over a stored (eager-style) pattern
        torch.testing.assert_close(pool_rows(iter([(0, full)]), n, full.shape[0], size), mean)
    with pytest.raises(ValueError, match=r"reduce must be one of \('mean', 'max'\)"):
        cap.pattern_overview(1, reduce="median")
    with pytest.raises(IndexError, match="this layer has 4 heads"):
        cap.pattern(1, head=9)
    with pytest.raises(KeyError, match=r"layer 0 has no attention pattern"):
        cb.capture(model, tok, "a b", layers=[1], what="pattern").pattern(0)


def test_whole_layer_cache_stays_within_its_bound():
    model, tok = tiny_llama()
    cap = cb.capture(model, tok, PROMPTS[0], dtype=torch.float32, what="pattern")
    one = cap["blocks.0.attn.hook_pattern"]
    layer_bytes = one.numel() * one.element_size()
    cap.patterns.clear_cache()
    cap.patterns.cache_bytes = layer_bytes  # room for one layer
    a = cap["blocks.0.attn.hook_pattern"]
    assert cap["blocks.0.attn.hook_pattern"] is a  # cached
    cap["blocks.1.attn.hook_pattern"]
    assert list(cap.patterns._cache) == [1]  # the older layer was dropped
    cap.patterns.cache_bytes = 0
    cap.patterns.clear_cache()
    cap["blocks.0.attn.hook_pattern"]
    assert not cap.patterns._cache


def test_saved_capture_stores_queries_and_keys_and_reopens_without_the_model(tmp_path):
    from safetensors import safe_open

    model, tok = FACTORIES["gemma2"]()  # soft-capped, sliding window, eager kernel
    cap = cb.capture(model, tok, PROMPTS[0], dtype=torch.float32)
    path = tmp_path / "cap.safetensors"
    cap.save(path)
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    assert not any("hook_pattern" in k for k in keys)
    assert "tensors/blocks.0.attn.hook_q" in keys and "attn/0/span" in keys
    back = cb.load_capture(path)
    assert back.names() == cap.names()
    assert back.info == cap.info and back.info.attention_path == "interface"
    for layer in range(2):
        name = f"blocks.{layer}.attn.hook_pattern"
        torch.testing.assert_close(back[name], cap[name], atol=0, rtol=0)
        assert back.patterns.specs[layer].softcap == 20.0


def test_model_outside_the_interface_falls_back_to_eager_and_says_so(monkeypatch):
    model, tok = tiny_llama()
    from circuitboard.capture import _run

    reason = "LlamaForCausalLM does not dispatch through AttentionInterface"
    monkeypatch.setattr(_run, "interface_status", lambda m: (False, reason))
    cap = cb.capture(model, tok, PROMPTS[0], dtype=torch.float32)
    assert cap.info.attention_path == f"eager (the attention interface was not usable: {reason})"
    assert cap.info.attn_implementation == "eager"
    assert "blocks.0.attn.hook_pattern" in cap.tensors  # stored, as before
    assert cap.patterns is None and "blocks.0.attn.hook_q" not in cap
    assert model.config._attn_implementation == "sdpa"
    monkeypatch.undo()
    ref = cb.capture(model, tok, PROMPTS[0], dtype=torch.float32)
    torch.testing.assert_close(cap.pattern(1), ref.pattern(1), atol=1e-5, rtol=0)


def test_a_layer_that_bypasses_the_interface_makes_the_capture_fall_back(monkeypatch):
    model, tok = tiny_llama()
    real = ai._attention

    def skip_layer_1(module, *args, **kwargs):
        if module is model.model.layers[1].self_attn:
            name = ai._ORIGINAL_OF_CONFIG.get(id(module.config), "sdpa")
            return ai._kernel(name, module)(module, *args, **kwargs)
        return real(module, *args, **kwargs)

    from transformers import AttentionInterface

    ai._register()
    monkeypatch.setitem(AttentionInterface._global_mapping, ai.KEY, skip_layer_1)
    cap = cb.capture(model, tok, "a b c")
    assert "layers [1] did not call the attention interface" in cap.info.attention_path
    assert "blocks.1.attn.hook_pattern" in cap.tensors


def test_hooks_are_removed_and_implementation_restored_when_the_forward_raises():
    model, tok = tiny_llama()

    def boom(call):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        with ai.attention_hooks(model, {1: ai.LayerHooks(on_qkv=boom)}):
            model(input_ids=torch.tensor([[1, 5, 6]]))
    assert model.config._attn_implementation == "sdpa"
    assert not ai._ACTIVE and not ai._SWITCHED and not ai._ORIGINAL_OF_CONFIG
    handle = model.model.layers[1].register_forward_hook(lambda *a: 1 / 0)
    try:
        with pytest.raises(ZeroDivisionError):
            cb.capture(model, tok, "a b c")
    finally:
        handle.remove()
    assert model.config._attn_implementation == "sdpa" and not ai._ACTIVE
    assert not model.model.layers[0]._forward_hooks


def test_extension_point_reads_and_replaces_qkv_and_weights():
    model, tok = tiny_llama()
    ids = torch.tensor([tok("When Mary and John went")["input_ids"]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    # identity pattern hook: eager-style weights for that layer, same logits as sdpa
    seen = {}

    def keep(call, w):
        seen["w"] = w.clone()
        return None

    with torch.no_grad(), ai.attention_hooks(model, {0: ai.LayerHooks(on_pattern=keep)}):
        same = model(input_ids=ids).logits
    torch.testing.assert_close(same, plain, atol=1e-5, rtol=1e-5)
    cap = cb.capture(model, tok, "When Mary and John went", dtype=torch.float32, what="pattern")
    torch.testing.assert_close(seen["w"][0], cap["blocks.0.attn.hook_pattern"], atol=1e-6, rtol=0)

    # replacing the values with zeros zeroes that layer's attention output (hook_z); the capture
    # nested inside the patching context records the patched forward
    def zero_v(call):
        call.value = torch.zeros_like(call.value)

    with ai.attention_hooks(model, {1: ai.LayerHooks(on_qkv=zero_v)}):
        patched = cb.capture(model, tok, "When Mary and John went", what=["z", "pattern"])
    assert patched["blocks.1.attn.hook_z"].abs().max() == 0
    assert patched["blocks.0.attn.hook_z"].abs().max() > 0
    assert model.config._attn_implementation == "sdpa" and not ai._SWITCHED

    # a replaced pattern: uniform attention over the allowed keys averages the values
    def uniform(call, w):
        allowed = call.allowed().expand_as(w).float()
        return allowed / allowed.sum(-1, keepdim=True)

    got = {}
    hooks = {0: ai.LayerHooks(on_qkv=lambda c: got.setdefault("v", c.value), on_pattern=uniform)}
    handle = model.model.layers[0].self_attn.o_proj.register_forward_pre_hook(
        lambda m, a: got.setdefault("z", a[0])
    )
    try:
        with torch.no_grad(), ai.attention_hooks(model, hooks):
            model(input_ids=ids)
    finally:
        handle.remove()
    v = got["v"][0].repeat_interleave(2, dim=0)  # [heads, pos, d_head], 2 query heads per kv head
    n = ids.shape[1]
    want = v.cumsum(1) / torch.arange(1, n + 1)[None, :, None]  # causal running mean
    torch.testing.assert_close(got["z"][0].view(n, 4, 8).transpose(0, 1), want)
    with pytest.raises(ValueError, match=r"on_pattern hook of layer 0 returned shape"):
        bad = {0: ai.LayerHooks(on_pattern=lambda c, w: w[..., :1])}
        with torch.no_grad(), ai.attention_hooks(model, bad):
            model(input_ids=ids)
    assert model.config._attn_implementation == "sdpa" and not ai._ACTIVE
