"""Dictionaries attached to a capture: sparse features stored next to their hook, splicing with
the error term gives the model's own logits on every adapter family, identity dictionaries
reproduce neurons, bad dictionaries are refused with the fix."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

import circuitboard as cb
from circuitboard.capture._saes import sae_names

from .sae_helpers import IdentityDictionary, ReluSAE, Transcoder
from .tiny_models import ARCH_FACTORIES, FACTORIES, tiny_llama

PROMPT = "When Mary and John went to the store, John gave a drink to"
F32 = {"dtype": torch.float32}
ALL_FAMILIES = {**FACTORIES, **ARCH_FACTORIES}


def _saes(model: torch.nn.Module) -> list[ReluSAE]:
    """A residual SAE on the first block and an MLP-output SAE on the last."""
    d, last = model.config.hidden_size, model.config.num_hidden_layers - 1
    return [
        ReluSAE(d, 4 * d, "blocks.0.hook_resid_post", seed=1),
        ReluSAE(d, 4 * d, f"blocks.{last}.hook_mlp_out", seed=2),
    ]


@pytest.mark.parametrize("name", list(ALL_FAMILIES))
def test_splice_with_error_equals_plain_forward(name):
    model, tok = ALL_FAMILIES[name]()
    saes = _saes(model)
    plain = cb.capture(model, tok, PROMPT, what=["logits"], **F32)
    read = cb.capture(model, tok, PROMPT, what=["logits"], saes=saes, **F32)
    kept = cb.capture(
        model, tok, PROMPT, what=["logits"], saes=saes, splice=True, keep_error=True, **F32
    )
    spliced = cb.capture(model, tok, PROMPT, what=["logits"], saes=saes, splice=True, **F32)
    assert torch.equal(read.logits, plain.logits)  # reading changes nothing, bit for bit
    torch.testing.assert_close(kept.logits, plain.logits, atol=1e-5, rtol=0)
    assert (spliced.logits - plain.logits).abs().max() > 1e-3  # random SAEs: a real change
    for sae in saes:
        n = sae_names(sae.hook)
        x = read[n["hook_sae_input"]]
        acts = read[n["hook_sae_acts_post"]]
        assert acts.is_sparse and acts.shape == (read.n_tokens, sae.d_sae)
        # features + error rebuild the input exactly as the SAE computed them
        torch.testing.assert_close(sae.decode(acts.to_dense()), read[n["hook_sae_recons"]])
        torch.testing.assert_close(
            read[n["hook_sae_recons"]] + read[n["hook_sae_error"]], x, atol=1e-6, rtol=0
        )
        torch.testing.assert_close(acts.to_dense(), sae.encode(x).detach())


def test_input_is_the_hooked_activation_and_sparse_memory():
    model, tok = tiny_llama()
    sae = ReluSAE(32, 4096, "blocks.1.hook_resid_pre", seed=3)
    cap = cb.capture(model, tok, PROMPT, saes=sae, **F32)
    n = sae_names(sae.hook)
    assert torch.equal(cap[n["hook_sae_input"]], cap["blocks.1.hook_resid_pre"])
    acts = cap[n["hook_sae_acts_post"]]
    dense_bytes = cap.n_tokens * sae.d_sae * 4
    stored = acts.values().nbytes + acts.indices().nbytes
    assert acts._nnz() < 0.5 * cap.n_tokens * sae.d_sae
    assert stored < dense_bytes  # grows with active features, not with d_sae
    assert cap.saes == {sae.hook: sae}


def test_identity_dictionary_reproduces_neurons():
    model, tok = tiny_llama()
    ident = IdentityDictionary(48, "blocks.1.mlp.hook_post")
    cap = cb.capture(model, tok, PROMPT, saes=[ident], splice=True, **F32)
    plain = cb.capture(model, tok, PROMPT, **F32)
    acts = cap[sae_names(ident.hook)["hook_sae_acts_post"]].to_dense()
    assert torch.equal(acts, plain["blocks.1.mlp.hook_post"])
    assert torch.equal(cap.logits, plain.logits)  # identity splice: exactly the model


def test_transcoder_reads_one_hook_and_reconstructs_another():
    model, tok = tiny_llama()
    tc = Transcoder(32, 96, "blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out", seed=4)
    plain = cb.capture(model, tok, PROMPT, what="all", **F32)
    cap = cb.capture(model, tok, PROMPT, saes=tc, splice=True, keep_error=True, **F32)
    n = sae_names(tc.hook)
    assert torch.equal(cap[n["hook_sae_input"]], plain["blocks.0.hook_resid_mid"])
    torch.testing.assert_close(
        cap[n["hook_sae_recons"]] + cap[n["hook_sae_error"]], plain["blocks.0.hook_mlp_out"]
    )
    torch.testing.assert_close(cap.logits, plain.logits, atol=1e-5, rtol=0)


def test_saved_capture_keeps_sparse_features():
    model, tok = tiny_llama()
    sae = ReluSAE(32, 256, "blocks.0.hook_resid_post")
    cap = cb.capture(model, tok, PROMPT, saes=sae, **F32)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cap.safetensors"
        cap.save(path)
        back = cb.load_capture(path)
    name = sae_names(sae.hook)["hook_sae_acts_post"]
    assert back[name].is_sparse
    assert torch.equal(back[name].to_dense(), cap[name].to_dense())


# -- bad input --------------------------------------------------------------------------------


def test_dictionary_whose_hook_the_capture_lacks():
    model, tok = tiny_llama()
    with pytest.raises(ValueError, match=r"reads 'blocks.7.hook_resid_post'.*2 layers"):
        cb.capture(model, tok, PROMPT, saes=ReluSAE(32, 64, "blocks.7.hook_resid_post"))
    with pytest.raises(ValueError, match=r"does not have.*set sae.hook"):
        cb.capture(model, tok, PROMPT, saes=ReluSAE(32, 64, "blocks.0.ln2.hook_normalized"))


def test_dictionary_for_another_model():
    model, tok = tiny_llama()
    with pytest.raises(ValueError, match=r"d_in=576.*width 32.*made for this model"):
        cb.capture(model, tok, PROMPT, saes=ReluSAE(576, 64, "blocks.0.hook_resid_post"))


def test_splice_arguments():
    model, tok = tiny_llama()
    with pytest.raises(ValueError, match="keep_error=True only matters with splice=True"):
        cb.capture(model, tok, PROMPT, saes=ReluSAE(32, 64, "blocks.0.hook_resid_post"),
                   keep_error=True)  # fmt: skip
    with pytest.raises(ValueError, match=r"splice=True needs dictionaries"):
        cb.capture(model, tok, PROMPT, splice=True)
    with pytest.raises(ValueError, match=r"cannot replace 'blocks.0.hook_resid_mid'"):
        cb.capture(model, tok, PROMPT, saes=ReluSAE(32, 64, "blocks.0.hook_resid_mid"),
                   splice=True)  # fmt: skip
    two = [ReluSAE(32, 64, "blocks.0.hook_resid_post"), ReluSAE(32, 8, "blocks.0.hook_resid_post")]
    with pytest.raises(ValueError, match="one dictionary per hook"):
        cb.capture(model, tok, PROMPT, saes=two)


@pytest.mark.parametrize("kind", ["topk", "jumprelu"])
def test_circuitboard_sae_and_skip_transcoder(kind):
    from circuitboard.dictionaries import SAE

    model, tok = tiny_llama()
    extra = {"k": 4} if kind == "topk" else {"threshold": 0.05}
    sae = SAE(32, 64, kind=kind, hook="blocks.1.hook_resid_post", seed=1, **extra)
    tc = SAE(32, 48, kind="relu", hook="blocks.0.hook_resid_mid", hook_out="blocks.0.hook_mlp_out",
             W_skip=0.1 * torch.randn(32, 32), seed=2)  # fmt: skip
    plain = cb.capture(model, tok, PROMPT, what="all", **F32)
    cap = cb.capture(model, tok, PROMPT, saes=[sae, tc], splice=True, keep_error=True, **F32)
    assert torch.equal(cap.logits, plain.logits)
    acts = cap[sae_names(sae.hook)["hook_sae_acts_post"]]
    if kind == "topk":
        assert int((acts.to_dense() > 0).sum(-1).max()) <= 4
    out = tc(plain["blocks.0.hook_resid_mid"], plain["blocks.0.hook_mlp_out"])
    torch.testing.assert_close(cap[sae_names(tc.hook)["hook_sae_recons"]], out.reconstruction)


def test_transcoder_on_the_mlp_input():
    """``mlp.hook_in`` (what the MLP receives, after its norm) → ``hook_mlp_out``."""
    from circuitboard.dictionaries import SAE

    model, tok = tiny_llama()
    tc = SAE(32, 48, kind="relu", hook="blocks.1.mlp.hook_in", hook_out="blocks.1.hook_mlp_out",
             W_skip=0.1 * torch.randn(32, 32), seed=3)  # fmt: skip
    plain = cb.capture(model, tok, PROMPT, what="all", **F32)
    cap = cb.capture(model, tok, PROMPT, saes=tc, splice=True, keep_error=True, **F32)
    x = cap[sae_names(tc.hook)["hook_sae_input"]]
    with torch.no_grad():
        ref = model.model.layers[1].post_attention_layernorm(plain["blocks.1.hook_resid_mid"])
    torch.testing.assert_close(x, ref)
    assert torch.equal(cap.logits, plain.logits)


def test_topk_sae_is_captured_without_dense_activations_exactly():
    """A cb.SAE of kind topk is encoded and decoded sparsely in capture (no [pos, d_sae]
    tensor): in a padded batch, each prompt's stored activations are exactly sae.encode's,
    the reconstruction is sae.decode's up to float rounding, and recons + error is the hooked
    tensor (to the float32 storage of the error); a subclass that changes encode goes
    through its own maths."""
    model, tok = tiny_llama()
    sae = cb.SAE(32, 96, kind="topk", k=5, hook="blocks.1.hook_resid_post", seed=3)
    prompts = [PROMPT, "a b", "the quick brown fox jumps"]
    caps = cb.capture(model, tok, prompts, saes=sae, batch_size=3, **F32)
    n = sae_names(sae.hook)
    for cap in caps:
        x = cap[n["hook_sae_input"]]
        acts = cap[n["hook_sae_acts_post"]]
        assert acts.is_coalesced() and acts.shape == (cap.n_tokens, 96)
        with torch.no_grad():
            want = sae.encode(x)
            assert torch.equal(acts.to_dense(), want)
            torch.testing.assert_close(cap[n["hook_sae_recons"]], sae.decode(want))
        rebuilt = cap[n["hook_sae_recons"]] + cap[n["hook_sae_error"]]
        torch.testing.assert_close(rebuilt, x, atol=1e-6, rtol=0)

    class Doubled(cb.SAE):
        def encode(self, x):
            return 2 * super().encode(x)

    twice = Doubled(32, 96, kind="topk", k=5, hook="blocks.1.hook_resid_post", seed=3)
    cap = cb.capture(model, tok, PROMPT, saes=twice, **F32)
    with torch.no_grad():
        assert torch.equal(cap[n["hook_sae_acts_post"]].to_dense(), 2 * sae.encode(cap[sae.hook]))
