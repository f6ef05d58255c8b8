"""Dictionary features in direct logit attribution: features + decoder bias + error + rest sum
to the model's logit difference; an identity dictionary over neurons gives the neurons."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.analysis._features import load_feature_attribution

from .sae_helpers import IdentityDictionary, ReluSAE
from .tiny_models import tiny_gpt2, tiny_llama

PROMPT = "When Mary and John went to the store, John gave a drink to"


def _dictionaries(d: int, d_mlp: int, n_heads_x_d_head: int) -> list:
    return [
        ReluSAE(d, 128, "blocks.0.hook_resid_pre", seed=1),
        ReluSAE(d, 128, "blocks.0.hook_resid_post", seed=2),
        ReluSAE(d, 128, "blocks.1.hook_mlp_out", seed=3),
        ReluSAE(d, 128, "blocks.1.hook_attn_out", seed=4),
        ReluSAE(d_mlp, 128, "blocks.0.mlp.hook_post", seed=5),
        ReluSAE(n_heads_x_d_head, 64, "blocks.1.attn.hook_z", seed=6),
    ]


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_features_error_and_rest_sum_to_the_logit_difference(factory):
    model, tok = factory()
    cfg = model.config
    d = cfg.hidden_size
    d_mlp = getattr(cfg, "intermediate_size", None) or 4 * d
    saes = _dictionaries(d, d_mlp, d)
    cap = cb.capture(model, tok, PROMPT, saes=saes, dtype=torch.float32)
    attr = cb.direct_logit_attribution(cap, 5, 7, saes=True)
    for sae in saes:
        split = attr.features(sae.hook)
        assert abs(split.total - attr.model_value) <= 1e-5 * max(1.0, abs(attr.model_value))
        assert split.error != 0 and (split.values != 0).any()  # real terms, not a tautology


def test_identity_dictionary_over_neurons_gives_the_neurons():
    model, tok = tiny_llama()
    ident = IdentityDictionary(48, "blocks.1.mlp.hook_post")
    cap = cb.capture(model, tok, PROMPT, saes=ident, dtype=torch.float32)
    attr = cb.direct_logit_attribution(cap, 5, 7, saes=[ident])
    split = attr.features(1)
    np.testing.assert_allclose(split.values, attr.neurons(1).numpy(), rtol=0, atol=1e-9)
    assert split.error == 0 and split.bias == 0
    assert split.top(1)[0]["feature"] == int(attr.neurons(1).abs().argmax())


def test_feature_attribution_saves_without_pickle():
    model, tok = tiny_llama()
    sae = ReluSAE(32, 64, "blocks.0.hook_resid_post")
    sae.metadata["labels"] = {3: "names"}
    cap = cb.capture(model, tok, PROMPT, saes=sae, dtype=torch.float32)
    split = cb.direct_logit_attribution(cap, 5, 7, saes=True).features(0)
    assert split.labels[3] == "blocks.0.hook_resid_post#3 names"
    with tempfile.TemporaryDirectory() as d:
        split.save(Path(d) / "f.npz")
        back = load_feature_attribution(Path(d) / "f.npz")
    assert np.array_equal(back.values, split.values) and back.total == split.total
    assert back.labels == split.labels
    assert "active features" in repr(back)


def test_bad_feature_arguments():
    model, tok = tiny_llama()
    sae = ReluSAE(32, 64, "blocks.0.hook_resid_post")
    plain = cb.capture(model, tok, PROMPT, dtype=torch.float32)
    with pytest.raises(KeyError, match=r"no features of the dictionary.*saes=\[sae\]"):
        cb.direct_logit_attribution(plain, 5, 7, saes=[sae])
    with pytest.raises(ValueError, match=r"saes=True.*ran none"):
        cb.direct_logit_attribution(plain, 5, 7, saes=True)
    cap = cb.capture(model, tok, PROMPT, saes=sae, dtype=torch.float32)
    attr = cb.direct_logit_attribution(cap, 5, 7, saes=True)
    with pytest.raises(KeyError, match=r"no single dictionary at 1"):
        attr.features(1)
