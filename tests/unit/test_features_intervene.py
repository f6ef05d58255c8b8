"""Interventions on dictionary features: delta-clamping during generation (exact identity,
a real change), and the errors that name the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.dictionaries import SAE
from circuitboard.intervene._feature_patch import load_feature_patching

from .sae_helpers import ReluSAE
from .tiny_models import tiny_llama

PROMPT = "When Mary and John went"


@pytest.fixture(scope="module")
def setup():
    model, tok = tiny_llama()
    sae = SAE(32, 64, kind="topk", k=4, hook="blocks.0.hook_resid_post", seed=3)
    cap = cb.capture(model, tok, PROMPT, saes=sae, dtype=torch.float32)
    acts = cap[f"{sae.hook}.sae.hook_sae_acts_post"].to_dense()
    plain = cb.generate(model, tok, PROMPT, max_new_tokens=6)
    return model, tok, sae, acts, plain


def test_clamp_to_own_value_changes_nothing(setup):
    model, tok, sae, acts, plain = setup
    p = acts.shape[0] - 1
    f = int(acts[p].argmax())
    assert acts[p, f] > 0
    own = float(acts[p, f])
    gen = cb.generate(model, tok, PROMPT, max_new_tokens=6, clamp={(sae, f): own}, positions=[p])
    assert gen.text == plain.text
    assert torch.equal(gen.capture.logits, plain.capture.logits)  # bit for bit
    silent = int((acts == 0).all(0).nonzero()[0])
    gen0 = cb.generate(model, tok, PROMPT, max_new_tokens=6, clamp={(sae, silent): 0.0})
    assert torch.equal(gen0.capture.logits, plain.capture.logits)


def test_clamp_moves_the_output_by_the_decoder_delta(setup):
    model, tok, sae, acts, plain = setup
    p = acts.shape[0] - 1
    f = int(acts[p].argmax())
    gen = cb.generate(model, tok, PROMPT, max_new_tokens=3, clamp={(sae, f): 40.0}, positions=[p])
    assert gen.text != plain.text
    # what was added at block 1's input is exactly (40 - a) * W_dec[f] at p, zero elsewhere
    added = gen.steer_added[1][: acts.shape[0]]
    expect = (40.0 - acts[p, f]) * sae.W_dec[f].detach()
    torch.testing.assert_close(added[p], expect, atol=1e-5, rtol=1e-5)
    assert float(added[:p].abs().max()) == 0.0


def test_clamp_bad_input(setup):
    model, tok, sae, acts, plain = setup
    with pytest.raises(IndexError, match=r"feature index 64 is out of range.*d_sae=64"):
        cb.generate(model, tok, PROMPT, max_new_tokens=1, clamp={(sae, 64): 1.0})
    other = ReluSAE(576, 64, "blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match=r"d_in=576.*d_model=32.*another model"):
        cb.generate(model, tok, PROMPT, max_new_tokens=1, clamp={(other, 0): 1.0})
    mlp = ReluSAE(32, 64, "blocks.0.hook_mlp_out")
    with pytest.raises(ValueError, match=r"residual-stream dictionaries"):
        cb.generate(model, tok, PROMPT, max_new_tokens=1, clamp={(mlp, 0): 1.0})
    last = ReluSAE(32, 64, "blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match=r"last residual"):
        cb.generate(model, tok, PROMPT, max_new_tokens=1, clamp={(last, 0): 1.0})
    with pytest.raises(TypeError, match=r"\(sae, feature\) pairs"):
        cb.generate(model, tok, PROMPT, max_new_tokens=1, clamp={sae: 1.0})
    with pytest.raises(ValueError, match=r"both edit the input of block\(s\) \[1\]"):
        cb.generate(model, tok, PROMPT, max_new_tokens=1, clamp={(sae, 0): 1.0},
                    steer=torch.ones(32), layer=1)  # fmt: skip


def test_steer_with_a_feature_direction(setup):
    model, tok, sae, acts, plain = setup
    gen = cb.generate(model, tok, PROMPT, max_new_tokens=3, steer=sae.feature(5), layer=1,
                      scale=30.0, positions=[acts.shape[0] - 1])  # fmt: skip
    added = gen.steer_added[1][acts.shape[0] - 1]
    torch.testing.assert_close(added, 30.0 * sae.W_dec[5].detach())


CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def _logit(tok):
    """A metric with a wide clean–corrupted range on the tiny model: one token's logit."""
    return {"answer": " Mary", "wrong": None}


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_patching_every_feature_and_the_error_equals_the_whole_activation(setup, direction):
    model, tok, sae, acts, plain = setup
    res = cb.patch(model, tok, CLEAN, CORRUPT, site="features", saes=sae, direction=direction,
                   **_logit(tok))  # fmt: skip
    span = res.clean_value - res.corrupted_value
    assert abs(res.all_and_error - res.whole) * abs(span) <= 1e-5
    assert abs(res.whole - (1.0 if direction == "denoise" else 0.0)) * abs(span) <= 1e-5
    assert len(res.features) and np.isfinite(res.values).all()
    # one feature exactly as the decoder says: base + (a_src - a_base)_f * W_dec[f]
    att = cb.patch(model, tok, CLEAN, CORRUPT, site="features", saes=sae, direction=direction,
                   method="attribution", **_logit(tok))  # fmt: skip
    assert np.array_equal(att.features, res.features)
    assert np.corrcoef(att.values, res.values)[0, 1] > 0.9


def test_feature_patching_saves_and_refuses_bad_input(setup, tmp_path):
    model, tok, sae, acts, plain = setup
    res = cb.patch(model, tok, CLEAN, CORRUPT, site="features", saes=sae, **_logit(tok))
    res.save(tmp_path / "fp.npz")
    back = load_feature_patching(tmp_path / "fp.npz")
    assert np.array_equal(back.values, res.values) and back.labels == res.labels
    with pytest.raises(ValueError, match=r"site='features' needs the dictionary.*saes=sae"):
        cb.patch(model, tok, CLEAN, CORRUPT, site="features", answer=" Mary")
    with pytest.raises(ValueError, match=r"saes= goes with site='features'"):
        cb.patch(model, tok, CLEAN, CORRUPT, site="heads", saes=sae, answer=" Mary")
    other = ReluSAE(576, 64, "blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match=r"d_in=576.*width 32"):
        cb.patch(model, tok, CLEAN, CORRUPT, site="features", saes=other, answer=" Mary")
