"""Issue 24 item 9: targets that are token sets (the mean of their logits) in DLA, patching
and circuits; per-pair answers in multi-pair calls. Exact identities in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.testing import tiny_model

CLEAN = "When Mary and John went to the store, John gave"
CORRUPT = "When Mary and John went to the store, Mary gave"


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def _mean_diff(logits: torch.Tensor, up: list[int], down: list[int]) -> float:
    row = logits[-1].double()
    return float(row[up].mean() - row[down].mean())


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # gpt2: LayerNorm and the b_U bias
def test_dla_of_a_token_set_sums_to_the_model_value(family):
    model, tok = tiny_model(family)
    cap = cb.capture(model, tok, CLEAN, dtype=torch.float32)
    attr = cb.direct_logit_attribution(cap, [5, 9, 11], baseline=[3, 7])
    want = _mean_diff(cap.logits, [5, 9, 11], [3, 7])
    assert attr.target == (5, 9, 11) and attr.baseline == (3, 7)
    assert abs(attr.model_value - want) <= 1e-6 * abs(want)
    assert abs(attr.total - want) <= 1e-5 * abs(want)
    assert "mean {" in attr.description
    # A one-token set is that token.
    one = cb.direct_logit_attribution(cap, [5], baseline=3)
    assert one.target == 5 and torch.equal(
        one.values, cb.direct_logit_attribution(cap, 5, 3).values
    )


def test_set_errors_say_what_to_give(llama):
    model, tok = llama
    cap = cb.capture(model, tok, CLEAN, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"target=\[\] is an empty token set"):
        cb.direct_logit_attribution(cap, [])
    with pytest.raises(IndexError, match=r"target\[1\]=99999 is not a token id"):
        cb.direct_logit_attribution(cap, [3, 99999])


def test_patch_and_circuit_with_a_set_answer(llama):
    model, tok = llama
    ids = [tok(x, add_special_tokens=False)["input_ids"][0] for x in (" Mary", " and", " John")]
    clean = cb.capture(model, tok, CLEAN, what=["logits"])
    corrupt = cb.capture(model, tok, CORRUPT, what=["logits"])
    p = cb.patch(
        model, tok, CLEAN, CORRUPT, answer=[" Mary", " and"], wrong=" John", site="resid_pre"
    )
    assert abs(p.clean_value - _mean_diff(clean.logits, ids[:2], ids[2:])) < 1e-5
    assert abs(p.corrupted_value - _mean_diff(corrupt.logits, ids[:2], ids[2:])) < 1e-5
    assert "mean logit(" in p.metric
    c = cb.circuit(model, tok, CLEAN, CORRUPT, answer=[" Mary", " and"], wrong=" John")
    assert abs(c.clean_value - p.clean_value) < 1e-5


def test_pairs_with_different_answers_share_one_call(llama):
    model, tok = llama
    both = cb.patch(
        model,
        tok,
        [CLEAN, CORRUPT],
        [CORRUPT, CLEAN],
        answer=[[" Mary", " and"], " John"],
        wrong=[" John", [" Mary"]],
        site="resid_pre",
    )
    first = cb.patch(
        model, tok, CLEAN, CORRUPT, answer=[" Mary", " and"], wrong=" John", site="resid_pre"
    )
    second = cb.patch(model, tok, CORRUPT, CLEAN, answer=" John", wrong=" Mary", site="resid_pre")
    assert np.allclose(both.raw, (first.raw + second.raw) / 2, atol=1e-5)
    shared = cb.patch(
        model,
        tok,
        [CLEAN, CORRUPT],
        [CORRUPT, CLEAN],
        answer={" Mary", " and"},
        wrong=" John",
        site="resid_pre",
    )
    assert np.isfinite(shared.raw).all()
    with pytest.raises(ValueError, match="answer has 3 entries for 2 prompt pairs"):
        cb.patch(
            model,
            tok,
            [CLEAN, CORRUPT],
            [CORRUPT, CLEAN],
            answer=[" Mary", " and", " John"],
            site="resid_pre",
        )
