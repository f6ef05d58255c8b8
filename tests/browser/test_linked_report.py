"""A board of three linked views, exported and opened offline: clicks and hovers cross views.

Every network request is blocked (the ``page`` fixture); the page must still work.
"""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import circuitboard as cb
from tests.conftest import IOI_PROMPT, open_report

N_LAYERS, N_HEADS, D_MLP = 4, 3, 20
TOKENS = ["When", " Mary", " and", " John", " went", " to"]


class FakeAttribution:
    """Attribution-shaped numbers (the view needs no torch): head L2H1 pushes hardest."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.heads = rng.normal(size=(N_LAYERS, N_HEADS)).astype(np.float32)
        self.heads[2, 1] = 3.0
        self._neurons = rng.normal(size=(N_LAYERS, D_MLP)).astype(np.float32) * 0.1
        self.mlp = self._neurons.sum(1)
        self.labels, values = ["embed"], [0.25]
        for layer in range(N_LAYERS):
            for h in range(N_HEADS):
                self.labels.append(f"L{layer}H{h}")
                values.append(float(self.heads[layer, h]))
            self.labels.append(f"L{layer}.mlp")
            values.append(float(self.mlp[layer]))
        self.labels.append("bias")
        values.append(0.0)
        self.values = np.array(values, dtype=np.float32)
        self.model_value = float(self.values.sum())
        self.description = "logit ' Mary' − ' John' at position 5"

    def neurons(self, layer: int) -> np.ndarray:
        return self._neurons[layer]


def synthetic_board() -> cb.Board:
    rng = np.random.default_rng(1)
    n = len(TOKENS)
    att = np.tril(rng.random((N_LAYERS, N_HEADS, n, n)) + 1e-3)
    att /= att.sum(-1, keepdims=True)
    acts = rng.normal(size=(N_LAYERS, n, D_MLP)).astype(np.float32)
    return cb.board(
        cb.LogitAttributionView(FakeAttribution(), tokens=TOKENS),
        cb.AttentionView(att, TOKENS),
        cb.NeuronsView(acts, TOKENS, layer=1, neuron=3),
        title="Linked",
    )


def cell_center(page, selector: str, row: int, col: int, rows: int, cols: int):
    box = page.query_selector(selector).bounding_box()
    return (
        box["x"] + box["width"] * (col + 0.5) / cols,
        box["y"] + box["height"] * (row + 0.5) / rows,
    )


def check_linking(page, n_layers: int, n_heads: int, layer: int, head: int, token: int) -> None:
    # A click on a head in the attribution heatmap opens it in the attention view.
    page.mouse.click(*cell_center(page, ".cb-dla-heat", layer, head, n_layers, n_heads))
    page.wait_for_selector(f'.cb-attention[data-layer="{layer}"][data-head="{head}"]')
    # A hover on a token in the attention view highlights it in the neurons view (no kernel).
    page.hover(f'.cb-attention .cb-token[data-i="{token}"]')
    page.wait_for_selector(f'.cb-neurons[data-token="{token}"]')
    page.wait_for_selector(f'.cb-neurons .cb-token[data-i="{token}"].cb-token-active')
    page.mouse.move(1, 1)
    page.wait_for_selector(".cb-neurons:not([data-token])")
    # A click on a token in the neurons view locks it in the attention view.
    page.click(f'.cb-neurons .cb-token[data-i="{token}"]')
    page.wait_for_selector(f'.cb-attention[data-token="{token}"][data-locked="true"]')
    page.mouse.move(1, 1)


def test_three_linked_views_offline(page, tmp_path, artifacts):
    path = cb.report(
        "Three views, one selection.", synthetic_board(), path=tmp_path / "linked.html"
    )
    open_report(page, path)
    assert page.locator(".cb-slot").count() == 3
    check_linking(page, N_LAYERS, N_HEADS, layer=2, head=1, token=3)
    page.screenshot(path=str(artifacts / "linked-report-light.png"), full_page=True)
    # The page's theme button switches every view: auto -> light -> dark.
    page.click(".cb-theme-toggle")
    page.click(".cb-theme-toggle")
    for cls in ("cb-dla", "cb-attention", "cb-neurons"):
        page.wait_for_selector(f'.{cls}[data-cb-theme="dark"]')
    page.screenshot(path=str(artifacts / "linked-report-dark.png"), full_page=True)
    assert page.cb_errors == []
    assert page.cb_blocked == []


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_figures_png_and_svg(tmp_path, artifacts):
    board = synthetic_board()
    attribution, attention = board.views[0], board.views[1]
    board.selection = {"layer": 2, "head": 1, "token": 3}
    png = attention.save_png(tmp_path / "attention.png", scale=2)
    w, h = png_size(png.read_bytes())
    assert 400 < w < 2600 and 300 < h < 2000
    (artifacts / "figure-attention.png").write_bytes(png.read_bytes())
    svg = attribution.save_svg(tmp_path / "attribution.svg", theme="dark")
    root = ET.parse(svg).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    texts = "".join(t.text or "" for t in root.iter(f"{ns}text"))
    assert "Logit attribution" in texts
    images = list(root.iter(f"{ns}image"))
    assert images and all(i.get("href", "").startswith("data:image/png;base64,") for i in images)
    assert "⤓" not in texts, "the figure buttons are not part of the figure"
    (artifacts / "figure-attribution-dark.svg").write_bytes(svg.read_bytes())
    # Dark theme: the background is dark.
    bg = next(root.iter(f"{ns}rect")).get("fill")
    assert bg.startswith("rgb(") and sum(map(int, bg[4:-1].split(","))) < 150


def test_board_figures(tmp_path, artifacts):
    board = synthetic_board()
    board.selection = {"layer": 2, "head": 1, "token": 3}
    w, h = png_size(board.save_png(tmp_path / "board.png", scale=1).read_bytes())
    assert w > 600 and h > 900, "three views stacked"
    svg = board.save_svg(tmp_path / "board.svg")
    root = ET.parse(svg).getroot()
    panels = [c for c in root if c.tag.endswith("svg")]
    assert len(panels) == 3
    ys = [float(c.get("y")) for c in panels]
    assert ys == sorted(ys) and ys[0] == 0
    texts = "".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert "Logit attribution" in texts and "Attention" in texts and "Neurons" in texts
    (artifacts / "figure-board.svg").write_bytes(svg.read_bytes())


def test_figure_without_browser_says_how(monkeypatch, tmp_path):
    import circuitboard.export._figure as fig

    monkeypatch.setattr(fig.shutil, "which", lambda _name: "/nonexistent/chromium")
    view = cb.AttentionView(np.full((1, 1, 2, 2), 0.5), ["a", "b"])
    with pytest.raises(RuntimeError, match=r"no Chromium could be started.*⤓ PNG"):
        view.save_png(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.real
def test_cli_board_on_default_model(page, default_model, ioi_capture, tmp_path, artifacts):
    from circuitboard.cli import build_board

    _model, tok = default_model
    items, _ = build_board(ioi_capture, tok, target=" Mary", baseline=" John")
    board = items[1]
    assert [type(v).__name__ for v in board.views] == [
        "LogitAttributionView",
        "AttentionView",
        "LogitLensView",
        "NeuronsView",
    ]
    path = cb.report(*items, path=tmp_path / "ioi.html", title="IOI")
    open_report(page, path, timeout=30_000)
    heads = np.asarray(cb.direct_logit_attribution(ioi_capture, " Mary", baseline=" John").heads)
    n_layers, n_heads = heads.shape
    layer, head = np.unravel_index(np.abs(heads).argmax(), heads.shape)  # the top head
    before = (
        page.get_attribute(".cb-neurons", "data-layer"),
        page.get_attribute(".cb-neurons", "data-neuron"),
    )
    check_linking(page, n_layers, n_heads, int(layer), int(head), token=10)
    # A head click does not move the neurons view to another layer's neuron (issue 14).
    after = (
        page.get_attribute(".cb-neurons", "data-layer"),
        page.get_attribute(".cb-neurons", "data-neuron"),
    )
    assert after == before
    assert "not included" not in page.inner_text(".cb-neurons")
    page.screenshot(path=str(artifacts / "linked-report-ioi.png"), full_page=True)
    assert page.cb_errors == []
    assert page.cb_blocked == []
    assert IOI_PROMPT in page.inner_text("main")
