"""The attention view's explanation panel in Chromium: click a cell → the component pairs, the
values on hover, the OV source bars; a component click moves a linked view; hostile tokens stay
text."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.widgets._explain_panel import PANEL_PAIRS
from tests.conftest import open_report
from tests.hostile import HOSTILE_TOKENS
from tests.unit.tiny_models import tiny_llama

PROMPT = "When Mary and John went to the store, John gave a drink to Mary and the dog."
LAYER, HEAD = 1, 2


@pytest.fixture(scope="module")
def hostile_cap():
    model, tok = tiny_llama()
    cap = cb.capture(model, tok, PROMPT + " " + PROMPT, dtype=torch.float32)
    n = cap.n_tokens
    assert n >= len(HOSTILE_TOKENS)
    tokens = [HOSTILE_TOKENS[i % len(HOSTILE_TOKENS)] for i in range(n)]
    return dataclasses.replace(cap, tokens=tokens)


def fmt(v: float) -> str:
    """The panel's number format (``fmt`` in views/attribution.ts)."""
    a = abs(v)
    if a >= 100:
        s = f"{v:.0f}"
    elif a >= 10:
        s = f"{v:.1f}"
    elif a >= 0.01 or a == 0:
        s = f"{v:.2f}"
    else:
        m, e = f"{v:.1e}".split("e")
        s = f"{m}e{int(e):+d}"
    return "+" + s if v > 0 else s.replace("-", "−", 1)


def click_cell(page, row: int, col: int) -> None:
    left, top, x0, y0, k = page.eval_on_selector(
        ".cb-attention .cb-heatmap",
        "c => { const r = c.getBoundingClientRect(), d = c.dataset, s = devicePixelRatio;"
        " return [r.left, r.top, +d.x0 / s, +d.y0 / s, +d.cell / s]; }",
    )
    page.mouse.click(left + x0 + (col + 0.5) * k, top + y0 + (row + 0.5) * k)


def test_click_a_cell_explains_it(page, tmp_path, artifacts, hostile_cap):
    cap = hostile_cap
    n = cap.n_tokens
    att = cb.attention(cap, layer=LAYER, head=HEAD, target=5, baseline=7)
    dla = cb.logit_attribution(cap, 5, baseline=7, follow_token=False)
    cb.link(att, dla)
    path = cb.report(att, dla, path=tmp_path / "explain.html")
    open_report(page, path)
    assert page.get_attribute(".cb-xp", "data-state") is None  # closed until a click

    q = n - 2
    k = int(np.argmax(att.pattern(LAYER, HEAD)[q]))  # embedded in the report
    click_cell(page, q, k)
    page.wait_for_selector(".cb-xp[data-state=ready]")
    ex = cb.explain_attention(cap, layer=LAYER, head=HEAD, query=q, key=k)

    # the pairs, in the order and with the values the kernel computed
    pairs = page.eval_on_selector_all(
        ".cb-xp-pair",
        "els => els.map(e => [...e.querySelectorAll('.cb-xp-comp')].map(c => c.textContent)"
        ".concat(e.querySelector('.cb-xp-num').textContent))",
    )
    top = ex.top(PANEL_PAIRS)
    assert [p[:2] for p in pairs] == [[t["query"], t["key"]] for t in top]
    assert page.eval_on_selector_all(".cb-xp-cell[data-row]", "els => els.length") == 36

    # a value on hover: the cell of the top pair
    ri = page.eval_on_selector_all(
        ".cb-xp-rowhead .cb-xp-comp", "els => els.map(e => e.textContent)"
    )
    ci = page.eval_on_selector_all(
        ".cb-xp-colhead .cb-xp-comp", "els => els.map(e => e.textContent)"
    )
    r, c = ri.index(top[0]["query"]), ci.index(top[0]["key"])
    page.hover(f'.cb-xp-cell[data-row="{r}"][data-col="{c}"]')
    tip = page.inner_text(".cb-xp-tip")
    assert tip.startswith(f"query {top[0]['query']} × key {top[0]['key']}: ")
    value = float(page.get_attribute(f'.cb-xp-cell[data-row="{r}"][data-col="{c}"]', "data-value"))
    assert value == pytest.approx(top[0]["value"], rel=1e-9)
    summary = page.inner_text(".cb-xp-summary")
    assert summary.startswith(f"score {fmt(ex.score)} = Σ of {len(ex.query_labels)} × ")
    assert [p[2] for p in pairs] == [fmt(t["value"]) for t in top]

    # the OV bars: what the head moves into the target from each source, as the kernel says
    ov = cb.explain_head_output(cap, layer=LAYER, head=HEAD, query=q, target=5, baseline=7)
    pos = page.eval_on_selector_all(".cb-xp-source", "els => els.map(e => +e.dataset.pos)")
    assert pos == [t["pos"] for t in ov.top(16)]

    # hostile tokens stay text: shown literally, nothing injected, nothing ran
    title = page.inner_text(".cb-xp-title")
    assert f"#{q} " in title and f"#{k} " in title
    sources = page.inner_text(".cb-xp-sources")
    titles = " ".join(page.eval_on_selector_all(".cb-xp-source", "els => els.map(e => e.title)"))
    shown = {t["pos"] for t in ov.top(16)}
    plain = [cap.tokens[i] for i in shown if cap.tokens[i].isprintable()]
    plain = [t for t in plain if '"' not in t and "\\" not in t]  # JSON-escaped in the tip
    assert plain and all(t in titles for t in plain)  # literal markup, whole, in the tooltips
    assert any(cap.tokens[i].startswith("<img") for i in shown) <= ("onerror" in sources)
    assert (
        page.eval_on_selector_all(
            ".cb-xp script, .cb-xp img, .cb-xp svg, .cb-xp iframe, .cb-xp b", "e => e.length"
        )
        == 0
    )
    assert page.evaluate("() => window.__pwned") is None
    page.screenshot(path=str(artifacts / "explain-panel-hostile.png"), full_page=True)

    # a component click selects it in the linked attribution view (and the attention view)
    comp = page.eval_on_selector(
        ".cb-xp-grid button.cb-xp-comp[data-label^='L0H']", "e => e.dataset.label"
    )
    page.locator(f".cb-xp-grid button.cb-xp-comp[data-label='{comp}']").first.click()
    layer, head = comp[1:].split("H")
    page.wait_for_selector(f'.cb-dla[data-layer="{layer}"][data-head="{head}"]')
    page.wait_for_selector(f'.cb-attention[data-layer="{layer}"][data-head="{head}"]')

    # a cell the report did not embed says so instead of hanging
    click_cell(page, 1, 0)  # of the head just selected, whose cells the report left out
    page.wait_for_selector(".cb-xp[data-state=error]")
    assert "not in this report" in page.inner_text(".cb-xp-summary")
    assert page.cb_errors == [] and page.cb_blocked == []


def test_escape_closes_the_panel_as_its_close_button_says(page, tmp_path):
    model, tok = tiny_llama()
    cap = cb.capture(model, tok, PROMPT, dtype=torch.float32)
    att = cb.attention(cap, layer=LAYER, head=HEAD)
    open_report(page, cb.report(att, path=tmp_path / "escape.html"))
    assert "(Escape)" in page.get_attribute(".cb-xp-close", "title")
    q = cap.n_tokens - 1
    k = int(np.argmax(att.pattern(LAYER, HEAD)[q]))  # embedded in the report
    click_cell(page, q, k)
    page.wait_for_selector(".cb-xp[data-state=ready]")
    assert page.get_attribute(".cb-attention", "data-explained") == f"{q},{k}"
    page.keyboard.press("Escape")
    page.wait_for_selector(".cb-xp[data-state=closed]", state="attached")
    assert page.locator(".cb-xp").is_hidden()
    assert page.get_attribute(".cb-attention", "data-explained") == ""  # the cell unmarked
    # focus on the panel's own controls: Escape closes it too
    click_cell(page, q, k)
    page.wait_for_selector(".cb-xp[data-state=ready]")
    page.focus(".cb-xp-close")
    page.keyboard.press("Escape")
    page.wait_for_selector(".cb-xp[data-state=closed]", state="attached")
    assert page.cb_errors == []
