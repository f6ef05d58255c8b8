"""The training view in an exported page: heatmaps and scrubber draw the run's data, a
(step, head) click shows that pattern and moves a linked attention view, offline report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.training import TrainingRecorder, record_dataflow
from tests.conftest import open_report
from tests.unit.training_helpers import TokenMLP, tiny_toy, toy_batch, train_toy


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    model = tiny_toy()
    probes, _ = toy_batch(999, 2)
    path = tmp_path_factory.mktemp("run") / "run.sqlite"
    rec = TrainingRecorder(
        model,
        every=2,
        probes=probes,
        probe_every=4,
        path=path,
        categories=lambda ids: {
            "early": torch.arange(16)[None].expand(len(ids), 16) < 8,
            "late": torch.arange(16)[None].expand(len(ids), 16) >= 8,
        },
    )
    record_dataflow(rec, probes)  # once, before training: the graph navigator draws it
    train_toy(model, 13, rec)
    return rec.close()


def _pixels(page, selector):
    data = page.eval_on_selector(
        selector, "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
    )
    w, h = page.eval_on_selector(selector, "c => [c.width, c.height]")
    return np.array(data, dtype=np.uint8).reshape(h, w, 4)


def test_heatmap_scrubber_and_head_click_follow(page, tmp_path, artifacts, toy_run):
    run = toy_run
    link = cb.Link()
    view = cb.training_view(run, link=link, stat="norm", category="late")
    last = run.patterns[-1, 0].astype(np.float32) / 255
    tokens = [str(int(t)) for t in run.probe_tokens[0]]
    attn = cb.AttentionView(last, tokens, link=link)
    path = cb.report(view, attn, path=tmp_path / "training.html", title="training")
    page.context.set_offline(True)
    open_report(page, path)
    # activations heatmap: one row per module, one column per recorded step, real data
    px = _pixels(page, ".cb-train-canvas")
    names = view.names
    assert px.shape[:2] == (len(names), len(run.steps))
    # the row of the module whose norm changes most spans the colour map: distinct colours
    v, labels = run.kpi("norm", "late", kind="act")
    with np.errstate(all="ignore"):
        spread = np.nan_to_num(np.nanmax(v, 0) - np.nanmin(v, 0), nan=-1.0)
    row = int(np.argmax(spread))
    r = names.index(labels[row].split(":", 1)[1])
    lo, hi = int(np.nanargmin(v[:, row])), int(np.nanargmax(v[:, row]))
    assert np.abs(px[r, lo, :3].astype(int) - px[r, hi, :3].astype(int)).sum() > 150
    # the scrubber moves the cursor and the step label
    page.eval_on_selector(
        ".cb-train-slider", "s => { s.value = '2'; s.dispatchEvent(new Event('input')); }"
    )
    assert page.inner_text(".cb-train-step").startswith(f"step {run.steps[2]} ")
    # hover reads the recorded value out
    box = page.query_selector(".cb-train-canvas").bounding_box()
    S, N = len(run.steps), len(names)
    page.mouse.move(
        box["x"] + box["width"] * (lo + 0.5) / S, box["y"] + box["height"] * (r + 0.5) / N
    )
    want = run.values[lo, run.category("late"), run.index(labels[row]), run.stat("norm")]
    assert f"{want:.3f}" in page.inner_text(".cb-train-readout")
    # click (probe step 1, layer 1 head 0) in the head-score map
    L, H = run.head_scores["induction"].shape[1:]
    P = len(run.probe_steps)
    box = page.query_selector(".cb-train-scores").bounding_box()
    page.mouse.click(
        box["x"] + box["width"] * 1.5 / P, box["y"] + box["height"] * (H + 0.5) / (L * H)
    )
    page.wait_for_selector('.cb-attention[data-layer="1"][data-head="0"]')
    step = run.probe_steps[1]
    page.wait_for_selector(f'.cb-train-pattern-canvas[data-step="{step}"]')
    assert page.inner_text(".cb-train-pattern .cb-train-map-title").startswith(
        f"L1H0 at step {step}"
    )
    pat = _pixels(page, ".cb-train-pattern-canvas")
    T = run.patterns.shape[-1]
    assert pat.shape[:2] == (T, T)
    codes = run.patterns[1, 0, 1, 0]
    # the darkest cell of the drawn pattern is the largest attention weight of that head
    dark = pat[..., :3].astype(int).sum(-1)
    assert codes.ravel()[dark.argmin()] == codes.max()
    page.screenshot(path=str(artifacts / "training-view.png"), full_page=True)
    assert page.cb_errors == []


def test_two_trials_and_correlations(page, tmp_path, toy_run):
    corr = toy_run.correlate("loss", category="late", max_lag=2)
    view = cb.training_view(toy_run, other=toy_run, correlation=corr, minus="early")
    path = cb.report(view, path=tmp_path / "two.html", title="two trials")
    open_report(page, path)
    assert len(page.query_selector_all(".cb-train-canvas")) == 4  # act | grad for each trial
    a = _pixels(page, ".cb-train-col:nth-child(1) .cb-train-canvas")
    b = _pixels(page, ".cb-train-col:nth-child(2) .cb-train-canvas")
    np.testing.assert_array_equal(a, b)  # the same run twice draws the same pixels
    first = page.query_selector(".cb-train-corr-row")
    label = corr.top(1)[0]["label"].split("/")[0]
    first.click()
    page.wait_for_selector(f'.cb-train-row-hl[data-label="{label}"]')
    assert page.cb_errors == []


def _grey(px):
    """Cells painted in the "not recorded" grey of the light theme."""
    return (px[..., :3].astype(int) == [216, 222, 228]).all(-1)


def test_two_architectures_side_by_side_on_one_step_axis(page, tmp_path, artifacts, toy_run):
    from circuitboard.training import AttentionOnlyTransformer

    torch.manual_seed(1)
    small = AttentionOnlyTransformer(n_layers=1, d_model=16, n_heads=2, vocab=12, n_ctx=16)
    rec = TrainingRecorder(small, every=3, path=tmp_path / "b.db", trial="one layer")
    train_toy(small, 13, rec)
    other = rec.close()
    view = cb.training_view(toy_run, other, stat="norm")
    path = cb.report(view, path=tmp_path / "side.html", title="two architectures")
    open_report(page, path)
    cols = page.query_selector_all(".cb-train-col")
    assert [c.get_attribute("data-trial") for c in cols] == ["run", "one layer"]
    # two columns side by side (not stacked), tops aligned
    a, b = (c.bounding_box() for c in cols)
    assert b["x"] >= a["x"] + a["width"] and abs(b["y"] - a["y"]) < 2
    # one step axis: both columns' heatmaps have a pixel column per step of the union
    axis = sorted({*toy_run.steps.tolist(), *other.steps.tolist()})
    pa = _pixels(page, ".cb-train-col:nth-child(1) .cb-train-canvas")
    pb = _pixels(page, ".cb-train-col:nth-child(2) .cb-train-canvas")
    assert pa.shape[1] == pb.shape[1] == len(axis)
    wa = page.eval_on_selector(
        ".cb-train-col:nth-child(1) .cb-train-canvas", "c => c.getBoundingClientRect().width"
    )
    wb = page.eval_on_selector(
        ".cb-train-col:nth-child(2) .cb-train-canvas", "c => c.getBoundingClientRect().width"
    )
    assert wa == wb
    r = view.names.index("blocks.0.hook_resid_post")
    for s, step in enumerate(axis):
        assert _grey(pa[r, s]) == (step not in toy_run.steps), step
        assert _grey(pb[r, s]) == (step not in other.steps), step
    # the one-layer trial has no block 1: its rows are grey at every step
    assert _grey(pb[view.names.index("blocks.1.hook_resid_post")]).all()
    assert page.inner_text(".cb-train-col:nth-child(1) .cb-train-axis").split() == [
        "step",
        "0",
        "12",
    ]
    # the colour bar names the row ends, and a hovered row's own numbers
    bar = page.inner_text(".cb-train-colorbar")
    assert "row min" in bar and "row max" in bar and "norm of all" in bar
    box = page.query_selector(".cb-train-col:nth-child(1) .cb-train-canvas").bounding_box()
    page.mouse.move(
        box["x"] + box["width"] * 0.5 / len(axis),
        box["y"] + box["height"] * (r + 0.5) / len(view.names),
    )
    page.wait_for_selector('.cb-train-colorbar[data-row="act:blocks.0.hook_resid_post"]')
    v = toy_run.series("act:blocks.0.hook_resid_post", "norm", "all")
    assert page.get_attribute(".cb-train-colorbar", "data-lo") == f"{v.min():.3f}"
    assert page.get_attribute(".cb-train-colorbar", "data-hi") == f"{v.max():.3f}"
    page.screenshot(path=str(artifacts / "training-two-trials.png"), full_page=True)
    assert page.cb_errors == []


def test_training_view_saves_as_png_and_svg(tmp_path, artifacts, toy_run):
    """The view has the ⤓ PNG / SVG buttons every view has (save_png drives them)."""
    import xml.etree.ElementTree as ET

    from tests.browser.test_linked_report import png_size

    view = cb.training_view(toy_run)
    png = view.save_png(tmp_path / "training.png", scale=1)
    w, h = png_size(png.read_bytes())
    assert w > 500 and h > 300
    (artifacts / "figure-training.png").write_bytes(png.read_bytes())
    root = ET.parse(view.save_svg(tmp_path / "training.svg")).getroot()
    texts = "".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert "Training run" in texts and "⤓" not in texts
    assert not list(root.iter("{http://www.w3.org/2000/svg}path"))  # list navigator: no graph
    # the data-flow graph in a figure: its edges as vector paths, its labels as text
    graph = cb.training_view(toy_run, navigator="graph")
    root = ET.parse(graph.save_svg(tmp_path / "graph.svg")).getroot()
    paths = list(root.iter("{http://www.w3.org/2000/svg}path"))
    assert len(paths) == 2 * len(graph.graph_edges)  # a curve and an arrowhead each
    texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "hook_resid_post" in texts and "colour: activations" not in "".join(texts)


def _hover_weight(page, row, col):
    """Hover cell (query row, key col) of the attention heatmap; the weight its tooltip reads."""
    page.eval_on_selector(".cb-attention .cb-heatmap", "c => c.scrollIntoView({block: 'center'})")
    x, y = page.eval_on_selector(
        ".cb-attention .cb-heatmap",
        """(c, [row, col]) => { const r = c.getBoundingClientRect(); const d = c.width / r.width;
        const k = Number(c.dataset.cell) / d;
        return [r.left + Number(c.dataset.x0) / d + (col + 0.5) * k,
                r.top + Number(c.dataset.y0) / d + (row + 0.5) * k]; }""",
        [row, col],
    )
    page.mouse.move(x, y)
    tip = page.inner_text(".cb-attention .cb-tip")
    assert tip.startswith(f"#{row} ") and f"→ #{col} " in tip, tip
    return float(tip.rsplit(": ", 1)[1])


def test_offline_report_attention_view_follows_the_clicked_step(page, tmp_path, artifacts, toy_run):
    run = toy_run
    view = cb.training_view(run)
    attn = view.attention_view(0)  # built at the first probe step; the report has no kernel
    path = cb.report(view, attn, path=tmp_path / "follow.html", title="follow offline")
    page.context.set_offline(True)
    open_report(page, path)
    first = run.probe_steps[0]
    assert page.get_attribute(".cb-attention", "data-step") == str(first)
    L, H = run.head_scores["induction"].shape[1:]
    P, p, layer, head = len(run.probe_steps), 2, 1, 0
    step = int(run.probe_steps[p])
    box = page.query_selector(".cb-train-scores").bounding_box()
    page.mouse.click(
        box["x"] + box["width"] * (p + 0.5) / P,
        box["y"] + box["height"] * (layer * H + head + 0.5) / (L * H),
    )
    page.wait_for_selector(
        f'.cb-attention[data-step="{step}"][data-layer="{layer}"][data-head="{head}"]'
    )
    assert f"step {step}" in page.inner_text(".cb-attention .cb-status")
    # the drawn head is that step's pattern: the tooltip's weights are the run's codes / 255,
    # at cells where the first probe step's weights differ
    now, then = run.patterns[p, 0, layer, head] / 255, run.patterns[0, 0, layer, head] / 255
    diff = np.abs(now - then)
    cells = [np.unravel_index(i, diff.shape) for i in np.argsort(-diff, axis=None)[:3]]
    assert diff[cells[0]] > 0.05
    for i, j in cells:
        assert _hover_weight(page, int(i), int(j)) == pytest.approx(now[i, j], abs=0.0015)
    # another head of the same step, chosen in the attention view's own grid
    page.click('.cb-attention .cb-thumb[data-layer="0"][data-head="1"]')
    page.wait_for_selector('.cb-attention[data-layer="0"][data-head="1"]')
    w = run.patterns[p, 0, 0, 1] / 255
    i, j = np.unravel_index(int(np.argmax(w)), w.shape)
    assert _hover_weight(page, int(i), int(j)) == pytest.approx(w[i, j], abs=0.0015)
    page.mouse.move(2, 2)
    page.screenshot(path=str(artifacts / "training-follow-offline.png"), full_page=True)
    assert page.cb_errors == []


def test_offline_report_long_probe_thinned_steps_show_the_nearest_kept(
    page, tmp_path, artifacts, monkeypatch
):
    # a 40-token probe (thumbnails pooled, so each embedded step carries every head) over 8
    # probe steps, with room for about two steps: one in every 4 is kept, and the last
    from circuitboard.training import AttentionOnlyTransformer, repeated_sequences
    from circuitboard.widgets import _attention_frames

    torch.manual_seed(0)
    model = AttentionOnlyTransformer(n_layers=1, d_model=16, n_heads=2, vocab=12, n_ctx=40)
    g = torch.Generator().manual_seed(5)
    probes, _ = repeated_sequences(1, 40, 12, periods=(5, 9), generator=g)
    rec = TrainingRecorder(model, every=1, probes=probes, path=tmp_path / "long.sqlite")

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return repeated_sequences(8, 40, 12, periods=(5, 9), generator=g)

    train_toy(model, 8, rec, lr=3e-2, batch=batch)
    run = rec.close()
    view = cb.training_view(run)
    attn = view.attention_view(0)
    monkeypatch.setattr(_attention_frames, "FRAMES_SHARE", 2.2 * attn._frame_bytes() / 99e6)
    path = cb.report(view, attn, path=tmp_path / "long.html", title="long probe")
    text = path.read_text()
    assert "patterns of 3 of 8 probe steps in this report (one in every 4" in text
    page.context.set_offline(True)
    open_report(page, path)
    H, P, p = 2, len(run.probe_steps), 5  # step 5 is not kept; 4 is the nearest kept
    box = page.query_selector(".cb-train-scores").bounding_box()
    page.mouse.click(
        box["x"] + box["width"] * (p + 0.5) / P, box["y"] + box["height"] * (1 + 0.5) / H
    )
    page.wait_for_selector('.cb-attention[data-step="4"][data-layer="0"][data-head="1"]')
    assert "step 5 is not in this report: nearest kept step shown" in page.inner_text(
        ".cb-attention .cb-status"
    )
    page.query_selector(".cb-attention").screenshot(
        path=str(artifacts / "training-follow-thinned.png")
    )
    w = run.patterns[4, 0, 0, 1] / 255
    for i, j in [np.unravel_index(int(np.argmax(w)), w.shape), (39, 3), (20, 20)]:
        assert _hover_weight(page, int(i), int(j)) == pytest.approx(w[i, j], abs=0.0015)
    # a kept step: exactly that step
    p = 7
    page.eval_on_selector(".cb-train-scores", "c => c.scrollIntoView({block: 'center'})")
    box = page.query_selector(".cb-train-scores").bounding_box()
    page.mouse.click(box["x"] + box["width"] * (p + 0.5) / P, box["y"] + box["height"] * 0.5 / H)
    page.wait_for_selector('.cb-attention[data-step="7"][data-layer="0"][data-head="0"]')
    w = run.patterns[7, 0, 0, 0] / 255
    i, j = np.unravel_index(int(np.argmax(w[1:])), w[1:].shape)
    assert _hover_weight(page, int(i) + 1, int(j)) == pytest.approx(w[i + 1, j], abs=0.0015)
    assert page.cb_errors == []


def _rgb(css):
    return [int(v) for v in css[css.index("(") + 1 : css.index(")")].split(",")[:3]]


def _check_graph_colours(page, view, step_index):
    """Each node's fill is its activation heatmap cell's colour at the scrubbed step, on the
    canvas as in its data attribute."""
    heat = _pixels(page, ".cb-train-map:first-child .cb-train-canvas")
    graph = _pixels(page, ".cb-train-graph-canvas")
    dpr = page.evaluate("window.devicePixelRatio")
    wrap = page.query_selector(".cb-train-graph-canvas").bounding_box()
    nodes = page.query_selector_all(".cb-train-node")
    for node in nodes:
        name = node.get_attribute("data-name")
        fill = _rgb(node.get_attribute("data-fill"))
        row = view.names.index(name)
        assert fill == heat[row, step_index, :3].tolist(), name
        b = node.bounding_box()
        x, y = int((b["x"] - wrap["x"] + 3) * dpr), int((b["y"] - wrap["y"] + 3) * dpr)
        assert np.abs(graph[y, x, :3].astype(int) - fill).max() <= 2, name
    return nodes


def test_graph_navigator_colours_nodes_by_the_kpi_and_selects_rows(
    page, tmp_path, artifacts, toy_run
):
    run = toy_run
    view = cb.training_view(run, navigator="graph", stat="norm", category="late")
    assert len(view.graph_edges) == 6
    path = cb.report(view, path=tmp_path / "graph.html", title="data flow")
    page.context.set_offline(True)
    open_report(page, path)
    nodes = _check_graph_colours(page, view, len(run.steps) - 1)
    assert len(nodes) == 6
    fills = {n.get_attribute("data-fill") for n in nodes}
    # the scrubber recolours the nodes: step 0 is each row's own minimum or maximum
    page.eval_on_selector(
        ".cb-train-slider", "s => { s.value = '0'; s.dispatchEvent(new Event('input')); }"
    )
    page.wait_for_selector(f'.cb-train-graph[data-step="{run.steps[0]}"]')
    nodes = _check_graph_colours(page, view, 0)
    assert {n.get_attribute("data-fill") for n in nodes} != fills
    # a node click selects that tensor's heatmap row, as a click on the list item does
    page.click('.cb-train-node[data-name="blocks.1.attn.hook_z"]')
    page.wait_for_selector('.cb-train-row-hl[data-label="act:blocks.1.attn.hook_z"]')
    page.wait_for_selector('.cb-train-node.cb-train-node-hl[data-name="blocks.1.attn.hook_z"]')
    # gradients colour it from their own heatmap
    page.select_option('.cb-train-graph select[aria-label="graph colour"]', "grad")
    grad = _pixels(page, ".cb-train-map:nth-child(2) .cb-train-canvas")
    node = page.query_selector('.cb-train-node[data-name="blocks.0.hook_resid_post"]')
    row = view.names.index("blocks.0.hook_resid_post")
    assert _rgb(node.get_attribute("data-fill")) == grad[row, 0, :3].tolist()
    page.select_option('.cb-train-graph select[aria-label="graph colour"]', "act")
    page.query_selector(".cb-train-graph").screenshot(path=str(artifacts / "training-graph.png"))
    # back to the list: the graph is gone
    page.select_option('label:has-text("navigator") select', "list")
    assert page.query_selector(".cb-train-graph").is_hidden()
    assert page.cb_errors == []


def test_graph_of_an_mlp_with_a_skip_connection(page, tmp_path, artifacts):
    model = TokenMLP(vocab=12, d=8)
    rec = TrainingRecorder(model, every=1, path=tmp_path / "mlp.sqlite")
    ids, _ = toy_batch(0)
    record_dataflow(rec, ids)
    train_toy(model, 6, rec)
    run = rec.close()
    view = cb.training_view(run, navigator="graph")
    path = cb.report(view, path=tmp_path / "mlp.html", title="mlp")
    open_report(page, path)
    nodes = _check_graph_colours(page, view, len(run.steps) - 1)
    assert [n.get_attribute("data-name") for n in nodes] == view.names
    # the skip connection embed → unembed is an arc above the chain: the canvas is taller
    # than one row of boxes
    h = page.eval_on_selector(".cb-train-graph-canvas", "c => c.getBoundingClientRect().height")
    assert h > 30 + 12
    page.query_selector(".cb-train-graph").screenshot(
        path=str(artifacts / "training-graph-mlp.png")
    )
    assert page.cb_errors == []
