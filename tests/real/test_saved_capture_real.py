"""Issue 24 item 10 on the default model: a saved 17-token capture is small (it was 452 MB,
440 MB of weights) and the loaded one gives the same attribution, tokens named."""

from __future__ import annotations

import torch

import circuitboard as cb

PROMPT = "When Mary and John went to the store, John gave a drink to Mary and"


def test_a_saved_default_capture_is_small_and_exact(default_model, tmp_path):
    model, tok = default_model
    cap = cb.capture(model, tok, PROMPT + " then")
    assert cap.n_tokens == 17
    path = tmp_path / "cap.safetensors"
    cap.save(path)
    assert path.stat().st_size < 80e6  # Q4_1 / Q8_0 blocks, the tied unembedding once
    loaded = cb.load_capture(path)
    here = cb.direct_logit_attribution(cap, " Mary", baseline=" John")
    there = cb.direct_logit_attribution(loaded, " Mary", baseline=" John")
    assert torch.equal(here.values, there.values)
    assert there.description == here.description
    assert torch.equal(loaded.weights["unembed.W_U"], cap.weights["unembed.W_U"])
