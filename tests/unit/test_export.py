"""The offline report: deterministic, atomic, within its size budget, with reductions stated."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import circuitboard as cb
from circuitboard.export import build_report
from circuitboard.widgets._bundle import STATIC


def causal(layers=2, heads=3, n=12, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    att = np.tril(rng.random((layers, heads, n, n)) + 1e-3)
    return att / att.sum(-1, keepdims=True)


def view(n=12, layers=2, heads=3, seed=0, **kw) -> cb.AttentionView:
    return cb.AttentionView(causal(layers, heads, n, seed), [f"t{i}" for i in range(n)], **kw)


def state_of(text: str) -> dict:
    m = re.search(r'<script id="cb-state" type="application/json">(.*?)</script>', text, re.S)
    return json.loads(m.group(1))


def test_same_inputs_give_byte_identical_files(tmp_path):
    paths = []
    for i in range(2):
        a, b = view(), view(seed=1)
        board = cb.board(a, b, title="Two")
        board.selection = {"layer": 1, "head": 2, "token": 3}
        paths.append(cb.report("# Intro\n\nSome *text*.", board, path=tmp_path / f"r{i}.html"))
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_report_has_linked_views_and_markdown(tmp_path):
    a, b = view(), view(seed=1)
    shared = cb.link(a, b)
    shared.select(layer=1, head=2)
    text = build_report(["**bold** <script>x</script>", a, b], title="T <b>")
    data = state_of(text)
    kinds = [it["type"] for it in data["items"]]
    assert kinds == ["markdown", "view", "view"]
    va, vb = (data["models"][it["model"]]["state"] for it in data["items"][1:])
    assert va["link"] == vb["link"]  # one shared selection model in the page
    link_state = data["models"][va["link"].removeprefix("IPY_MODEL_")]["state"]
    assert (link_state["layer"], link_state["head"]) == (1, 2)
    assert "<title>T &lt;b&gt;</title>" in text
    assert "<script>x</script>" not in text and "&lt;script&gt;" in text
    assert "<strong>bold</strong>" in text


def test_written_atomically_and_readable(tmp_path):
    out = tmp_path / "sub" / "r.html"
    cb.report(view(), path=out)
    assert out.is_file() and out.stat().st_mode & 0o044  # shareable, not 0600
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_failed_write_leaves_old_file(tmp_path, monkeypatch):
    out = tmp_path / "r.html"
    out.write_text("old")
    import circuitboard.export._html as h

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(h.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        cb.report(view(), path=out)
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_budget_is_file_size_and_reductions_are_stated(tmp_path):
    big = view(n=200, layers=4, heads=4)
    full = tmp_path / "full.html"
    cb.report(big, path=full)
    assert "Left out of this offline page" not in full.read_text()
    size = full.stat().st_size
    # Room for the bundle and first head, not for all 16 heads.
    minimum = len(build_report([view(n=200, layers=4, heads=4)], title="x", budget_bytes=10**9))
    # Halfway between the page's fixed part (the inlined bundle, base64, with its styles) and the
    # full page: the bundle grows with every view, so it is measured rather than assumed.
    bundle = sum((STATIC / f).stat().st_size for f in ("index.css", "host.js"))
    bundle += (STATIC / "index.js").stat().st_size * 4 // 3
    assert size > bundle + 120_000  # the views' own state leaves room for a reduction
    budget = size - (size - bundle) // 2
    small = cb.report(big, path=tmp_path / "small.html", budget_bytes=budget)
    text = small.read_text()
    assert small.stat().st_size <= budget
    assert "Left out of this offline page" in text and "budget_bytes" in text
    assert minimum >= small.stat().st_size


def test_budget_too_small_says_what_is_needed():
    with pytest.raises(ValueError, match=r"need at least .* over budget_bytes=1,000.*Raise"):
        build_report([view()], title="x", budget_bytes=1_000)


@pytest.mark.parametrize(
    ("items", "err", "match"),
    [
        ([], ValueError, "at least one view"),
        (["only text"], ValueError, "at least one view"),
        ([object()], TypeError, "got object"),
        ([np.zeros(3)], TypeError, "got ndarray"),
    ],
)
def test_bad_items(items, err, match):
    with pytest.raises(err, match=match):
        build_report(items, title="x")


def test_same_view_twice_is_refused():
    v = view()
    with pytest.raises(ValueError, match="appears twice"):
        build_report([v, v], title="x")


@pytest.mark.parametrize("budget", [0, -5, 1.5, True, "10MB"])
def test_bad_budget(budget):
    with pytest.raises(ValueError, match="budget_bytes must be a positive int"):
        build_report([view()], title="x", budget_bytes=budget)


def test_json_state_cannot_close_the_script(tmp_path):
    v = cb.AttentionView(causal(1, 1, 3), ["</script><b>", "\u2028", "a"])
    text = build_report([v], title="x")
    state = text.split('<script id="cb-state" type="application/json">')[1].split("</script>")[0]
    assert "</" not in state and "\u2028" not in state
