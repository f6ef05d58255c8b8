"""The demo report (`make demo`) opens on the head its page points to, and embeds that head's
explanations, so the cell the page tells you to click can be explained (issue 24, item 5)."""

from __future__ import annotations

import pytest

import circuitboard as cb
from circuitboard import cli

pytestmark = pytest.mark.real


def test_the_demo_board_opens_on_l23h3_with_its_explanations(default_model, ioi_capture) -> None:
    _model, tok = default_model
    items, _ = cli.build_board(ioi_capture, tok, target=" Mary", baseline=" John")
    board = items[1]
    attention = next(v for v in board.views if isinstance(v, cb.AttentionView))
    assert "**L23H3**" in items[0]  # the head with the largest attribution (+2.86)
    assert board.selection["layer"] == 23 and board.selection["head"] == 3
    init = attention._initial
    assert (attention.layer_indices[init["layer"]], init["head"]) == (23, 3)
    asked = attention.explain_requests(50_000_000)
    assert len(asked) == ioi_capture.n_tokens  # every query's most-attended key
    assert {(r["layer"], r["head"]) for r in asked} == {(23, 3)}
