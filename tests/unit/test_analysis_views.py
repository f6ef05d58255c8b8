"""LogitAttributionView / LogitLensView from analysis results: traits, fetches, errors."""

from __future__ import annotations

import numpy as np
import pytest

import circuitboard as cb
from circuitboard.widgets import decode
from tests.unit.analysis_helpers import capture_for_analysis
from tests.unit.tiny_models import FACTORIES

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def cap():
    model, tok = FACTORIES["llama"]()
    return capture_for_analysis(model, tok, PROMPT)


def test_attribution_view_carries_the_attribution(cap):
    from circuitboard.analysis import direct_logit_attribution

    attr = direct_logit_attribution(cap, 5, baseline=7)
    view = cb.LogitAttributionView(attr, tokens=cap.tokens)
    assert (view.n_layers, view.n_heads) == (2, 4)
    np.testing.assert_allclose(decode(view._heads), attr.heads.numpy())
    layers = decode(view._layers)
    np.testing.assert_allclose(layers[1], attr.mlp.numpy())
    np.testing.assert_allclose(layers[0], attr.heads.sum(1).numpy(), rtol=1e-5, atol=1e-7)
    assert [t[0] for t in view._terms] == ["embed", "bias"]
    assert view.total == pytest.approx(attr.total, abs=1e-6)
    assert view.model_value == attr.model_value
    fields, buffers = view.answer({"kind": "fetch-neurons", "layer": 1})
    assert fields["layer"] == 1 and buffers == []
    top = fields["top"]
    assert abs(top[0][2]) >= abs(top[-1][2])
    assert top[0][2] == pytest.approx(float(attr.neurons(1)[top[0][1]]))
    reqs = view.export_requests(10**6)
    assert [r["layer"] for r in reqs] == [0, 1]
    with pytest.raises(IndexError, match="out of range"):
        view.answer({"kind": "fetch-neurons", "layer": 9})


def test_shortcuts(cap):
    view = cb.logit_attribution(cap, 5, baseline=7, pos=-2)
    assert "position" in view.description
    lens = cb.logit_lens_view(cap, k=3)
    assert lens.k == 3 and lens.layer_indices == [0, 1]
    assert lens.target_label == "next token"
    assert lens.target_tokens[-1] == "" and lens.target_tokens[0] == cap.tokens[1]


def test_lens_view_strings_and_probs(cap):
    from circuitboard.analysis import logit_lens

    lens = logit_lens(cap, k=4, target=5)
    view = cb.LogitLensView(lens)
    index = decode(view._top_index).astype(int)
    strings = view._strings
    assert len(set(strings)) == len(strings)
    assert [strings[i] for i in index[1, 2]] == lens.top_tokens[1][2]
    np.testing.assert_allclose(decode(view._top_prob), lens.top_probs.numpy(), atol=1e-3)
    np.testing.assert_allclose(decode(view._target_prob), lens.target_probs.numpy(), atol=1e-3)
    assert view.target_label == cap.tokenizer.decode([5])


def test_views_refuse_other_objects():
    with pytest.raises(TypeError, match="cb.direct_logit_attribution"):
        cb.LogitAttributionView(np.zeros((2, 2)))
    with pytest.raises(TypeError, match="cb.logit_lens"):
        cb.LogitLensView(object())


def test_lazy_names_resolve():
    assert callable(cb.direct_logit_attribution)
    assert callable(cb.logit_lens) and callable(cb.head_scores)


def test_attribution_view_follows_positions(cap):
    from circuitboard.analysis import direct_logit_attribution

    view = cb.logit_attribution(cap, 5, baseline=7)
    n = cap.n_tokens
    assert view.positions == list(range(n)) and view.pos == n - 1
    fields, buffers = view.answer({"kind": "fetch-position", "pos": 2})
    attr2 = direct_logit_attribution(cap, 5, baseline=7, pos=2)
    assert fields["pos"] == 2 and fields["model_value"] == pytest.approx(attr2.model_value)
    heads = np.frombuffer(buffers[fields["heads"]["data"]], dtype="<f4").reshape(2, 4)
    np.testing.assert_allclose(heads, attr2.heads.numpy(), rtol=1e-5, atol=1e-7)
    assert len(fields["layer_top"]) == 2 and fields["layer_top"][1][0][0] == 1
    with pytest.raises(IndexError, match="no attribution at position"):
        view.answer({"kind": "fetch-position", "pos": 99})
    kinds = [r["kind"] for r in view.export_requests(10**6)]
    assert kinds.count("fetch-position") == n
    small = view.export_requests(100)
    assert [r for r in small if r["kind"] == "fetch-position"] == []
    assert "positions embedded" in view.export_notes(100)[0]
    fixed = cb.logit_attribution(cap, 5, follow_token=False)
    assert fixed.positions == []


def test_all_positions_match_single_calls(cap):
    from circuitboard.analysis import direct_logit_attribution
    from circuitboard.analysis._attribution import attribute_positions

    many = attribute_positions(cap, 5, 7, list(range(cap.n_tokens)))
    for p in (0, 4, cap.n_tokens - 1):
        one = direct_logit_attribution(cap, 5, baseline=7, pos=p)
        np.testing.assert_allclose(many[p].values.numpy(), one.values.numpy(), rtol=1e-6, atol=1e-7)
        assert many[p].model_value == one.model_value


def test_long_prompt_positions_in_chunks():
    from circuitboard.analysis import direct_logit_attribution

    model, tok = FACTORIES["llama"]()
    long = capture_for_analysis(model, tok, " ".join([PROMPT] * 5))
    n = long.n_tokens
    assert n > 64, "needs more than one chunk of positions"
    view = cb.logit_attribution(long, 5, pos=10)
    assert view.pos == 10 and view.positions == list(range(n))
    fields, _ = view.answer({"kind": "fetch-position", "pos": n - 2})
    assert fields["model_value"] == pytest.approx(
        direct_logit_attribution(long, 5, pos=n - 2).model_value
    )
