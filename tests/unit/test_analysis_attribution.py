"""Exactness of direct logit attribution and the logit lens on every tiny architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuitboard.analysis import direct_logit_attribution, logit_lens
from tests.unit.analysis_helpers import capture_for_analysis
from tests.unit.tiny_models import CAUSAL, FACTORIES

PROMPT = "When Mary and John went to the store, John gave a drink to"
RTOL = 1e-4


@pytest.fixture(scope="module", params=CAUSAL)
def tiny_cap(request):
    model, tok = FACTORIES[request.param]()
    return capture_for_analysis(model, tok, PROMPT)


def close(total: float, model_value: float, values: torch.Tensor) -> bool:
    # Relative to the logit (difference) itself, or to the largest term when it is ~0.
    scale = max(abs(model_value), float(values.abs().max()), 1e-6)
    return abs(total - model_value) <= RTOL * scale


def is_gemma2(cap) -> bool:
    return cap.info.architecture == "gemma2"


@pytest.mark.parametrize("pos", [-1, 0, 3])
@pytest.mark.parametrize("baseline", [None, 7])
def test_contributions_sum_to_model_logit(tiny_cap, pos, baseline):
    if is_gemma2(tiny_cap):
        pytest.skip("Gemma 2 soft-caps its logits; covered by test_softcap_is_refused")
    attr = direct_logit_attribution(tiny_cap, 5, baseline=baseline, pos=pos)
    row = tiny_cap.logits[pos].double()
    expected = float(row[5] - (row[7] if baseline is not None else 0.0))
    assert attr.model_value == pytest.approx(expected, abs=1e-6)
    assert close(float(attr.values.double().sum()), attr.model_value, attr.values)
    assert close(attr.total, expected, attr.values)
    assert attr.residual_error < 1e-5


def test_labels_and_neurons_are_consistent(tiny_cap):
    if is_gemma2(tiny_cap):
        pytest.skip("soft-capped")
    info = tiny_cap.info
    attr = direct_logit_attribution(tiny_cap, 5, baseline=9)
    assert attr.labels[0] == "embed" and attr.labels[-1] == "bias"
    assert ("pos_embed" in attr.labels) == ("hook_pos_embed" in tiny_cap.tensors)
    assert len(attr.labels) == len(set(attr.labels)) == attr.values.shape[0]
    assert attr.heads.shape == (info.n_layers, info.n_heads)
    for layer in range(info.n_layers):
        neurons = attr.neurons(layer)
        assert neurons.shape == (info.d_mlp,)
        assert float(neurons.double().sum()) == pytest.approx(attr[f"L{layer}.mlp"], abs=1e-5)
        assert float(attr.heads[layer].sum()) == pytest.approx(
            float(attr.mlp.new_tensor([attr[f"L{layer}H{h}"] for h in range(info.n_heads)]).sum()),
            abs=1e-6,
        )
    # Neurons are not in `values` (no double counting): only layer totals are.
    assert not any(lab.startswith("L0N") for lab in attr.labels)
    top = attr.top_neurons(3)
    assert len(top) == 3 and abs(top[0][2]) >= abs(top[-1][2])


def test_lens_last_layer_equals_model_logits(tiny_cap):
    info = tiny_cap.info
    lens = logit_lens(tiny_cap, k=3)
    last = lens.logits(info.n_layers - 1)
    torch.testing.assert_close(last, tiny_cap.logits.float(), rtol=1e-4, atol=1e-5)
    assert lens.top_ids.shape == (info.n_layers, tiny_cap.n_tokens, 3)
    assert torch.equal(lens.top_ids[-1], tiny_cap.logits.topk(3, dim=-1).indices)
    probs = torch.softmax(tiny_cap.logits.float(), -1)
    nxt = torch.as_tensor(tiny_cap.token_ids)[1:]
    expected = probs[:-1].gather(-1, nxt[:, None])[:, 0]
    torch.testing.assert_close(lens.target_probs[-1, :-1], expected, rtol=1e-4, atol=1e-6)
    assert torch.isnan(lens.target_probs[:, -1]).all() and (lens.target_ranks[:, -1] == -1).all()
    assert (lens.top_probs[..., :-1] >= lens.top_probs[..., 1:]).all()


@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma"])
def test_lens_every_layer_matches_the_models_own_norm(name):
    # Each layer read through the model's final norm module and head, as a reference.
    model, tok = FACTORIES[name]()
    cap = capture_for_analysis(model, tok, PROMPT)
    base = getattr(model, "model", None) or getattr(model, "transformer", None)
    norm = getattr(base, "norm", None) or getattr(base, "ln_f", None)
    head = model.get_output_embeddings()
    lens = logit_lens(cap)
    with torch.no_grad():
        for layer in range(cap.info.n_layers):
            resid = cap.tensors[f"blocks.{layer}.hook_resid_post"]
            ref = head(norm(resid[None]))[0]
            torch.testing.assert_close(lens.logits(layer), ref, rtol=1e-4, atol=1e-4)


def test_lens_target_and_layers(tiny_cap):
    lens = logit_lens(tiny_cap, target=5, layers=[0])
    assert lens.layers == [0] and (lens.target_ids == 5).all()
    assert not torch.isnan(lens.target_probs).any()
    with pytest.raises(IndexError, match="out of range"):
        logit_lens(tiny_cap, layers=[99])
    with pytest.raises(ValueError, match="positive int"):
        logit_lens(tiny_cap, k=0)


@pytest.fixture(scope="module")
def gemma2_cap():
    model, tok = FACTORIES["gemma2"]()
    return capture_for_analysis(model, tok, PROMPT)


def test_softcap_is_refused(gemma2_cap):
    with pytest.raises(ValueError, match="soft-caps its logits"):
        direct_logit_attribution(gemma2_cap, 5)
    with pytest.raises(ValueError, match="softcap must be"):
        direct_logit_attribution(gemma2_cap, 5, softcap="post")


def test_gemma2_pre_cap_is_exact_or_refused(gemma2_cap):
    # Gemma 2 normalizes head / MLP outputs before adding them: exact only when the capture
    # records those norms' scales (blocks.{l}.ln1_post.hook_scale); else a clear refusal.
    if "blocks.0.ln1_post.hook_scale" not in gemma2_cap.tensors:
        with pytest.raises(ValueError, match="do not add up to the final residual"):
            direct_logit_attribution(gemma2_cap, 5, softcap="pre")
        return
    attr = direct_logit_attribution(gemma2_cap, 5, baseline=7, softcap="pre")
    assert close(attr.total, attr.model_value, attr.values)


def test_gemma2_sandwich_norms_fold_exactly():
    # With the post-attention / post-MLP norms' scales recorded (TransformerLens names
    # blocks.{l}.ln1_post / ln2_post), Gemma 2's pre-cap logit splits exactly.
    from dataclasses import replace

    model, tok = FACTORIES["gemma2"]()
    cap = capture_for_analysis(model, tok, PROMPT)
    tensors, weights, handles = dict(cap.tensors), dict(cap.weights), []

    def record(name, module):
        def hook(_m, args, _out):
            x = args[0][0].double()
            tensors[f"{name}.hook_scale"] = torch.rsqrt((x * x).mean(-1, keepdim=True) + module.eps)

        weights[f"{name}.w"] = module.weight.detach().float()
        handles.append(module.register_forward_hook(hook))

    for i, layer in enumerate(model.model.layers):
        record(f"blocks.{i}.ln1_post", layer.post_attention_layernorm)
        record(f"blocks.{i}.ln2_post", layer.post_feedforward_layernorm)
    try:
        with torch.no_grad():
            model(input_ids=torch.as_tensor(cap.token_ids)[None])
    finally:
        for h in handles:
            h.remove()
    cap2 = replace(cap, tensors=tensors, weights=weights)
    attr = direct_logit_attribution(cap2, 5, baseline=7, softcap="pre")
    c = cap.info.final_logit_softcap
    pre = c * torch.atanh(cap.logits[-1].double() / c)
    assert attr.model_value == pytest.approx(float(pre[5] - pre[7]), abs=1e-4)
    assert close(attr.total, attr.model_value, attr.values)
    assert attr.residual_error < 1e-5


@pytest.fixture(scope="module")
def llama_cap():
    model, tok = FACTORIES["llama"]()
    return capture_for_analysis(model, tok, PROMPT)


def test_string_targets(llama_cap):
    tok = llama_cap.tokenizer
    words = (" Mary", " John", " the", "the", "a")
    word = next(w for w in words if len(tok.encode(w, add_special_tokens=False)) == 1)
    tid = tok.encode(word, add_special_tokens=False)[0]
    a = direct_logit_attribution(llama_cap, word)
    b = direct_logit_attribution(llama_cap, tid)
    assert a.target == tid and torch.equal(a.values, b.values)
    assert a.target_text == word and repr(word) in a.description
    assert direct_logit_attribution(llama_cap, torch.tensor(tid)).target == tid


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"target": "zzqxv Mary went"}, ValueError, "expected exactly one"),
        ({"target": 10**9}, IndexError, "not a token id"),
        ({"target": 1.5}, TypeError, "token string or an int"),
        ({"target": True}, TypeError, "bool"),
        ({"target": 5, "pos": 999}, IndexError, "out of range"),
        ({"target": 5, "pos": "last"}, TypeError, "int position"),
    ],
)
def test_bad_inputs_say_what_to_do(llama_cap, kwargs, err, match):
    with pytest.raises(err, match=match):
        direct_logit_attribution(llama_cap, **kwargs)


def test_missing_pieces_are_explained(llama_cap):
    from dataclasses import replace

    no_tok = replace(llama_cap, tokenizer=None)
    with pytest.raises(ValueError, match="no tokenizer"):
        direct_logit_attribution(no_tok, " Mary")
    with pytest.raises(ValueError, match="cap.info"):
        direct_logit_attribution(replace(llama_cap, info=None), 5)
    weights = {k: v for k, v in llama_cap.weights.items() if k != "unembed.W_U"}
    with pytest.raises(KeyError, match="unembed.W_U"):
        direct_logit_attribution(replace(llama_cap, weights=weights), 5)
    tensors = {k: v for k, v in llama_cap.tensors.items() if k != "blocks.1.attn.hook_z"}
    with pytest.raises(KeyError, match="hook_z"):
        direct_logit_attribution(replace(llama_cap, tensors=tensors), 5)


def test_scale_as_divisor_is_accepted(llama_cap):
    # TransformerLens stores ln_final.hook_scale as the divisor; the result must not change.
    from dataclasses import replace

    tensors = dict(llama_cap.tensors)
    tensors["ln_final.hook_scale"] = 1.0 / tensors["ln_final.hook_scale"]
    a = direct_logit_attribution(llama_cap, 5, baseline=7)
    b = direct_logit_attribution(replace(llama_cap, tensors=tensors), 5, baseline=7)
    np.testing.assert_allclose(a.values.numpy(), b.values.numpy(), rtol=1e-5, atol=1e-7)
