"""Head scores on synthetic patterns whose answer is known, and on a tiny model."""

from __future__ import annotations

import pytest
import torch

from circuitboard.analysis import SCORES, head_scores, scores_from_patterns
from tests.unit.tiny_models import FACTORIES

HALF = 6


def repeated_ids() -> torch.Tensor:
    """BOS, six distinct tokens, the same six again: 13 positions."""
    first = torch.arange(10, 10 + HALF)
    return torch.cat([torch.tensor([1]), first, first])


def one_hot_rows(n: int, target: list[int]) -> torch.Tensor:
    att = torch.zeros(n, n)
    att[torch.arange(n), torch.tensor(target)] = 1.0
    return att


def synthetic_heads(ids: torch.Tensor) -> torch.Tensor:
    """[1 layer, 4 heads]: previous-token, induction, duplicate-token, first-token."""
    n = ids.shape[0]
    prev = one_hot_rows(n, [max(q - 1, 0) for q in range(n)])
    # Induction: from the second copy of a token, attend to the token after its first copy.
    ind_t = [q - HALF + 1 if q > HALF else q for q in range(n)]  # else: itself
    dup_t = [q - HALF if q > HALF else q for q in range(n)]
    first = one_hot_rows(n, [0] * n)
    return torch.stack([prev, one_hot_rows(n, ind_t), one_hot_rows(n, dup_t), first])[None]


def test_each_synthetic_head_gets_its_own_score():
    ids = repeated_ids()
    scores = scores_from_patterns(synthetic_heads(ids), ids)
    assert set(scores) == set(SCORES)
    expected = torch.eye(4)  # head h is perfect at score h, ~0 elsewhere
    got = torch.stack([scores[name][0] for name in SCORES])
    assert got.shape == (4, 4)
    for i, name in enumerate(SCORES):
        assert float(got[i, i]) == pytest.approx(1.0), name
    off = got[(1 - expected).bool()]
    # Where two definitions coincide (the previous token is the induction target only for the
    # first repeated query), scores stay small.
    assert float(off.max()) < 0.2


def test_uniform_attention_scores():
    ids = repeated_ids()
    n = ids.shape[0]
    uniform = torch.tril(torch.ones(n, n))
    uniform = uniform / uniform.sum(-1, keepdim=True)
    scores = scores_from_patterns(uniform[None, None], ids)
    # first_token for query q is 1/(q+1): mean over q >= 1.
    expected = float(sum(1 / (q + 1) for q in range(1, n)) / (n - 1))
    assert float(scores["first_token"][0, 0]) == pytest.approx(expected, rel=1e-5)
    assert float(scores["previous_token"][0, 0]) == pytest.approx(expected, rel=1e-5)


def test_batched_patterns_and_no_repeats():
    ids = torch.arange(8)
    att = torch.eye(8)[None, None].expand(2, 1, 1, 8, 8)
    scores = scores_from_patterns(att, ids.expand(2, 8))
    assert torch.isnan(scores["induction"]).all() and torch.isnan(scores["duplicate_token"]).all()
    assert float(scores["previous_token"][0, 0]) == 0.0


@pytest.mark.parametrize(
    ("patterns", "ids", "match"),
    [
        (torch.ones(2, 3, 4), torch.arange(4), "must be"),
        (torch.ones(1, 1, 4, 5), torch.arange(4), "query == key"),
        (torch.ones(1, 1, 4, 4), torch.arange(5), "one id per position"),
    ],
)
def test_bad_patterns(patterns, ids, match):
    with pytest.raises(ValueError, match=match):
        scores_from_patterns(patterns, ids)


def test_tiny_model_scores_have_the_right_shape():
    model, tok = FACTORIES["llama"]()
    scores = head_scores(model, tok, seq_len=8, n_seqs=2)
    for name in SCORES:
        s = scores[name]
        assert s.shape == (model.config.num_hidden_layers, model.config.num_attention_heads)
        assert bool(((s >= 0) & (s <= 1 + 1e-5)).all()), name
    # The attention implementation is restored.
    assert model.config._attn_implementation == "sdpa"


def test_scores_from_a_capture():
    from circuitboard.capture import capture

    model, tok = FACTORIES["llama"]()
    cap = capture(model, tok, "the the and and the the and and")
    scores = head_scores(cap)
    assert scores["induction"].shape == (2, 4)
    assert not torch.isnan(scores["duplicate_token"]).any()


def test_head_scores_bad_input():
    with pytest.raises(TypeError, match="Hugging Face model"):
        head_scores(object())
    model, tok = FACTORIES["llama"]()
    with pytest.raises(ValueError, match="seq_len"):
        head_scores(model, tok, seq_len=1)
