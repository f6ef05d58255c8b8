"""An exported attention report opens offline, draws the head, and follows hovers."""

from __future__ import annotations

import numpy as np
import pytest

import circuitboard as cb
from tests.conftest import IOI_PROMPT, open_report


def canvas_pixels(page, selector: str = ".cb-heatmap") -> np.ndarray:
    """The colour of each visible cell of the zoomed heatmap, sampled at the cell centres.

    The canvas exposes its cell geometry (``data-x0``, ``data-y0``: canvas pixel of cell
    (0, 0); ``data-cell``: pixels per cell), so the result is ``[rows, cols, 4]``.
    """
    return np.array(
        page.eval_on_selector(
            selector,
            """c => {
              const x0 = +c.dataset.x0, y0 = +c.dataset.y0, k = +c.dataset.cell;
              const rows = +c.dataset.rows, cols = +c.dataset.cols;
              const img = c.getContext('2d').getImageData(0, 0, c.width, c.height);
              const out = [];
              for (let r = 0; r < rows; r++) {
                const line = [];
                for (let q = 0; q < cols; q++) {
                  const x = Math.floor(x0 + (q + 0.5) * k), y = Math.floor(y0 + (r + 0.5) * k);
                  const o = 4 * (y * c.width + x);
                  line.push(Array.from(img.data.slice(o, o + 4)));
                }
                out.push(line);
              }
              return out;
            }""",
        ),
        dtype=np.uint8,
    )


def strip_colors(page) -> list[str]:
    return page.eval_on_selector_all(".cb-token", "els => els.map(e => e.style.background)")


def random_attention(layers=2, heads=3, n=12, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(layers, heads, n, n)) * 2
    logits[..., np.triu_indices(n, 1)[0], np.triu_indices(n, 1)[1]] = -np.inf
    att = np.exp(logits - logits.max(-1, keepdims=True))
    return att / att.sum(-1, keepdims=True)


def check_report(page, path, artifacts, name: str, n_tokens: int) -> None:
    open_report(page, path)
    px = canvas_pixels(page)
    assert px.shape[:2] == (n_tokens, n_tokens)
    assert px[..., :3].std() > 5, "selected head's canvas is blank"
    assert strip_colors(page)[0] == ""  # nothing highlighted before a hover
    page.hover(f'.cb-token[data-i="{n_tokens - 1}"]')
    colors = strip_colors(page)
    assert len({c for c in colors if c}) > 1, "hovering a token did not colour where it attends"
    assert "attends" in page.inner_text(".cb-caption")
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)
    assert page.cb_errors == []
    assert page.cb_blocked == []


def test_random_attention_report(page, tmp_path, artifacts):
    att = random_attention()
    tokens = [f"t{i}" for i in range(12)]
    path = cb.report(cb.AttentionView(att, tokens), path=tmp_path / "random.html", title="random")
    check_report(page, path, artifacts, "report-random", 12)
    # The drawn pixels follow the data: the brightest cell of each row is the argmax key.
    px = canvas_pixels(page)[..., 0].astype(int)  # red channel: darker = larger in Blues
    expected = att[0, 0].argmax(-1)
    assert (px.argmin(-1) == expected).mean() > 0.9


def test_head_switch_redraws(page, tmp_path):
    att = random_attention()
    path = cb.report(cb.AttentionView(att, [f"t{i}" for i in range(12)]), path=tmp_path / "r.html")
    open_report(page, path)
    before = canvas_pixels(page)
    page.select_option('select[aria-label="head"]', "2")
    page.wait_for_selector('.cb-attention[data-head="2"][data-shown]')
    after = canvas_pixels(page)
    assert not np.array_equal(before, after)
    assert page.cb_errors == []


@pytest.mark.real
def test_default_model_report(page, ioi_capture, tmp_path, artifacts):
    path = cb.report(f"`{IOI_PROMPT}`", cb.attention(ioi_capture), path=tmp_path / "ioi.html")
    check_report(page, path, artifacts, "report-default-model", ioi_capture.n_tokens)
