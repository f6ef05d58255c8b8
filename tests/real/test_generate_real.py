"""cb.generate on the default model: exact capture, and a cat-vs-dog steering vector that
moves the " cat" / " dog" preference monotonically with its scale."""

from __future__ import annotations

import pytest

import circuitboard as cb
from tests.unit.gen_helpers import max_diff, single_forward

CATS = [
    "I love my cat",
    "The cat sat on the mat",
    "My cat purrs",
    "A cat chased a mouse",
    "The kitten and the cat",
]
DOGS = [
    "I love my dog",
    "The dog sat on the mat",
    "My dog barks",
    "A dog chased a ball",
    "The puppy and the dog",
]


@pytest.mark.parametrize(
    "sampling", [{}, {"do_sample": True, "seed": 11}], ids=["greedy", "seeded"]
)
def test_default_model_capture_equals_single_forward(default_model, sampling):
    model, tok = default_model
    gen = cb.generate(
        model, tok, "The capital of France is", max_new_tokens=8, what="all", **sampling
    )
    tensors, logits = single_forward(model, gen.capture.token_ids.tolist())
    assert max_diff(gen.capture, tensors, logits) <= 1e-4


def test_cat_dog_steering_is_monotonic(default_model):
    model, tok = default_model
    v = cb.steering_vector(model, tok, CATS, DOGS, layer=10)
    assert v.layer == 10 and v.shape == (576,) and 0 < v.diff_norm < v.resid_norm
    cat = tok(" cat", add_special_tokens=False)["input_ids"]
    dog = tok(" dog", add_special_tokens=False)["input_ids"]
    assert len(cat) == len(dog) == 1
    prefs = []
    for scale in (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0):
        gen = cb.generate(
            model,
            tok,
            "My favourite pet is a",
            max_new_tokens=1,
            steer=v,
            scale=scale,
            positions="new",
            what=["logits"],
        )
        lg = gen.logits(0)
        prefs.append(float(lg[cat[0]] - lg[dog[0]]))
    assert all(a < b for a, b in zip(prefs, prefs[1:], strict=False)), prefs
    assert prefs[-1] - prefs[0] > 0.5, prefs
