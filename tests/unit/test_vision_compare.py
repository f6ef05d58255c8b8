"""Comparing categories of images on a tiny ViT: every statistic equals a direct computation
from per-image captures (positions are CLS and the patches), and bad input is named."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.analysis import Comparison
from tests.unit.tiny_models import tiny_llama, tiny_vit


@pytest.fixture(scope="module")
def vit() -> Any:
    return tiny_vit(seed=2, channels=1)[0]


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    a = rng.random((5, 8, 8)).astype(np.float32) * 0.5  # dim
    b = 0.5 + rng.random((4, 8, 8)).astype(np.float32) * 0.5  # bright
    return {"dim": a, "bright": b}


@pytest.fixture(scope="module")
def caps(vit: Any, images: Any) -> dict[str, list[Any]]:
    what = ("z", "pattern", "attn_out", "mlp_out", "mlp_post", "resid_pre")
    return {k: cb.capture(vit, None, v, dtype=torch.float32, what=what) for k, v in images.items()}


def _direct(cap: Any, pos: int) -> dict[str, np.ndarray]:
    """One image's statistics at position ``pos``, written out from the capture's tensors."""
    out: dict[str, list[Any]] = {k: [] for k in ("head_write", "attn_first", "attn_patches")}
    out.update({k: [] for k in ("attn_entropy", "mlp_out", "neurons")})
    for layer in range(2):
        z = cap[f"blocks.{layer}.attn.hook_z"][pos].double()  # [H, d_head]
        w_o = cap.weights[f"blocks.{layer}.attn.W_O"].double()  # [H, d_head, d_model]
        out["head_write"].append(torch.einsum("hd,hdm->hm", z, w_o).norm(dim=-1).numpy())
        p = cap[f"blocks.{layer}.attn.hook_pattern"][:, pos].double()  # [H, keys]
        out["attn_first"].append(p[:, 0].numpy())
        out["attn_patches"].append(p.numpy())
        out["attn_entropy"].append((-(p * p.log()).sum(-1)).numpy())
        out["mlp_out"].append(cap[f"blocks.{layer}.hook_mlp_out"][pos].double().norm().numpy())
        out["neurons"].append(cap[f"blocks.{layer}.mlp.hook_post"][pos].double().numpy())
    return {k: np.stack(v) for k, v in out.items()}


@pytest.mark.parametrize("pos", [None, 3])
def test_statistics_equal_a_direct_computation(
    vit: Any, images: Any, caps: Any, pos: int | None
) -> None:
    cmp = cb.compare(vit, None, images, pos=pos)
    at = 0 if pos is None else pos  # images: CLS by default
    assert cmp.pos == at and cmp.image == {"grid": [2, 2], "patch": 4}
    assert "attn_prev" not in cmp.stat_names and "attn_patches" in cmp.stat_names
    for name, cat_caps in caps.items():
        direct = [_direct(c, at) for c in cat_caps]
        for stat in direct[0]:
            x = np.stack([d[stat] for d in direct])
            st = cmp.stats[name][stat]
            np.testing.assert_allclose(st.mean, x.mean(0), rtol=1e-5, atol=1e-6, err_msg=stat)
            np.testing.assert_allclose(st.std(), x.std(0, ddof=1), rtol=1e-4, atol=1e-6)
        pixels = np.stack([c.image["pixels"].numpy() for c in cat_caps])
        np.testing.assert_allclose(cmp.stats[name]["pixels"].mean, pixels.mean(0), atol=1e-6)
    e = cmp.effect("dim", "bright", "attn_patches")
    assert e.d.shape == (2, 4, 5) and e.n_a == 5 and e.n_b == 4
    top = cmp.top("dim", "bright", "attn_patches", k=1)[0]
    assert top["d"] == pytest.approx(float(e.d[top["layer"], top["head"], top["key"]]))


def test_from_captures_and_every_patch_as_a_sample(vit: Any, images: Any, caps: Any) -> None:
    ours = Comparison.from_captures(caps, pos=0)
    again = cb.compare(vit, None, images)
    for s in again.stat_names:
        np.testing.assert_allclose(ours.stats["dim"][s].mean, again.stats["dim"][s].mean)
    every = cb.compare(vit, None, images, pos="all", stats=["attn_first", "neurons"])
    assert every.count("dim") == 5 * 5  # every position (CLS + 4 patches) of 5 images
    x = np.concatenate([c["blocks.1.mlp.hook_post"].double().numpy() for c in caps["dim"]])
    np.testing.assert_allclose(every.stats["dim"]["neurons"].mean[1], x.mean(0), atol=1e-6)
    path = again.save(__import__("tempfile").mktemp(suffix=".npz"))
    loaded = Comparison.load(path)
    assert loaded.image == again.image
    merged = loaded.merge(loaded)
    assert merged.image == again.image and merged.count("dim") == 10


def test_compare_view_of_image_categories(vit: Any, images: Any) -> None:
    view = cb.compare_view(cb.compare(vit, None, images))
    assert len(view.images) == 2 and view.images[0]["grid"] == [2, 2]
    assert view.tokens == ["CLS", "0,0", "0,1", "1,0", "1,1"]
    assert view._patch_attn["shape"] == [2, 2, 2, 4, 5]


@pytest.mark.parametrize(
    ("categories", "error", "message"),
    [
        ({"a": ["a three"], "b": ["an eight"]}, ValueError, "not text"),
        ({"a": "x", "b": np.zeros((2, 8, 8))}, ValueError, "not text"),
        (
            {"a": [np.zeros((8, 8)), np.zeros((4, 4))], "b": np.zeros((2, 8, 8))},
            ValueError,
            "mixes image sizes",
        ),
        ({"a": np.zeros((2, 4, 4)), "b": np.zeros((2, 8, 8))}, ValueError, "takes 8×8"),
        ({"a": np.full((2, 8, 8), 3.0), "b": np.zeros((2, 8, 8))}, ValueError, r"in \[0, 1\]"),
        ({"a": np.zeros((2, 8, 8))}, ValueError, "at least 2 categories"),
    ],
)
def test_bad_image_categories_name_the_fix(
    vit: Any, categories: Any, error: Any, message: str
) -> None:
    with pytest.raises(error, match=message):
        cb.compare(vit, None, categories)


def test_images_to_a_text_model_stats_that_do_not_apply_and_mixed_captures(
    vit: Any, images: Any, caps: Any
) -> None:
    model, tok = tiny_llama()
    with pytest.raises(TypeError, match="images go to an image model"):
        cb.compare(model, tok, {"a": np.zeros((2, 8, 8)), "b": np.zeros((2, 8, 8))})
    with pytest.raises(ValueError, match="no previous token"):
        cb.compare(vit, None, images, stats=["attn_prev"])
    with pytest.raises(ValueError, match="need image captures"):
        cb.compare(model, tok, {"a": ["a b", "c d"], "b": ["e f", "g h"]}, stats=["pixels"])
    text = cb.capture(model, tok, ["a b", "c d"])
    with pytest.raises(ValueError, match="mix text and image captures"):
        Comparison.from_captures({"img": caps["dim"], "text": text})
    with pytest.raises(ValueError, match="in this process only"):
        cb.compare(vit, None, images, engine="processes")
