"""Dictionaries on the default model: splicing with the error term keeps the model's logits."""

from __future__ import annotations

import pytest
import torch

import circuitboard as cb

from ..unit.sae_helpers import ReluSAE

pytestmark = pytest.mark.real

IOI = "When Mary and John went to the store, John gave a drink to"


def test_splice_with_error_equals_plain_forward(default_model):
    model, tok = default_model
    saes = [ReluSAE(576, 2048, f"blocks.{layer}.hook_resid_post", seed=layer) for layer in (3, 12)]
    plain = cb.capture(model, tok, IOI, what=["logits"], dtype=torch.float32)
    kept = cb.capture(
        model, tok, IOI, what=["logits"], saes=saes, splice=True, keep_error=True,
        dtype=torch.float32,
    )  # fmt: skip
    torch.testing.assert_close(kept.logits, plain.logits, atol=1e-5, rtol=0)
