"""Image captures in the browser: the patch grid shows the real pixels, hover overlays
attention on the image, linked views follow a patch, and the offline report works."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import circuitboard as cb
from tests.conftest import open_report
from tests.unit.tiny_models import tiny_vit

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def image_cap() -> Any:
    model, _ = tiny_vit(channels=1)
    img = np.zeros((8, 8), np.float32)
    img[1:7, 2] = 1.0  # a bright vertical stroke
    img[4, 2:6] = 0.5
    return cb.capture(model, None, img, dtype=torch.float32)


def _report(cap: Any, tmp_path: Any) -> Any:
    att = cb.attention(cap, layer=1, head=2)
    neu = cb.neurons(cap, layer=1)
    return cb.report(cb.board(att, neu), path=tmp_path / "image.html")


def test_patch_grid_draws_the_real_pixels(page: Any, image_cap: Any, tmp_path: Any) -> None:
    open_report(page, _report(image_cap, tmp_path))
    grid = page.locator(".cb-attention .cb-patches")
    assert grid.locator(".cb-patch").count() == 4
    assert grid.locator(".cb-patch-cls").inner_text() == "CLS"
    px = page.eval_on_selector(
        ".cb-attention .cb-patch-image",
        "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)",
    )
    gray = np.array(px, dtype=np.float32).reshape(8, 8, 4)[..., 0] / 255
    np.testing.assert_allclose(gray, image_cap.image["pixels"][0].numpy(), atol=1 / 255 + 1e-6)
    assert page.cb_errors == []


def test_hovering_a_patch_overlays_where_it_looks(
    page: Any, image_cap: Any, tmp_path: Any, artifacts: Any
) -> None:
    open_report(page, _report(image_cap, tmp_path))
    page.hover(".cb-attention .cb-patch[data-i='3']")
    page.wait_for_selector(".cb-attention[data-token='3']")
    painted = page.eval_on_selector_all(
        ".cb-attention .cb-token", "els => els.map(e => e.classList.contains('cb-patch-painted'))"
    )
    pattern = image_cap["blocks.1.attn.hook_pattern"][2, 3].numpy()
    # every token this patch attends to (all of them, softmax) carries the overlay
    assert painted == [bool(p > 0) for p in pattern]
    active = page.locator(".cb-attention .cb-token-active")
    assert active.get_attribute("data-i") == "3"
    page.screenshot(path=str(artifacts / "vit_patch_hover.png"))


def test_linked_neuron_view_follows_a_patch_click(page: Any, image_cap: Any, tmp_path: Any) -> None:
    open_report(page, _report(image_cap, tmp_path))
    page.click(".cb-attention .cb-patch[data-i='4']")
    page.wait_for_selector(".cb-neurons .cb-patch.cb-token-active[data-i='4']")
    assert page.locator(".cb-neurons .cb-patches .cb-patch").count() == 4
    assert page.cb_errors == [] and page.cb_blocked == []
