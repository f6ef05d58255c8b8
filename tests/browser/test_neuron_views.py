"""Neurons view and neuron dashboard in an exported page: colours follow the data, clicks switch."""

from __future__ import annotations

import re

import numpy as np
import pytest

import circuitboard as cb
from tests.conftest import open_report


def rgb(css: str) -> tuple[int, int, int]:
    r, g, b = (int(x) for x in re.findall(r"\d+", css)[:3])
    return r, g, b


def token_colors(page, scope: str = ".cb-neurons") -> list[tuple[int, int, int]]:
    css = page.eval_on_selector_all(
        f"{scope} .cb-tokens .cb-token", "els => els.map(e => e.style.background)"
    )
    return [rgb(c) for c in css]


def check_colors_match(colors, values, vmax):
    """Diverging RdBu: blue for positive, red for negative, paler towards zero, monotone."""
    values = np.asarray(values, float)
    # signed darkness: RdBu darkens away from its pale centre, blue above zero, red below
    blue = np.array([np.sign(b - r) * (765 - r - g - b) for r, g, b in colors], float)
    for v, (r, _, b) in zip(values, colors, strict=True):
        if v > 0.15 * vmax:
            assert b > r, f"positive activation {v:.3f} not blue: {(r, b)}"
        elif v < -0.15 * vmax:
            assert r > b, f"negative activation {v:.3f} not red: {(r, b)}"
    order = np.argsort(values, kind="stable")
    assert (np.diff(blue[order]) >= -2).all(), "colour is not monotone in the activation"
    i = int(np.argmax(np.abs(values)))
    assert abs(blue[i]) > 300, "the strongest activation is not strongly coloured"


def fake(n_prompts=2, layers=2, d=24, seed=1):
    rng = np.random.default_rng(seed)
    acts = [rng.normal(size=(layers, 9 + p, d)).astype(np.float32) for p in range(n_prompts)]
    toks = [[f"w{p}_{i}" for i in range(9 + p)] for p in range(n_prompts)]
    return acts, toks


def test_coloring_matches_data_and_neuron_pick(page, tmp_path, artifacts):
    acts, toks = fake()
    view = cb.NeuronsView(acts, toks, layer=1, neuron=4)
    path = cb.report(view, path=tmp_path / "neurons.html")
    open_report(page, path)
    page.wait_for_selector('.cb-neurons[data-ready=true][data-neuron="4"]')
    col = acts[0][1, :, 4]
    vmax = float(page.get_attribute(".cb-neurons", "data-vmax"))
    assert vmax == pytest.approx(max(np.abs(a[1, :, 4]).max() for a in acts), rel=1e-5)
    check_colors_match(token_colors(page), col, vmax)
    titles = page.eval_on_selector_all(".cb-neurons .cb-token", "els => els.map(e => e.title)")
    assert titles[2].endswith(f"{col[2]:.2f}")

    # lock a token: its top-neuron list appears; picking one switches the coloured neuron
    page.click('.cb-neurons .cb-token[data-i="3"]')
    page.wait_for_selector('.cb-neurons[data-token="3"] .cb-neuron-pick')
    listed = page.eval_on_selector_all(
        ".cb-neuron-pick", "els => els.map(e => Number(e.dataset.neuron))"
    )
    assert listed == np.argsort(-acts[0][1, 3])[: len(listed)].tolist()
    pick = listed[1] if listed[0] == 4 else listed[0]
    page.click(f'.cb-neuron-pick[data-neuron="{pick}"]')
    page.wait_for_selector(f'.cb-neurons[data-neuron="{pick}"]:not([data-loading])')
    new_vmax = float(page.get_attribute(".cb-neurons", "data-vmax"))
    check_colors_match(token_colors(page), acts[0][1, :, pick], new_vmax)
    assert (
        page.get_attribute(f'.cb-neuron-pick[data-neuron="{pick}"]', "class").count("cb-selected")
        == 1
    )
    assert f"N{pick}" in page.inner_text(".cb-neurons .cb-caption")
    page.screenshot(path=str(artifacts / "neurons-fake.png"), full_page=True)

    # page to the second prompt: a new strip, coloured by the same neuron
    page.click('button[aria-label="next prompt"]')
    page.wait_for_selector('.cb-neurons[data-prompt="1"]')
    colors = token_colors(page)
    assert len(colors) == 10
    check_colors_match(colors, acts[1][1, :, pick], new_vmax)
    assert page.cb_errors == [] and page.cb_blocked == []


def test_neuron_number_and_layer_select(page, tmp_path):
    acts, toks = fake(n_prompts=1)
    view = cb.NeuronsView(acts[0], toks[0], layer=0, neuron=2)
    # Every neuron of every layer fits this page (whole layers as 8-bit codes, issue 14).
    path = cb.report(view, path=tmp_path / "n.html")
    open_report(page, path)
    page.select_option('.cb-neurons select[aria-label="layer"]', "1")
    page.wait_for_selector('.cb-neurons[data-layer="1"]')
    n = 5
    page.fill('.cb-neurons input[aria-label="neuron"]', str(n))
    page.press('.cb-neurons input[aria-label="neuron"]', "Enter")
    page.wait_for_selector(f'.cb-neurons[data-neuron="{n}"][data-layer="1"]')
    vmax = float(page.get_attribute(".cb-neurons", "data-vmax"))
    check_colors_match(token_colors(page), acts[0][1, :, n], vmax)
    assert page.cb_errors == []


@pytest.mark.real
def test_default_model_neurons_and_dashboard(page, default_model, tmp_path, artifacts):
    model, tok = default_model
    caps = cb.capture(
        model,
        tok,
        [
            "When Mary and John went to the store, John gave a drink to",
            "def add(a, b):\n    return a + b",
        ],
        what=["mlp_post"],
        layers=[15],
    )
    texts = cb.load_texts()[:60]
    top = cb.top_activations(model, tok, texts, layers=[15], k=8, progress=False)
    link = cb.Link()
    nv = cb.neurons(caps, layer=15, link=link)
    dash = cb.neuron_dashboard(top, link=link)
    assert (dash.link.layer, dash.link.neuron) == (15, nv.link.neuron)
    path = cb.report("Neurons of layer 15", nv, dash, path=tmp_path / "neurons-real.html")
    open_report(page, path, timeout=30_000)
    neuron = nv.link.neuron
    page.wait_for_selector(f'.cb-dashboard[data-neuron="{neuron}"]')
    col = nv.column(15, neuron)
    check_colors_match(token_colors(page), col, nv.vmax(15, neuron))
    rows = page.eval_on_selector_all(".cb-dash-row", "els => els.map(e => Number(e.dataset.text))")
    assert rows == top.text_index[top.index(15, neuron)].tolist()
    # picking a neuron in the per-token list updates the dashboard through the link
    page.click('.cb-neurons .cb-token[data-i="10"]')
    page.wait_for_selector('.cb-neurons[data-token="10"] .cb-neuron-pick')
    pick = page.eval_on_selector_all(
        ".cb-neuron-pick", "els => els.map(e => Number(e.dataset.neuron))"
    )
    other = next(n for n in pick if n != neuron)
    page.click(f'.cb-neuron-pick[data-neuron="{other}"]')
    page.wait_for_selector(f'.cb-dashboard[data-neuron="{other}"]')
    rows = page.eval_on_selector_all(".cb-dash-row", "els => els.map(e => Number(e.dataset.text))")
    assert rows == top.text_index[top.index(15, other)].tolist()
    page.screenshot(path=str(artifacts / "neurons-default-model.png"), full_page=True)
    page.emulate_media(color_scheme="dark")
    page.reload()
    page.wait_for_selector("html[data-cb-ready=true]", timeout=30_000)
    page.wait_for_selector('.cb-neurons[data-cb-theme="dark"]')
    page.screenshot(path=str(artifacts / "neurons-default-model-dark.png"), full_page=True)
    assert page.cb_errors == [] and page.cb_blocked == []


def test_dashboard_histogram_shows_tokens_beyond_its_edges(page, tmp_path, artifacts):
    from tests.unit.tiny_models import tiny_llama

    model, tok = tiny_llama()
    texts = ["a", "the cat sat on the mat " * 6, "b c", "x " * 40]
    # fixed edges narrower than the data: tokens fall below and above them
    top = cb.top_activations(
        model, tok, texts, neurons=[(0, 1)], k=2, hist_range=(-0.01, 0.005), progress=False
    )
    below, above = int(top.hist_below[0]), int(top.hist_above[0])
    assert below > 0 and above > 0
    open_report(page, cb.report(cb.neuron_dashboard(top), path=tmp_path / "dash.html"))
    side = ".cb-dashboard .cb-dash-side"
    assert f"{below + above:,} beyond the bins" in page.inner_text(side)
    axis = page.eval_on_selector_all(
        f"{side} .cb-dash-axis span", "els => els.map(e => e.textContent)"
    )
    assert (
        axis[0].startswith("min ")
        and axis[-1].startswith("max ")
        and float(axis[-1][4:]) == pytest.approx(top.maximum[0], abs=0.01)
    )
    box = page.query_selector(".cb-dash-hist").bounding_box()
    page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] - 2)
    tip = page.inner_text(".cb-dash-tip")
    assert tip.startswith(f"above {top.hist_edges[0, -1]:.2f}: {above:,} tokens (max ")
    # the outlined end bar is drawn: the last 10 css px of the canvas are not blank
    data = page.eval_on_selector(
        ".cb-dash-hist",
        "c => { const r = devicePixelRatio; const w = c.width; return Array.from(c.getContext('2d')"
        ".getImageData(w - 10 * r, 0, 10 * r, c.height).data) }",
    )
    assert max(data[3::4]) > 0
    page.screenshot(path=str(artifacts / "dashboard-beyond-edges.png"), full_page=True)
    assert page.cb_errors == []
