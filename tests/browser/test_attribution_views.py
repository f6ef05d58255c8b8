"""Logit attribution and logit lens views in an exported page: pixels, hover, click, linking."""

from __future__ import annotations

import numpy as np
import pytest

import circuitboard as cb
from tests.conftest import IOI_PROMPT, open_report

HOSTILE = '</script><img src=x onerror="window.__pwned=1">'


class FakeAttribution:
    """An Attribution-shaped object with known values (the view needs no torch)."""

    def __init__(self, n_layers: int = 4, n_heads: int = 3, d_mlp: int = 20) -> None:
        rng = np.random.default_rng(0)
        self.heads = rng.normal(size=(n_layers, n_heads)).astype(np.float32)
        self.heads[2, 1] = 3.0  # the strongest positive head
        self.heads[1, 0] = -2.0  # the strongest negative head
        self._neurons = rng.normal(size=(n_layers, d_mlp)).astype(np.float32) * 0.1
        self._neurons[3, 7] = 1.5
        self.mlp = self._neurons.sum(1)
        self.labels = ["embed"]
        values = [0.25]
        for layer in range(n_layers):
            for h in range(n_heads):
                self.labels.append(f"L{layer}H{h}")
                values.append(float(self.heads[layer, h]))
            self.labels.append(f"L{layer}.mlp")
            values.append(float(self.mlp[layer]))
        self.labels.append("bias")
        values.append(-0.1)
        self.values = np.array(values, dtype=np.float32)
        self.model_value = float(self.values.sum())
        self.description = "logit ' Mary' − ' John' at position 13"

    def neurons(self, layer: int) -> np.ndarray:
        return self._neurons[layer]


class FakeLens:
    layers = [0, 1, 2]
    tokens = ["When", " Mary", HOSTILE, " John"]
    top_tokens = [[[f"l{li}p{p}k{j}" for j in range(3)] for p in range(4)] for li in range(3)]
    top_tokens[2][1][0] = HOSTILE
    top_probs = np.sort(np.random.default_rng(1).uniform(size=(3, 4, 3)), -1)[..., ::-1].copy()
    target_ids = np.array([5, 6, 7, -1])
    target_probs = np.array([[0.1, 0.2, 0.3, np.nan]] * 3)
    target_ranks = np.array([[4, 3, 0, -1]] * 3)


def canvas_pixels(page, selector: str) -> np.ndarray:
    data = page.eval_on_selector(
        selector, "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
    )
    w, h = page.eval_on_selector(selector, "c => [c.width, c.height]")
    return np.array(data, dtype=np.uint8).reshape(h, w, 4)


def cell_center(
    page, selector: str, row: int, col: int, rows: int, cols: int
) -> tuple[float, float]:
    box = page.query_selector(selector).bounding_box()
    return box["x"] + box["width"] * (col + 0.5) / cols, box["y"] + box["height"] * (
        row + 0.5
    ) / rows


def test_attribution_heatmap_hover_click_and_link(page, tmp_path, artifacts):
    attr = FakeAttribution()
    link = cb.Link()
    view = cb.LogitAttributionView(attr, link=link)
    rng = np.random.default_rng(0)
    att = np.tril(rng.uniform(size=(4, 3, 5, 5)))
    att /= att.sum(-1, keepdims=True)
    attn_view = cb.AttentionView(att, [f"t{i}" for i in range(5)], link=link)
    path = cb.report(view, attn_view, path=tmp_path / "dla.html", title="dla")
    open_report(page, path)

    px = canvas_pixels(page, ".cb-dla-heat")
    assert px.shape[:2] == (4, 3)
    r, g, b = (px[2, 1, i].astype(int) for i in range(3))
    assert b > r + 60, "the strongest positive head should be blue"
    r, g, b = (px[1, 0, i].astype(int) for i in range(3))
    assert r > b + 60, "the strongest negative head should be red"
    near_zero = np.unravel_index(np.abs(attr.heads).argmin(), attr.heads.shape)
    assert px[near_zero][:3].min() > 200, "a ~0 contribution should be near white"
    assert page.inner_text(".cb-dla-desc") == attr.description
    # no dictionary features were given: their heading and list stay out of sight
    assert not page.is_visible(".cb-dla-features")
    assert page.locator(".cb-dla-h", has_text="Top features").is_hidden()

    x, y = cell_center(page, ".cb-dla-heat", 2, 1, 4, 3)
    page.mouse.move(x, y)
    page.wait_for_selector('.cb-dla[data-hover="L2H1"]')
    assert page.inner_text(".cb-dla-tip") == "L2H1: +3.00"
    page.mouse.click(x, y)
    page.wait_for_selector('.cb-dla[data-layer="2"][data-head="1"]')
    # The linked attention view opened the clicked head.
    page.wait_for_selector('.cb-attention[data-layer="2"][data-head="1"]')

    # Clicking the MLP bar of layer 3 lists that layer's neurons (answered from the report).
    x, y = cell_center(page, '.cb-dla-bars[data-which="mlp"]', 3, 0, 4, 1)
    page.mouse.click(x, y)
    page.wait_for_selector('.cb-dla[data-neuron-scope="3"]')
    first = page.inner_text(".cb-dla-list >> nth=1 >> .cb-dla-row >> nth=0")
    assert "L3 N7" in first and "+1.50" in first
    page.screenshot(path=str(artifacts / "attribution-synthetic.png"), full_page=True)
    assert page.cb_errors == []


def test_lens_hover_click_and_hostile_tokens(page, tmp_path, artifacts):
    view = cb.LogitLensView(FakeLens(), target_tokens=[" Mary", HOSTILE, " John", ""])
    path = cb.report(view, path=tmp_path / "lens.html", title="lens")
    open_report(page, path)
    assert page.evaluate("() => window.__pwned") is None
    canvas = ".cb-lens-grid"
    w, h = page.eval_on_selector(canvas, "c => [c.clientWidth, c.clientHeight]")
    box = page.query_selector(canvas).bounding_box()
    # Layout: 34 px axis, 64 px columns; a top row, then layers (last on top), then inputs.
    row_h = (h - 2 * 6) / (3 + 2)
    top = row_h + 6

    def cell(layer: int, p: int) -> tuple[float, float]:
        row = 2 - layer
        return box["x"] + 34 + 64 * p + 32, box["y"] + top + row * row_h + row_h / 2

    page.mouse.move(*cell(2, 1))
    page.wait_for_selector('.cb-lens[data-hover="2,1"]')
    tip = page.inner_text(".cb-lens-tip")
    assert HOSTILE.replace('"', '\\"') in tip  # exact text, JSON-quoted, never parsed
    assert "l2p1k1" in tip and "rank 4" in tip
    page.mouse.click(*cell(0, 3))
    page.wait_for_selector('.cb-lens[data-layer="0"][data-token="3"]')
    page.select_option('select[aria-label="colour by"]', "target")
    page.wait_for_selector('.cb-lens[data-color-by="target"]')
    page.screenshot(path=str(artifacts / "lens-synthetic.png"), full_page=True)
    assert page.cb_errors == []


@pytest.mark.real
@pytest.mark.parametrize("theme", ["light", "dark"])
def test_default_model_attribution_and_lens(page, default_model, tmp_path, artifacts, theme):
    import torch

    from circuitboard.capture import capture

    model, tok = default_model
    cap = capture(model, tok, IOI_PROMPT, dtype=torch.float32)
    link = cb.Link()
    dla = cb.logit_attribution(cap, " Mary", baseline=" John", link=link, theme=theme)
    lens = cb.logit_lens_view(cap, link=link, theme=theme)
    path = cb.report(f"`{IOI_PROMPT}`", dla, lens, path=tmp_path / "ioi.html", title="IOI")
    open_report(page, path)
    px = canvas_pixels(page, ".cb-dla-heat")
    assert px.shape[:2] == (30, 9)
    assert px[..., :3].std() > 3, "heatmap is blank"
    assert "Mary" in page.inner_text(".cb-dla-desc")
    total = dla.total
    assert total > 1 and abs(total - dla.model_value) < 1e-4 * abs(dla.model_value)
    # Hover the strongest head: the tooltip shows its value.
    heads = np.frombuffer(dla._heads["data"], dtype="<f4").reshape(30, 9)
    li, h = np.unravel_index(np.abs(heads).argmax(), heads.shape)
    x, y = cell_center(page, ".cb-dla-heat", li, h, 30, 9)
    page.mouse.move(x, y)
    page.wait_for_selector(f'.cb-dla[data-hover="L{li}H{h}"]')
    page.mouse.click(x, y)
    page.wait_for_selector(f'.cb-dla[data-layer="{li}"][data-head="{h}"]')
    lens_px = canvas_pixels(page, ".cb-lens-grid")
    assert lens_px[..., :3].std() > 10
    page.screenshot(path=str(artifacts / f"attribution-lens-default-{theme}.png"), full_page=True)
    assert page.cb_errors == []
    assert page.cb_blocked == []


def test_lens_click_moves_attribution_to_that_position(page, tmp_path):
    from tests.unit.analysis_helpers import capture_for_analysis
    from tests.unit.tiny_models import FACTORIES

    model, tok = FACTORIES["llama"]()
    cap = capture_for_analysis(model, tok, IOI_PROMPT)
    link = cb.Link()
    dla = cb.logit_attribution(cap, 5, baseline=7, link=link)
    lens = cb.logit_lens_view(cap, link=link)
    path = cb.report(dla, lens, path=tmp_path / "follow.html")
    open_report(page, path)
    last = cap.n_tokens - 1
    page.wait_for_selector(f'.cb-dla[data-pos="{last}"]')
    before = canvas_pixels(page, ".cb-dla-heat")
    desc_before = page.inner_text(".cb-dla-desc")
    # Click layer 0 at position 3 in the lens: the attribution re-attributes at position 3.
    box = page.query_selector(".cb-lens-grid").bounding_box()
    h = page.eval_on_selector(".cb-lens-grid", "c => c.clientHeight")
    row_h = (h - 12) / (cap.info.n_layers + 2)
    page.mouse.click(box["x"] + 34 + 64 * 3 + 20, box["y"] + row_h + 6 + row_h * 1.5)
    page.wait_for_selector('.cb-lens[data-token="3"]')
    page.wait_for_selector('.cb-dla[data-pos="3"]')
    assert "position 3" in page.inner_text(".cb-dla-desc") != desc_before
    assert not np.array_equal(before, canvas_pixels(page, ".cb-dla-heat"))
    # Unselecting the token (Escape in the lens) returns to the original position.
    page.focus(".cb-lens")
    page.keyboard.press("Escape")
    page.wait_for_selector(f'.cb-dla[data-pos="{last}"]')
    assert page.cb_errors == []


def test_lens_with_a_long_prompt_still_draws(page, tmp_path):
    n = 900
    rng = np.random.default_rng(0)

    class Long:
        layers = [0, 1]
        tokens = [f"t{i}" for i in range(n)]
        top_tokens = [[["a", "b"] for _ in range(n)] for _ in range(2)]
        top_probs = rng.uniform(size=(2, n, 2))
        target_ids = np.arange(n)
        target_probs = rng.uniform(size=(2, n))
        target_ranks = np.zeros((2, n))

    path = cb.report(cb.LogitLensView(Long(), target_tokens=["x"] * n), path=tmp_path / "long.html")
    open_report(page, path)
    w = page.eval_on_selector(".cb-lens-grid", "c => c.width")
    assert 0 < w <= 32767
    # Measured in the page: shipping every pixel of a canvas this wide to Python takes a minute.
    spread = page.eval_on_selector(
        ".cb-lens-grid",
        """c => {
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let lo = 255, hi = 0;
          for (let i = 0; i < d.length; i += 4 * 7) {
            lo = Math.min(lo, d[i]);
            hi = Math.max(hi, d[i]);
          }
          return hi - lo;
        }""",
    )
    assert spread > 20, "the long lens grid is blank"
    assert page.cb_errors == []
