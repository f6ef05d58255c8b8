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


def test_dla_with_features_sums_to_the_logit_difference(default_model):
    model, tok = default_model
    sae = ReluSAE(576, 2048, "blocks.12.hook_resid_post", seed=12)
    cap = cb.capture(model, tok, IOI, saes=sae, dtype=torch.float32)
    attr = cb.direct_logit_attribution(cap, " Mary", " John", saes=True)
    split = attr.features(12)
    assert abs(split.total - attr.model_value) <= 1e-5 * abs(attr.model_value)


def test_feature_patching_identity_and_clamp_identity(default_model):
    model, tok = default_model
    sae = cb.SAE(576, 2048, kind="topk", k=32, hook="blocks.10.hook_resid_post", seed=10)
    corrupt = IOI.replace("John gave", "Mary gave")
    res = cb.patch(model, tok, IOI, corrupt, answer=" Mary", wrong=" John", site="features",
                   saes=sae, method="attribution")  # fmt: skip
    span = res.clean_value - res.corrupted_value
    assert abs(res.all_and_error - res.whole) * abs(span) <= 1e-4
    assert abs(res.whole - 1.0) * abs(span) <= 1e-4
    cap = cb.capture(model, tok, IOI, saes=sae, dtype=torch.float32)
    acts = cap[f"{sae.hook}.sae.hook_sae_acts_post"].to_dense()
    p = cap.n_tokens - 1
    f = int(acts[p].argmax())
    plain = cb.generate(model, tok, IOI, max_new_tokens=1)
    same = cb.generate(model, tok, IOI, max_new_tokens=1, clamp={(sae, f): float(acts[p, f])},
                       positions=[p])  # fmt: skip
    assert torch.equal(same.capture.logits, plain.capture.logits)


def test_shipped_sae_clamp_steers_and_own_value_changes_nothing(default_model):
    """With the shipped SAEs: the feature that separates a Bible verse from a documentation
    sentence most (found from the data, never by index), clamped to four times its largest
    activation, changes the greedy continuation of a plain prompt; clamped to its own value at
    a position, it changes no logit of the generation (delta clamp: the error stays)."""
    model, tok = default_model
    # one thread throughout: the thread policy runs heavy calls on one thread while the machine
    # is busy, and a value read on two threads differs in its last bits from one read on one,
    # which is no longer "its own value"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _clamp_steers_and_own_value_changes_nothing(model, tok)
    finally:
        torch.set_num_threads(threads)


def _clamp_steers_and_own_value_changes_nothing(model, tok) -> None:  # noqa: ANN001
    sae = next(s for s in cb.load_default_saes() if s.layer == 15)
    verse = "And the LORD spake unto Moses, saying, Speak unto the children of Israel"
    docs = "The function returns a new list containing the items of the iterable"

    def mean_acts(text):
        cap = cb.capture(model, tok, text, saes=sae, what=["logits"], dtype=torch.float32)
        return cap[f"{sae.hook}.sae.hook_sae_acts_post"].to_dense()

    bible, other = mean_acts(verse), mean_acts(docs)
    feature = int((bible.mean(0) - other.mean(0)).argmax())
    value = 4 * float(bible[:, feature].max())
    assert value > 0
    prompt = "The man walked into the city and"
    plain = cb.generate(model, tok, prompt, max_new_tokens=8, what=["logits"])
    clamped = cb.generate(model, tok, prompt, max_new_tokens=8, what=["logits"],
                          clamp={(sae, feature): value}, positions="new")  # fmt: skip
    assert clamped.text != plain.text, (feature, plain.text, clamped.text)

    acts = mean_acts(prompt)
    p = acts.shape[0] - 1
    f = int(acts[p].argmax())  # an active feature, clamped to exactly what it is
    same = cb.generate(model, tok, prompt, max_new_tokens=8, what=["logits"],
                       clamp={(sae, f): float(acts[p, f])}, positions=[p])  # fmt: skip
    assert same.text == plain.text
    assert torch.equal(same.capture.logits, plain.capture.logits)
