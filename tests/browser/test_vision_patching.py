"""Patching between two digits and comparing digit classes, in an offline report: the images
are drawn as patch grids with their real pixels, each layer's grid carries its values, hover
reads a cell, and a click selects it in a linked attention view."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.models import digits
from tests.conftest import open_report

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def vision() -> Any:
    model, _ = cb.load_default_vision_model()
    _, _, x, y = digits()
    return model, x, y


@pytest.fixture(scope="module")
def pair_report(vision: Any, tmp_path_factory: Any) -> Any:
    model, x, y = vision
    three, eight = x[np.flatnonzero(y == 3)[0]], x[np.flatnonzero(y == 8)[0]]
    res = cb.patch(model, None, three, eight, answer="3", wrong="8", site="resid_pre")
    cap = cb.capture(model, None, three, dtype=torch.float32)
    board = cb.board(cb.patching_view(res), cb.attention(cap, layer=0, head=0))
    path = cb.report(board, path=tmp_path_factory.mktemp("vit") / "patching.html")
    return path, res, three


def _pixels(page: Any, selector: str) -> np.ndarray:
    px = page.eval_on_selector(
        selector, "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
    )
    return np.array(px, dtype=np.float32).reshape(16, 16, 4)[..., 0] / 255


def test_pair_and_layer_grids_draw_the_real_pixels(page: Any, pair_report: Any) -> None:
    path, res, three = pair_report
    open_report(page, path)
    view = ".cb-root.cb-patch"
    assert page.locator(f"{view} .cb-pm-pair .cb-patches").count() == 2
    assert page.locator(f"{view} .cb-pm-layer").count() == 4  # one grid per layer
    assert page.locator(f"{view} .cb-patch-heat").is_hidden()  # the grids replace the heatmap
    np.testing.assert_allclose(
        _pixels(page, f"{view} .cb-pm-clean .cb-patch-image"), three[0], atol=1 / 255 + 1e-6
    )
    np.testing.assert_allclose(
        _pixels(page, f"{view} .cb-pm-corrupted .cb-patch-image"),
        res.images[1, 0],
        atol=1 / 255 + 1e-6,
    )
    # the layer grids lie over the clean image (denoising: the source of the patched values)
    np.testing.assert_allclose(
        _pixels(page, f"{view} .cb-pm-layer[data-layer='2'] .cb-patch-image"),
        three[0],
        atol=1 / 255 + 1e-6,
    )
    painted = page.eval_on_selector_all(
        f"{view} .cb-pm-layer[data-layer='0'] .cb-token",
        "els => els.map(e => e.classList.contains('cb-patch-painted'))",
    )
    assert painted == [True] * 17
    assert page.cb_errors == [] and page.cb_blocked == []


def test_hover_reads_a_cell_and_click_links_the_attention_view(
    page: Any, pair_report: Any, artifacts: Any
) -> None:
    path, res, _ = pair_report
    open_report(page, path)
    view = ".cb-root.cb-patch"
    cell = f"{view} .cb-pm-layer[data-layer='0'] .cb-patch[data-i='6']"
    page.hover(cell)
    page.wait_for_selector(f"{view}[data-hover='L0 patch 1,1']")
    tip = page.locator(f"{view} .cb-patch-tip").inner_text()
    assert tip.startswith("L0 patch 1,1: ") and f"{res.values[0, 6]:+.2f}" in tip
    page.screenshot(path=str(artifacts / "vit_patching_pair_hover.png"))
    page.click(cell)
    page.wait_for_selector(f"{view}[data-selected='L0 patch 1,1']")
    # the attention view of the clean image follows the patch
    page.wait_for_selector(".cb-attention .cb-patch.cb-token-active[data-i='6']")
    assert page.locator(f"{view} .cb-pm-clean .cb-token-active").get_attribute("data-i") == "6"
    assert page.cb_errors == []


def test_compare_view_of_digit_classes(page: Any, vision: Any, tmp_path: Any, artifacts: Any):
    model, x, y = vision
    threes, eights = x[y == 3], x[y == 8]
    cmp = cb.compare(model, None, {"3": threes, "8": eights}, progress=False)
    path = cb.report(cb.compare_view(cmp), path=tmp_path / "compare.html")
    open_report(page, path)
    box = ".cb-cmp .cb-cmp-images"
    assert page.locator(f"{box} .cb-patches").count() == 3  # mean 3, mean 8, the effect
    mean3 = _pixels(page, f"{box} .cb-pm-item:nth-child(1) .cb-patch-image")
    np.testing.assert_allclose(mean3, threes[:, 0].mean(0), atol=1 / 255 + 1e-6)
    top = cmp.top("3", "8", "head_write", k=1)[0]["label"]
    assert page.get_attribute(box, "data-head") == top  # the strongest head first
    page.click(".cb-cmp-heads .cb-cmp-row:nth-child(2)")
    second = cmp.top("3", "8", "head_write", k=2)[1]["label"]
    page.wait_for_selector(f"{box}[data-head='{second}']")
    page.hover(f"{box} .cb-cmp-effect .cb-patch[data-i='1']")
    page.wait_for_selector(f".cb-cmp[data-hover='{second}→1']")
    assert "attention" in page.locator(".cb-cmp-readout").inner_text()
    page.locator(".cb-cmp").screenshot(path=str(artifacts / "vit_compare_3_vs_8.png"))
    assert page.cb_errors == [] and page.cb_blocked == []
