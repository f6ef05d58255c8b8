"""Mixture-of-experts capture and attribution (Mixtral, Qwen2-MoE with its shared expert)."""

from __future__ import annotations

import pytest
import torch

import circuitboard as cb
from circuitboard.analysis import direct_logit_attribution

from .tiny_models import ARCH_FACTORIES

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module", params=["mixtral", "qwen2_moe"])
def moe(request: pytest.FixtureRequest):
    model, tok = ARCH_FACTORIES[request.param]()
    cap = cb.capture(model, tok, PROMPT, dtype=torch.float32)
    return request.param, model, tok, cap


def test_moe_info_and_names(moe):
    name, model, tok, cap = moe
    info = cap.info
    assert info.n_experts == 4 and info.n_experts_per_tok == 2
    assert info.d_shared_expert == (24 if name == "qwen2_moe" else 0)
    p = "blocks.0.mlp."
    assert cap[p + "hook_router_logits"].shape == (cap.n_tokens, 4)
    assert cap[p + "hook_expert_indices"].shape == (cap.n_tokens, 2)
    assert cap[p + "hook_expert_indices"].dtype == torch.long
    assert cap[p + "hook_expert_weights"].shape == (cap.n_tokens, 4)
    assert cap[p + "experts.3.hook_post"].shape == (cap.n_tokens, info.d_mlp)
    assert "blocks.0.mlp.hook_post" not in cap  # no single down projection


def test_router_choice_is_the_top_k_of_its_logits(moe):
    name, model, tok, cap = moe
    for layer in range(cap.info.n_layers):
        p = f"blocks.{layer}.mlp."
        top = cap[p + "hook_router_logits"].topk(2, dim=-1).indices
        assert torch.equal(top.sort(-1).values, cap[p + "hook_expert_indices"].sort(-1).values)
        probs = cap[p + "hook_router_logits"].softmax(-1)
        chosen = cap[p + "hook_expert_weights"]
        assert bool(((chosen > 0).sum(-1) == 2).all())
        if name == "mixtral":  # Mixtral renormalizes the top-k probabilities
            mask = chosen > 0
            ref = probs * mask / (probs * mask).sum(-1, keepdim=True)
            torch.testing.assert_close(chosen, ref, atol=1e-6, rtol=1e-5)


def test_a_token_routed_to_e1_e2_has_activations_only_there(moe):
    name, model, tok, cap = moe
    for layer in range(cap.info.n_layers):
        p = f"blocks.{layer}.mlp."
        idx = cap[p + "hook_expert_indices"]
        active = torch.stack(
            [cap[p + f"experts.{e}.hook_post"].abs().sum(-1) > 0 for e in range(4)], dim=1
        )  # [pos, experts]
        routed = torch.zeros_like(active).scatter_(1, idx, True)
        assert torch.equal(active, routed), layer
        # e.g. the last token: exactly its two experts fire
        e1, e2 = idx[-1].tolist()
        assert set(active[-1].nonzero()[:, 0].tolist()) == {e1, e2}


def test_expert_neurons_are_the_models_own(moe):
    # Expert e's neurons at a routed token equal running that expert's MLP by hand.
    name, model, tok, cap = moe
    experts = model.model.layers[1].mlp.experts
    x = cap["blocks.1.hook_resid_mid"]
    with torch.no_grad():
        h = model.model.layers[1].post_attention_layernorm(x)
        for e in range(4):
            rows = (cap["blocks.1.mlp.hook_expert_indices"] == e).any(-1)
            gate, up = torch.nn.functional.linear(h[rows], experts.gate_up_proj[e]).chunk(2, -1)
            ref = experts.act_fn(gate) * up
            torch.testing.assert_close(cap[f"blocks.1.mlp.experts.{e}.hook_post"][rows], ref)


@pytest.mark.parametrize("pos", [-1, 2])
def test_per_expert_dla_sums_to_the_mlp_term(moe, pos):
    name, model, tok, cap = moe
    attr = direct_logit_attribution(cap, 5, baseline=7, pos=pos)
    row = cap.logits[pos].double()
    expected = float(row[5] - row[7])
    scale = max(abs(expected), float(attr.values.abs().max()))
    assert abs(attr.total - expected) <= 1e-5 * scale
    n_slots = 4 + (1 if name == "qwen2_moe" else 0)
    for layer in range(cap.info.n_layers):
        per_expert = attr.experts(layer)
        assert per_expert.shape == (n_slots,)
        assert float(per_expert.double().sum()) == pytest.approx(attr[f"L{layer}.mlp"], abs=1e-6)
        neurons = attr.neurons(layer)
        d = cap.info.d_mlp
        assert neurons.shape == (4 * d + cap.info.d_shared_expert,)
        for e in range(4):
            assert float(neurons[e * d : (e + 1) * d].double().sum()) == pytest.approx(
                float(per_expert[e]), abs=1e-6
            )
        # experts not chosen at this position contribute exactly nothing
        chosen = set(cap[f"blocks.{layer}.mlp.hook_expert_indices"][pos].tolist())
        for e in set(range(4)) - chosen:
            assert float(per_expert[e]) == 0.0


def test_experts_of_a_dense_model_are_explained():
    model, tok = ARCH_FACTORIES["phi3"]()
    attr = direct_logit_attribution(cb.capture(model, tok, "a b", dtype=torch.float32), 5)
    with pytest.raises(KeyError, match="mixture-of-experts"):
        attr.experts(0)


def test_neurons_view_pages_by_expert(moe):
    name, model, tok, cap = moe
    view = cb.neurons(cap)
    assert len(view.labels) == 4 and view.labels[0].startswith("expert 0")
    assert view.d_mlp == cap.info.d_mlp
    one = cb.neurons(cap, expert=2, layer=-1)
    assert one.labels == [view.labels[2]]
    col = one.column(1, 0)
    ref = cap["blocks.1.mlp.experts.2.hook_post"][:, 0].numpy()
    assert col.shape == ref.shape and (abs(col - ref) <= 1e-2 * (abs(ref).max() + 1e-6)).all()
    with pytest.raises(ValueError, match="out of range: the model has 4 experts"):
        cb.neurons(cap, expert=9)


def test_dense_capture_refuses_expert_paging():
    model, tok = ARCH_FACTORIES["phi3"]()
    cap = cb.capture(model, tok, "a b")
    with pytest.raises(ValueError, match="expert=1 is for mixture-of-experts captures"):
        cb.neurons(cap, expert=1)


def test_memory_estimate_counts_every_expert(moe):
    from circuitboard.capture import _memory

    name, model, tok, cap = moe
    est = _memory.estimate(cap.info, [10], 2, ("mlp_post",), torch.float32)
    info = cap.info
    assert est["mlp_post"] >= 10 * 2 * (4 * info.d_mlp + info.d_shared_expert) * 4


def test_batched_moe_capture_equals_one_at_a_time(moe):
    # right-padded rows: routing, weights and expert neurons are cut to each prompt's tokens
    name, model, tok, cap = moe
    prompts = [PROMPT, "the store", "Héllo wörld 日本語 🙂"]
    caps = cb.capture(model, tok, prompts, batch_size=3, dtype=torch.float32)
    for p, c in zip(prompts, caps, strict=True):
        one = cb.capture(model, tok, p, dtype=torch.float32)
        assert c.names() == one.names()
        for k in c:
            torch.testing.assert_close(c[k], one[k], atol=1e-5, rtol=1e-4, msg=k)
