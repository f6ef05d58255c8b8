"""Exactness of cb.explain_attention (QK) and cb.explain_head_output (OV) on every tiny model."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import circuitboard as cb
from tests.unit.tiny_models import CAUSAL, FACTORIES, tiny_bert, tiny_llama

PROMPT = "When Mary and John went to the store, John gave a drink to"
RTOL = 1e-4


def close(a: float, b: float, terms: np.ndarray) -> bool:
    # Relative to the value itself, or to the largest term when the value is ~0.
    scale = max(abs(b), float(np.abs(terms).max()), 1e-6)
    return abs(a - b) <= RTOL * scale


def randomize_biases(model):
    """Random init leaves every bias (and LayerNorm bias) at zero: make them count."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.2)
    return model


@pytest.fixture(scope="module", params=CAUSAL)
def tiny_cap(request):
    model, tok = FACTORIES[request.param]()
    return cb.capture(randomize_biases(model), tok, PROMPT, dtype=torch.float32)


def _cases(cap):
    n, info = cap.n_tokens, cap.info
    last = info.n_layers - 1
    return [(0, 0, n - 1, 0), (last, info.n_heads - 1, n - 1, n - 3), (last, 1, n - 2, n - 2)]


def _window_ok(cap, layer, q, k):
    w = cap.info.attn_windows[layer] if cap.info.attn_windows else None
    return w is None or q - k < w


def test_parts_sum_to_the_score(tiny_cap):
    for layer, head, q, k in _cases(tiny_cap):
        if not _window_ok(tiny_cap, layer, q, k):
            continue
        ex = cb.explain_attention(tiny_cap, layer=layer, head=head, query=q, key=k, softcap="pre")
        assert ex.matrix.shape == (len(ex.query_labels), len(ex.key_labels))
        assert close(ex.total, ex.score, ex.matrix), (layer, head, ex.total, ex.score)
        assert ex.residual_error < 1e-5
        # the model's score: its own rotated queries and keys, recorded by the capture
        assert ex.score_source == "captured queries and keys"
        q_k = {k: v for k, v in tiny_cap.tensors.items() if not k.endswith(("hook_q", "hook_k"))}
        again = cb.explain_attention(
            dataclasses.replace(tiny_cap, tensors=q_k),
            layer=layer,
            head=head,
            query=q,
            key=k,
            softcap="pre",
        )  # without them: recomputed from the layer's input, the same number
        assert "hook_resid_pre" in again.score_source
        assert close(again.score, ex.score, ex.matrix)
        assert np.allclose(ex.query_totals.sum(), ex.total) and np.allclose(
            ex.key_totals.sum(), ex.total
        )


def test_score_differences_are_the_log_ratio_of_the_pattern(tiny_cap):
    info = tiny_cap.info
    layer, head = info.n_layers - 1, 1
    n = tiny_cap.n_tokens
    q, k1, k2 = n - 1, n - 2, n - 4
    pat = tiny_cap[f"blocks.{layer}.attn.hook_pattern"][head, q].double()
    a = cb.explain_attention(tiny_cap, layer=layer, head=head, query=q, key=k1, softcap="pre")
    b = cb.explain_attention(tiny_cap, layer=layer, head=head, query=q, key=k2, softcap="pre")
    sa, sb = a.score, b.score
    if info.attn_softcap:  # the softmax sees cap * tanh(score / cap)
        c = info.attn_softcap
        sa, sb = c * math.tanh(sa / c), c * math.tanh(sb / c)
    expected = float(torch.log(pat[k1] / pat[k2]))
    assert sa - sb == pytest.approx(expected, abs=2e-5 * max(1.0, abs(expected)))
    # the parts themselves (not only the recomputed score) reproduce the model's weights
    assert a.total - b.total == pytest.approx(a.score - b.score, abs=1e-5)


def test_head_output_split_sums_to_the_dla_term(tiny_cap):
    info = tiny_cap.info
    for layer, head, q in ((0, 0, -1), (info.n_layers - 1, info.n_heads - 1, -1), (1, 1, 4)):
        ov = cb.explain_head_output(
            tiny_cap, layer=layer, head=head, query=q, target=5, baseline=7, softcap="pre"
        )
        dla = cb.direct_logit_attribution(tiny_cap, 5, baseline=7, pos=q, softcap="pre")
        term = dla[f"L{layer}H{head}"]
        assert ov.model_value == pytest.approx(term, abs=1e-6 * max(1.0, abs(term)))
        assert close(ov.total, term, ov.values)
        assert ov.value_error < 1e-5
        qp = ov.query
        if info.causal:
            assert not ov.values[qp + 1 :].any()  # nothing moves from the future
        assert ov.top(1)[0]["label"] == ov.labels[int(np.abs(ov.values).argmax())]


def test_labels_per_architecture(tiny_cap):
    info = tiny_cap.info
    ex = cb.explain_attention(
        tiny_cap, layer=1, head=info.n_heads - 1, query=5, key=2, softcap="pre"
    )
    assert ex.kv_head == (info.n_heads - 1) // (info.n_heads // info.n_kv_heads)
    assert ex.query_labels[0] == "embed"
    assert f"L0H{info.n_heads - 1}" in ex.key_labels and "L0.mlp" in ex.key_labels
    assert "L1H0" not in ex.query_labels  # only what the layer reads
    arch = info.architecture
    assert ("pos_embed" in ex.query_labels) == (arch == "gpt2")
    assert ("ln1.b" in ex.key_labels) == (arch in ("gpt2", "gpt_neox"))
    has_qk_bias = bool(tiny_cap.weights["blocks.1.attn.b_Q"].any())
    assert has_qk_bias == (arch in ("gpt2", "gpt_neox") or "qwen2" in info.model_name)
    assert ("b_Q" in ex.query_labels) == ("b_K" in ex.key_labels) == has_qk_bias
    assert ("bias" in ex.key_labels) == (arch in ("gpt2", "gpt_neox"))  # b_O, b_out
    if arch == "gpt_neox":  # partial rotary: the model's own function rotates a slice only
        assert tiny_cap["hook_rot_cos"].shape[-1] < info.d_head
    assert (info.rotary_fn is None) == (arch == "gpt2")
    top = ex.top(3)
    assert list(top[0]) == ["label", "query", "key", "value"]
    assert abs(top[0]["value"]) >= abs(top[-1]["value"])
    assert "AttentionExplanation(L1H" in repr(ex)


def test_saved_capture_explains_the_same(tmp_path):
    model, tok = tiny_llama()
    cap = cb.capture(model, tok, PROMPT, dtype=torch.float32)
    cap.save(tmp_path / "cap.safetensors")
    back = cb.load_capture(tmp_path / "cap.safetensors")
    assert back.info == cap.info
    a = cb.explain_attention(cap, layer=1, head=3, query=9, key=4)
    b = cb.explain_attention(back, layer=1, head=3, query=9, key=4)
    # weights come back contiguous (the model holds transposed views): float32 sums reorder
    np.testing.assert_allclose(a.matrix, b.matrix, rtol=1e-5, atol=1e-9)


# -- bad input -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_cap():
    model, tok = tiny_llama()
    return cb.capture(model, tok, PROMPT, dtype=torch.float32)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"query": 2, "key": 5}, ValueError, r"key=5 comes after query=2.*key <= query"),
        ({"query": 99, "key": 0}, IndexError, r"query=99 is out of range"),
        ({"query": 3, "key": -99}, IndexError, r"key=-99 is out of range"),
        ({"layer": 7}, IndexError, r"layer=7 is out of range; valid: 0..1"),
        ({"head": 4}, IndexError, r"head=4 is out of range"),
        ({"head": 1.0}, TypeError, r"head must be an int"),
        ({"softcap": "post"}, ValueError, r"softcap must be"),
    ],
)
def test_bad_inputs_say_what_to_do(llama_cap, kwargs, err, match):
    args = {"layer": 1, "head": 0, "query": 5, "key": 2, **kwargs}
    with pytest.raises(err, match=match):
        cb.explain_attention(llama_cap, **args)


@pytest.mark.parametrize(
    ("drop", "match"),
    [
        ("blocks.1.ln1.hook_scale", r"'blocks.1.ln1.hook_scale'.*'norm_scales'"),
        ("hook_rot_cos", r"rotary embedding.*'rotary'"),
        ("blocks.0.attn.hook_z", r"'blocks.0.attn.hook_z', which this capture lacks"),
        ("blocks.0.mlp.hook_post", r"'blocks.0.mlp.hook_post'.*layers=None"),
    ],
)
def test_missing_capture_names_what_to_capture(llama_cap, drop, match):
    tensors = {k: v for k, v in llama_cap.tensors.items() if k != drop}
    cap = dataclasses.replace(llama_cap, tensors=tensors)
    with pytest.raises(KeyError, match=match):
        cb.explain_attention(cap, layer=1, head=0, query=5, key=2)


def test_capture_without_the_new_kinds_is_refused_with_the_fix():
    model, tok = tiny_llama()
    cap = cb.capture(model, tok, PROMPT, what=["embed", "z", "mlp_post", "resid_pre"])
    with pytest.raises(KeyError, match="norm_scales"):
        cb.explain_attention(cap, layer=1, head=0, query=5, key=2)


def test_missing_pattern_for_the_ov_side(llama_cap):
    drop = ("hook_pattern", "hook_q", "hook_k")  # patterns are computed from q and k
    tensors = {k: v for k, v in llama_cap.tensors.items() if not k.endswith(drop)}
    cap = dataclasses.replace(llama_cap, tensors=tensors, patterns=None)
    with pytest.raises(KeyError, match="attn.hook_pattern"):
        cb.explain_head_output(cap, layer=1, head=0, query=-1, target=5)


def test_query_key_norms_are_refused():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=384,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg).eval()
    _, tok = tiny_llama()
    cap = cb.capture(model, tok, "a b c", dtype=torch.float32)
    assert cap.info.qk_norm
    with pytest.raises(ValueError, match="normalizes queries and keys.*no exact split"):
        cb.explain_attention(cap, layer=0, head=0, query=2, key=1)


def test_gemma2_softcap_and_sliding_window():
    model, tok = FACTORIES["gemma2"]()
    cap = cb.capture(model, tok, PROMPT, dtype=torch.float32)
    with pytest.raises(ValueError, match="soft-caps its attention scores.*softcap='pre'"):
        cb.explain_attention(cap, layer=1, head=0, query=5, key=2)
    window = cap.info.attn_windows[0]
    assert window == 4
    with pytest.raises(ValueError, match="sliding window of 4 tokens.*Pick a key in 3..6"):
        cb.explain_attention(cap, layer=0, head=0, query=6, key=1, softcap="pre")


def test_encoder_is_refused_with_the_reason():
    model, tok = tiny_bert()
    cap = cb.capture(model, tok, "a b c", dtype=torch.float32)
    with pytest.raises(ValueError, match="post-LayerNorm"):
        cb.explain_attention(cap, layer=1, head=0, query=2, key=1)
    with pytest.raises(ValueError, match="decoder language models only"):
        cb.explain_head_output(cap, layer=1, head=0, query=2, target=5)
