"""Composition scores, path patching and ablations on the default model (SmolLM2-135M)."""

from __future__ import annotations

import numpy as np

import circuitboard as cb
from tests.conftest import IOI_PROMPT

CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def test_composition_scores_find_structure_above_chance(default_model):
    model, _ = default_model
    res = cb.composition_scores(model, baseline_samples=8)
    for k in "QKV":
        v = res.values[k][res.valid]
        assert 0.03 < res.baseline[k] < 0.06  # ≈ 1/sqrt(d_head)-scaled chance for 576 / 64
        assert v.max() > 3 * res.baseline[k], k  # the strongest pairs are far above chance
    # the strongest K-composition pair writes into a KV group of a later layer's heads
    best = res.top(1, kind="K")[0]
    assert best["writer"][0] < best["reader"][0]


def test_path_patching_ioi_into_logits_equals_identities(default_model):
    model, tok = default_model
    kw = dict(answer=" Mary", wrong=" John")
    res = cb.path_patch(model, tok, IOI_PROMPT, CORRUPT, senders="heads", **kw)
    assert len(res.sets) == 270
    none = cb.path_patch(model, tok, IOI_PROMPT, CORRUPT, senders=[[]], **kw)
    assert abs(none.effects[0]) < 1e-5  # float32 rounding of differently batched forwards
    # the head whose direct path matters most pulls the answer down when corrupted
    top = res.top(1)[0]
    assert top["effect"] < -0.2, top


def test_zero_ablating_layers_first_and_last_hurt_most(default_model):
    model, tok = default_model
    texts = cb.load_texts()[:2]
    res = cb.ablate(model, tok, texts, ["L0", "L14", "L29"])
    first, middle, last = res.mean_effect
    assert first > last > middle > -0.1, res.mean_effect
    assert np.isfinite(res.values).all()
