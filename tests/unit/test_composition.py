"""cb.composition_scores: planted composition found first, symmetries, TransformerLens agreement."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.testing._models import _build
from tests.unit.tiny_models import tiny_llama, tiny_smollm, tiny_tokenizer


def mha_llama(layers: int = 3):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=384,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return _build(cfg, LlamaForCausalLM, 0)


def test_planted_k_composition_comes_first():
    """Layer 1's KV head 0 reads keys with exactly the subspace head L0H1 writes into."""
    model, _ = tiny_llama()
    dh = model.config.head_dim
    with torch.no_grad():
        o = model.model.layers[0].self_attn.o_proj.weight  # [d_model, H * dh]
        k = model.model.layers[1].self_attn.k_proj.weight  # [KV * dh, d_model]
        k[:dh] = o[:, dh : 2 * dh].T  # W_K^B = (W_O^A)ᵀ
    res = cb.composition_scores(model)
    best = res.top(1, kind="K")[0]
    assert best["writer"] == (0, 1)
    assert best["reader"] in {(1, 0), (1, 1)}  # the query heads KV head 0 serves
    assert best["value"] > res.baseline["K"] + 5 * res.baseline_std["K"]
    # the plant lives in K: Q-composition of the same pair stays near chance
    assert res.values["Q"][0, 1, 1, 0] < best["value"] / 2


def test_swapping_queries_and_keys_swaps_q_and_k_composition():
    model = mha_llama()
    before = cb.composition_scores(model, baseline_samples=2)
    with torch.no_grad():
        for layer in model.model.layers:
            q, k = layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight
            tmp = q.clone()
            q.copy_(k)
            k.copy_(tmp)
    after = cb.composition_scores(model, baseline_samples=2)
    np.testing.assert_allclose(after.values["Q"], before.values["K"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(after.values["K"], before.values["Q"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(after.values["V"], before.values["V"], rtol=1e-12, atol=1e-14)


def test_scores_are_scale_free_and_zero_on_invalid_pairs():
    model = mha_llama()
    before = cb.composition_scores(model, baseline_samples=2)
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.mul_(7.0)
        model.model.layers[2].self_attn.q_proj.weight.mul_(0.1)
    after = cb.composition_scores(model, baseline_samples=2)
    for k in "QKV":
        np.testing.assert_allclose(after.values[k], before.values[k], rtol=1e-6)  # float32 weights
        assert (after.values[k][~after.valid] == 0).all()
        assert (after.values[k][after.valid] > 0).all()


def test_norm_weights_fold_into_the_readers():
    model = mha_llama()
    raw = cb.composition_scores(model, fold_norms=False, baseline_samples=2)
    with torch.no_grad():
        w = model.model.layers[1].input_layernorm.weight
        w.copy_(torch.linspace(0.2, 3.0, w.numel()))
    folded = cb.composition_scores(model, baseline_samples=2)
    unfolded = cb.composition_scores(model, fold_norms=False, baseline_samples=2)
    np.testing.assert_array_equal(unfolded.values["K"], raw.values["K"])
    assert np.abs(folded.values["K"][0, :, 1] - raw.values["K"][0, :, 1]).max() > 1e-3
    # layer 2 reads through its own (all-ones) norm: unchanged by layer 1's weight
    np.testing.assert_allclose(folded.values["K"][0, :, 2], raw.values["K"][0, :, 2], rtol=1e-12)


def test_random_baseline_matches_random_heads():
    """A model with Gaussian weights scores at its own baseline."""
    model = mha_llama(layers=6)
    with torch.no_grad():
        for layer in model.model.layers:
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                lin.weight.normal_()
            layer.self_attn.o_proj.weight.normal_()
    res = cb.composition_scores(model, baseline_samples=64)
    for k in "QKV":
        mean = res.values[k][res.valid].mean()
        assert abs(mean - res.baseline[k]) < 3 * res.baseline_std[k] / np.sqrt(60), k


def test_save_load_round_trip(tmp_path):
    res = cb.composition_scores(tiny_llama()[0], baseline_samples=2)
    back = cb.load_composition_scores(res.save(tmp_path / "c.npz"))
    for k in "QKV":
        np.testing.assert_array_equal(back.values[k], res.values[k])
    assert back.baseline == res.baseline and back.n_kv_heads == 2
    assert "random baseline" in repr(back) and "(2 KV)" in repr(back)


def test_from_capture_equals_from_model():
    model, tok = tiny_llama()
    cap = cb.capture(model, tok, "When Mary and John went", dtype=torch.float32)
    a = cb.composition_scores(cap, baseline_samples=2)
    b = cb.composition_scores(model, baseline_samples=2)
    for k in "QKV":
        np.testing.assert_allclose(a.values[k], b.values[k], rtol=1e-12)


def test_bad_inputs():
    with pytest.raises(ValueError, match="baseline_samples must be at least 1"):
        cb.composition_scores(tiny_llama()[0], baseline_samples=0)
    res = cb.composition_scores(tiny_llama()[0], baseline_samples=1)
    with pytest.raises(ValueError, match="kind must be one of 'Q', 'K', 'V'"):
        res.matrix("O")
    with pytest.raises(ValueError, match="Hugging Face transformers model"):
        cb.composition_scores(object())


def test_agrees_with_transformer_lens(tmp_path):
    pytest.importorskip("transformer_lens")
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    model, _ = tiny_smollm()  # grouped-query: 6 heads, 2 KV heads
    tiny_tokenizer("plain").save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        br = TransformerBridge.boot_transformers("tiny-smollm", hf_model=model, tokenizer=tok)
    ours = cb.composition_scores(tiny_smollm()[0], fold_norms=False, baseline_samples=2)
    for k in "QKV":
        theirs = br.all_composition_scores(k).scores.detach().double().numpy()
        assert np.abs(theirs - ours.values[k]).max() < 1e-6, k
