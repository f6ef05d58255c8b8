"""The attention view's Layer / Head menus name the head it draws, however it was opened.

Issue 24 item 1: a view opened at L20H8 drew L20H8 but its menus said "Layer 0 / Head 0"
until a click elsewhere. Each way of opening a view at a head other than L0H0 is checked.
"""

from __future__ import annotations

import numpy as np

import circuitboard as cb
from tests.browser.test_report_attention import random_attention
from tests.conftest import open_report

TOKENS = ["When", " Mary", " and", " John", " went", " to", " the", " store"]


def menus(page) -> tuple[str, str]:
    return (
        page.input_value('.cb-attention select[aria-label="layer"]'),
        page.input_value('.cb-attention select[aria-label="head"]'),
    )


def drawn(page) -> tuple[str, str]:
    root = page.query_selector(".cb-attention")
    return root.get_attribute("data-layer"), root.get_attribute("data-head")


def test_menus_follow_the_head_given_as_an_argument(page, tmp_path):
    att = random_attention(layers=3, heads=4, n=len(TOKENS), seed=1)
    path = cb.report(cb.AttentionView(att, TOKENS, layer=2, head=3), path=tmp_path / "a.html")
    open_report(page, path)
    assert drawn(page) == ("2", "3")
    assert menus(page) == ("2", "3")


def test_menus_follow_a_board_selection_set_from_python(page, tmp_path):
    att = random_attention(layers=3, heads=4, n=len(TOKENS), seed=2)
    acts = np.random.default_rng(0).normal(size=(3, len(TOKENS), 8)).astype(np.float32)
    board = cb.board(cb.AttentionView(att, TOKENS), cb.NeuronsView(acts, TOKENS))
    board.selection = {"layer": 1, "head": 2}
    open_report(page, cb.report(board, path=tmp_path / "b.html"))
    assert drawn(page) == ("1", "2")
    assert menus(page) == ("1", "2")


def test_menus_follow_cb_attention_on_a_capture(page, tmp_path):
    from circuitboard.testing import tiny_model

    model, tok = tiny_model("llama")
    cap = cb.capture(model, tok, "When Mary and John went to the store")
    view = cb.attention(cap, layer=1, head=3)
    open_report(page, cb.report(view, path=tmp_path / "c.html"))
    assert drawn(page) == ("1", "3")
    assert menus(page) == ("1", "3")
    # A click elsewhere still moves both the drawing and the menus.
    page.click('.cb-thumb[data-layer="0"][data-head="1"]')
    page.wait_for_selector('.cb-attention[data-layer="0"][data-head="1"]')
    assert menus(page) == ("0", "1")


def test_menus_follow_cb_attention_on_an_image_capture(page, tmp_path):
    from circuitboard.testing import tiny_model

    vit, _ = tiny_model("vit", channels=1)
    images = np.random.default_rng(0).random((1, 1, 8, 8)).astype(np.float32)
    cap = cb.capture(vit, None, images)[0]  # one capture per image
    open_report(page, cb.report(cb.attention(cap, layer=0, head=3), path=tmp_path / "v.html"))
    assert drawn(page) == ("0", "3")
    assert menus(page) == ("0", "3")
