"""Issue 24 item 9: per-example metrics ``metric(logits, index)`` in multi-pair patch and
circuit calls (pairs with different answers in one batched call, on every engine)."""

from __future__ import annotations

import numpy as np
import pytest

import circuitboard as cb
from circuitboard.intervene._metric import AtIndex, at_index, takes_index
from circuitboard.testing import tiny_model

CLEAN = [
    "When Mary and John went to the store, John gave",
    "When Mary and John went to the store, Mary gave",
    "When John and Mary went to the store, John gave",
]
CORRUPT = [
    "When Mary and John went to the store, Mary gave",
    "When Mary and John went to the store, John gave",
    "When John and Mary went to the store, Mary gave",
]


@pytest.fixture(scope="module")
def llama():
    model, tok = tiny_model("llama")
    ids = [tok(x, add_special_tokens=False)["input_ids"][0] for x in (" Mary", " John", " the")]
    return model, tok, ids


def _metrics(ids):
    up, down = [ids[0], ids[1], ids[1]], [ids[1], ids[0], ids[2]]

    def per_pair(logits, index):
        return logits[..., up[index]] - logits[..., down[index]]

    def single(i):
        return lambda logits: logits[..., up[i]] - logits[..., down[i]]

    return per_pair, single


def test_per_index_patch_equals_three_single_pair_calls(llama):
    model, tok, ids = llama
    per_pair, single = _metrics(ids)
    both = cb.patch(model, tok, CLEAN, CORRUPT, metric=per_pair, site="resid_pre")
    ones = [
        cb.patch(model, tok, c, x, metric=single(i), site="resid_pre")
        for i, (c, x) in enumerate(zip(CLEAN, CORRUPT, strict=True))
    ]
    np.testing.assert_allclose(both.raw, np.mean([o.raw for o in ones], 0), atol=1e-5)
    assert abs(both.clean_value - np.mean([o.clean_value for o in ones])) < 1e-5
    # the pairs really differ: one shared metric would give another answer
    shared = cb.patch(model, tok, CLEAN, CORRUPT, metric=single(0), site="resid_pre")
    assert np.abs(shared.raw - both.raw).max() > 1e-3
    # shards number their pairs as the whole list does
    sharded = cb.patch(model, tok, CLEAN, CORRUPT, metric=per_pair, site="resid_pre", shards=3)
    np.testing.assert_array_equal(sharded.raw, both.raw)


@pytest.mark.slow
def test_per_index_patch_and_circuit_on_processes(llama):
    model, tok, ids = llama
    per_pair, single = _metrics(ids)
    serial = cb.patch(model, tok, CLEAN, CORRUPT, metric=per_pair, site="resid_pre")
    procs = cb.patch(
        model, tok, CLEAN, CORRUPT, metric=per_pair, site="resid_pre",
        engine="processes", workers=2, shards=3, progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(procs.raw, serial.raw)
    one = cb.circuit(model, tok, CLEAN, CORRUPT, metric=per_pair)
    far = cb.circuit(
        model, tok, CLEAN, CORRUPT, metric=per_pair, engine="processes", workers=2, shards=3,
        progress=False,
    )  # fmt: skip
    np.testing.assert_allclose(far.scores, one.scores, atol=1e-6)


def test_per_index_circuit_equals_a_list_of_metrics(llama):
    model, tok, ids = llama
    per_pair, single = _metrics(ids)
    by_index = cb.circuit(model, tok, CLEAN, CORRUPT, metric=per_pair)
    listed = cb.circuit(model, tok, CLEAN, CORRUPT, metric=[single(i) for i in range(3)])
    np.testing.assert_array_equal(by_index.scores, listed.scores)
    pairs = enumerate(zip(CLEAN, CORRUPT, strict=True))
    ones = [cb.circuit(model, tok, c, x, metric=single(i)) for i, (c, x) in pairs]
    assert abs(by_index.clean_value - np.mean([o.clean_value for o in ones])) < 1e-5
    sharded = cb.circuit(model, tok, CLEAN, CORRUPT, metric=per_pair, shards=3)
    np.testing.assert_allclose(sharded.scores, by_index.scores, atol=1e-6)


def test_which_metrics_take_the_index():
    assert takes_index(lambda logits, index: 0)
    assert not takes_index(lambda logits: 0)
    assert not takes_index(lambda logits, scale=2.0: 0)  # an optional parameter is not the index
    assert not takes_index(AtIndex(lambda logits, i: 0, 1))  # bound already
    bound = at_index(lambda logits, i: i, 4)
    assert bound(None) == 4 and bound.index == 4
    plain = lambda logits: 0  # noqa: E731
    assert at_index(plain, 3) is plain
