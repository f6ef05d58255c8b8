"""The composition view in an exported page: threshold greys pairs, hover, click → linked
attention view opens the reader head."""

from __future__ import annotations

import numpy as np

import circuitboard as cb
from circuitboard.analysis import CompositionScores
from tests.browser.test_patching_view import canvas_pixels, cell_center
from tests.conftest import open_report


def _scores() -> CompositionScores:
    L, H = 3, 2
    values = {k: np.zeros((L, H, L, H)) for k in "QKV"}
    li = np.arange(L)
    valid = np.broadcast_to(li[:, None, None, None] < li[None, None, :, None], (L, H, L, H))
    for k in "QKV":
        values[k][valid] = 0.2
    values["K"][0, 1, 2, 0] = 0.9  # the planted pair: L0H1 → L2H0
    values["Q"][1, 0, 2, 1] = 0.7
    return CompositionScores(
        values=values,
        baseline={k: 0.2 for k in "QKV"},
        baseline_std={k: 0.01 for k in "QKV"},
        n_layers=L,
        n_heads=H,
        n_kv_heads=1,
        folded_norms=True,
        notes=["synthetic"],
    )


def test_threshold_hover_click_and_link(page, tmp_path, artifacts):
    link = cb.Link()
    view = cb.composition_view(_scores(), link=link)
    assert view.threshold == 0.2 + 3 * 0.01
    att = np.tril(np.ones((3, 2, 4, 4)))
    att /= att.sum(-1, keepdims=True)
    attn = cb.AttentionView(att, [f"t{i}" for i in range(4)], link=link)
    path = cb.report(view, attn, path=tmp_path / "comp.html", title="composition")
    open_report(page, path)
    px = canvas_pixels(page, ".cb-comp-heat")
    assert px.shape[:2] == (6, 6)
    # only the planted K pair is above the threshold: one coloured cell, the rest grey
    assert page.get_attribute(".cb-comp", "data-shown") == "1"
    planted = px[1, 4, :3].astype(int)
    grey = px[0, 2, :3].astype(int)
    assert planted[2] > planted[0] + 60, "the strong pair is blue"
    assert abs(grey[0] - grey[2]) < 10, "pairs below the threshold are grey"
    x, y = cell_center(page, ".cb-comp-heat", 1, 4, 6, 6)
    page.mouse.move(x, y)
    page.wait_for_selector('.cb-comp[data-hover="L0H1 → L2H0 (K): +0.90"]')
    page.mouse.click(x, y)
    page.wait_for_selector('.cb-comp[data-selected="L0H1 → L2H0 (K)"]')
    page.wait_for_selector('.cb-attention[data-layer="2"][data-head="0"]')
    page.click("button >> text=select writer L0H1")
    page.wait_for_selector('.cb-attention[data-layer="0"][data-head="1"]')
    # switching to Q shows its own strongest pair
    page.select_option(".cb-comp-kind", "Q")
    page.wait_for_selector('.cb-comp[data-kind="Q"][data-shown="1"]')
    assert "L1H0 → L2H1 (Q)" in page.inner_text(".cb-patch-list")
    page.screenshot(path=str(artifacts / "composition-synthetic.png"), full_page=True)
    assert page.cb_errors == []
