"""Issue 14 (the first hour), the parts that need no browser: linking rule, board.observe,
reports keeping what other views point to, list-of-captures errors, histogram range, CLI."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

import circuitboard as cb
from circuitboard.widgets._link import complete_selection

from .tiny_models import tiny_llama

TOKENS = ["When", " Mary", " and", " John", " went", " to"]


def test_a_layer_belongs_to_its_head_or_neuron():
    link = cb.Link()
    link.select(layer=26, neuron=1262)
    assert (link.layer, link.head, link.neuron) == (26, None, 1262)
    link.select(layer=22, head=4)  # a head click: the neuron is no longer chosen
    assert (link.layer, link.head, link.neuron) == (22, 4, None)
    link.select(layer=5)  # a layer alone (an MLP bar, a lens row)
    assert (link.head, link.neuron) == (None, None)
    link.select(token=3)  # tokens do not touch heads or neurons
    assert link.layer == 5 and link.token == 3
    assert complete_selection({"head": 2}) == {"head": 2, "neuron": None}


def test_board_observe_selection_fires():
    att = np.full((2, 2, 3, 3), 1 / 3)
    board = cb.board(cb.AttentionView(att, list("abc")), cb.AttentionView(att, list("abc")))
    seen: list[dict] = []
    board.observe(lambda ch: seen.append(dict(ch["new"])), names="selection")
    board.selection = {"layer": 1, "head": 1}
    assert seen and seen[-1]["layer"] == 1 and seen[-1]["head"] == 1
    board.views[1].link.token = 2  # as a click in the browser sets it
    assert seen[-1]["token"] == 2
    assert board.selection == board.link.selection
    with pytest.raises(KeyError, match="unknown selection keys"):
        board.selection = {"heads": 1}


class PointingAttribution:
    """An attribution whose top neurons never fire much (so no token lists them)."""

    def __init__(self, n_layers: int, d_mlp: int) -> None:
        self.heads = np.zeros((n_layers, 2), np.float32)
        self.heads[1, 1] = 2.0
        self._neurons = np.zeros((n_layers, d_mlp), np.float32)
        self._neurons[2, 17] = 5.0  # L2 N17 is the attribution's top neuron
        self.mlp = self._neurons.sum(1)
        self.labels, values = ["embed"], [0.0]
        for layer in range(n_layers):
            self.labels += [f"L{layer}H0", f"L{layer}H1", f"L{layer}.mlp"]
            values += [
                float(self.heads[layer, 0]),
                float(self.heads[layer, 1]),
                float(self.mlp[layer]),
            ]
        self.labels.append("bias")
        self.values = np.array(values + [0.0], np.float32)
        self.model_value = float(self.values.sum())
        self.description = "logit ' Mary' − ' John' at position 5"

    def neurons(self, layer: int) -> np.ndarray:
        return self._neurons[layer]


def replies_of(text: str) -> dict[str, list[dict]]:
    data = json.loads(
        re.search(r'id="cb-state" type="application/json">(.*?)</script>', text).group(1)
    )
    out = {}
    for mid, m in data["models"].items():
        out[m["state"].get("_view", "")] = [json.loads(k) for k in data["replies"].get(mid, {})]
    return out


def test_report_keeps_what_other_views_point_to_and_says_what_is_left_out():
    n_layers, d_mlp = 4, 8192
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(n_layers, len(TOKENS), d_mlp)).astype(np.float32)
    acts[2, :, 17] = 0.01  # never in a token's top list
    board = cb.board(
        cb.LogitAttributionView(PointingAttribution(n_layers, d_mlp), tokens=TOKENS),
        cb.NeuronsView(acts, TOKENS, layer=0, neuron=3),
    )
    # A budget with room for the views' own state but not for every layer of neurons.
    with pytest.raises(ValueError, match=r"need at least ([\d.]+) (MB|kB)") as err:
        cb.export.build_report([board], title="t", budget_bytes=1)
    amount, unit = re.search(r"need at least ([\d.]+) (MB|kB)", str(err.value)).groups()
    fixed = float(amount) * (1e6 if unit == "MB" else 1e3)
    text = cb.export.build_report([board], title="t", budget_bytes=int(fixed + 120_000))
    kept = replies_of(text)["neurons"]
    assert {"kind": "fetch-neuron", "prompt": 0, "layer": 2, "neuron": 17} in kept
    notes = re.search(r'<ul aria-label="reductions">(.*?)</ul>', text, re.S)
    assert notes and "did not fit the size budget" in notes.group(1)
    assert re.search(r"L\d", notes.group(1)), "the notes name the layers left out"
    # With room, every neuron of every layer is in the page and nothing is listed as left out.
    text = cb.export.build_report([board], title="t")
    kept = replies_of(text)["neurons"]
    assert {r["layer"] for r in kept if r["kind"] == "fetch-neuron-layer"} == set(range(n_layers))
    assert "did not fit" not in text


def test_lists_of_captures_get_a_precise_error():
    model, tok = tiny_llama()
    caps = cb.capture(model, tok, ["the cat sat", "a dog ran"])
    assert isinstance(caps, list)
    with pytest.raises(
        TypeError, match=r"one prompt; got a list of 2 captures.*cb.attention\(caps\[0\]\)"
    ):
        cb.attention(caps)
    with pytest.raises(TypeError, match=r"cb.logit_lens_view\(caps\[0\]\)"):
        cb.logit_lens_view(caps)
    with pytest.raises(TypeError, match=r"cb.logit_attribution\(caps\[0\], 5\)"):
        cb.logit_attribution(caps, 5)
    with pytest.raises(TypeError, match=r"takes one capture; got a list of 2"):
        cb.direct_logit_attribution(caps, 5)
    with pytest.raises(TypeError, match=r"takes one capture; got a list of 2"):
        cb.logit_lens(caps)
    assert cb.neurons(caps).n_prompts == 2  # the neurons view pages through prompts


def test_histogram_counts_every_value_and_states_its_range():
    """Nothing is lost or put in the wrong bin. By default each neuron's bins follow its data
    (min to max, on a power-of-two lattice that merges exactly); with fixed hist_range= edges,
    values beyond them are counted apart. min / max are exact either way."""
    model, tok = tiny_llama()
    texts = ["a", "the cat sat on the mat " * 6, "b c", "x " * 40]
    kw = dict(neurons=[(0, 1), (1, 2)], k=2, batch_size=1, progress=False, bins=20)
    top = cb.top_activations(model, tok, texts, **kw)
    assert not top.hist_below.any() and not top.hist_above.any()
    for j in range(2):
        edges = top.hist_edges[j]
        assert top.hist_counts[j].sum() == top.count[j]
        assert edges[0] <= top.minimum[j] and top.maximum[j] < edges[-1]
        width = edges[1] - edges[0]  # a power of two, and no wider than it needs to be
        assert np.frexp(width)[0] == 0.5
        assert np.floor(top.maximum[j] / (width / 2)) - np.floor(top.minimum[j] / (width / 2)) >= 20
    fixed = cb.top_activations(model, tok, texts, hist_range=(-0.01, 0.005), **kw)
    assert (fixed.hist_above + fixed.hist_below).sum() > 0
    for j in range(2):
        edges = fixed.hist_edges[j]
        n = fixed.hist_counts[j].sum() + fixed.hist_below[j] + fixed.hist_above[j]
        assert n == fixed.count[j]
        assert (fixed.hist_below[j] > 0) == (fixed.minimum[j] < edges[0])
        assert (fixed.hist_above[j] > 0) == (fixed.maximum[j] > edges[-1])
    card = cb.neuron_dashboard(fixed).card(1, 2)
    assert card["hist_outside"] == [int(fixed.hist_below[1]), int(fixed.hist_above[1])]


def test_cli_defaults_to_the_readme_contrast_on_the_default_prompt(monkeypatch):
    import circuitboard.cli as cli

    model, tok = tiny_llama()
    cap = cb.capture(model, tok, cli.DEFAULT_PROMPT)
    got = {}
    real = cb.logit_attribution

    def spy(cap, target, baseline=None, **kw):
        got["args"] = (target, baseline)
        return real(cap, target=target, baseline=baseline, **kw)

    monkeypatch.setattr(cb, "logit_attribution", spy)
    try:
        items, _ = cli.build_board(cap, tok)
    except ValueError:
        pytest.skip("the tiny tokenizer has no single-token ' Mary'")
    assert got["args"] == (" Mary", " John")
    assert "against" in items[0]


@pytest.mark.real
def test_demo_header_numbers_agree_and_missing_space_warns(default_model):
    import circuitboard.cli as cli

    model, tok = default_model
    cap = cli.capture_for_report(model, tok, cli.DEFAULT_PROMPT)
    items, _ = cli.build_board(cap, tok)
    attr = items[1].views[0]
    assert "' Mary' − ' John'" in attr.description
    # What the header prints (two decimals) agrees, and much closer than that.
    assert f"{attr.model_value:+.2f}" == f"{attr.total:+.2f}"
    assert abs(attr.model_value - attr.total) < 1e-4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cb.logit_attribution(cap, "Mary", baseline=" John", follow_token=False)
    msgs = [str(w.message) for w in caught]
    assert any("no leading space" in m and "' Mary'" in m and "Pass ' Mary'" in m for m in msgs), (
        msgs
    )
