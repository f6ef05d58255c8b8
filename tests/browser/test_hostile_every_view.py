"""Hostile text in every view, in one exported page: nothing runs, the text shows exactly.

Token strings, labels, prompt names and dataset texts go through a tiny model's capture and
analyses into the attention, logit attribution, logit lens, neurons and dashboard views and a
board; the page must raise no dialog, run no script, grow no injected element, and show each
token's text exactly (``textContent``) where a view lists tokens in the DOM.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import pytest

import circuitboard as cb
from tests.conftest import open_report
from tests.hostile import HOSTILE_TOKENS, shown

INJECTED = "img, svg, iframe, b, object, embed, #cb-report style, #cb-report script"


@functools.cache
def hostile_views() -> dict[str, Any]:
    """One of every view, built from a tiny model, with hostile strings wherever text goes."""
    import torch

    from tests.unit.tiny_models import tiny_llama

    model, tok = tiny_llama()
    cap = cb.capture(model, tok, "the store " * 20, dtype=torch.float32)
    n = len(cap.tokens)
    tokens = (HOSTILE_TOKENS * 3)[:n]
    cap = dataclasses.replace(cap, tokens=tokens, prompt=HOSTILE_TOKENS[5])
    attr = cb.direct_logit_attribution(cap, int(cap.token_ids[2]), baseline=int(cap.token_ids[3]))
    lens = cb.logit_lens(cap, k=3)
    bad = iter(HOSTILE_TOKENS * 40)
    top_tokens = [[[next(bad) for _ in row] for row in layer] for layer in lens.top_tokens]
    lens = dataclasses.replace(lens, tokens=tokens, top_tokens=top_tokens)
    texts = [t for t in HOSTILE_TOKENS if t.strip() and "\ud800" not in t and "\x00" not in t]
    top = cb.top_activations(model, tok, texts, neurons=[(0, 3), (1, 5)], k=5)
    link = cb.Link()
    return {
        "attention": cb.attention(cap, link=link),
        "attribution": cb.LogitAttributionView(attr, tokens=tokens, link=link),
        "lens": cb.LogitLensView(lens, link=link),
        "neurons": cb.neurons(cap, link=link),
        "dashboard": cb.neuron_dashboard(top, link=link),
        "tokens": tokens,
        "texts": texts,
    }


def check_page(page: Any) -> None:
    assert page.evaluate("() => window.__pwned === undefined")
    assert page.evaluate(f"() => document.querySelectorAll({INJECTED!r}).length") == 0
    assert page.cb_errors == []


def poke(page: Any) -> None:
    """Hover and click tokens and canvases, so tooltips and linked views redraw."""
    for sel in (".cb-token >> nth=2", ".cb-token >> nth=5", "canvas >> nth=0", "canvas >> nth=1"):
        loc = page.locator(sel)
        if loc.count():
            loc.first.hover()
            page.wait_for_timeout(30)
    if page.locator(".cb-token").count() > 4:
        page.click(".cb-token >> nth=4")
    page.mouse.move(2, 2)


@pytest.mark.parametrize("name", ["attention", "attribution", "lens", "neurons", "dashboard"])
def test_hostile_text_in_each_exported_view(page, tmp_path, artifacts, name):
    views = hostile_views()
    path = cb.report(
        f"## {HOSTILE_TOKENS[1]} <img src=x onerror=alert(1)>",
        views[name],
        path=tmp_path / f"{name}.html",
        title=HOSTILE_TOKENS[0],
    )
    open_report(page, path)
    poke(page)
    check_page(page)
    texts = page.eval_on_selector_all("#cb-report .cb-token", "els => els.map(e => e.textContent)")
    if name in ("attention", "neurons"):
        n = len(views["tokens"])
        assert texts[:n] == [shown(t) for t in views["tokens"]]
    if name == "dashboard":
        # each token is a piece of a dataset text (BOS and split multibyte characters aside)
        pieces = [t for t in texts if t != "<s>" and "\ufffd" not in t]
        assert pieces and all(any(t in text for text in views["texts"]) for t in pieces), texts
        assert any("<" in t or "&" in t for t in texts)  # markup shown as text
    assert page.title() == HOSTILE_TOKENS[0]
    page.screenshot(path=str(artifacts / f"hostile-{name}.png"), full_page=True)


def test_hostile_text_in_a_board_of_every_view(page, tmp_path, artifacts):
    views = hostile_views()
    board = cb.board(
        views["attention"],
        views["attribution"],
        views["lens"],
        views["neurons"],
        views["dashboard"],
        title=HOSTILE_TOKENS[3],
    )
    path = cb.report(board, path=tmp_path / "board.html", title="board")
    open_report(page, path)
    poke(page)
    check_page(page)
    assert HOSTILE_TOKENS[3] in page.inner_text("body")
    page.screenshot(path=str(artifacts / "hostile-board.png"), full_page=True)
