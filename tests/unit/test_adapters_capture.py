"""The adapters of GPT-Neo, GPT-J, Phi, Phi-3, StableLM, OLMo 2 and the MoE families, on tiny
models: numbers equal the model's own forward, decompositions are exact, TransformerLens 4's
bridge records the same tensors."""

from __future__ import annotations

import re
import tempfile
import warnings

import pytest
import torch

import circuitboard as cb
from circuitboard.analysis import direct_logit_attribution
from circuitboard.capture.adapters import get_adapter

from .tiny_models import ARCH_FACTORIES, MORE_TYPES

PROMPT = "When Mary and John went to the store, John gave a drink to"
F32 = {"dtype": torch.float32}


@pytest.fixture(scope="module", params=list(ARCH_FACTORIES))
def arch(request: pytest.FixtureRequest):
    model, tok = ARCH_FACTORIES[request.param]()
    cap = cb.capture(model, tok, PROMPT, what="all", **F32)
    return request.param, model, tok, cap


def _hooks(model: torch.nn.Module) -> list[tuple[str, list[int], list[int]]]:
    return [
        (n, list(m._forward_hooks), list(m._forward_pre_hooks)) for n, m in model.named_modules()
    ]


def test_logits_equal_plain_forward(arch):
    name, model, tok, cap = arch
    with torch.no_grad():
        ref = model(cap.token_ids[None]).logits[0]
    torch.testing.assert_close(cap.logits, ref, atol=1e-5, rtol=1e-5)
    assert cap.info.architecture == get_adapter(model).name


def test_pattern_equals_output_attentions(arch):
    name, model, tok, cap = arch
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(cap.token_ids[None], output_attentions=True)
    finally:
        model.set_attn_implementation(before)
    assert model.config._attn_implementation == before
    assert len(out.attentions) == cap.info.n_layers
    for layer, ref in enumerate(out.attentions):
        pat = cap[f"blocks.{layer}.attn.hook_pattern"]
        assert pat.shape == (cap.info.n_heads, cap.n_tokens, cap.n_tokens)
        torch.testing.assert_close(pat, ref[0], atol=1e-6, rtol=1e-5)
        assert torch.all(pat.triu(1) == 0)


def test_gpt_neo_local_layer_keeps_its_window():
    # GPT-Neo bypasses the attention interface: q/k come off its projections and patterns are
    # recomputed on demand, in a padded batch too, equal to output_attentions.
    model, tok = ARCH_FACTORIES["gpt_neo"]()
    prompts = [PROMPT, "the store", "Hello world! Héllo"]
    caps = cb.capture(model, tok, prompts, what=("pattern", "logits"), batch_size=3, **F32)
    for cap in caps:
        assert cap.info.attention_path.startswith("modules")
        assert "blocks.1.attn.hook_q" in cap.names()
        with torch.no_grad():
            out = model(cap.token_ids[None], output_attentions=True)
        for layer, ref in enumerate(out.attentions):
            torch.testing.assert_close(cap[f"blocks.{layer}.attn.hook_pattern"], ref[0])
    cap = caps[0]
    window = model.config.window_size
    n = cap.n_tokens
    far = torch.ones(n, n, dtype=torch.bool).tril(-window)  # keys >= window tokens back
    glob, local = cap["blocks.0.attn.hook_pattern"], cap["blocks.1.attn.hook_pattern"]
    assert model.config.attention_layers == ["global", "local"]
    assert bool((local[:, far] == 0).all())
    assert bool((glob[:, far] > 0).any())


def test_last_resid_and_frozen_final_norm_reproduce_logits(arch):
    name, model, tok, cap = arch
    info, W = cap.info, cap.weights
    x = cap[f"blocks.{info.n_layers - 1}.hook_resid_post"]
    with torch.no_grad():
        torch.testing.assert_close(
            get_adapter(model).logits_from_resid(model, x), cap.logits, atol=1e-5, rtol=1e-5
        )
    if info.norm == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    normed = x * cap["ln_final.hook_scale"] * W["ln_final.w"] + W["ln_final.b"]
    logits = normed @ W["unembed.W_U"] + W["unembed.b_U"]
    torch.testing.assert_close(logits, cap.logits, atol=1e-4, rtol=1e-4)


def _post_norm(cap, layer: int, which: str) -> torch.Tensor | float:
    """The frozen multiplier of OLMo 2's norm on a sublayer output (1 elsewhere)."""
    key = f"blocks.{layer}.{which}"
    if key + ".hook_scale" not in cap:
        return 1.0
    return cap[key + ".hook_scale"] * cap.weights[key + ".w"]


def _mlp_write(cap, layer: int) -> torch.Tensor:
    """Neurons times W_out (every expert's, weighted by its routing weight, for MoE layers)."""
    p, W = f"blocks.{layer}.mlp.", cap.weights
    if p + "hook_post" in cap:
        return cap[p + "hook_post"] @ W[p + "W_out"] + W[p + "b_out"]
    route = cap[p + "hook_expert_weights"]
    out = sum(
        route[:, e, None] * cap[p + f"experts.{e}.hook_post"] @ W[p + f"experts.{e}.W_out"]
        for e in range(route.shape[1])
    )
    if p + "shared_expert.hook_post" in cap:
        shared = cap[p + "shared_expert.hook_post"] @ W[p + "shared_expert.W_out"]
        out = out + cap[p + "hook_shared_expert_gate"] * shared
    return out


def test_heads_and_neurons_rebuild_the_residual_stream(arch):
    name, model, tok, cap = arch
    info, W = cap.info, cap.weights
    emb = cap["hook_embed"] + (cap["hook_pos_embed"] if "hook_pos_embed" in cap else 0)
    torch.testing.assert_close(emb, cap["blocks.0.hook_resid_pre"], atol=1e-6, rtol=1e-6)
    for layer in range(info.n_layers):
        p = f"blocks.{layer}."
        pre, mid, post = (cap[p + f"hook_resid_{s}"] for s in ("pre", "mid", "post"))
        attn_out, mlp_out = cap[p + "hook_attn_out"], cap[p + "hook_mlp_out"]
        heads = cap.per_head_writes(layer).sum(1) + W[p + "attn.b_O"]
        torch.testing.assert_close(heads * _post_norm(cap, layer, "ln1_post"), attn_out)
        torch.testing.assert_close(
            _mlp_write(cap, layer) * _post_norm(cap, layer, "ln2_post"), mlp_out
        )
        torch.testing.assert_close(mid, pre + attn_out, atol=1e-5, rtol=1e-5)
        # parallel blocks (GPT-J, Phi): the MLP reads resid_pre, and mid = pre + attn_out
        torch.testing.assert_close(post, mid + mlp_out, atol=1e-5, rtol=1e-5)
        assert cap[p + "attn.hook_z"].shape == (cap.n_tokens, info.n_heads, info.d_head)
    assert info.parallel_attn_mlp == (name in ("gptj", "phi", "stablelm_parallel"))


@pytest.mark.parametrize("baseline", [None, 7])
@pytest.mark.parametrize("pos", [-1, 3])
def test_dla_sums_to_the_logit_difference(arch, pos, baseline):
    name, model, tok, cap = arch
    attr = direct_logit_attribution(cap, 5, baseline=baseline, pos=pos)
    row = cap.logits[pos].double()
    expected = float(row[5] - (row[7] if baseline is not None else 0.0))
    assert attr.model_value == pytest.approx(expected, abs=1e-6)
    scale = max(abs(expected), float(attr.values.abs().max()))
    assert abs(attr.total - expected) <= 1e-5 * scale
    assert attr.residual_error < 1e-5
    for layer in range(cap.info.n_layers):
        assert float(attr.neurons(layer).double().sum()) == pytest.approx(
            attr[f"L{layer}.mlp"], abs=1e-6
        )


def test_hooks_removed_after_a_raising_forward(arch):
    name, model, tok, cap = arch
    before = model.config._attn_implementation
    hooks_before = _hooks(model)

    def boom(*_):
        raise RuntimeError("boom in layer 1")

    handle = get_adapter(model).block(model, 1).register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom in layer 1"):
            cb.capture(model, tok, PROMPT, what="all")
    finally:
        handle.remove()
    assert _hooks(model) == hooks_before
    assert model.config._attn_implementation == before
    assert not model.training


def test_weights_are_views_of_the_parameters(arch):
    name, model, tok, cap = arch
    info, W = cap.info, cap.weights
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    keys = [k for k in W if k.startswith("blocks.0.") and ".W_" in k] + ["unembed.W_U"]
    for k in keys:
        assert W[k].untyped_storage().data_ptr() in storages, k
    assert W["blocks.0.attn.W_O"].shape == (info.n_heads, info.d_head, info.d_model)
    assert W["blocks.0.attn.W_Q"].shape == (info.n_heads, info.d_model, info.d_head)
    assert W["blocks.0.attn.W_K"].shape == (info.n_kv_heads, info.d_model, info.d_head)


def test_phi3_fused_projections_split_per_head_and_neuron():
    model, tok = ARCH_FACTORIES["phi3"]()
    cap = cb.capture(model, tok, "a b c", **F32)
    W, info, blk = cap.weights, cap.info, model.model.layers[0]
    x = torch.randn(3, info.d_model)
    with torch.no_grad():
        qkv = blk.self_attn.qkv_proj(x)
        gate, up = blk.mlp.gate_up_proj(x).chunk(2, dim=-1)
    H, KV, dh = info.n_heads, info.n_kv_heads, info.d_head
    q = torch.einsum("pm,hmd->phd", x, W["blocks.0.attn.W_Q"])
    k = torch.einsum("pm,hmd->phd", x, W["blocks.0.attn.W_K"])
    v = torch.einsum("pm,hmd->phd", x, W["blocks.0.attn.W_V"])
    torch.testing.assert_close(torch.cat([t.flatten(1) for t in (q, k, v)], 1), qkv)
    assert (q.shape[1], k.shape[1], v.shape[1]) == (H, KV, KV) and q.shape[2] == dh
    torch.testing.assert_close(x @ W["blocks.0.mlp.W_gate"], gate)
    torch.testing.assert_close(x @ W["blocks.0.mlp.W_in"], up)
    ptr = blk.self_attn.qkv_proj.weight.untyped_storage().data_ptr()
    assert all(W[f"blocks.0.attn.W_{n}"].untyped_storage().data_ptr() == ptr for n in "QKV")


# -- TransformerLens 4's TransformerBridge on the same tiny models -----------------------------
BRIDGED = list(ARCH_FACTORIES)


@pytest.mark.parametrize("name", BRIDGED)
def test_transformer_bridge_capture_equals_ours(name):
    pytest.importorskip("transformer_lens")
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    model, tok = ARCH_FACTORIES[name]()
    twin, _ = ARCH_FACTORIES[name]()  # the bridge rewires its model: give it its own copy
    twin.config.architectures = [type(twin).__name__]
    with tempfile.TemporaryDirectory() as folder:
        tok.save_pretrained(folder)  # TransformerLens re-creates the tokenizer from a path
        tl_tok = AutoTokenizer.from_pretrained(folder)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge = TransformerBridge.boot_transformers(name, hf_model=twin, tokenizer=tl_tok)
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    logits, cache = bridge.run_with_cache(ids)
    ours = cb.capture(model, tok, PROMPT, what="all", **F32)
    torch.testing.assert_close(logits[0], ours.logits, atol=1e-5, rtol=1e-5)
    same = 0
    for k in ours.names():
        # our attn.hook_q / hook_k are what the kernel received (after rotary): TL's hook_rot_*
        # where the bridge has them (its GPT-J / Phi-3 bridges record q/k before rotary only)
        tl_k = re.sub(r"attn\.hook_([qk])$", r"attn.hook_rot_\1", k)
        if tl_k not in cache.keys() or k.endswith("hook_expert_weights"):  # (weights: below)
            continue
        theirs = cache[tl_k]
        theirs = theirs[0] if theirs.dim() == ours[k].dim() + 1 else theirs
        if k.endswith("hook_scale"):  # TransformerLens stores the divisor
            theirs = 1.0 / theirs
        torch.testing.assert_close(theirs.to(ours[k].dtype), ours[k], atol=1e-5, rtol=1e-5, msg=k)
        same += 1
    if ours.info.n_experts:  # TL: routing weights [tokens, experts] and router logits
        for layer in range(ours.info.n_layers):
            p = f"blocks.{layer}.mlp."
            torch.testing.assert_close(
                cache[p + "hook_expert_weights"], ours[p + "hook_expert_weights"]
            )
            torch.testing.assert_close(cache[p + "gate.hook_out"], ours[p + "hook_router_logits"])
    expected = {"ln_final.hook_scale", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z"}
    assert expected <= {k for k in ours.names() if k in cache.keys()}
    assert same >= 10


@pytest.mark.parametrize("name", list(MORE_TYPES))
def test_more_model_types_of_the_new_adapters_are_exact(name):
    # Qwen3-MoE mixes a dense layer with MoE layers; OLMoE and OLMo 3 have q/k norms, OLMo 3 a
    # sliding-window layer.
    model, tok = MORE_TYPES[name]()
    cap = cb.capture(model, tok, PROMPT, **F32)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(cap.token_ids[None], output_attentions=True)
    torch.testing.assert_close(cap.logits, out.logits[0], atol=1e-5, rtol=1e-5)
    for layer, ref in enumerate(out.attentions):
        torch.testing.assert_close(cap[f"blocks.{layer}.attn.hook_pattern"], ref[0])
    attr = direct_logit_attribution(cap, 5, baseline=7)
    expected = float(cap.logits[-1, 5] - cap.logits[-1, 7])
    assert abs(attr.total - expected) <= 1e-5 * max(abs(expected), float(attr.values.abs().max()))
    if name == "qwen3_moe":
        assert "blocks.0.mlp.hook_post" in cap and "blocks.1.mlp.experts.0.hook_post" in cap
        with pytest.raises(KeyError, match="mixture-of-experts"):
            attr.experts(0)
        assert attr.experts(1).shape == (4,)


@pytest.mark.parametrize("name", ["olmo2", "olmoe", "qwen3_moe", "qwen3", "gemma3"])
def test_query_key_norm_scales_are_the_models(name):
    # The frozen multipliers of q/k norms (over all heads: OLMo 2, OLMoE; per head: Qwen3,
    # Gemma 3) reproduce what the norms computed, so a QK split through them can stay exact.
    from . import tiny_models

    factory = {**ARCH_FACTORIES, **MORE_TYPES}.get(name) or getattr(tiny_models, f"tiny_{name}")
    model, tok = factory()
    attn = get_adapter(model).block(model, 1).self_attn
    seen = {}

    def keep(n):
        def hook(m, args, out):  # returns None: the output is left alone
            seen.setdefault(n, (args[0].detach(), out.detach()))

        return hook

    handles = [getattr(attn, n).register_forward_hook(keep(n)) for n in ("q_norm", "k_norm")]
    try:
        cap = cb.capture(model, tok, PROMPT, **F32)
    finally:
        for h in handles:
            h.remove()
    gemma = cap.info.norm == "gemma_rmsnorm"
    for n in ("q_norm", "k_norm"):
        x, y = seen[n]
        if x.dim() == 4 and x.stride(1) < x.stride(2):  # Gemma 3 normalizes [b, heads, pos, d]
            x, y = x.transpose(1, 2), y.transpose(1, 2)
        scale = cap[f"blocks.1.attn.{n}.hook_scale"]
        w = cap.weights[f"blocks.1.attn.{n}.w"] + (1.0 if gemma else 0.0)
        assert scale.shape[:1] == (cap.n_tokens,) and scale.shape[-1] == 1
        torch.testing.assert_close(x[0] * scale * w, y[0], atol=1e-5, rtol=1e-5)
