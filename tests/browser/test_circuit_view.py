"""The circuit view in an exported page: binary edges, paging by the slider, linking, hostile
labels, paint time. A synthetic SmolLM2-shaped circuit (70,651 edges) needs no model."""

from __future__ import annotations

import numpy as np
import pytest

import circuitboard as cb
from circuitboard.intervene._circuit import Circuit, default_ks
from circuitboard.intervene._graph import Graph
from tests.conftest import open_report

HOSTILE = '</script><img src=x onerror="window.__pwned=1">'


def synthetic_circuit(tokens: list[str]) -> Circuit:
    g = Graph.build(30, 9, 3)
    rng = np.random.default_rng(0)
    scores = rng.standard_normal(g.valid.shape) * rng.uniform(0, 1, g.valid.shape) ** 6
    scores[g.writer_index["L17H3"], g.reader_index["logits"]] = 2.0  # the strongest edge
    scores = np.where(g.valid, scores, np.nan).astype(np.float32)
    ks = default_ks(g.n_edges)
    curve = {"k": ks, "value": [float(1 - np.exp(-k / 300)) for k in ks]}
    return Circuit(
        graph=g,
        scores=scores,
        method="eap-ig",
        steps=5,
        metric="logit diff",
        clean_value=3.0,
        corrupted_value=-1.0,
        tokens=tokens,
        corrupted_tokens=tokens[::-1],
        model_name="synthetic",
        curve=curve,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tokens = ["When", " Mary", HOSTILE, " John", " gave", " a", " drink", " to"]
    c = synthetic_circuit(tokens)
    view = cb.circuit_view(c, k=200)
    att = cb.AttentionView(np.full((30, 9, 8, 8), 1 / 8, dtype=np.float32), tokens)
    cb.link(view, att)
    path = tmp_path_factory.mktemp("circuit") / "circuit.html"
    cb.report(view, att, path=path)
    return path, view, c


def test_graph_renders_from_binary_edges(page, report, artifacts):
    path, view, c = report
    assert isinstance(view._edges["data"], bytes)  # edges travel as one binary buffer
    assert view._edges["shape"] == [1024, 3]
    open_report(page, path)
    root = page.locator(".cb-circuit")
    assert root.get_attribute("data-drawn") == "200"
    dark = page.eval_on_selector(
        ".cb-circ-graph",
        "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 &&"
        " Math.abs(d[i] - d[i + 2]) > 40) n++; return n; }",
    )
    assert dark > 500  # coloured (red / blue) edge and node pixels
    root.screenshot(path=str(artifacts / "circuit_synthetic.png"))
    assert not page.cb_errors


def test_slider_pages_edges_in(page, report):
    path, view, c = report
    open_report(page, path)
    root = page.locator(".cb-circuit")
    assert root.get_attribute("data-loaded") == "1024"
    page.eval_on_selector(
        ".cb-circ-range",
        "s => { s.value = '3000'; s.dispatchEvent(new Event('input'));"
        " s.dispatchEvent(new Event('change')); }",
    )
    page.wait_for_function("() => document.querySelector('.cb-circuit').dataset.drawn === '3000'")
    assert int(root.get_attribute("data-loaded")) >= 3000
    assert "3000 of 70651" in page.locator(".cb-circ-curvetext").inner_text()
    assert not page.cb_errors


def test_paint_1000_edges_fast(page, report):
    path, view, c = report
    open_report(page, path)
    page.eval_on_selector(
        ".cb-circ-range",
        "s => { s.value = '1000'; s.dispatchEvent(new Event('change')); }",
    )
    page.wait_for_function("() => document.querySelector('.cb-circuit').dataset.drawn === '1000'")
    times = []
    for _ in range(5):  # repaint through a hover that changes nothing visible
        page.eval_on_selector(".cb-circuit", "r => r.dispatchEvent(new Event('x'))")
        ms = page.evaluate(
            "() => { const s = document.querySelector('.cb-circ-range');"
            " s.dispatchEvent(new Event('change'));"
            " return Number(document.querySelector('.cb-circuit').dataset.paintMs); }"
        )
        times.append(ms)
    assert np.median(times) <= 200, times


def test_node_click_moves_linked_attention(page, report):
    path, view, c = report
    open_report(page, path)
    bx, by = page.eval_on_selector(
        ".cb-circ-graph",
        "c => { const b = c.cbNodeBox('L17H3'); return [b.x + b.w / 2, b.y + b.h / 2]; }",
    )
    graph = page.locator(".cb-circ-graph")
    graph.hover(position={"x": bx, "y": by})
    page.wait_for_function("() => document.querySelector('.cb-circuit').dataset.hover === 'L17H3'")
    tip = page.locator(".cb-circ-tip").inner_text()
    assert tip.startswith("L17H3") and "→ logits" in tip
    graph.click(position={"x": bx, "y": by})
    att = page.locator(".cb-attention")
    page.wait_for_function(
        "() => document.querySelector('.cb-attention').dataset.layer === '17'", timeout=5000
    )
    assert att.get_attribute("data-head") == "3"
    assert "L17H3" in page.eval_on_selector(".cb-circuit", "r => r.dataset.hover")


def test_hostile_labels_stay_text_and_offline_ablation_says_why(page, report):
    path, view, c = report
    open_report(page, path)
    assert page.evaluate("() => window.__pwned") is None
    assert page.locator(".cb-circ-prompts img").count() == 0
    assert HOSTILE in page.locator(".cb-circ-prompts").inner_text()
    page.locator(".cb-circ-ablate").click()
    assert "select nodes first" in page.locator(".cb-circ-result").inner_text()
