"""The attribution graph view in an exported page: binary buffers, 10,000 edges painted fast,
hover and click linking, hostile token text, supernode interventions kept offline."""

from __future__ import annotations

import re

import numpy as np
import pytest

import circuitboard as cb
from circuitboard.intervene._graph_result import AttributionGraph
from tests.conftest import open_report

HOSTILE = '</script><img src=x onerror="window.__pwned=1">'


def synthetic_graph(
    tokens: list[str], n_edges: int = 10_000, n_layers: int = 30
) -> AttributionGraph:
    """A SmolLM2-shaped graph: 600 neuron nodes, tokens, 3 logits, ``n_edges`` kept edges."""
    rng = np.random.default_rng(0)
    P, K, B = len(tokens), 3, 600
    layer = rng.integers(0, n_layers, B)
    pos = rng.integers(0, P, B)
    kind = np.concatenate([np.ones(B), np.zeros(P), np.full(K, 3)]).astype(np.uint8)
    node_layer = np.concatenate([layer, np.full(P, -1), np.full(K, n_layers)]).astype(np.int32)
    node_pos = np.concatenate([pos, np.arange(P), np.full(K, P - 1)]).astype(np.int32)
    n = len(kind)
    # edges go upwards: source layer below target layer (tokens below everything)
    src = rng.integers(0, n, 4 * n_edges)
    dst = rng.integers(0, n, 4 * n_edges)
    ok = (node_layer[src] < node_layer[dst]) & (node_pos[src] <= node_pos[dst]) & (kind[src] != 3)
    pairs = np.unique(np.stack([src[ok], dst[ok]], 1), axis=0)[:n_edges]
    src, dst = pairs[:, 0], pairs[:, 1]
    w = rng.standard_normal(len(src)).astype(np.float32)
    cross = np.flatnonzero(node_pos[src] != node_pos[dst])[:50]
    w[cross] = 10 + w[cross]  # strong edges: among each target's strongest inputs
    hl_edge = np.repeat(cross, 2)
    hl_value = np.stack([w[cross] * 0.7, w[cross] * 0.3], 1).reshape(-1).astype(np.float32)
    return AttributionGraph(
        prompt="".join(tokens),
        tokens=tokens,
        token_ids=np.arange(P),
        basis="neurons",
        model_name="synthetic",
        n_layers=n_layers,
        node_kind=kind,
        node_layer=node_layer,
        node_pos=node_pos,
        node_index=np.concatenate([rng.integers(0, 1536, B), np.arange(P), np.arange(K)]),
        node_activation=rng.standard_normal(n).astype(np.float32),
        node_bias=np.zeros(n, np.float32),
        node_influence=rng.uniform(0, 1, n).astype(np.float32),
        node_mask=np.ones(n, bool),
        edge_src=src,
        edge_dst=dst,
        edge_weight=w,
        edge_mask=np.ones(len(src), bool),
        logit_weights=np.concatenate([np.zeros(B + P), [0.5, 0.3, 0.2]]).astype(np.float32),
        logit_labels=[" Mary", " the", HOSTILE],
        node_threshold=0.8,
        edge_threshold=0.98,
        replacement_score=1.0,
        completeness_score=1.0,
        hl_edge=hl_edge,
        hl_layer=np.tile([17, 20], len(cross)).astype(np.int32),
        hl_head=np.tile([3, 5], len(cross)).astype(np.int32),
        hl_value=hl_value,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tokens = ["When", " Mary", HOSTILE, " John", " gave", " a", " drink", " to"]
    g = synthetic_graph(tokens)
    view = cb.graph_view(g)
    view.supernodes = {"names": [0, 1]}
    view.interventions = [
        {
            "name": "names",
            "nodes": [0, 1],
            "factor": 0.0,
            "metric": " Mary",
            "metric_before": 3.0,
            "metric_after": 1.5,
            "top": [[HOSTILE, 0.4], [" the", 0.2]],
        }
    ]
    att = cb.AttentionView(np.full((30, 9, 8, 8), 1 / 8, dtype=np.float32), tokens)
    cb.link(view, att)
    path = tmp_path_factory.mktemp("graph") / "graph.html"
    cb.report(view, att, path=path)
    return path, view, g


def test_graph_renders_from_binary_buffers_and_paints_10k_edges_fast(page, report, artifacts):
    path, view, g = report
    assert isinstance(view._edges["data"], bytes) and view._edges["shape"] == [10_000, 3]
    assert path.stat().st_size <= 10 * 2**20
    open_report(page, path)
    root = page.locator(".cb-graph")
    assert root.get_attribute("data-edges") == "10000"
    times = []
    for _ in range(5):
        ms = page.eval_on_selector(
            ".cb-graph-canvas",
            "c => { c.dispatchEvent(new PointerEvent('pointerleave'));"
            " return Number(document.querySelector('.cb-graph').dataset.paintMs); }",
        )
        times.append(ms)
    assert np.median(times) <= 300, times
    coloured = page.eval_on_selector(
        ".cb-graph-canvas",
        "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 &&"
        " Math.abs(d[i] - d[i + 2]) > 40) n++; return n; }",
    )
    assert coloured > 500
    root.screenshot(path=str(artifacts / "graph_synthetic.png"))
    assert not page.cb_errors


def test_hover_shows_edges_and_click_moves_linked_attention(page, report):
    path, view, g = report
    open_report(page, path)
    e = int(g.hl_edge[0])
    dst = int(g.edge_dst[e])
    x, y = page.eval_on_selector(".cb-graph-canvas", f"c => c.cbNodeXY({dst})")
    canvas = page.locator(".cb-graph-canvas")
    canvas.hover(position={"x": x, "y": y})
    page.wait_for_function("() => (document.querySelector('.cb-graph').dataset.hover || '') !== ''")
    assert "strongest inputs" in page.locator(".cb-graph-info").inner_text()
    heads = page.locator(".cb-graph-head")
    assert heads.count() >= 1
    canvas.click(position={"x": x, "y": y})
    assert page.locator(".cb-graph").get_attribute("data-clicked") == str(dst)
    # a head loading selects (layer, head) in the shared link: the attention view follows
    page.locator(".cb-graph-head").first.click()
    page.wait_for_function(
        "() => ['17', '20'].includes(document.querySelector('.cb-attention').dataset.layer)",
        timeout=5000,
    )
    assert not page.cb_errors


def test_hostile_text_and_offline_interventions(page, report):
    path, view, g = report
    open_report(page, path)
    assert page.evaluate("() => window.__pwned") is None
    assert page.locator(".cb-graph img").count() == 0
    assert HOSTILE in page.locator(".cb-graph-tokens").inner_text()
    results = page.locator(".cb-graph-results").inner_text()
    assert "names × 0" in results and "3.00 → 1.50" in results
    assert "</script><img src=x onerror=" in results  # the hostile token, as text
    page.locator(".cb-graph-run").first.click()
    assert "need a running kernel" in page.locator(".cb-graph-note").inner_text()
    assert page.cb_blocked == []  # nothing tried to reach the network
    assert not page.cb_errors


def test_head_loading_click_opens_its_explanation_in_a_report(page, tmp_path, artifacts):
    """A view with a model embeds the explanations of its largest head loadings: one click on
    a loading button opens the panel with cb.explain_attention's score for (target, source)."""
    import torch

    from tests.unit.tiny_models import tiny_llama

    model, tok = tiny_llama()
    prompt = "When Mary and John went to the store, John gave"
    g = cb.attribution_graph(
        model,
        tok,
        prompt,
        basis="neurons",
        max_nodes=64,
        node_threshold=0.95,
        edge_threshold=0.99,
        head_loadings=4,
        progress=False,
    )
    view = cb.graph_view(g, model=model, tokenizer=tok)
    path = tmp_path / "graph_explain.html"
    cb.report(view, path=path)
    cells = view._loading_cells()
    embedded = {(q["layer"], q["head"], q["query"], q["key"]) for q in view.export_requests(2**23)}
    assert embedded and embedded <= set(cells)
    open_report(page, path)
    kept = np.flatnonzero(g.node_mask)
    r = int(np.argmax(np.abs(g.hl_value) * g.edge_mask[g.hl_edge]))
    target = int(np.flatnonzero(kept == g.edge_dst[g.hl_edge[r]])[0])  # a loaded edge's target
    x, y = page.eval_on_selector(".cb-graph-canvas", f"c => c.cbNodeXY({target})")
    page.locator(".cb-graph-canvas").click(position={"x": x, "y": y})
    buttons = page.locator(".cb-graph-head")
    for i in range(buttons.count()):  # the first button whose explanation the report holds
        button = buttons.nth(i)
        layer, head = (int(v) for v in re.match(r"L(\d+)H(\d+)", button.inner_text()).groups())
        found = re.search(r"query (\d+), key (\d+)", button.get_attribute("title"))
        query, key = (int(v) for v in found.groups())
        if (layer, head, query, key) in embedded:
            break
    else:
        raise AssertionError("no head-loading button's explanation is in the report")
    button.click()
    page.wait_for_selector(".cb-xp[data-state='ready']", timeout=10_000)
    title = page.locator(".cb-xp-title").inner_text()
    assert title.startswith(f"L{layer}H{head} · query #{query}") and f"key #{key}" in title
    cap = cb.capture(model, tok, prompt, dtype=torch.float32)
    want = cb.explain_attention(cap, layer=layer, head=head, query=query, key=key).score
    summary = page.locator(".cb-xp-summary").inner_text()
    shown = float(summary.split()[1].replace("−", "-"))
    assert shown == pytest.approx(want, rel=5e-3, abs=1e-4), summary
    page.locator(".cb-graph").screenshot(path=str(artifacts / "graph_explain.png"))
    assert not page.cb_errors
