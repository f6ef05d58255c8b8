"""The default vision model: a ViT trained here on scikit-learn's digits, captured exactly."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.capture._images import pixel_batch
from circuitboard.models import digits
from circuitboard.models._vision import train_vision_model

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def vision() -> Any:
    return cb.load_default_vision_model()[0]


def test_reaches_its_stated_accuracy_and_the_cache_is_reused(vision: Any) -> None:
    metrics = vision.circuitboard_metrics
    assert metrics["test_accuracy"] >= 0.95
    _, _, x_test, y_test = digits()
    with torch.no_grad():
        pred = vision(pixel_values=pixel_batch(vision, None, x_test)).logits.argmax(-1)
    assert float((pred.numpy() == y_test).mean()) == pytest.approx(metrics["test_accuracy"])
    t0 = time.perf_counter()
    again, _ = cb.load_default_vision_model()
    assert time.perf_counter() - t0 < 10, "the second call must load the cache, not train"
    for a, b in zip(vision.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_training_is_deterministic() -> None:
    a, ma = train_vision_model(epochs=1)
    b, mb = train_vision_model(epochs=1)
    assert ma["test_accuracy"] == mb["test_accuracy"]
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_capture_and_attribution_of_a_three_against_an_eight(vision: Any) -> None:
    _, _, x_test, y_test = digits()
    three = x_test[np.flatnonzero(y_test == 3)[0]]
    cap = cb.capture(vision, None, three, dtype=torch.float32)
    with torch.no_grad():
        plain = vision(pixel_values=pixel_batch(vision, None, three[None])).logits[0]
    torch.testing.assert_close(cap.logits[0], plain, rtol=0, atol=1e-5)
    assert cap.tokens[0] == "CLS" and len(cap.tokens) == 17 and cap.image["grid"] == [4, 4]
    attr = cb.direct_logit_attribution(cap, "3", baseline="8")
    assert attr.model_value == pytest.approx(float(plain[3] - plain[8]), rel=1e-5)
    assert float(attr.values.sum()) == pytest.approx(attr.model_value, rel=1e-5)
    assert attr.model_value > 0  # the model calls it a 3
