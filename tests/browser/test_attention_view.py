"""The attention view in Chromium: thumbnails, hover/lock, long prompts, on-demand heads, themes."""

from __future__ import annotations

import re

import numpy as np
import pytest

import circuitboard as cb
from circuitboard.export._html import build_report
from tests.browser.test_report_attention import canvas_pixels, random_attention, strip_colors
from tests.conftest import open_report


def write(view, tmp_path, name="r.html", **kwargs):
    return cb.report(view, path=tmp_path / name, **kwargs)


def assert_pixels_match(page, pattern: np.ndarray) -> None:
    """Cells with equal uint8 codes have equal colours; larger codes are darker (Blues).

    Only for causal patterns in the light theme (the masked upper triangle is white).
    """
    px = canvas_pixels(page).astype(int)
    assert px.shape[:2] == pattern.shape
    lower = np.tril(np.ones(pattern.shape, bool))  # above the diagonal: masked background
    codes = np.rint(pattern * 255).astype(int)[lower]
    lum = px[..., :3].sum(-1)[lower]
    assert (px[~lower][..., :3] == 255).all(), "the causal mask is drawn as the background"
    for c in np.unique(codes):
        same = lum[codes == c]
        assert same.max() - same.min() <= 3, f"code {c} drawn in different colours"
    order = np.argsort(np.unique(codes))
    means = np.array([lum[codes == c].mean() for c in np.unique(codes)])[order]
    assert np.all(np.diff(means) <= 3), "larger attention must be drawn darker"


def click_thumb(page, layer: int, head: int) -> None:
    page.click(f'.cb-thumb[data-layer="{layer}"][data-head="{head}"]')
    page.wait_for_selector(f'.cb-attention[data-layer="{layer}"][data-head="{head}"][data-shown]')


def test_clicking_a_thumbnail_shows_that_head(page, tmp_path, artifacts):
    att = random_attention(layers=3, heads=4, n=24, seed=3)
    path = write(cb.AttentionView(att, [f"w{i}" for i in range(24)], layers=[2, 5, 9]), tmp_path)
    open_report(page, path)
    assert page.eval_on_selector_all(".cb-thumb", "els => els.length") == 12
    assert_pixels_match(page, att[0, 0])
    click_thumb(page, 9, 3)
    assert_pixels_match(page, att[2, 3])
    linear = canvas_pixels(page)
    page.select_option('select[aria-label="colour scale"]', "sqrt")
    page.wait_for_selector('.cb-attention[data-scale="sqrt"]')
    assert_pixels_match(page, att[2, 3])  # still monotonic, lighter weights stand out more
    assert canvas_pixels(page)[..., :3].astype(int).sum() < linear[..., :3].astype(int).sum()
    page.select_option('select[aria-label="colour scale"]', "linear")
    assert page.eval_on_selector(
        ".cb-thumb-selected", "e => [e.dataset.layer, e.dataset.head]"
    ) == ["9", "3"]
    assert page.input_value('select[aria-label="head"]') == "3"
    assert "L9 H3" in page.inner_text(".cb-status")
    ms = float(page.get_attribute(".cb-attention", "data-last-ms"))
    assert 0 <= ms < 1000
    page.screenshot(path=str(artifacts / "attention-grid.png"), full_page=True)
    assert page.cb_errors == []


def test_short_prompt_heads_are_drawn_without_the_kernel(page, tmp_path):
    # Up to 32 tokens each thumbnail is its head, whole: a click draws at once, exactly, even
    # with the kernel gone, and the report embeds no separate copies of the heads.
    att = random_attention(layers=3, heads=4, n=24, seed=4)
    path = write(cb.AttentionView(att, [f"w{i}" for i in range(24)]), tmp_path)
    assert '"fetch-head"' not in path.read_text(encoding="utf-8")
    open_report(page, path)
    page.evaluate("() => { document.documentElement.dataset.cbKernel = 'dead'; }")
    click_thumb(page, 2, 1)
    assert_pixels_match(page, att[2, 1])
    assert page.get_attribute(".cb-attention", "data-last-fetch-ms") is None
    assert page.get_attribute(".cb-attention", "data-reduced") == "false"
    assert page.cb_errors == []


def test_hover_lock_unlock_and_escape(page, tmp_path):
    att = random_attention(layers=1, heads=2, n=16, seed=1)
    path = write(cb.AttentionView(att, [f"w{i}" for i in range(16)]), tmp_path)
    open_report(page, path)
    root = ".cb-attention"
    page.hover('.cb-token[data-i="9"]')
    page.wait_for_selector(f'{root}[data-token="9"][data-locked="false"]')
    colors = strip_colors(page)
    assert colors[9] != ""
    rows = [c for c in colors[:10] if c]
    assert rows and all(c.startswith("rgba(9, 105, 218") for c in rows)  # where it looks: blue
    later = [c for c in colors[10:] if c]
    assert all(c.startswith("rgba(188, 76, 0") for c in later)  # who looks at it: orange
    # The heatmap marks the token's row; moving away clears everything.
    page.mouse.move(2, 2)
    page.wait_for_selector(f'{root}[data-token=""]')
    assert set(strip_colors(page)) == {""}
    # Click locks: hovering elsewhere does not move it; a second click unlocks.
    page.click('.cb-token[data-i="4"]')
    page.wait_for_selector(f'{root}[data-token="4"][data-locked="true"]')
    page.hover('.cb-token[data-i="12"]')
    assert page.get_attribute(root, "data-token") == "4"
    assert "locked" in page.inner_text(".cb-caption")
    page.click('.cb-token[data-i="4"]')
    page.wait_for_selector(f'{root}[data-locked="false"]')
    # Clicking a heatmap row locks that query; Escape unlocks.
    page.mouse.move(2, 2)
    box = page.eval_on_selector(
        ".cb-heatmap",
        "c => { const r = c.getBoundingClientRect(), d = c.dataset;"
        " return [r.left, r.top, +d.x0, +d.y0, +d.cell]; }",
    )
    left, top, x0, y0, k = box
    page.mouse.click(left + x0 + 2.5 * k, top + y0 + 7.5 * k)
    page.wait_for_selector(f'{root}[data-token="7"][data-locked="true"]')
    page.keyboard.press("Escape")
    page.wait_for_selector(f'{root}[data-locked="false"]')
    assert page.cb_errors == []


def long_prompt(n: int, heads: int = 2) -> np.ndarray:
    """Sparse causal heads: previous token, first token and self, cheap for 4,096 positions."""
    att = np.zeros((1, heads, n, n), np.float32)
    q = np.arange(n)
    att[0, 0, q, np.maximum(q - 1, 0)] += 0.7
    att[0, 0, q, 0] += 0.3
    att[0, 1, q, q] = 0.5
    att[0, 1, q, 0] += 0.5
    return att


def test_4096_token_prompt_renders_zooms_and_virtualizes(page, tmp_path, artifacts):
    n = 4096
    tokens = [f" tok{i}" for i in range(n)]
    path = write(cb.AttentionView(long_prompt(n), tokens), tmp_path, budget_bytes=60_000_000)
    open_report(page, path, timeout=60_000)
    canvas = page.eval_on_selector(".cb-heatmap", "c => ({...c.dataset, w: c.width})")
    assert canvas["rows"] == "4096" and float(canvas["cell"]) < 1
    # Zoomed out, every pixel keeps the max of its cells: the diagonal band stays visible.
    strip = page.eval_on_selector(
        ".cb-tokens", "e => ({...e.dataset, spans: e.querySelectorAll('.cb-token').length})"
    )
    assert strip["virtual"] == "true" and 0 < strip["spans"] < 1024
    assert page.get_attribute(".cb-attention", "data-scale") == "sqrt"  # long prompt default
    # Zoom in with the button and the wheel; pan by dragging.
    page.click('button[aria-label="zoom in (+)"]')
    page.wait_for_selector('.cb-attention[data-zoom="2.00"]')
    box = page.eval_on_selector(
        ".cb-heatmap",
        "c => { const r = c.getBoundingClientRect();"
        " return [r.left + 84 + 180, r.top + 64 + 180]; }",
    )
    page.mouse.move(*box)
    for _ in range(6):
        page.mouse.wheel(0, -400)
    zoom = float(page.get_attribute(".cb-attention", "data-zoom"))
    assert zoom > 8
    before = page.get_attribute(".cb-heatmap", "data-x0")
    page.mouse.down()
    page.mouse.move(box[0] + 120, box[1] + 60, steps=4)
    page.mouse.up()
    assert page.get_attribute(".cb-heatmap", "data-x0") != before
    # Keyboard: lock the last token; the strip builds its block on demand and scrolls to it.
    page.mouse.move(2, 2)
    page.focus(".cb-attention")
    page.keyboard.press("ArrowLeft")  # no token yet: starts from the end
    page.wait_for_selector('.cb-attention[data-token="4095"][data-locked="true"]')
    # Past 2,048 tokens the strip is coloured from the pooled overview (max per 8-token block,
    # as the status line says) where no full-resolution tile is loaded: the previous token,
    # which this head attends to, is coloured; the whole block around it is too.
    assert page.eval_on_selector('.cb-token[data-i="4094"]', "e => e.style.background") != ""
    assert "max" in page.inner_text(".cb-attention .cb-status")
    page.hover('.cb-token[data-i="4090"]')  # locked: the hover does not take over
    assert page.get_attribute(".cb-attention", "data-token") == "4095"
    page.screenshot(path=str(artifacts / "attention-4096.png"))
    assert page.cb_errors == []


def test_head_fetched_on_demand_from_embedded_replies_and_reduced_heads(page, tmp_path, artifacts):
    att = random_attention(layers=4, heads=4, n=64, seed=5)
    view = cb.AttentionView(att, [f"w{i}" for i in range(64)], export_heads=[(2, 1)])
    full = len(build_report([view], title="t", budget_bytes=50_000_000))
    html = ""
    for frac in np.linspace(0.97, 0.7, 12):
        html = build_report([view], title="t", budget_bytes=int(full * frac))
        m = re.search(r"(\d+) of 16 heads at full resolution", html)
        if m and 2 <= int(m.group(1)) < 16:
            break
    else:
        pytest.fail("no budget between 70% and 97% of the full report reduced some heads")
    path = tmp_path / "small.html"
    path.write_text(html, encoding="utf-8")
    open_report(page, path)
    page.wait_for_selector(".cb-attention[data-included]")
    kept = int(page.get_attribute(".cb-attention", "data-included"))
    assert kept == int(m.group(1))
    reduced = page.eval_on_selector_all(
        ".cb-thumb-reduced", "els => els.map(e => [+e.dataset.layer, +e.dataset.head])"
    )
    assert len(reduced) == 16 - kept and [2, 1] not in reduced
    assert "thumbnails" in page.inner_text(".cb-notes")
    # A chosen head arrives from the report's embedded replies and is drawn exactly.
    click_thumb(page, 2, 1)
    assert page.get_attribute(".cb-attention", "data-reduced") == "false"
    assert_pixels_match(page, att[2, 1])
    # A reduced head shows its thumbnail and says so.
    layer, head = reduced[-1]
    click_thumb(page, layer, head)
    assert page.get_attribute(".cb-attention", "data-reduced") == "true"
    assert "thumbnail" in page.inner_text(".cb-status")
    assert page.get_attribute(".cb-heatmap", "data-rows") == "32"
    page.screenshot(path=str(artifacts / "attention-reduced.png"), full_page=True)
    assert page.cb_errors == []


def test_theme_follows_the_host_and_the_trait(page, tmp_path, artifacts):
    att = random_attention(layers=2, heads=3, n=12)
    path = write(cb.AttentionView(att, [f"w{i}" for i in range(12)]), tmp_path)
    open_report(page, path)
    root = ".cb-attention"
    page.wait_for_selector(f"{root}[data-cb-theme=light]")
    light = canvas_pixels(page)
    bg = page.eval_on_selector(root, "e => getComputedStyle(e).backgroundColor")
    page.eval_on_selector("body", "b => b.dataset.jpThemeLight = 'false'")  # JupyterLab dark
    page.wait_for_selector(f"{root}[data-cb-theme=dark]")
    dark = canvas_pixels(page)
    assert not np.array_equal(light, dark)
    assert page.eval_on_selector(root, "e => getComputedStyle(e).backgroundColor") != bg
    page.hover('.cb-token[data-i="8"]')
    page.screenshot(path=str(artifacts / "attention-dark.png"), full_page=True)
    page.eval_on_selector(
        "body", "b => { delete b.dataset.jpThemeLight; b.classList.add('vscode-light'); }"
    )
    page.wait_for_selector(f"{root}[data-cb-theme=light]")
    assert np.array_equal(canvas_pixels(page), light)
    # The `theme` trait forces a theme whatever the host says.
    path2 = write(
        cb.AttentionView(att, [f"w{i}" for i in range(12)], theme="dark"), tmp_path, "dark.html"
    )
    open_report(page, path2)
    page.wait_for_selector(f"{root}[data-cb-theme=dark]")
    assert page.cb_errors == []


def test_keyboard_moves_head_and_token(page, tmp_path):
    att = random_attention(layers=3, heads=3, n=10)
    path = write(cb.AttentionView(att, [f"w{i}" for i in range(10)]), tmp_path)
    open_report(page, path)
    root = ".cb-attention"
    page.focus(root)
    page.keyboard.press("ArrowDown")
    page.wait_for_selector(f'{root}[data-layer="0"][data-head="1"][data-shown]')
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")  # past the last head: next layer
    page.wait_for_selector(f'{root}[data-layer="1"][data-head="0"]')
    page.keyboard.press("ArrowRight")
    page.wait_for_selector(f'{root}[data-token="0"][data-locked="true"]')
    page.keyboard.press("ArrowRight")
    page.wait_for_selector(f'{root}[data-token="1"]')
    page.keyboard.press("Escape")
    page.wait_for_selector(f'{root}[data-locked="false"]')
    page.focus(".cb-att-grid")  # in the grid, arrows walk heads and layers
    page.keyboard.press("ArrowDown")
    page.wait_for_selector(f'{root}[data-layer="2"][data-head="0"]')
    page.keyboard.press("ArrowRight")
    page.wait_for_selector(f'{root}[data-layer="2"][data-head="1"]')
    assert page.cb_errors == []


def test_scores_highlight_and_sort_heads(page, tmp_path):
    n = 12
    att = np.tile(np.tril(np.ones((n, n), np.float32)), (2, 3, 1, 1))
    att[1, 2] = np.eye(n, k=-1)
    att[1, 2, 0, 0] = 1
    att /= att.sum(-1, keepdims=True)
    path = write(cb.AttentionView(att, [f"w{i}" for i in range(n)]), tmp_path)
    open_report(page, path)
    page.select_option('select[aria-label="head score"]', "previous_token")
    page.check('input[aria-label="sort heads by score"]')
    page.wait_for_selector('.cb-attention[data-score="previous_token"]')
    best = '.cb-thumb[data-layer="1"][data-head="2"]'
    assert page.eval_on_selector(best, "e => e.style.order") == "1"
    assert page.eval_on_selector(f"{best} .cb-thumb-bar", "e => e.style.width") == "100%"
    assert "previous token: 1.000" in page.get_attribute(best, "title")
    assert page.cb_errors == []


def test_linked_views_follow_each_other(page, tmp_path):
    """Two views on one Link: a click in one moves the other (the path Python changes take)."""
    att = random_attention(layers=2, heads=3, n=10)
    tokens = [f"w{i}" for i in range(10)]
    a = cb.AttentionView(att, tokens)
    b = cb.AttentionView(att[::-1].copy(), tokens)
    cb.link(a, b)
    open_report(page, cb.report(a, b, path=tmp_path / "linked.html"))
    first, second = ".cb-slot >> nth=0", ".cb-slot >> nth=1"
    page.locator(first).locator('.cb-thumb[data-layer="1"][data-head="2"]').click()
    page.locator(second).locator('.cb-attention[data-layer="1"][data-head="2"]').wait_for()
    page.locator(first).locator('.cb-token[data-i="3"]').click()
    page.locator(second).locator('.cb-attention[data-token="3"][data-locked="true"]').wait_for()
    assert page.cb_errors == []
