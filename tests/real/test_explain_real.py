"""The default model (SmolLM2-135M): exact score / output splits, and how its induction head
L18H6 finds its key (K-composition with the previous-token head L16H0)."""

from __future__ import annotations

import pytest
import torch

import circuitboard as cb
from tests.conftest import IOI_PROMPT

pytestmark = pytest.mark.real

INDUCTION = (18, 6)


@pytest.fixture(scope="module")
def ioi32(default_model):
    model, tok = default_model
    return cb.capture(model, tok, IOI_PROMPT, dtype=torch.float32)


def repeated_random(tok, seed: int, length: int = 20) -> str:
    g = torch.Generator().manual_seed(seed)
    text = tok.decode(torch.randint(1000, 20000, (length,), generator=g).tolist())
    return text + text


@pytest.fixture(scope="module")
def induction_caps(default_model):
    model, tok = default_model
    return [cb.capture(model, tok, repeated_random(tok, s), dtype=torch.float32) for s in range(3)]


@pytest.mark.parametrize(("layer", "head"), [(0, 0), INDUCTION, (29, 8)])
def test_parts_sum_to_the_score(ioi32, layer, head):
    n = ioi32.n_tokens
    for q, k in ((n - 1, 0), (n - 1, n - 5), (7, 3)):
        ex = cb.explain_attention(ioi32, layer=layer, head=head, query=q, key=k)
        assert abs(ex.total - ex.score) <= 1e-4 * max(abs(ex.score), 1.0), (q, k)
        assert ex.residual_error < 1e-5
        assert ex.kv_head == head // 3  # 9 query heads share 3 key/value heads
        assert len(ex.query_labels) == 1 + layer * 10  # embed, 9 heads + MLP per layer


def test_score_differences_equal_the_pattern_log_ratio(ioi32):
    layer, head = INDUCTION
    n = ioi32.n_tokens
    pat = ioi32[f"blocks.{layer}.attn.hook_pattern"][head, n - 1].double()
    scores = {
        k: cb.explain_attention(ioi32, layer=layer, head=head, query=n - 1, key=k).total
        for k in (0, 4, n - 2)
    }
    for k in (4, n - 2):
        expected = float(torch.log(pat[0] / pat[k]))
        assert scores[0] - scores[k] == pytest.approx(expected, abs=1e-4 * max(1, abs(expected)))


def test_ov_split_sums_to_the_head_attribution(ioi32):
    attr = cb.direct_logit_attribution(ioi32, " Mary", baseline=" John")
    best = int(attr.heads.abs().flatten().argmax())  # the head that pushes hardest
    for layer, head in (INDUCTION, divmod(best, attr.n_heads)):
        ov = cb.explain_head_output(
            ioi32, layer=layer, head=head, query=-1, target=" Mary", baseline=" John"
        )
        term = attr[f"L{layer}H{head}"]
        assert abs(ov.total - term) <= 1e-4 * max(abs(term), 1e-3)
        assert ov.value_error < 1e-5


def test_induction_head_keys_on_the_previous_token_head(induction_caps):
    """Finding: on repeated random tokens, L18H6's score for the induction target is built on
    the key side by L16H0 (a previous-token head: the key position carries 'my previous token
    was X'), read by the query's own token identity (embedding through L0's MLP). The top pair
    L0.mlp × L16H0 is the same on three random sequences."""
    layer, head = INDUCTION
    tops = []
    for cap in induction_caps:
        n = cap.n_tokens
        q = n - 3
        pat = cap[f"blocks.{layer}.attn.hook_pattern"][head, q]
        k = int(pat.argmax())
        assert cap.tokens[k - 1] == cap.tokens[q] and float(pat[k]) > 0.5  # induction target
        ex = cb.explain_attention(cap, layer=layer, head=head, query=q, key=k)
        assert abs(ex.total - ex.score) <= 1e-4 * abs(ex.score)
        assert ex.top_components("key", 1)[0][0] == "L16H0"
        top = ex.top(1)[0]
        tops.append((top["query"], top["key"]))
        prev = cap["blocks.16.attn.hook_pattern"][0]
        idx = torch.arange(1, n)
        assert float(prev[idx, idx - 1].mean()) > 0.5  # L16H0 is a previous-token head
    assert tops == [("L0.mlp", "L16H0")] * 3
