"""One selection shared by linked views: Python side, boards, and the kernel-routed fallback."""

from __future__ import annotations

import numpy as np
import pytest

import circuitboard as cb
from circuitboard.widgets import Board, Link


def att(n=4, layers=2, heads=3):
    a = np.tril(np.ones((layers, heads, n, n)))
    return a / a.sum(-1, keepdims=True)


def views(k=3, n=4):
    return [cb.AttentionView(att(n), [f"t{i}" for i in range(n)]) for _ in range(k)]


def test_link_shares_one_model_and_keeps_first_selection():
    a, b, c = views()
    a.selection = {"layer": 1, "head": 2}
    shared = cb.link(a, b, c)
    assert a.link is b.link is c.link is shared
    assert (c.selection["layer"], c.selection["head"]) == (1, 2)
    c.selection = {"token": 3}
    assert a.selection["token"] == b.selection["token"] == 3


def test_link_can_join_an_existing_link():
    a, b = views(2)
    existing = Link()
    existing.select(head=1)
    assert cb.link(a, b, selection=existing) is existing
    assert a.selection["head"] == 1


def test_observe_selection_from_python():
    a, b = views(2)
    shared = cb.link(a, b)
    seen = []
    shared.observe(lambda ch: seen.append(ch["new"]), names="head")
    b.selection = {"head": 2}
    assert seen == [2]


def test_link_rejects_non_views_and_unknown_keys():
    with pytest.raises(TypeError, match=r"takes circuitboard views; got \['int'\]"):
        cb.link(views(1)[0], 3)
    with pytest.raises(KeyError, match="unknown selection keys"):
        views(1)[0].selection = {"colour": 1}


def test_board_links_lays_out_and_reports():
    a, b = views(2)
    board = cb.board(a, b, title="IOI", columns=2)
    assert isinstance(board, Board)
    assert a.link is b.link is board.link
    board.selection = {"head": 1, "token": 2}
    assert b.selection["token"] == 2
    assert board.report_items() == ["## IOI", a, b]
    grid = board.children[-1]
    assert list(grid.children) == [a, b]
    assert "repeat(2" in grid.layout.grid_template_columns


@pytest.mark.parametrize(
    ("args", "kwargs", "err", "match"),
    [
        ((), {}, ValueError, "at least one view"),
        (("text",), {}, TypeError, r"got \['str'\]"),
        (None, {"columns": 0}, ValueError, "columns must be a positive int; got 0"),
        (None, {"title": 3}, TypeError, "title must be a string; got int"),
    ],
)
def test_board_errors(args, kwargs, err, match):
    with pytest.raises(err, match=match):
        cb.board(*(views(1) if args is None else args), **kwargs)


def msg(view, content, buffers=()):
    view._on_custom_msg(view, content, list(buffers))


def test_kernel_fallback_mirrors_and_forwards():
    """Where a front end cannot reach the link model, each view's `_sel` carries it."""
    a, b = views(2)
    cb.link(a, b)
    msg(a, {"kind": "link-fallback"})
    msg(b, {"kind": "link-fallback"})
    assert a._sel["layer"] == 0 and "hover_token" in a._sel
    a._sel = {**a._sel, "head": 2, "token": 1}  # a click in view a's browser
    assert b.link.head == 2 and b._sel["head"] == 2 and b._sel["token"] == 1
    b.selection = {"layer": 1}  # Python moves every view
    assert a._sel["layer"] == 1


def test_kernel_fallback_follows_relinking():
    a, b = views(2)
    msg(a, {"kind": "link-fallback"})
    shared = cb.link(b, a)
    shared.select(head=2)
    assert a._sel["head"] == 2


def test_unknown_messages_are_ignored():
    (a,) = views(1)
    msg(a, "not a dict")
    msg(a, {"kind": "figure-reply", "id": 99, "ok": True}, [b"x"])  # no such request
    msg(a, {"kind": "something"})


def test_figure_via_browser_resolves_on_reply(tmp_path):
    (a,) = views(1)
    sent = []
    a.send = lambda content, buffers=None: sent.append(content)
    fut = a.save_png(tmp_path / "f.png", via="browser")
    assert sent == [{"kind": "figure", "id": 1, "format": "png", "scale": 2.0}]
    assert not fut.done()
    msg(a, {"kind": "figure-reply", "id": 1, "ok": True, "format": "png"}, [b"\x89PNG..."])
    assert fut.result() == tmp_path / "f.png"
    assert (tmp_path / "f.png").read_bytes() == b"\x89PNG..."
    fut = a.save_svg(tmp_path / "f.svg", via="browser")
    msg(a, {"kind": "figure-reply", "id": 2, "ok": False, "error": "no canvas"})
    with pytest.raises(RuntimeError, match="could not draw the figure: no canvas"):
        fut.result()


def test_figure_argument_errors(tmp_path):
    (a,) = views(1)
    with pytest.raises(ValueError, match="via must be 'headless' or 'browser'; got 'gpu'"):
        a.save_png(tmp_path / "f.png", via="gpu")
    with pytest.raises(ValueError, match="theme must be None, 'light' or 'dark'; got 'blue'"):
        a.save_svg(tmp_path / "f.svg", theme="blue")


@pytest.mark.parametrize("value", ["3", 1.5, True])
def test_selection_values_are_ints(value):
    (a,) = views(1)
    with pytest.raises(TypeError, match=r"selection values are ints or None; got head="):
        a.selection = {"head": value}


def test_numpy_ints_are_fine():
    (a,) = views(1)
    a.selection = {"head": np.int64(2), "token": None}
    assert a.selection["head"] == 2 and type(a.selection["head"]) is int
