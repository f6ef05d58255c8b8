"""On the default model, the dashboard shows the true top activations (recomputed directly)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb

pytestmark = pytest.mark.real


def direct_maxima(model, tok, texts, layer, neurons):
    """Each text alone, no batching or padding: ``[texts, neurons]`` max activation and argmax."""
    proj = model.model.layers[layer].mlp.down_proj
    got = {}

    class Stop(Exception):
        pass

    def hook(_m, a):
        got["x"] = a[0][0].clone()
        raise Stop  # later layers are not needed

    handle = proj.register_forward_pre_hook(hook)
    vals, pos = [], []
    try:
        with torch.no_grad():
            for t in texts:
                try:
                    model(input_ids=torch.tensor([tok(t)["input_ids"]]))
                except Stop:
                    pass
                a = got["x"][:, neurons].float()
                v, p = a.max(0)
                vals.append(v.numpy())
                pos.append(p.numpy())
    finally:
        handle.remove()
    return np.array(vals), np.array(pos)


def test_dashboard_top_examples_are_the_true_top_activations(default_model):
    model, tok = default_model
    texts = cb.load_texts()[:30]
    layer, neurons = 15, [1517, 1174, 7, 900]
    top = cb.top_activations(
        model, tok, texts, [(layer, n) for n in neurons], k=6, batch_size=8, progress=False
    )
    dash = cb.neuron_dashboard(top)
    vals, pos = direct_maxima(model, tok, texts, layer, neurons)
    for j, n in enumerate(neurons):
        card = dash.card(layer, n)
        shown = card["examples"]
        want = np.argsort(-vals[:, j], kind="stable")[:6]
        assert len(shown) == 6
        np.testing.assert_allclose([e["value"] for e in shown], vals[want, j], rtol=2e-3, atol=2e-3)
        for e in shown:  # every shown text is a true top text, its maximum at the right token
            t = e["text_index"]
            assert vals[t, j] >= vals[want[-1], j] - 2e-3
            assert e["position"] == pos[t, j] or abs(e["value"] - vals[t, j]) < 2e-3
            assert max(e["activations"]) == pytest.approx(e["value"], abs=1e-5)
            assert "".join(e["tokens"]) in texts[t]
        # the highlighted token is the maximum of the context shown
        assert all(e["activations"][e["max_at"]] == max(e["activations"]) for e in shown)
    # histogram covers every token once
    n_tokens = sum(len(tok(t)["input_ids"]) for t in texts)
    assert (top.hist_counts.sum(1) + top.hist_below + top.hist_above == n_tokens).all()


def test_giving_neuron_fires_on_gave(ioi_capture):
    """L15 N1517 of SmolLM2-135M fires most on " gave" in the IOI prompt (a worked example)."""
    view = cb.neurons(ioi_capture, layer=15, neuron=1517)
    col = view.column(15, 1517)
    assert ioi_capture.tokens[int(np.argmax(col))] == " gave"
