"""CompositionView's kernel side: state, and a pair explained on a captured prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from tests.unit.tiny_models import tiny_llama


@pytest.fixture(scope="module")
def scored():
    model, tok = tiny_llama()
    cap = cb.capture(model, tok, "When Mary and John went to the store", dtype=torch.float32)
    return cb.composition_scores(model, baseline_samples=4), cap


def test_state_and_default_threshold(scored):
    res, _ = scored
    view = cb.composition_view(res, kind="q")
    assert view.kind == "Q" and not view.explainable
    assert view.threshold == pytest.approx(res.baseline["Q"] + 3 * res.baseline_std["Q"])
    assert view._scores["K"]["shape"] == [8, 8]
    with pytest.raises(ValueError, match="no capture, so it cannot explain a pair"):
        view.explain_pair((0, 1), (1, 0))
    with pytest.raises(TypeError, match="CompositionView needs a CompositionScores result"):
        cb.composition_view(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="kind must be one of 'Q', 'K', 'V'"):
        cb.composition_view(res, kind="O")


def test_pair_explained_on_the_prompt(scored):
    res, cap = scored
    view = cb.composition_view(res, cap=cap)
    assert view.explainable and view.prompt_tokens == list(cap.tokens)
    reply, buffers = view.answer({"kind": "fetch-pair", "la": 0, "ha": 1, "lb": 1, "hb": 2})
    assert buffers == [] and reply["reader"] == [1, 2] and reply["query"] == len(cap.tokens) - 1
    ex = cb.explain_attention(cap, layer=1, head=2, query=reply["query"], key=reply["key"])
    assert reply["score"] == pytest.approx(ex.score)
    i, j = ex.query_labels.index("L0H1"), ex.key_labels.index("L0H1")
    assert reply["writer_query"] == pytest.approx(float(ex.query_totals[i]))
    assert reply["writer_key"] == pytest.approx(float(ex.key_totals[j]))
    with pytest.raises(ValueError, match="must be in an earlier layer"):
        view.explain_pair((1, 0), (1, 2))
    with pytest.raises(ValueError, match="needs int la, ha, lb, hb"):
        view.answer({"kind": "fetch-pair", "la": 0})
