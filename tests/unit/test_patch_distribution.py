"""cb.patch(corrupted="mean" | "resample", reference=...): necessity next to sufficiency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.intervene import Edit, Runner, Site, evaluate, logit_diff
from tests.unit.tiny_models import tiny_llama, unit_gain

CLEAN = "When Mary and John went to the store, John gave a drink to"
REFS = [
    "When Mary and John went to the store, Mary gave a drink to",
    "When John and Mary went to the store, John gave a drink to",
    "When John and Mary went to the store, Mary gave a drink to",
]


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_llama()
    unit_gain(model)  # so the prompts give clearly different answers
    r = Runner(model)
    ids = [torch.tensor(tok(t)["input_ids"]) for t in (CLEAN, REFS[0])]
    d = r.logits(ids[0])[0] - r.logits(ids[1])[0]
    return model, tok, int(d.argmax()), int(d.argmin())


def test_resample_is_patching_against_the_drawn_prompt_both_ways(tiny):
    model, tok, a, w = tiny
    kw = dict(answer=a, wrong=w, site="heads")
    res = cb.patch(model, tok, CLEAN, "resample", reference=REFS[:1], **kw)
    suff = cb.patch(model, tok, CLEAN, REFS[0], direction="denoise", **kw)
    nec = cb.patch(model, tok, CLEAN, REFS[0], direction="noise", **kw)
    np.testing.assert_array_equal(res.values, suff.values)
    np.testing.assert_array_equal(res.sufficiency, suff.values)
    np.testing.assert_array_equal(res.necessity, nec.values)
    assert "reference prompt [0] (seed 0)" in res.notes[0]
    top = res.top(1)[0]
    assert set(top) >= {"sufficiency", "necessity"} and "with sufficiency and necessity" in repr(
        res
    )


def test_resample_draws_are_seeded(tiny):
    model, tok, a, w = tiny
    kw = dict(answer=a, wrong=w, site="heads", reference=REFS)
    one = cb.patch(model, tok, [CLEAN] * 4, "resample", seed=1, **kw)
    two = cb.patch(model, tok, [CLEAN] * 4, "resample", seed=1, **kw)
    np.testing.assert_array_equal(one.necessity, two.necessity)
    assert one.notes[0] == two.notes[0]


def test_mean_is_the_per_position_reference_mean(tiny):
    model, tok, a, w = tiny
    res = cb.patch(
        model,
        tok,
        CLEAN,
        "mean",
        reference=REFS,
        answer=a,
        wrong=w,
        site="heads",
        direction="noise",
    )
    r = Runner(model)
    metric = logit_diff(a, w)
    refs = torch.stack([torch.tensor(tok(p)["input_ids"]) for p in REFS])
    reads = [Edit(Site("z", 1), "read")]
    m_ref = float(evaluate(metric, r.logits(refs, reads)).mean())
    mean = reads[0].activation.float().mean(0)[:, 2]  # head 2, every position
    clean = torch.tensor(tok(CLEAN)["input_ids"])
    m_clean = float(evaluate(metric, r.logits(clean))[0])
    m = float(evaluate(metric, r.logits(clean, [Edit(Site("z", 1, head=2), "replace", mean)]))[0])
    assert res.clean_value == pytest.approx(m_clean, abs=1e-5)
    assert res.corrupted_value == pytest.approx(m_ref, abs=1e-5)
    assert res.raw[1, 2] == pytest.approx(m, abs=1e-5)
    assert res.values[1, 2] == pytest.approx((m - m_ref) / (m_clean - m_ref), abs=1e-5)
    np.testing.assert_array_equal(res.necessity, res.values)
    assert res.sufficiency is None and res.notes[0].startswith("corrupted='mean'")


def test_saved_with_both(tiny, tmp_path):
    model, tok, a, w = tiny
    res = cb.patch(model, tok, CLEAN, "resample", reference=REFS, answer=a, wrong=w, site="heads")
    back = cb.load_patching(res.save(tmp_path / "p.npz"))
    np.testing.assert_array_equal(back.necessity, res.necessity)
    np.testing.assert_array_equal(back.sufficiency, res.sufficiency)


def test_bad_inputs(tiny):
    model, tok, a, w = tiny
    kw = dict(answer=a, wrong=w, site="heads")
    with pytest.raises(ValueError, match="needs reference= prompts"):
        cb.patch(model, tok, CLEAN, "mean", direction="noise", **kw)
    with pytest.raises(ValueError, match="Pass direction='noise', or corrupted='resample'"):
        cb.patch(model, tok, CLEAN, "mean", reference=REFS, **kw)
    with pytest.raises(ValueError, match="no other reference prompt has"):
        cb.patch(model, tok, CLEAN, "resample", reference=["short", CLEAN], **kw)
    with pytest.raises(ValueError, match="needs clean prompt 0's 20 tokens"):
        cb.patch(model, tok, CLEAN, "mean", reference=["short"], direction="noise", **kw)


def test_circuit_resample_is_the_drawn_pair(tiny):
    model, tok, a, w = tiny
    kw = dict(answer=a, wrong=w, method="eap", steps=1)
    res = cb.circuit(model, tok, CLEAN, "resample", reference=REFS[:1], **kw)
    ref = cb.circuit(model, tok, CLEAN, REFS[0], **kw)
    np.testing.assert_array_equal(res.scores, ref.scores)
    with pytest.raises(ValueError, match="a mean over prompts is no run"):
        cb.circuit(model, tok, CLEAN, "mean", reference=REFS, **kw)
