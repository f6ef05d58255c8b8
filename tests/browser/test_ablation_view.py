"""The ablation view in an exported page: rows by mean effect, hover, click → linked view."""

from __future__ import annotations

import numpy as np

import circuitboard as cb
from circuitboard.intervene import Ablation
from tests.browser.test_patching_view import canvas_pixels, cell_center
from tests.conftest import open_report


def test_rows_hover_and_click(page, tmp_path, artifacts):
    values = np.array([[3.0, 3.0, 3.0], [9.0, 8.0, 10.0], [2.0, 3.5, 3.0]])
    res = Ablation(
        values,
        np.array([3.0, 3.0, 3.0]),
        ["L0H1", "L1", "L1H2"],
        "zero",
        "loss",
        ["<b>one</b>", "two", "three"],
        notes=["zero: test"],
    )
    link = cb.Link()
    view = cb.ablation_view(res, link=link)
    att = np.tril(np.ones((2, 3, 4, 4)))
    att /= att.sum(-1, keepdims=True)
    attn = cb.AttentionView(att, [f"t{i}" for i in range(4)], link=link)
    open_report(page, cb.report(view, attn, path=tmp_path / "abl.html", title="ablation"))
    names = page.eval_on_selector_all(".cb-abl-name", "els => els.map(e => e.textContent)")
    assert names == ["L1", "L1H2", "L0H1"]  # by |mean effect|: +6, −0.17, 0
    px = canvas_pixels(page, ".cb-abl-heat")
    assert px.shape[:2] == (3, 3)
    r, g, b = (px[0, 0, i].astype(int) for i in range(3))
    assert b > r + 60, "a loss that rises is one colour"
    assert px[2, 0, :3].min() > 200, "an unchanged cell is the neutral centre"
    x, y = cell_center(page, ".cb-abl-heat", 0, 2, 3, 3)
    page.mouse.move(x, y)
    page.wait_for_selector('.cb-abl[data-hover="L1 on prompt 2: +7.00 (+3.00 → +10.0)"]')
    assert "<b>one</b>" not in page.inner_text(".cb-abl-readout")
    page.click(".cb-abl-name >> text=L1H2")
    page.wait_for_selector('.cb-attention[data-layer="1"][data-head="2"]')
    page.screenshot(path=str(artifacts / "ablation-synthetic.png"), full_page=True)
    assert page.cb_errors == []


def test_feature_rows_read_as_text(page, tmp_path, artifacts):
    """Dictionary features ablated on a tiny model: their labels (hook#index, the feature's
    name) are the row names, as text."""
    from circuitboard.testing import tiny_model

    model, tok = tiny_model("llama")
    names = [f"f{i}" for i in range(64)]
    names[9] = "<i>names</i> of people"
    sae = cb.SAE(32, 64, kind="topk", k=4, hook="blocks.0.hook_resid_post", seed=0, labels=names)
    prompts = ["When Mary and John went to the store, John gave a drink to", "the quick brown fox"]
    res = cb.ablate(model, tok, prompts, [(sae, 9), (sae, [1, 2, 3]), ["L1H2", (sae, 5)], "L0"])
    open_report(page, cb.report(cb.ablation_view(res), path=tmp_path / "f.html", title="features"))
    shown = page.eval_on_selector_all(".cb-abl-name", "els => els.map(e => e.textContent)")
    assert sorted(shown) == sorted(res.labels)
    assert "blocks.0.hook_resid_post#9 <i>names</i> of people" in shown  # text, never HTML
    page.screenshot(path=str(artifacts / "ablation-features.png"), full_page=True)
    assert page.cb_errors == []
