"""Readers of on-demand patterns equal what full patterns give: the attention view's thumbnails,
overviews, tiles and scores, head scores and compare statistics; tiles split under the cap."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.analysis._compare import samples_from_capture
from circuitboard.analysis._head_scores import scores_from_patterns
from circuitboard.widgets._attention import (
    TILE_MAX_BYTES,
    pattern_scores,
    thumbnails,
    tile_requests,
)
from circuitboard.widgets._codec import decode
from circuitboard.widgets._view import MAX_REPLY_BYTES

from .tiny_models import ATTENTION_VARIANTS, tiny_llama

PROMPT = "When Mary and John went to the store, John gave a drink to Mary. " * 4


@pytest.fixture(scope="module")
def llama_cap():
    model, tok = tiny_llama()
    return cb.capture(model, tok, PROMPT, dtype=torch.float32)


def stored(cap):
    """The same capture with every pattern materialized and stored (the old layout)."""
    tensors = dict(cap.tensors)
    for layer in cap.layers():
        tensors[f"blocks.{layer}.attn.hook_pattern"] = cap[f"blocks.{layer}.attn.hook_pattern"]
    return dataclasses.replace(cap, tensors=tensors, patterns=None)


def maxpool(full: np.ndarray, size: int) -> np.ndarray:
    n = full.shape[-1]
    e = (np.arange(min(n, size) + 1) * n) // min(n, size)
    cells = list(zip(e[:-1], e[1:], strict=True))
    return np.array([[full[a:b, c:d].max() for c, d in cells] for a, b in cells])


def test_view_of_a_capture_equals_the_view_of_its_full_patterns(llama_cap):
    full = llama_cap.stack().numpy()
    lazy = cb.attention(llama_cap)
    eager = cb.AttentionView(full, llama_cap.tokens)
    np.testing.assert_allclose(decode(lazy._thumbs), decode(eager._thumbs), atol=0)
    assert lazy.scores == eager.scores and lazy.causal and lazy.overview_size == 0
    f, b = lazy.answer({"kind": "fetch-head", "layer": 1, "head": 3})
    g, c = eager.answer({"kind": "fetch-head", "layer": 1, "head": 3})
    assert b == c


def test_long_view_thumbs_overviews_and_tiles_equal_the_full_pattern(llama_cap):
    full = llama_cap.stack().numpy()
    n = llama_cap.n_tokens
    view = cb.AttentionView(llama_cap, overview_size=9, tile_size=16, pool="max")
    assert not view._thumbs_ready and view.overview_size == 9
    want_scores = pattern_scores(full)
    want_thumbs = thumbnails(full)
    for layer in (0, 1):
        for head in range(4):
            f, b = view.answer({"kind": "fetch-thumb", "layer": layer, "head": head})
            thumb = decode({**f["thumb"], "data": b[0]})
            np.testing.assert_allclose(thumb, want_thumbs[layer, head], atol=0.5 / 255)
            for k, v in f["scores"].items():
                assert v == pytest.approx(float(want_scores[k][layer, head]), abs=1e-5)
            f, b = view.answer({"kind": "fetch-overview", "layer": layer, "head": head})
            ov = decode({**f["overview"], "data": b[0]})
            np.testing.assert_allclose(ov, maxpool(full[layer, head], 9), atol=0.5 / 255)
    # a zoomed view's tiles are exactly blocks of the full pattern (up to uint8 rounding)
    for req in tile_requests(1, 2, (0, n), (0, n), n=n, tile=16, causal=True):
        f, b = view.answer(req)
        tile = decode({**f["tile"], "data": b[0]})
        block = full[1, 2, req["q0"] : req["q1"], req["k0"] : req["k1"]]
        np.testing.assert_allclose(tile, block, atol=0.5 / 255)
        exact = view._source.block(1, 2, req["q0"], req["q1"], req["k0"], req["k1"])
        np.testing.assert_allclose(exact, block, atol=1e-7, rtol=0)


def test_tile_requests_split_any_region_under_the_message_cap():
    n = 8192
    reqs = tile_requests(3, 4, (0, n), (0, n), n=n, tile=512, causal=True)
    assert len(reqs) == 16 * 17 // 2  # the lower triangle of a 16 x 16 grid
    cells = sum((r["q1"] - r["q0"]) * (r["k1"] - r["k0"]) for r in reqs)
    assert cells == 512 * 512 * len(reqs)
    assert max((r["q1"] - r["q0"]) * (r["k1"] - r["k0"]) for r in reqs) <= TILE_MAX_BYTES
    assert TILE_MAX_BYTES < MAX_REPLY_BYTES
    part = tile_requests(0, 0, (700, 1500), (100, 1300), n=n, tile=512, causal=False)
    assert [(r["q0"], r["k0"]) for r in part] == [(512, 0), (512, 512), (512, 1024)] + [
        (1024, 0),
        (1024, 512),
        (1024, 1024),
    ]


def test_oversized_or_malformed_tile_requests_are_refused(llama_cap):
    view = cb.AttentionView(llama_cap, overview_size=8)
    n = llama_cap.n_tokens
    with pytest.raises(ValueError, match=r"fetch-tile needs ints 0 <= q0 < q1 <= " + str(n)):
        view.answer(
            {"kind": "fetch-tile", "layer": 0, "head": 0, "q0": 5, "q1": 5, "k0": 0, "k1": 4}
        )
    big = cb.AttentionView(np.zeros((1, 1, 4096, 4096), np.float32), ["t"] * 4096)
    with pytest.raises(ValueError, match=r"above one reply's 4 MiB; split the region"):
        big.answer(
            {"kind": "fetch-tile", "layer": 0, "head": 0, "q0": 0, "q1": 4096, "k0": 0, "k1": 4096}
        )
    with pytest.raises(ValueError, match="pool must be one of"):
        cb.AttentionView(llama_cap, pool="median")


def test_long_view_report_plan_embeds_thumbs_overviews_and_selected_tiles(llama_cap):
    view = cb.AttentionView(llama_cap, overview_size=8, tile_size=16, layer=1, head=2)
    reqs = view.export_requests(50_000_000)
    kinds = [r["kind"] for r in reqs]
    assert kinds[0] == "fetch-included" and kinds.count("fetch-thumb") == 8
    assert kinds.count("fetch-overview") == 8
    tiles = [r for r in reqs if r["kind"] == "fetch-tile"]
    assert {(r["layer"], r["head"]) for r in tiles} == {(1, 2)}  # the selected head in full
    included = view.answer(reqs[0])[0]
    assert included["all"] is False and included["tiles"] == [[1, 2]]
    (note,) = view.export_notes(50_000_000)
    assert "pooled overviews of 8×8 cells (max of each block" in note and "L1H2" in note
    small = view.export_requests(20_000)  # room for the thumbnails and one overview
    assert [r for r in small if r["kind"] == "fetch-overview"] == [
        {"kind": "fetch-overview", "layer": 1, "head": 2}
    ]
    assert not any(r["kind"] == "fetch-tile" for r in small)


def test_head_scores_and_compare_statistics_equal_those_of_full_patterns(llama_cap):
    full_cap = stored(llama_cap)
    got = cb.head_scores(llama_cap)
    want = scores_from_patterns(llama_cap.stack(), llama_cap.token_ids)
    again = cb.head_scores(full_cap)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=0, equal_nan=True)
        torch.testing.assert_close(again[k], want[k], atol=1e-6, rtol=0, equal_nan=True)
    stats = ["attn_first", "attn_prev", "attn_entropy"]
    for pos in (-1, 3, "all", "mean"):
        a = samples_from_capture(llama_cap, stats, [0, 1], pos)
        b = samples_from_capture(full_cap, stats, [0, 1], pos)
        for s in stats:
            np.testing.assert_allclose(a[s], b[s], atol=1e-6, rtol=0)


def test_non_causal_masks_are_seen_by_the_view():
    model, tok = ATTENTION_VARIANTS["gemma3"]()
    cap = cb.capture(model, tok, PROMPT, what="pattern")
    assert cb.attention(cap).causal  # sliding + causal: still lower triangular
    from tests.unit.tiny_models import tiny_bert

    model, tok = tiny_bert()
    cap = cb.capture(model, tok, "a b c d", what="pattern")
    view = cb.attention(cap)
    assert not view.causal
    np.testing.assert_allclose(view.pattern(0, 1), cap.pattern(0, 1).numpy())


def test_report_region_and_export_heads_choose_the_full_resolution_tiles(llama_cap):
    view = cb.AttentionView(
        llama_cap, overview_size=8, tile_size=16, export_heads=[(0, 3)], export_region=(32, 64)
    )
    reqs = view.export_requests(50_000_000)
    tiles = [r for r in reqs if r["kind"] == "fetch-tile"]
    assert {(r["layer"], r["head"]) for r in tiles} == {(0, 0), (0, 3)}
    assert {r["q0"] for r in tiles} == {32, 48} and max(r["k1"] for r in tiles) <= 64
    included = view.answer(reqs[0])[0]
    assert included["region"] == [32, 64] and included["tiles"] == [[0, 0], [0, 3]]
    assert "(queries 32–63)" in view.export_notes(50_000_000)[0]
    with pytest.raises(ValueError, match=r"export_region must be \(first, last\) query positions"):
        cb.AttentionView(llama_cap, overview_size=8, export_region=(10, 5))
