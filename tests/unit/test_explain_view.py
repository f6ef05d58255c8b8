"""The kernel side of the attention view's explanation panel (fetch-explain) and its report part."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.widgets._explain_panel import PANEL_PAIRS, PANEL_SIDE
from tests.unit.tiny_models import tiny_llama

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def cap():
    model, tok = tiny_llama()
    return cb.capture(model, tok, PROMPT, dtype=torch.float32)


def test_reply_is_the_explanation(cap):
    view = cb.attention(cap, layer=1, head=2)
    assert view.explainable and view.explain_target == ""
    msg = {"kind": "fetch-explain", "layer": 1, "head": 2, "query": 12, "key": 4}
    reply, buffers = view.answer(msg)
    assert buffers == []
    ex = cb.explain_attention(cap, layer=1, head=2, query=12, key=4)
    assert reply["score"] == pytest.approx(ex.score) and reply["total"] == pytest.approx(ex.total)
    assert reply["pairs"] == ex.top(PANEL_PAIRS)
    nq, nk = len(reply["q_labels"]), len(reply["k_labels"])
    assert nq == min(PANEL_SIDE, len(ex.query_labels)) and nk == min(PANEL_SIDE, len(ex.key_labels))
    qi = [ex.query_labels.index(lab) for lab in reply["q_labels"]]
    kj = [ex.key_labels.index(lab) for lab in reply["k_labels"]]
    np.testing.assert_allclose(np.reshape(reply["matrix"], (nq, nk)), ex.matrix[np.ix_(qi, kj)])
    assert reply["shown"] == pytest.approx(ex.matrix[np.ix_(qi, kj)].sum())
    for p in ex.top(3):  # every top pair is on the small heatmap
        assert p["query"] in reply["q_labels"] and p["key"] in reply["k_labels"]
    assert reply["ov"] is None


def test_reply_with_a_target_splits_the_head_output(cap):
    view = cb.attention(cap, layer=1, head=2, target=5, baseline=7)
    assert view.explain_target.endswith(repr(cap.tokenizer.decode([7])))
    reply, _ = view.answer({"kind": "fetch-explain", "layer": 1, "head": 2, "query": 12, "key": 4})
    term = cb.direct_logit_attribution(cap, 5, baseline=7, pos=12)["L1H2"]
    ov = reply["ov"]
    assert ov["query"] == 12 and ov["model_value"] == pytest.approx(term, abs=1e-6)
    assert ov["total"] == pytest.approx(term, abs=1e-6)
    assert sum(s["value"] for s in ov["sources"]) + ov["rest"] == pytest.approx(ov["total"])
    assert all(s["pos"] <= 12 for s in ov["sources"])


def test_bad_requests_and_views_without_a_capture(cap):
    view = cb.attention(cap)
    with pytest.raises(ValueError, match="needs an int query"):
        view.answer({"kind": "fetch-explain", "layer": 1, "head": 0, "query": "5", "key": 1})
    with pytest.raises(ValueError, match="key=6 comes after query=2"):
        view.answer({"kind": "fetch-explain", "layer": 1, "head": 0, "query": 2, "key": 6})
    plain = cb.AttentionView(np.full((1, 2, 3, 3), 1 / 3), ["a", "b", "c"])
    assert not plain.explainable
    with pytest.raises(ValueError, match="built from patterns alone.*cb.attention\\(cap\\)"):
        plain.answer({"kind": "fetch-explain", "layer": 0, "head": 0, "query": 2, "key": 1})
    assert plain.export_notes(10**6) == [] or "explanations" not in " ".join(
        plain.export_notes(10**6)
    )


def test_row_request_answers_each_cell_as_a_single_request_would(cap):
    view = cb.attention(cap, layer=1, head=2, target=5, baseline=7)
    keys = [0, 4, 12]
    msg = {"kind": "fetch-explain-row", "layer": 1, "head": 2, "query": 12, "keys": keys}
    reply, buffers = view.answer(msg)
    assert buffers == []
    assert [c["key"] for c in reply["cells"]] == keys
    for key, cell in zip(keys, reply["cells"], strict=True):
        one, _ = view.answer({**msg, "kind": "fetch-explain", "key": key})
        assert cell == one  # the same panel, so a prefetched cell draws what a click would fetch


def test_bad_row_requests_say_what_to_send(cap):
    view = cb.attention(cap)
    row = {"kind": "fetch-explain-row", "layer": 1, "head": 0, "query": 5}
    with pytest.raises(ValueError, match="needs keys: a list of 1 to 64 ints"):
        view.answer({**row, "keys": []})
    with pytest.raises(ValueError, match="split longer rows"):
        view.answer({**row, "keys": [0] * 65})
    with pytest.raises(ValueError, match="needs keys"):
        view.answer({**row, "keys": [1, "2"]})
    with pytest.raises(ValueError, match="needs an int head"):
        view.answer({**row, "head": None, "keys": [1]})
    with pytest.raises(ValueError, match="key=6 comes after query=5"):
        view.answer({**row, "keys": [1, 6]})
    plain = cb.AttentionView(np.full((1, 2, 3, 3), 1 / 3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="built from patterns alone"):
        plain.answer({**row, "layer": 0, "query": 2, "keys": [1]})


def test_bad_target_is_refused_when_the_view_is_built(cap):
    with pytest.raises(ValueError, match="expected exactly one"):
        cb.attention(cap, target="zzqxv Mary went")


def test_report_embeds_the_selected_heads_explanations(cap):
    view = cb.attention(cap, layer=1, head=3)
    reqs = [r for r in view.export_requests(10**6) if r["kind"] == "fetch-explain"]
    att = view.pattern(1, 3)
    assert [(r["query"], r["key"]) for r in reqs] == [
        (q, int(np.argmax(att[q]))) for q in range(cap.n_tokens)
    ]
    assert {(r["layer"], r["head"]) for r in reqs} == {(1, 3)}
    notes = view.export_notes(10**6)
    assert any("explanations of L1H3's score embedded" in n for n in notes)
    small = [r for r in view.export_requests(200_000) if r["kind"] == "fetch-explain"]
    assert 0 < len(small) < len(reqs)
    assert any("the first" in n for n in view.export_notes(200_000))


def test_a_head_shown_live_is_prepared_in_the_background(cap):
    import threading

    from circuitboard.analysis import _explain

    view = cb.attention(cap)
    _explain._FOLDS.clear()
    view.answer({"kind": "fetch-head", "layer": 1, "head": 3})  # a report's request: no warm-up
    assert len(_explain._FOLDS) == 0
    before = set(threading.enumerate())
    view.answer({"kind": "fetch-head", "layer": 1, "head": 3, "id": 7})  # shown live
    for t in set(threading.enumerate()) - before:
        t.join(30)
    assert len(_explain._FOLDS) == 2  # the head's query side and its key/value head's key side
    cb.explain_attention(cap, layer=1, head=3, query=9, key=2)
    assert len(_explain._FOLDS) == 2  # the click reused them
