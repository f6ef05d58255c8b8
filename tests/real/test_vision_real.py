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


def test_patching_a_three_into_an_eight(vision: Any) -> None:
    _, _, x_test, y_test = digits()
    three = x_test[np.flatnonzero(y_test == 3)[0]]
    eight = x_test[np.flatnonzero(y_test == 8)[0]]
    kw = dict(answer="3", wrong="8")
    post = cb.patch(vision, None, three, eight, site="resid_post", **kw)
    with torch.no_grad():
        lg = vision(pixel_values=pixel_batch(vision, None, np.stack([three, eight]))).logits
    assert post.clean_value == pytest.approx(float(lg[0, 3] - lg[0, 8]), abs=1e-5)
    assert post.corrupted_value == pytest.approx(float(lg[1, 3] - lg[1, 8]), abs=1e-5)
    # the classifier reads CLS only: after the last block CLS is all of it, patches nothing
    assert post.values[-1, 0] == pytest.approx(1.0, abs=1e-5)
    assert np.abs(post.values[-1, 1:]).max() <= 1e-5
    pre = cb.patch(vision, None, three, eight, **kw)
    assert pre.values[0, 0] == 0.0  # CLS enters layer 0 the same in both images
    heads = cb.patch(
        vision, None, three, eight, site="heads", method="attribution", **kw, compare_exact=True
    )
    assert heads.correlation > 0.8  # measured 0.89 on this pair
    cats = {"3": x_test[y_test == 3], "8": x_test[y_test == 8]}
    cmp = cb.compare(vision, None, cats, progress=False)
    assert cmp.n_prompts == {"3": int((y_test == 3).sum()), "8": int((y_test == 8).sum())}
    assert cmp.top("3", "8", "attn_patches", k=1)[0]["d"] > 2
