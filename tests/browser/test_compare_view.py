"""CompareView in an exported page: pixels follow the effect sizes, hover, pickers, linking."""

from __future__ import annotations

import numpy as np
import pytest

import circuitboard as cb
from circuitboard.analysis._compare import Comparison, RunningStats
from tests.browser.test_attribution_views import canvas_pixels, cell_center
from tests.conftest import open_report
from tests.hostile import HOSTILE_TOKENS

L, H, D = 4, 3, 20


def synthetic(names: list[str], n: int = 10) -> Comparison:
    """Categories with known means / stds: head (2, 1) higher in the first, (1, 0) lower."""
    rng = np.random.default_rng(0)
    stats = {}
    for ci, name in enumerate(names):
        per = {}
        for stat, shape in {
            "head_write": (L, H),
            "attn_first": (L, H),
            "attn_out": (L,),
            "mlp_out": (L,),
            "neurons": (L, D),
        }.items():
            mean = rng.normal(0, 0.01, size=shape)
            if ci == 0 and len(shape) == 2 and stat != "neurons":
                mean[2, 1] = 3.0
                mean[1, 0] = -2.0
            if ci == 0 and stat == "neurons":
                mean[3, 7] = 5.0
            if ci == 0 and stat == "mlp_out":
                mean[3] = 2.0
            per[stat] = RunningStats(n, mean, np.full(shape, (n - 1) * 1.0))  # std 1
        stats[name] = per
    return Comparison(list(names), stats, list(range(L)), H, D, -1, dict.fromkeys(names, n))


def attention_view(link):
    rng = np.random.default_rng(0)
    att = np.tril(rng.uniform(size=(L, H, 5, 5)))
    att /= att.sum(-1, keepdims=True)
    return cb.AttentionView(att, [f"t{i}" for i in range(5)], link=link)


def test_compare_pixels_hover_pickers_and_link(page, tmp_path, artifacts):
    cmp = synthetic(["IOI", "other", "third"])
    link = cb.Link()
    view = cb.compare_view(cmp, link=link)
    path = cb.report(view, attention_view(link), path=tmp_path / "cmp.html", title="compare")
    open_report(page, path)
    d = cmp.effect("IOI", "other", "head_write").d

    px = canvas_pixels(page, ".cb-cmp-heat")
    assert px.shape[:2] == (L, H)
    r, g, b = (px[2, 1, i].astype(int) for i in range(3))
    assert b > r + 60, "higher in A should be blue"
    r, g, b = (px[1, 0, i].astype(int) for i in range(3))
    assert r > b + 60, "lower in A should be red"
    near = np.unravel_index(np.abs(d).argmin(), d.shape)
    assert px[near][:3].min() > 200, "no difference should be near white"

    x, y = cell_center(page, ".cb-cmp-heat", 2, 1, L, H)
    page.mouse.move(x, y)
    page.wait_for_selector('.cb-cmp[data-hover="L2H1"]')
    tip = page.inner_text(".cb-cmp-tip")
    e = cmp.effect("IOI", "other", "head_write")
    assert f"d +{d[2, 1]:.2f}" in tip and f"t +{e.t[2, 1]:.2f}" in tip
    assert f"IOI: {e.mean_a[2, 1]:.3f} ± 1.000 (n=10)" in tip
    assert "other: " in tip and "(n=10)" in tip
    page.mouse.click(x, y)
    page.wait_for_selector('.cb-cmp[data-layer="2"][data-head="1"]')
    page.wait_for_selector('.cb-attention[data-layer="2"][data-head="1"]')
    # the top heads list starts with the clicked head, marked active
    page.wait_for_selector('.cb-cmp-heads .cb-cmp-row-active[data-layer="2"][data-head="1"]')
    assert page.inner_text(".cb-cmp-heads .cb-cmp-row >> nth=0").startswith("L2H1")

    # Top neurons (embedded replies): the planted neuron first; a click selects it.
    first = page.inner_text(".cb-cmp-neurons .cb-cmp-row >> nth=0")
    assert "L3 N7" in first
    page.click(".cb-cmp-neurons .cb-cmp-row >> nth=0")
    page.wait_for_selector('.cb-cmp-neurons .cb-cmp-row-active[data-layer="3"][data-neuron="7"]')

    # Pickers: measure, statistic and categories recompute in the page (no kernel).
    page.select_option('select[aria-label="measure"]', "t")
    page.wait_for_selector('.cb-cmp[data-measure="t"]')
    page.mouse.move(x, y)
    page.wait_for_selector('.cb-cmp[data-hover="L2H1"]')
    assert page.inner_text(".cb-cmp-caption").startswith("Welch's t")
    page.select_option('select[aria-label="category B"]', "0")  # picking A's category swaps
    page.wait_for_selector('.cb-cmp[data-a="1"][data-b="0"]')
    px = canvas_pixels(page, ".cb-cmp-heat")
    r, g, b = (px[2, 1, i].astype(int) for i in range(3))
    assert r > b + 60, "swapped categories flip the sign"
    page.wait_for_selector('.cb-cmp[data-neurons="1,0,t,null"]')
    page.select_option('select[aria-label="statistic"]', "1")
    page.wait_for_selector('.cb-cmp[data-stat="attn_first"]')
    page.select_option('select[aria-label="category A"]', "2")
    page.wait_for_selector('.cb-cmp[data-a="2"][data-b="0"]')
    # MLP bar of layer 3 lists that layer's neurons
    bx, by = cell_center(page, '.cb-cmp-bars[data-which="mlp_out"]', 3, 0, L, 1)
    page.mouse.move(bx, by)
    page.wait_for_selector('.cb-cmp[data-hover="L3.mlp_out"]')
    page.mouse.click(bx, by)
    page.wait_for_selector('.cb-cmp[data-neuron-scope="3"]')
    page.screenshot(path=str(artifacts / "compare-synthetic.png"), full_page=True)
    assert page.cb_errors == []


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_hostile_category_names_render_as_text(page, tmp_path, artifacts, theme):
    names = [t for t in HOSTILE_TOKENS if t.strip()][:6]
    view = cb.compare_view(synthetic(names), theme=theme)
    path = cb.report(view, path=tmp_path / "hostile.html", title="hostile")
    open_report(page, path)
    assert page.evaluate("() => window.__pwned") is None
    options = page.eval_on_selector_all(
        'select[aria-label="category A"] option', "os => os.map(o => o.textContent)"
    )
    assert options == names
    assert names[0] in page.inner_text(".cb-cmp-caption")
    x, y = cell_center(page, ".cb-cmp-heat", 2, 1, L, H)
    page.mouse.move(x, y)
    page.wait_for_selector('.cb-cmp[data-hover="L2H1"]')
    assert names[1] in page.inner_text(".cb-cmp-tip")
    page.screenshot(path=str(artifacts / f"compare-hostile-{theme}.png"), full_page=True)
    assert page.cb_errors == []
