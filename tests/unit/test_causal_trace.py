"""cb.causal_trace: identities (noise 0 → 0, full restoration → 1), exactness, files, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.intervene import Edit, Site, write_hooks
from circuitboard.intervene._causal_trace import restoration_effect, subject_positions
from circuitboard.intervene._causal_trace_result import load_causal_trace

from .tiny_models import tiny_bert, tiny_gpt2, tiny_llama

PROMPT = "when the store opened the"
SUBJECT = "store"


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def test_noise_zero_gives_zero_for_every_restoration(llama) -> None:
    model, tok = llama
    tr = cb.causal_trace(model, tok, PROMPT, subject=SUBJECT, noise=0.0, samples=2)
    assert tr.clean_value == pytest.approx(tr.corrupted_value, abs=1e-7)
    np.testing.assert_allclose(tr.values, 0.0, atol=1e-6)
    assert np.isnan(tr.normalized).all()


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_restoring_every_layer_at_every_position_gives_one(build) -> None:
    model, tok = build()
    n = model.config.num_hidden_layers
    every = [
        Site(kind, layer) for kind in ("resid_post", "mlp_out", "attn_out") for layer in range(n)
    ]
    r = restoration_effect(model, tok, PROMPT, subject=SUBJECT, restore=every, samples=3)
    # A random tiny model's answer has p ≈ 0.0035 and the noise moves it by ≈ 3e-5, so compare
    # probabilities (float32 resolution ≈ 1e-10 here), not the ratio of two tiny numbers.
    assert abs(r["clean"] - r["corrupted"]) > 1e-5  # the noise does something
    assert r["restored"] == pytest.approx(r["clean"], abs=1e-9)
    assert r["normalized"] == pytest.approx(1.0, abs=1e-4)


def test_trace_identities_and_batching(llama) -> None:
    model, tok = llama
    tr = cb.causal_trace(model, tok, PROMPT, subject=SUBJECT, samples=3, windows=(1, 1))
    first = subject_positions(tok, PROMPT, SUBJECT)[0]
    hidden = tr.effect("hidden")
    # The last block's output at the last position is all the logits read: restoring it is 1.
    total = tr.clean_value - tr.corrupted_value
    assert tr.values[0, -1, -1] == pytest.approx(total, abs=1e-9)
    # Before the subject nothing differs: exactly 0.
    assert (tr.values[:, :, :first] == 0).all()
    # Hidden state of the last layer at a non-final position cannot reach the logits.
    np.testing.assert_allclose(hidden[-1, first:-1], 0.0, atol=1e-6)
    one = cb.causal_trace(
        model, tok, PROMPT, subject=SUBJECT, samples=3, windows=(1, 1), batch_size=1
    )
    np.testing.assert_allclose(one.values, tr.values, atol=1e-6)
    again = cb.causal_trace(model, tok, PROMPT, subject=SUBJECT, samples=3, windows=(1, 1))
    np.testing.assert_array_equal(again.values, tr.values)  # seeded


@pytest.mark.parametrize(
    ("kind", "site", "layer"),
    [
        ("mlp", "mlp_out", 0),
        ("mlp", "mlp_out", 1),
        ("hidden", "resid_post", 1),
        ("attn", "attn_out", 1),
    ],
)
def test_one_cell_equals_a_hand_written_hooked_run(llama, kind, site, layer) -> None:
    """One restoration, redone as a plain hooked forward from the embedding (no shared
    corrupted prefix, no batching): at the subject's last token in layer 0, at the last token
    in layer 1 (the last layer: other positions cannot reach the logits there)."""
    model, tok = llama
    tr = cb.causal_trace(
        model, tok, PROMPT, subject=SUBJECT, samples=2, windows=(1, 1), kinds=(kind,)
    )
    pos = subject_positions(tok, PROMPT, SUBJECT)
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    emb_std = float(model.model.embed_tokens.weight.detach().std())
    noise = torch.randn(2, len(pos), 32, generator=torch.Generator().manual_seed(0)) * 3 * emb_std
    read = Edit(Site(site, layer), op="read")
    with torch.no_grad(), write_hooks(model, [read]):
        clean_logits = model(input_ids=ids, use_cache=False).logits[0, -1]
    answer = int(clean_logits.argmax())
    at = pos[-1] if layer == 0 else ids.shape[1] - 1
    effects = []
    for s in range(2):
        add = Edit(Site("embed", 0, pos=tuple(pos)), "add", noise[s])
        put = Edit(Site(site, layer, pos=at), "replace", read.activation[0, at])
        with torch.no_grad(), write_hooks(model, [add]):
            p_corrupt = torch.softmax(model(input_ids=ids, use_cache=False).logits[0, -1], -1)
        with torch.no_grad(), write_hooks(model, [add, put]):
            p_restored = torch.softmax(model(input_ids=ids, use_cache=False).logits[0, -1], -1)
        effects.append(float(p_restored[answer] - p_corrupt[answer]))
    assert tr.answer_id == answer
    assert tr.effect(kind)[layer, at] == pytest.approx(np.mean(effects), abs=1e-7)
    assert abs(np.mean(effects)) > 1e-7  # the cell is not trivially 0


def test_save_load_roundtrip_without_pickle(llama, tmp_path) -> None:
    model, tok = llama
    tr = cb.causal_trace(model, tok, PROMPT, subject=SUBJECT, samples=2, kinds=("mlp", "attn"))
    again = load_causal_trace(tr.save(tmp_path / "t.npz"))
    for name in ("values", "normalized", "sample_values", "sample_corrupted"):
        np.testing.assert_array_equal(getattr(again, name), getattr(tr, name))
    assert again.kinds == ("mlp", "attn") and again.tokens == tr.tokens
    assert again.top(3) == tr.top(3)
    assert "CausalTrace(p(" in repr(again) and "mlp peak" in repr(again)
    assert cb.load_causal_trace is load_causal_trace


def test_bad_inputs_name_the_fix(llama) -> None:
    model, tok = llama
    with pytest.raises(ValueError, match="not in the prompt.*copied from the prompt"):
        cb.causal_trace(model, tok, PROMPT, subject="Paris")
    with pytest.raises(ValueError, match="noise must be a number ≥ 0"):
        cb.causal_trace(model, tok, PROMPT, subject=SUBJECT, noise=-1)
    with pytest.raises(ValueError, match="windows must be"):
        cb.causal_trace(model, tok, PROMPT, subject=SUBJECT, windows=(0, 10))
    with pytest.raises(ValueError, match="kinds must be"):
        cb.causal_trace(model, tok, PROMPT, subject=SUBJECT, kinds=("mlps",))
    with pytest.raises(ValueError, match="samples must be"):
        cb.causal_trace(model, tok, PROMPT, subject=SUBJECT, samples=0)
    bert, bert_tok = tiny_bert()
    with pytest.raises(ValueError, match="needs a causal language model.*'bert'"):
        cb.causal_trace(bert, bert_tok, PROMPT, subject=SUBJECT)
