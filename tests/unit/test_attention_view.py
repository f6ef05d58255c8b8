"""AttentionView: thumbnails, scores, on-demand fetch replies, export budget, selection."""

from __future__ import annotations

import numpy as np
import pytest

from circuitboard.widgets import AttentionView, Link, decode, encode
from circuitboard.widgets._attention import pattern_scores, thumbnails
from circuitboard.widgets._codec import is_causal, tril_pack, tril_unpack


def causal(layers=2, heads=3, n=10, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(layers, heads, n, n)).astype(np.float32) * 2
    logits[..., np.triu(np.ones((n, n), bool), 1)] = -np.inf
    att = np.exp(logits - logits.max(-1, keepdims=True))
    return att / att.sum(-1, keepdims=True)


def toks(n: int) -> list[str]:
    return [f"t{i}" for i in range(n)]


def test_tril_round_trip_and_half_the_bytes():
    a = causal(n=33)
    enc = encode(a, lo=0, hi=1, tril=True)
    assert enc["tril"] is True and enc["shape"] == [2, 3, 33, 33]
    assert len(enc["data"]) == 6 * 33 * 34 // 2
    assert np.abs(decode(enc) - a).max() <= 1 / 255
    assert np.array_equal(tril_unpack(tril_pack(a), list(a.shape)), np.tril(a))
    assert "tril" not in encode(a, lo=0, hi=1)


def test_tril_rejects_non_square():
    with pytest.raises(ValueError, match="square matrices"):
        encode(np.zeros((2, 3)), tril=True)


def test_causality_detection():
    a = causal()
    assert is_causal(a)
    b = a.copy()
    b[1, 2, 0, 5] = 0.01
    assert not is_causal(b)
    assert AttentionView(a, toks(10)).causal
    assert not AttentionView(b, toks(10)).causal


def test_thumbnails_keep_attention_mass():
    a = causal(n=100)
    th = thumbnails(a, 32)
    assert th.shape == (2, 3, 32, 32)
    assert np.allclose(th.sum(-1), 1, atol=1e-5)
    # A head that always looks at position 0 keeps all its mass in key block 0.
    first = np.zeros((1, 1, 64, 64), np.float32)
    first[..., 0] = 1
    assert np.allclose(thumbnails(first, 32)[0, 0, :, 0], 1)
    assert thumbnails(causal(n=7), 32).shape[-1] == 7  # short prompts are not upsampled


def test_pattern_scores_find_previous_and_first_token_heads():
    n = 12
    a = np.zeros((1, 3, n, n), np.float32)
    a[0, 0, 0, 0] = 1
    a[0, 0, np.arange(1, n), np.arange(n - 1)] = 1  # previous token head
    a[0, 1, :, 0] = 1  # attention sink
    a[0, 2] = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]  # uniform
    s = pattern_scores(a)
    assert s["previous_token"][0].argmax() == 0 and s["previous_token"][0, 0] == 1
    assert s["first_token"][0].argmax() == 1
    assert s["entropy"][0].argmax() == 2 and s["entropy"][0, 0] == 0
    view = AttentionView(a, toks(n))
    assert set(view.scores) == {"previous_token", "first_token", "entropy"}
    assert view.scores["previous_token"][0][0] == 1.0


def test_given_scores_are_kept_and_checked():
    a = causal()
    ind = np.arange(6, dtype=np.float32).reshape(2, 3)
    view = AttentionView(a, toks(10), scores={"induction": ind, "previous_token": ind * 0})
    assert view.scores["induction"][1][2] == 5.0
    assert view.scores["previous_token"][0][0] == 0.0  # the given one, not recomputed
    assert "entropy" in view.scores
    with pytest.raises(ValueError, match=r"scores\['induction'\] has shape \(3, 2\), expected"):
        AttentionView(a, toks(10), scores={"induction": ind.T})
    with pytest.raises(TypeError, match="scores must be a mapping"):
        AttentionView(a, toks(10), scores=[1, 2])


def test_fetch_head_reply_through_the_comm_handler():
    a = causal(n=20)
    view = AttentionView(a, toks(20), layers=[4, 7])
    sent = []
    view.send = lambda content, buffers=None: sent.append((content, buffers))
    view._on_custom_msg(view, {"kind": "fetch-head", "id": 5, "layer": 7, "head": 2}, [])
    content, buffers = sent[-1]
    assert content["ok"] is True and content["id"] == 5 and content["kind"] == "reply"
    pat = content["pattern"]
    assert pat["tril"] is True and pat["data"] == 0 and len(buffers[0]) == 20 * 21 // 2
    assert np.abs(decode({**pat, "data": buffers[0]}) - a[1, 2]).max() <= 1 / 255
    view._on_custom_msg(view, {"kind": "fetch-head", "id": 6, "layer": 5, "head": 0}, [])
    assert sent[-1][0]["ok"] is False and "layer 5 was not captured" in sent[-1][0]["error"]
    view._on_custom_msg(view, {"kind": "fetch-included", "id": 7}, [])
    assert sent[-1][0]["all"] is True  # live: every head can be fetched


def test_fetch_layer_sends_every_head_of_a_layer_with_the_codes_of_fetch_head():
    a = causal(n=40)
    view = AttentionView(a, toks(40), layers=[4, 7])
    fields, buffers = view.answer({"kind": "fetch-layer", "layer": 7})
    enc = fields["patterns"]
    assert fields["layer"] == 7 and enc["shape"] == [3, 40, 40] and enc["tril"] is True
    whole = decode({**enc, "data": buffers[enc["data"]]})
    for h in range(3):
        one, bufs = view.answer({"kind": "fetch-head", "layer": 7, "head": h})
        assert np.array_equal(whole[h], decode({**one["pattern"], "data": bufs[0]}))
    assert np.abs(whole - a[1]).max() <= 1 / 255


def test_thumbnails_are_the_heads_up_to_32_tokens():
    a = causal(n=32)
    view = AttentionView(a, toks(32))
    thumbs = decode(view._thumbs)
    for h in range(3):
        one, bufs = view.answer({"kind": "fetch-head", "layer": 1, "head": h})
        assert np.array_equal(thumbs[1, h], decode({**one["pattern"], "data": bufs[0]}))
    # so a report embeds every head without sending any twice
    assert len(view.export_plan(1)) == 6
    assert not [r for r in view.export_requests(10**9) if r["kind"] == "fetch-head"]
    assert view.export_notes(1) == []
    assert len(AttentionView(causal(n=33), toks(33)).export_plan(1)) < 6


def test_export_plan_keeps_everything_when_it_fits():
    view = AttentionView(causal(), toks(10))
    assert len(view.export_plan(10**9)) == 6
    reqs = view.export_requests(10**9)
    assert reqs[0] == {"kind": "fetch-included"}
    assert view.answer(reqs[0])[0]["all"] is True
    assert view.export_notes(10**9) == []


def test_export_plan_under_budget_keeps_chosen_heads_first():
    a = causal(layers=3, heads=4, n=40)
    view = AttentionView(a, toks(40), layer=1, head=2, export_heads=[(2, 3)])
    budget = int(2 * 3.5 * view._page_bytes_per_head())
    plan = view.export_plan(budget)
    assert plan[:2] == [(2, 3), (1, 2)] and len(plan) == 3
    reqs = view.export_requests(budget)
    fields, _ = view.answer(reqs[0])
    assert fields["all"] is False and sorted(map(tuple, fields["heads"])) == sorted(plan)
    assert view.answer({"kind": "fetch-included"})[0]["all"] is True  # back to live answers
    (note,) = view.export_notes(budget)
    assert "3 of 12 heads at full resolution" in note and "L2H3" in note and "thumbnails" in note


def test_export_heads_are_checked():
    with pytest.raises(IndexError, match="export_heads has layer 9"):
        AttentionView(causal(), toks(10), export_heads=[(9, 0)])
    with pytest.raises(IndexError, match="head=7 is out of range"):
        AttentionView(causal(), toks(10), export_heads=[(0, 7)])


def test_selection_lives_on_the_link_and_is_observable():
    link = Link()
    view = AttentionView(causal(), toks(10), layer=1, head=2, link=link)
    assert view.selection["layer"] == 1 and view.selection["head"] == 2
    seen = []
    view.link.observe(lambda ch: seen.append((ch["name"], ch["new"])), names=["head", "token"])
    view.selection = {"head": 0, "token": 4}
    view.link.token = None
    assert seen == [("head", 0), ("token", 4), ("token", None)]
    assert view.pattern(1, 0).shape == (10, 10)
