"""The patching view in an exported page: pixels, hover values, click → linked attention view,
hostile tokens as text."""

from __future__ import annotations

import numpy as np
import pytest

import circuitboard as cb
from circuitboard.intervene import Patching
from tests.conftest import IOI_PROMPT, open_report
from tests.hostile import HOSTILE_TOKENS, shown

CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def _heads_result() -> Patching:
    values = np.zeros((4, 3))
    values[2, 1] = 0.9  # strongest: restores 90 %
    values[1, 0] = -0.4
    values[3, 2] = 0.3
    raw = -1.0 + 3.0 * values  # corrupted -1, clean 2
    tokens = {"clean": ["a", "b", "c"], "corrupted": ["a", "x", "c"]}
    return Patching(
        values,
        raw,
        "heads",
        "exact",
        "denoise",
        "logit diff at the last position",
        ("layer", "head"),
        [0, 1, 2, 3],
        None,
        [0, 1, 2],
        tokens,
        2.0,
        -1.0,
        1,
        notes=["denoise: test"],
    )


def _position_result(n: int) -> Patching:
    rng = np.random.default_rng(0)
    values = rng.uniform(-0.2, 1.0, size=(3, n))
    values[:, :2] = 0.0
    clean = [t if t else "∅" for t in HOSTILE_TOKENS[:n]]
    corrupted = list(clean)
    corrupted[2] = "<b>swapped</b>"
    return Patching(
        values,
        values * 2,
        "resid_pre",
        "exact",
        "denoise",
        "m",
        ("layer", "position"),
        [0, 1, 2],
        list(range(n)),
        None,
        {"clean": clean, "corrupted": corrupted},
        2.0,
        0.0,
        2,
    )


def canvas_pixels(page, selector: str) -> np.ndarray:
    data = page.eval_on_selector(
        selector, "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
    )
    w, h = page.eval_on_selector(selector, "c => [c.width, c.height]")
    return np.array(data, dtype=np.uint8).reshape(h, w, 4)


def cell_center(page, selector, row, col, rows, cols):
    box = page.query_selector(selector).bounding_box()
    return (
        box["x"] + box["width"] * (col + 0.5) / cols,
        box["y"] + box["height"] * (row + 0.5) / rows,
    )


def test_heads_hover_click_follows_in_attention_view(page, tmp_path, artifacts):
    link = cb.Link()
    view = cb.patching_view(_heads_result(), link=link)
    rng = np.random.default_rng(0)
    att = np.tril(rng.uniform(size=(4, 3, 5, 5)))
    att /= att.sum(-1, keepdims=True)
    attn = cb.AttentionView(att, [f"t{i}" for i in range(5)], link=link)
    path = cb.report(view, attn, path=tmp_path / "patch.html", title="patching")
    open_report(page, path)
    px = canvas_pixels(page, ".cb-patch-heat")
    assert px.shape[:2] == (4, 3)
    r, g, b = (px[2, 1, i].astype(int) for i in range(3))
    assert b > r + 60, "a site that restores the answer is blue"
    r, g, b = (px[1, 0, i].astype(int) for i in range(3))
    assert r > b + 40, "a site that hurts is red"
    assert px[0, 0, :3].min() > 200, "0 (corrupted) is the neutral centre"
    assert "1 clean" in page.inner_text(".cb-patch-legend")
    x, y = cell_center(page, ".cb-patch-heat", 2, 1, 4, 3)
    page.mouse.move(x, y)
    page.wait_for_selector('.cb-patch[data-hover="L2H1"]')
    assert page.inner_text(".cb-patch-tip") == "L2H1: +0.90 (raw +1.70)"
    assert "normalized +0.90" in page.inner_text(".cb-patch-readout")
    page.mouse.click(x, y)
    page.wait_for_selector('.cb-patch[data-selected="L2H1"]')
    page.wait_for_selector('.cb-attention[data-layer="2"][data-head="1"]')
    # a row of the top list selects too
    page.click(".cb-patch-row >> text=L1H0")
    page.wait_for_selector('.cb-attention[data-layer="1"][data-head="0"]')
    page.screenshot(path=str(artifacts / "patching-synthetic.png"), full_page=True)
    assert page.cb_errors == []


def test_position_rows_show_hostile_tokens_as_text(page, tmp_path):
    n = 12
    res = _position_result(n)
    view = cb.PatchingView(res)
    path = cb.report(view, path=tmp_path / "hostile.html", title="hostile")
    open_report(page, path)
    assert page.evaluate("() => window.__pwned") is None
    toks = page.eval_on_selector_all(
        ".cb-patch-rlabel", "rows => rows.map(r => r.querySelector('.cb-patch-tok').textContent)"
    )
    want = [shown(t) for t in res.tokens["clean"]]
    assert len(toks) == n
    for got, w in zip(toks, want, strict=True):
        assert got.replace("␣", " ").replace("↵", "\n").replace("⇥", "\t") == w or got == "∅"
    assert page.inner_text(".cb-patch-diff .cb-patch-tok-corrupt") == "<b>swapped</b>"
    assert page.query_selector(".cb-patch b") is None  # no markup was parsed
    # rows are positions, columns layers: click position 5 at layer 1 → {layer 1, token 5}
    x, y = cell_center(page, ".cb-patch-heat", 5, 1, n, 3)
    page.mouse.move(x, y)
    page.wait_for_selector('.cb-patch[data-hover^="L1 pos 5 "]')
    page.mouse.click(x, y)
    page.wait_for_selector('.cb-patch[data-selected^="L1 pos 5 "]')
    assert page.cb_errors == []


@pytest.mark.real
def test_default_model_ioi_board(page, default_model, tmp_path, artifacts):
    model, tok = default_model
    heads = cb.patch(model, tok, IOI_PROMPT, CORRUPT, answer=" Mary", wrong=" John", site="heads")
    resid = cb.patch(
        model,
        tok,
        IOI_PROMPT,
        CORRUPT,
        answer=" Mary",
        wrong=" John",
        site="resid_pre",
        method="attribution",
    )
    cap = cb.capture(model, tok, IOI_PROMPT, layers=list(range(15, 30)))
    link = cb.Link()
    board = cb.board(
        cb.patching_view(heads, link=link),
        cb.patching_view(resid, link=link),
        cb.attention(cap, link=link),
        title="IOI patching",
    )
    path = cb.report(board, path=tmp_path / "ioi-patching.html", title="IOI patching")
    open_report(page, path)
    top = heads.top(1)[0]
    li, h = top["layer"], top["head"]
    x, y = cell_center(page, ".cb-patch-heat >> nth=0", li, h, 30, 9)
    page.mouse.click(x, y)
    page.wait_for_selector(f'.cb-attention[data-layer="{li}"][data-head="{h}"]')
    page.screenshot(path=str(artifacts / "patching-ioi-board.png"), full_page=True)
    view = page.query_selector(".cb-patch >> nth=0")
    view.screenshot(path=str(artifacts / "patching-ioi-heads.png"))
    page.query_selector(".cb-patch >> nth=1").screenshot(
        path=str(artifacts / "patching-ioi-resid.png")
    )
    assert page.cb_errors == []
