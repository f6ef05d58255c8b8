"""The causal-trace view in an exported page: three panels, pixels, hover, click, tokens as text."""

from __future__ import annotations

import numpy as np

import circuitboard as cb
from circuitboard.intervene import CausalTrace
from tests.browser.test_patching_view import canvas_pixels, cell_center
from tests.conftest import open_report


def _trace() -> CausalTrace:
    tokens = ["The", " <b>Eiffel</b>", " Tower", " is", " in"]
    values = np.zeros((3, 4, 5))
    values[1, 1, 2] = 0.6  # MLP at layer 1, the subject's last token: the peak
    values[0, :, 2] = 0.3
    values[2, 3, 4] = 0.4
    return CausalTrace(
        values,
        values / 0.7,
        values[None],
        ("hidden", "mlp", "attn"),
        tokens,
        [1, 2],
        " Paris",
        7,
        0.8,
        0.1,
        np.array([0.1]),
        3.0,
        0.4,
        1,
        0,
        (1, 10),
        notes=["noise on the subject"],
    )


def test_three_panels_hover_click_and_text_tokens(page, tmp_path, artifacts) -> None:
    view = cb.causal_trace_view(_trace())
    path = cb.report(view, path=tmp_path / "trace.html", title="causal trace")
    open_report(page, path)
    kinds = page.eval_on_selector_all(".cb-trace-panel", "ps => ps.map(p => p.dataset.kind)")
    assert kinds == ["hidden", "mlp", "attn"]
    mlp = '.cb-trace-panel[data-kind="mlp"] canvas'
    px = canvas_pixels(page, mlp)
    assert px.shape[:2] == (5, 4)  # tokens × layers
    assert px[0, 0, :3].min() == 255, "no effect is the background"
    r, g, b = (px[2, 1, i].astype(int) for i in range(3))
    assert g > r + 40 and g > b + 40, "the MLP peak is green, as in the paper"
    attn = canvas_pixels(page, '.cb-trace-panel[data-kind="attn"] canvas')
    r, g, b = (attn[4, 3, i].astype(int) for i in range(3))
    assert r > g + 40, "attention is red"
    labels = page.eval_on_selector_all(
        '.cb-trace-panel[data-kind="mlp"] .cb-patch-tok', "ts => ts.map(t => t.textContent)"
    )
    assert labels == ["The", "␣<b>Eiffel</b>*", "␣Tower*", "␣is", "␣in"]
    assert page.query_selector(".cb-trace b") is None  # tokens are text, never markup
    x, y = cell_center(page, mlp, 2, 1, 5, 4)
    page.mouse.move(x, y)
    page.wait_for_function(
        "() => document.querySelector('.cb-trace-readout').textContent.includes('mlp L1')"
    )
    assert "p gained +0.60" in page.inner_text(".cb-trace-readout")
    page.mouse.click(x, y)
    page.wait_for_selector('.cb-trace[data-selected="L1 token 2"]')
    page.screenshot(path=str(artifacts / "causal-trace-synthetic.png"), full_page=True)
    assert page.cb_errors == []


def test_hostile_tokens_are_text(page, tmp_path) -> None:
    from tests.browser.test_hostile_every_view import INJECTED
    from tests.hostile import HOSTILE_TOKENS

    tokens = [t for t in HOSTILE_TOKENS if "\ud800" not in t][:20]
    n = len(tokens)
    values = np.random.default_rng(0).uniform(0, 0.5, size=(3, 2, n))
    tr = CausalTrace(
        values,
        values,
        values[None],
        ("hidden", "mlp", "attn"),
        tokens,
        [2, 3],
        tokens[0],
        1,
        0.6,
        0.1,
        np.array([0.1]),
        3.0,
        0.3,
        1,
        0,
        (1, 10),
        notes=[tokens[3]],
    )
    path = cb.report(cb.causal_trace_view(tr), path=tmp_path / "hostile.html", title="trace")
    open_report(page, path)
    for i in range(n):
        page.locator('.cb-trace-panel[data-kind="mlp"] canvas').hover(
            position={"x": 3, "y": 18 * i + 9}
        )
    assert page.evaluate("() => window.__pwned === undefined")
    assert page.evaluate(f"() => document.querySelectorAll({INJECTED!r}).length") == 0
    assert tokens[0] in page.inner_text(".cb-trace .cb-patch-desc")  # the answer, as text
    assert page.cb_errors == []
