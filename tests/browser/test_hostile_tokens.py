"""Hostile token text cannot break or script an exported page; it shows as the exact text."""

from __future__ import annotations

import numpy as np

import circuitboard as cb
from tests.conftest import open_report
from tests.hostile import HOSTILE_TOKENS, shown


def uniform_causal(n: int) -> np.ndarray:
    att = np.tril(np.ones((1, 2, n, n), dtype=np.float32))
    return att / att.sum(-1, keepdims=True)


def test_hostile_tokens_in_exported_attention_view(page, tmp_path, artifacts):
    tokens = list(HOSTILE_TOKENS)
    n = len(tokens)
    view = cb.AttentionView(uniform_causal(n), tokens)
    path = cb.report(
        "Title text with <script>window.__pwned=99</script> in it",
        view,
        path=tmp_path / "hostile.html",
        title="</title><script>window.__pwned=98</script>",
    )
    open_report(page, path)
    page.hover(".cb-token >> nth=3")
    page.click(".cb-token >> nth=5")
    page.mouse.move(5, 5)
    assert page.evaluate("() => window.__pwned === undefined")
    texts = page.eval_on_selector_all(".cb-token", "els => els.map(e => e.textContent)")
    assert texts[: len(tokens)] == [shown(t) for t in tokens]
    injected = "img, svg, iframe, b, style:not(head style)"
    assert page.evaluate(f"() => document.querySelectorAll({injected!r}).length") == 0
    assert "<script>" in page.inner_text("body")  # shown as text, not run
    assert page.title() == "</title><script>window.__pwned=98</script>"
    page.screenshot(path=str(artifacts / "hostile-tokens.png"), full_page=True)
    assert page.cb_errors == []
