"""Neuron activations: top_activations against brute force, logit effects, the two views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.analysis import TopActivations, logit_effects, top_activations
from circuitboard.analysis._neurons import mlp_out_proj
from circuitboard.widgets import NeuronDashboard, NeuronsView
from tests.unit.tiny_models import tiny_gpt2, tiny_llama

TEXTS = [
    "When Mary and John went to the store, John gave a drink to Mary.",
    "The quick brown fox jumps over the lazy dog.",
    "a b c",
    "def f(x):\n    return x + 1",
    "1 2 3 4 5 6 7 8 9 10 11 12",
    "Hello world!",
    "the the the and and of of to to in in",
    "jumps",
    "Mary gave John the lazy fox.",
]
NEURONS = [(0, 0), (0, 5), (1, 3), (1, 17), (1, 30)]


def brute_force(model, tok, texts, neurons):
    """Per text, per neuron: every (non-special) token's activation, one text at a time."""
    special = set(tok.all_special_ids)
    out = []
    for t in texts:
        ids = tok(t)["input_ids"]
        got = {}
        hooks = [
            mlp_out_proj(model, layer).register_forward_pre_hook(
                lambda _m, a, layer=layer, got=got: got.__setitem__(layer, a[0][0].detach().clone())
            )
            for layer in sorted({layer for layer, _ in neurons})
        ]
        try:
            with torch.no_grad():
                model(input_ids=torch.tensor([ids]))
        finally:
            for h in hooks:
                h.remove()
        acts = torch.stack([got[layer][:, i] for layer, i in neurons], 1).numpy()  # [pos, n]
        keep = np.array([i not in special for i in ids])
        out.append((np.array(ids), acts, keep))
    return out


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2])
def test_top_activations_equal_brute_force(factory):
    model, tok = factory()
    k = 4
    top = top_activations(model, tok, TEXTS, NEURONS, k=k, batch_size=3, progress=False)
    ref = brute_force(model, tok, TEXTS, NEURONS)
    per_text_max = np.array([acts[keep].max(0) for _, acts, keep in ref])  # [texts, n]
    for j in range(len(NEURONS)):
        want = np.sort(per_text_max[:, j])[::-1][:k]
        np.testing.assert_allclose(top.values[j], want, rtol=1e-4, atol=1e-5)
        for r in range(k):
            t = top.text_index[j, r]
            np.testing.assert_allclose(per_text_max[t, j], top.values[j, r], rtol=1e-4, atol=1e-5)
            ids, acts, _ = ref[t]
            p = top.position[j, r]
            np.testing.assert_allclose(acts[p, j], top.values[j, r], rtol=1e-4, atol=1e-5)
            # the window holds the text's own tokens and activations around the maximum
            ex = top.examples(*NEURONS[j])[r]
            s = max(int(top.window_start[j, r]), 0)
            np.testing.assert_allclose(
                ex["activations"], acts[s : s + len(ex["activations"]), j], atol=1e-5
            )
            assert (
                top.window_ids[j, r][top.window_ids[j, r] >= 0].tolist()
                == ids[s : s + len(ex["tokens"])].tolist()
            )
    # histogram and statistics over every non-special token
    all_acts = np.concatenate([acts[keep] for _, acts, keep in ref])
    assert (top.hist_counts.sum(1) + top.hist_below + top.hist_above == len(all_acts)).all()
    assert (top.count == len(all_acts)).all()
    np.testing.assert_allclose(top.mean, all_acts.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(top.maximum, all_acts.max(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(top.minimum, all_acts.min(0), rtol=1e-5, atol=1e-6)
    assert not top.hist_below.any() and not top.hist_above.any()  # the bins follow the data
    for j in range(len(NEURONS)):  # every value in its lattice cell, exactly
        edges = top.hist_edges[j]
        width = edges[1] - edges[0]
        cells = np.floor(all_acts[:, j].astype(np.float64) / width) - edges[0] / width
        want = np.bincount(cells.astype(np.int64), minlength=len(edges) - 1)
        np.testing.assert_array_equal(want, top.hist_counts[j])


def test_top_activations_k_larger_than_texts_and_layers_shortcut():
    model, tok = tiny_llama()
    top = top_activations(model, tok, TEXTS[:2], layers=[1], k=5, progress=False)
    assert len(top.neurons) == model.config.intermediate_size
    assert (top.text_index[:, 2:] == -1).all() and np.isnan(top.values[:, 2:]).all()
    assert len(top.examples(1, 0)) == 2


@torch.no_grad()
def test_logit_effects_match_manual():
    model, _ = tiny_llama()
    eff = logit_effects(model, [(1, 3)], k=5)
    w_out = model.model.layers[1].mlp.down_proj.weight[:, 3].double()
    full = (w_out * model.model.norm.weight.double()) @ model.lm_head.weight.double().T
    np.testing.assert_allclose(eff["promoted"][0], full.topk(5).values.numpy(), rtol=1e-5)
    assert eff["promoted_ids"][0].tolist() == full.topk(5).indices.tolist()
    np.testing.assert_allclose(
        eff["suppressed"][0], (-full).topk(5).values.neg().numpy(), rtol=1e-5
    )

    model, _ = tiny_gpt2()  # Conv1D weights and a centring LayerNorm
    eff = logit_effects(model, [(0, 2)], k=3)
    w = model.transformer.h[0].mlp.c_proj.weight[2].double()
    w = (w - w.mean()) * model.transformer.ln_f.weight.double()
    full = w @ model.lm_head.weight.double().T
    np.testing.assert_allclose(eff["promoted"][0], full.topk(3).values.numpy(), rtol=1e-5)


def test_top_activations_bad_inputs():
    model, tok = tiny_llama()
    with pytest.raises(TypeError, match="single string"):
        top_activations(model, tok, "one text", [(0, 1)])
    with pytest.raises(ValueError, match="neurons=.*layers="):
        top_activations(model, tok, TEXTS)
    with pytest.raises(IndexError, match="layer out of range"):
        top_activations(model, tok, TEXTS, [(9, 1)])
    with pytest.raises(IndexError, match="has 48 neurons"):
        top_activations(model, tok, TEXTS, [(0, 64)])
    with pytest.raises(TypeError, match="pairs"):
        top_activations(model, tok, TEXTS, [3])
    with pytest.raises(ValueError, match="k must be"):
        top_activations(model, tok, TEXTS, [(0, 1)], k=0)


def test_save_load_round_trip(tmp_path):
    model, tok = tiny_llama()
    top = top_activations(model, tok, TEXTS, NEURONS, k=3, progress=False)
    top.save(tmp_path / "top.npz")
    back = TopActivations.load(tmp_path / "top.npz")
    assert back.neurons == top.neurons and back.texts == top.texts and back.vocab == top.vocab
    np.testing.assert_array_equal(back.window_acts, top.window_acts)
    assert back.examples(1, 3) == top.examples(1, 3)
    with pytest.raises(IndexError, match="was not recorded"):
        top.index(1, 4)


def test_load_texts():
    texts = cb.load_texts()
    assert len(texts) >= 200 and len(set(texts)) == len(texts)
    assert all(t.strip() == t and t for t in texts)
    assert len(cb.load_texts("code")) >= 20 and len(cb.load_texts(["list"], n=5)) == 5
    with pytest.raises(ValueError, match="unknown text kind"):
        cb.load_texts("poetry")


# -- NeuronsView -------------------------------------------------------------------------------
def acts_and_tokens(n_prompts=2, layers=3, d=32, seed=0):
    rng = np.random.default_rng(seed)
    acts = [rng.normal(size=(layers, 5 + p, d)).astype(np.float32) for p in range(n_prompts)]
    toks = [[f"p{p}t{i}" for i in range(5 + p)] for p in range(n_prompts)]
    return acts, toks


def test_neurons_view_fetches():
    acts, toks = acts_and_tokens()
    view = NeuronsView(acts, toks, layers=[4, 5, 6], layer=5, neuron=7, n_top=4)
    assert view.link.layer == 5 and view.link.neuron == 7
    fields, buffers = view.answer({"kind": "fetch-neuron", "prompt": 1, "layer": 6, "neuron": 3})
    col = np.frombuffer(buffers[0], "<f4")
    np.testing.assert_array_equal(col, acts[1][2, :, 3])
    assert fields["vmax"] == pytest.approx(max(np.abs(a[2, :, 3]).max() for a in acts))
    fields, _ = view.answer({"kind": "fetch-top-neurons", "prompt": 0, "layer": 4, "token": 2})
    want = np.argsort(-acts[0][0, 2])[:4]
    assert fields["neurons"] == want.tolist()
    np.testing.assert_allclose(fields["values"], acts[0][0, 2, want], atol=1e-5)
    with pytest.raises(IndexError, match="was not captured"):
        view.column(3, 0)
    with pytest.raises(IndexError, match="prompt=2 is out of range"):
        view.column(4, 0, prompt=2)


def test_neurons_view_default_neuron_and_export_budget():
    acts, toks = acts_and_tokens(n_prompts=1)
    acts[0][1, 3, 11] = 50.0
    view = NeuronsView(acts[0], toks[0])
    assert (view.link.layer, view.link.neuron) == (1, 11)  # middle layer, strongest neuron
    reqs = view.export_requests(10**9)
    kinds = {r["kind"] for r in reqs}
    # Everything fits: every layer whole (8-bit codes), the selected neuron exactly.
    assert kinds == {"fetch-neuron", "fetch-neuron-layer", "fetch-strongest"}
    assert {"kind": "fetch-neuron", "prompt": 0, "layer": 1, "neuron": 11} in reqs
    assert {r["layer"] for r in reqs if r["kind"] == "fetch-neuron-layer"} == {0, 1, 2}
    assert view.export_notes(10**9)[0].startswith("Neurons: every neuron of 3 of 3")
    # Nothing fits: the selected neuron and the layers' strongest neurons are still kept,
    # and the notes name the layers left out.
    small = view.export_requests(1)
    assert {r["kind"] for r in small} == {"fetch-neuron", "fetch-strongest"}
    assert "L0–L2 did not fit the size budget" in " ".join(view.export_notes(1))
    for r in reqs[:5]:
        view.answer(r)


def test_neuron_layer_block_is_within_its_stated_error():
    acts, toks = acts_and_tokens(n_prompts=2)
    acts[1][2, 1, 5] = np.nan
    view = NeuronsView(acts, toks, layers=[4, 5, 6])
    fields, buffers = view.answer({"kind": "fetch-neuron-layer", "prompt": 1, "layer": 6})
    d, n = fields["codes"]["shape"]
    codes = np.frombuffer(buffers[fields["codes"]["data"]], np.uint8).reshape(d, n)
    lo = np.frombuffer(buffers[fields["lo"]["data"]], "<f4")
    scale = np.frombuffer(buffers[fields["scale"]["data"]], "<f4")
    got = np.where(codes == 255, np.nan, lo[:, None] + codes * scale[:, None]).T
    want = acts[1][2]
    assert np.isnan(got[1, 5])
    finite = np.isfinite(want)
    peak = np.nanmax(np.abs(want), 0)  # per neuron
    err = np.where(finite, np.abs(got - want), 0).max(0)
    assert (err <= peak / 254 * 1.001 + 1e-7).all()
    assert (got[want == 0] == 0).all()  # zero stays exactly zero
    vmax = np.frombuffer(buffers[fields["vmax"]["data"]], "<f4")
    assert vmax[0] == pytest.approx(view.vmax(6, 0))
    fields, _ = view.answer({"kind": "fetch-strongest", "prompt": 0, "layer": 5})
    assert fields["neuron"] == view.default_neuron(5, 0)


def test_neurons_view_bad_inputs():
    acts, toks = acts_and_tokens()
    with pytest.raises(ValueError, match="expected \\[layers, pos, d_mlp\\]"):
        NeuronsView(np.zeros((1, 2, 3, 4)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="2 token lists"):
        NeuronsView(acts, toks[0])
    with pytest.raises(ValueError, match="got 4 tokens"):
        NeuronsView(acts[0], ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="same layers and d_mlp"):
        NeuronsView([acts[0], acts[1][:, :, :8]], toks)
    with pytest.raises(IndexError, match="neuron=40 is out of range"):
        NeuronsView(acts[0], toks[0], neuron=40)
    with pytest.raises(TypeError, match="numeric"):
        NeuronsView([["x"]], [["a"]])


def test_cb_neurons_from_captures():
    model, tok = tiny_llama()
    caps = cb.capture(model, tok, ["When Mary and John", "the lazy dog jumps"], what=["mlp_post"])
    view = cb.neurons(caps, layer=-1, neuron=2)
    assert view.n_prompts == 2 and view.link.layer == 1 and view.link.neuron == 2
    np.testing.assert_allclose(
        view.column(1, 2, prompt=1), caps[1]["blocks.1.mlp.hook_post"][:, 2].float().numpy()
    )
    with pytest.raises(ValueError, match="no neuron activations"):
        cb.neurons(cb.capture(model, tok, "a b", what=["pattern"]))


# -- NeuronDashboard ---------------------------------------------------------------------------
def test_dashboard_cards_and_export():
    model, tok = tiny_llama()
    top = top_activations(model, tok, TEXTS, NEURONS, k=3, progress=False)
    dash = cb.neuron_dashboard(top, neuron=(1, 3))
    assert (dash.link.layer, dash.link.neuron) == (1, 3)
    card = dash.card(1, 3)
    assert [e["value"] for e in card["examples"]] == top.values[2].tolist()
    assert card["promoted"][0][1] >= card["promoted"][-1][1]
    fields, buffers = dash.answer({"kind": "fetch-neuron-card", "layer": 0, "neuron": 5})
    acts = np.frombuffer(buffers[0], "<f4").reshape(fields["acts"]["shape"])
    ex0 = top.examples(0, 5)[0]
    np.testing.assert_allclose(acts[0, : len(ex0["activations"])], ex0["activations"])
    reqs = dash.export_requests(10**9)
    assert reqs[0] == {"kind": "fetch-neuron-card", "layer": 1, "neuron": 3} and len(reqs) == 5
    assert len(dash.export_requests(1)) == 1 and "1 of 5" in dash.export_notes(1)[0]
    # a model + texts run top_activations itself
    dash2 = cb.neuron_dashboard(model, tok, TEXTS[:3], neurons=[(0, 1)], k=2, progress=False)
    assert dash2.neurons == [[0, 1]]
    with pytest.raises(IndexError, match="was not recorded"):
        NeuronDashboard(top, neuron=(1, 4))
    with pytest.raises(TypeError, match="top_activations"):
        NeuronDashboard(object())
    with pytest.raises(TypeError, match="tokenizer and texts"):
        cb.neuron_dashboard(model)
