"""Vision transformers: capture exactness, attribution, lens and bad input, on tiny random ViTs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.capture._images import pixel_batch
from tests.unit.tiny_models import tiny_llama, tiny_vit


def _images(n: int = 3, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, channels, 8, 8), dtype=np.float32)


@pytest.fixture(scope="module")
def vit() -> Any:
    return tiny_vit()[0]


@pytest.fixture(scope="module")
def caps(vit: Any) -> list[Any]:
    return cb.capture(vit, None, _images(), dtype=torch.float32, what="all")


def test_capture_is_exactly_the_models_forward(vit: Any, caps: list[Any]) -> None:
    x = pixel_batch(vit, None, _images())
    with torch.no_grad():
        plain = vit(pixel_values=x).logits
    for i, cap in enumerate(caps):
        assert cap.tokens == ["CLS", "0,0", "0,1", "1,0", "1,1"]
        assert cap.image["grid"] == [2, 2] and cap.image["patch"] == 4
        assert cap.info.compute_dtype == "float32"  # the embedding is a container of parameters
        # CLS row: the model's own output (eager vs fast attention kernel: float error only)
        torch.testing.assert_close(cap.logits[0], plain[i], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(cap.image["pixels"].numpy(), _images()[i])


def test_patterns_equal_output_attentions(vit: Any, caps: list[Any]) -> None:
    x = pixel_batch(vit, None, _images())
    before = vit.config._attn_implementation
    vit.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            att = vit(pixel_values=x, output_attentions=True).attentions
    finally:
        vit.set_attn_implementation(before)
    assert vit.config._attn_implementation == before
    # queries and keys came through the attention interface; patterns are recomputed
    assert caps[0].info.attention_path == "interface"
    assert "blocks.0.attn.hook_q" in caps[0].names()
    for i, cap in enumerate(caps):
        for layer in range(2):
            got = cap[f"blocks.{layer}.attn.hook_pattern"]
            torch.testing.assert_close(got, att[layer][i], rtol=0, atol=1e-6)


def test_residual_stream_and_heads_add_up(caps: list[Any]) -> None:
    cap = caps[0]
    resid = cap["blocks.1.hook_resid_post"]
    parts = cap["hook_embed"].clone()
    for layer in range(2):
        writes = cap.per_head_writes(layer).sum(1) + cap.weights[f"blocks.{layer}.attn.b_O"]
        torch.testing.assert_close(writes, cap[f"blocks.{layer}.hook_attn_out"], atol=1e-5, rtol=0)
        parts += cap[f"blocks.{layer}.hook_attn_out"] + cap[f"blocks.{layer}.hook_mlp_out"]
    torch.testing.assert_close(parts, resid, atol=1e-5, rtol=0)


def test_dla_of_a_class_difference_is_exact(caps: list[Any]) -> None:
    for cap in caps:
        attr = cb.direct_logit_attribution(cap, "class 3", baseline="class 1")
        assert attr.pos == 0  # the classifier reads CLS
        want = float(cap.logits[0, 3] - cap.logits[0, 1])
        assert attr.model_value == pytest.approx(want, rel=1e-6)
        assert float(attr.values.sum()) == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_logit_lens_at_cls_ends_at_the_models_logits(caps: list[Any]) -> None:
    lens = cb.logit_lens(caps[0], target="class 2")
    want = torch.softmax(caps[0].logits[0], -1)
    assert lens.top_probs[-1, 0, 0] == pytest.approx(float(want.max()), abs=1e-5)
    assert lens.target_probs[-1, 0] == pytest.approx(float(want[2]), abs=1e-5)


def test_hooks_removed_after_a_failing_forward(vit: Any) -> None:
    def boom(*_: Any) -> None:
        raise RuntimeError("boom in layer 1")

    def hooks() -> list[tuple[str, list[int], list[int]]]:
        # transformers installs hooks of its own for output_attentions=True: compare, not count
        return [(n, [*m._forward_hooks], [*m._forward_pre_hooks]) for n, m in vit.named_modules()]

    before = hooks()
    handle = vit.vit.layers[1].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            cb.capture(vit, None, _images(1))
    finally:
        handle.remove()
    assert hooks() == before
    assert vit.config._attn_implementation == "sdpa"


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((2, 3, 16, 16), np.float32), r"images are 16×16, the model takes 8×8"),
        (np.zeros((2, 1, 8, 8), np.float32), r"images have 1 channels, the model takes 3"),
        (np.full((1, 3, 8, 8), 2.0, np.float32), r"pixel values must be in \[0, 1\]"),
        (np.full((1, 3, 8, 8), -0.5, np.float32), r"not one already normalized"),
        ("a cat on a mat", r"is an image model: pass images"),
        (np.zeros((1, 1, 3, 8, 8), np.float32), r"images must be \[H, W\]"),
    ],
)
def test_bad_images_name_the_fix(vit: Any, images: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cb.capture(vit, None, images)


def test_uint8_images_are_read_as_0_to_255(vit: Any) -> None:
    img = (_images(1)[0] * 255).round().astype(np.uint8)
    cap = cb.capture(vit, None, img)
    np.testing.assert_allclose(cap.image["pixels"].numpy(), img / 255.0, atol=1e-7)


def test_a_processor_that_does_not_match_is_refused(vit: Any) -> None:
    class Processor:  # the fields of a ViTImageProcessor that matter here
        image_mean, image_std = [0.5], [0.5]
        size = {"height": 224, "width": 224}

    with pytest.raises(ValueError, match="the processor does not match the model"):
        cb.capture(vit, Processor(), _images(1))


def test_text_calls_on_an_image_capture_and_images_to_a_text_model(caps: list[Any]) -> None:
    with pytest.raises(ValueError, match="is not a class of this image model"):
        cb.direct_logit_attribution(caps[0], " Mary")
    model, tok = tiny_llama()
    with pytest.raises(ValueError, match="(?i)images go to an image model"):
        cb.capture(model, tok, _images(1))
