"""Circuits on the default model (SmolLM2-135M): IOI and induction on repeated random tokens."""

from __future__ import annotations

import re

import numpy as np
import pytest

import circuitboard as cb

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture(scope="module")
def ioi(default_model):
    model, tok = default_model
    return cb.circuit(model, tok, CLEAN, CORRUPTED, answer=" Mary", wrong=" John", steps=5)


def test_ioi_circuit_identities_and_80_percent(ioi):
    c = ioi
    assert c.n_edges == 70651  # k/v inputs per KV head (123,211 counted per query head)
    assert c.graph.n_edges_per_query_head == 123211
    assert c.evaluate(c.n_edges) == pytest.approx(1.0, abs=1e-5)
    assert c.evaluate(0) == pytest.approx(0.0, abs=1e-5)
    assert abs(c.completeness - 1) < 0.1  # EAP-IG, 5 steps
    ks, vs = c.faithfulness()
    k80 = c.edges_for(0.8)
    print(f"IOI: {k80} of {c.n_edges} edges recover 80% ({c.description})")
    assert 10 <= k80 <= 5000
    assert c.evaluate(k80) >= 0.8
    assert c.evaluate(k80 - 1) < 0.8 or k80 == 1


def test_top_k_beats_random_k(ioi):
    c = ioi
    k = 500
    rng = np.random.default_rng(0)
    masks = [c._keep(rng.choice(c.n_edges, k, replace=False).tolist()) for _ in range(3)]
    random = c.evaluate_masks(masks)
    top = c.evaluate(k)
    print(f"top {k}: {top:.3f}; random {k}: {np.round(random, 3)}")
    assert top > 0.5
    assert top > np.max(random) + 0.3


def _repeat_pairs(tok, n_pairs: int = 3, length: int = 12, shown: int = 8):
    """Clean: R + R[:shown] (induction predicts R[shown]); corrupted: F + R[:shown]."""
    words = sorted(i for s, i in tok.get_vocab().items() if re.fullmatch(r"Ġ[a-z]{4,8}", s))
    rng = np.random.default_rng(0)
    pairs = []
    while len(pairs) < n_pairs:
        R = rng.choice(words, length, replace=False).tolist()
        F = rng.choice(words, length, replace=False).tolist()
        clean, corr = R + R[:shown], F + R[:shown]
        a, b = tok.decode(clean), tok.decode(corr)
        if tok(a)["input_ids"] == clean and tok(b)["input_ids"] == corr:
            pairs.append((a, b, R[shown], F[shown]))
    return pairs


def test_induction_heads_and_the_head_feeding_them(default_model):
    model, tok = default_model
    pairs = _repeat_pairs(tok)
    c = cb.circuit(
        model,
        tok,
        [p[0] for p in pairs],
        [p[1] for p in pairs],
        answer=[p[2] for p in pairs],
        wrong=[p[3] for p in pairs],
    )
    flat = np.abs(c.head_scores).ravel()
    rank = {f"L{i // 9}H{i % 9}": r for r, i in enumerate(np.argsort(-flat))}
    print("head ranks of 270: L18H6", rank["L18H6"], "L17H3", rank["L17H3"])
    assert rank["L18H6"] < 10
    assert rank["L17H3"] < 60
    # K-composition: the strongest head writing into each induction head's key input is the
    # same earlier head (a previous-token head), and that edge is among the strongest edges.
    feeders = {}
    for target in ("L17KV1.k", "L18KV2.k"):  # KV head 1 serves heads 3-5, KV head 2 heads 6-8
        ins = [(s, v, i) for i, (s, t, v) in enumerate(c.edges) if t == target and "H" in s]
        feeders[target] = ins[0]
        print(target, ins[:3])
    (a, _, ra), (b, _, rb) = feeders.values()
    assert a == b
    assert int(a[1:].split("H")[0]) < 17
    assert ra < 50 and rb < 50
