"""Patching between two images on tiny random ViTs: the identities of a non-causal encoder
(float32), agreement with a hand-written hook, and bad input named with its fix.

Of the identities for causal LMs, "sites before the first differing token are 0" becomes "sites
whose input is the same in both images are 0" (CLS, a patch with equal pixels, at layer 0: with
no causal mask every later position sees every difference); "the last position of the last
layer is 1" becomes "CLS after the last block is 1 and every patch 0" (the classifier reads
CLS); attribution is not exact at the classifier's input (the final LayerNorm is not affine);
a ViT has no grouped-query attention."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.capture._images import pixel_batch
from circuitboard.intervene import Edit, Runner, Site, logit_diff
from tests.unit.tiny_models import tiny_llama, tiny_vit

ANSWER, WRONG = 1, 2


@pytest.fixture(scope="module")
def vit() -> Any:
    return tiny_vit(seed=1, channels=1)[0]


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    a, b = rng.random((2, 8, 8)).astype(np.float32)
    b[:4, :4] = a[:4, :4]  # patch 0,0 has the same pixels in both images
    return a, b


def _metric(vit: Any, img: np.ndarray) -> float:
    with torch.no_grad():
        lg = vit(pixel_values=pixel_batch(vit, None, img[None])).logits[0]
    return float(lg[ANSWER] - lg[WRONG])


def _patch(vit: Any, pair: Any, **kw: Any) -> Any:
    return cb.patch(vit, None, pair[0], pair[1], answer=ANSWER, wrong=WRONG, **kw)


def test_endpoints_are_the_models_metric_on_each_image(vit: Any, pair: Any) -> None:
    res = _patch(vit, pair)
    assert res.clean_value == pytest.approx(_metric(vit, pair[0]), abs=1e-5)
    assert res.corrupted_value == pytest.approx(_metric(vit, pair[1]), abs=1e-5)
    assert res.tokens["clean"] == ["CLS", "0,0", "0,1", "1,0", "1,1"]
    assert res.image == {"grid": [2, 2], "patch": 4} and res.images.shape == (2, 1, 8, 8)
    np.testing.assert_array_equal(res.images[0, 0], pair[0])
    assert res.metric.endswith("at CLS") and any("no causal mask" in n for n in res.notes)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_whole_residual_stream_gives_the_source_image(vit: Any, pair: Any, direction: str) -> None:
    # Identity 1: every position of a layer's residual stream carries the whole source run.
    runner = Runner(vit)
    res = _patch(vit, pair, direction=direction)
    src, base = (pair[0], pair[1]) if direction == "denoise" else (pair[1], pair[0])
    x_src, x_base = (pixel_batch(vit, None, x[None])[0] for x in (src, base))
    m = logit_diff(ANSWER, WRONG)
    for kind in ("resid_pre", "resid_mid", "resid_post"):
        for layer in range(2):
            acts, _ = runner.read(x_src, [Site(kind, layer)])
            run = [Edit(Site(kind, layer), "replace", acts[Site(kind, layer)])]
            got = float(runner.patched(x_base, [run], m)[0])
            want = res.clean_value if direction == "denoise" else res.corrupted_value
            assert got == pytest.approx(want, abs=1e-5), (kind, layer)


def test_after_the_last_block_only_cls_matters(vit: Any, pair: Any) -> None:
    # The classifier reads CLS only: resid_post of the last layer is 1 at CLS, exactly 0 at
    # every patch (denoising); noising gives 0 and 1.
    den = _patch(vit, pair, site="resid_post")
    assert den.values[-1, 0] == pytest.approx(1.0, abs=1e-5)
    assert np.abs(den.values[-1, 1:]).max() <= 1e-6
    noi = _patch(vit, pair, site="resid_post", direction="noise")
    assert noi.values[-1, 0] == pytest.approx(0.0, abs=1e-5)
    assert np.abs(noi.values[-1, 1:] - 1).max() <= 1e-6


def test_identical_inputs_patch_to_exactly_zero(vit: Any, pair: Any) -> None:
    # CLS (the same learned token) and patch 0,0 (same pixels) enter layer 0 identically.
    for method in ("exact", "attribution"):
        res = _patch(vit, pair, method=method, layers=[0])
        assert abs(res.values[0, 0]) <= 1e-6 and abs(res.values[0, 1]) <= 1e-6, method
        assert np.abs(res.values[0, 2:]).max() > 1e-3  # the patches that differ do matter


def test_patching_a_site_with_its_own_value_changes_nothing(vit: Any, pair: Any) -> None:
    runner = Runner(vit)
    x = pixel_batch(vit, None, pair[0][None])[0]
    m = logit_diff(ANSWER, WRONG)
    sites = [Site("z", 1, head=2), Site("mlp_out", 0, pos=3), Site("resid_mid", 1, pos=0)]
    acts, lg = runner.read(x, sites)
    runs = [[Edit(s, "replace", acts[s])] for s in sites]
    got = runner.patched(x, runs, m)
    torch.testing.assert_close(got, m(lg).expand(len(sites)).cpu(), rtol=0, atol=1e-5)


def test_all_heads_equal_attn_out(vit: Any, pair: Any) -> None:
    # attn_out = z · W_O + b_O: patching every head's z (all positions) is patching attn_out.
    runner = Runner(vit)
    xa, xb = (pixel_batch(vit, None, x[None])[0] for x in pair)
    m = logit_diff(ANSWER, WRONG)
    for layer in range(2):
        z, ao = Site("z", layer), Site("attn_out", layer)
        acts, _ = runner.read(xa, [z, ao])
        heads = runner.patched(xb, [[Edit(z, "replace", acts[z])]], m)
        whole = runner.patched(xb, [[Edit(ao, "replace", acts[ao])]], m)
        torch.testing.assert_close(heads, whole, rtol=0, atol=1e-5)


def test_a_cell_equals_a_hand_written_hook(vit: Any, pair: Any) -> None:
    res = _patch(vit, pair, site="resid_pre")
    xa, xb = (pixel_batch(vit, None, x[None]) for x in pair)
    layer, pos = 1, 3
    block = vit.vit.layers[layer]
    seen: list[torch.Tensor] = []
    h = block.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            vit(pixel_values=xa)
    finally:
        h.remove()

    def put(mod: Any, args: tuple) -> tuple:
        x = args[0].clone()
        x[:, pos] = seen[0][:, pos]
        return (x, *args[1:])

    h = block.register_forward_pre_hook(put)
    try:
        with torch.no_grad():
            lg = vit(pixel_values=xb).logits[0]
    finally:
        h.remove()
    assert res.raw[layer, pos] == pytest.approx(float(lg[ANSWER] - lg[WRONG]), abs=1e-5)


def test_batched_equals_one_at_a_time(vit: Any, pair: Any) -> None:
    for site in ("resid_mid", "heads_pos", "v"):
        many = _patch(vit, pair, site=site)
        one = _patch(vit, pair, site=site, batch_size=1)
        np.testing.assert_allclose(many.raw, one.raw, rtol=0, atol=1e-5)


def test_attribution_tracks_exact_and_ig_converges(vit: Any, pair: Any) -> None:
    att = _patch(vit, pair, site="heads", method="attribution", compare_exact=True)
    assert att.correlation is not None and att.correlation > 0.9
    coarse = _patch(vit, pair, method="ig", steps=2).completeness_error
    fine = _patch(vit, pair, method="ig", steps=16).completeness_error
    assert fine < coarse / 10


def test_every_site_and_pairs_of_images(vit: Any, pair: Any) -> None:
    shapes = {
        "attn_out": (2, 5),
        "mlp_out": (2, 5),
        "heads": (2, 4),
        "heads_pos": (2, 5, 4),
        "q": (2, 4),
        "k": (2, 4),
        "pattern": (2, 4),
        "neurons": (2, 64),
    }
    for site, shape in shapes.items():
        res = _patch(vit, pair, site=site, method="attribution")
        assert res.values.shape == shape and np.isfinite(res.values).all(), site
    batch = _patch(vit, (np.stack([pair[0], pair[1]]), np.stack([pair[1], pair[0]])))
    assert batch.pair_values.shape == (2, 2, 5)
    # by label, as the classes are named
    named = cb.patch(vit, None, *pair, answer="class 1", wrong="class 2")
    np.testing.assert_array_equal(named.values, batch.pair_values[0])
    assert "class 1" in named.metric
    assert named.top(1)[0]["label"].startswith("L") and "pos" not in named.top(1)[0]["label"]
    again = cb.load_patching(named.save(__import__("tempfile").mktemp(suffix=".npz")))
    assert again.image == named.image
    np.testing.assert_array_equal(again.images, named.images)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clean": "a three", "corrupted": "an eight"}, "not text"),
        ({"corrupted": np.zeros((4, 4), np.float32)}, "the model takes 8×8"),
        ({"corrupted": np.full((8, 8), 2.0, np.float32)}, "in [0, 1]"),
        ({"corrupted": np.zeros((3, 8, 8), np.float32) + 0.1}, "clean has 1 images"),
        ({"answer": "class 9"}, "not a class label"),
        ({"answer": 7}, "not a class id"),
        ({"answer": None}, "answer="),
    ],
)
def test_bad_image_pairs_name_the_fix(vit: Any, pair: Any, kwargs: Any, message: str) -> None:
    args = {"clean": pair[0], "corrupted": pair[1], "answer": ANSWER, "wrong": WRONG, **kwargs}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        cb.patch(vit, None, **args)


def test_images_to_a_text_model_and_a_wrong_processor(vit: Any, pair: Any) -> None:
    model, tok = tiny_llama()
    with pytest.raises(ValueError, match="image model"):
        cb.patch(model, tok, pair[0], pair[1], answer=" a", wrong=" b")

    class Processor:
        image_mean, image_std, size = [0.5] * 3, [0.5] * 3, {"height": 224}

    with pytest.raises(ValueError, match="does not match the model"):
        cb.patch(vit, Processor(), pair[0], pair[1], answer=1, wrong=2)


def test_attribution_is_the_first_order_term_of_exact_patching(vit: Any, pair: Any) -> None:
    # Identity 9: patch corrupted + ε(clean − corrupted) at one site; exact(ε) − ε·attribution
    # is second order, so it shrinks about 4× when ε halves.
    layer, pos = 1, 2
    att = _patch(vit, pair, method="attribution", layers=[layer])
    slope = att.raw[0, pos] - att.corrupted_value  # (a_clean − a_corr) · ∂m/∂a
    runner = Runner(vit)
    xa, xb = (pixel_batch(vit, None, x[None])[0] for x in pair)
    site = Site("resid_pre", layer, pos=pos)
    a = runner.read(xa, [site])[0][site]
    b = runner.read(xb, [site])[0][site]
    m = logit_diff(ANSWER, WRONG)
    errors = []
    for eps in (0.2, 0.1, 0.05):
        run = [Edit(site, "replace", b + eps * (a - b))]
        exact = float(runner.patched(xb, [run], m)[0]) - att.corrupted_value
        errors.append(abs(exact - eps * slope))
    for big, small in zip(errors, errors[1:], strict=False):
        assert 3.0 < big / small < 5.0, errors
