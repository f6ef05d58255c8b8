"""The demo report opens on the head it points to and explains its cells; a clicked cell is
marked while its explanation is open (issue 24, items 5 and 12)."""

from __future__ import annotations

import numpy as np

import circuitboard as cb
from circuitboard import cli
from tests.browser.test_explain_panel import click_cell
from tests.conftest import open_report

PROMPT = "When Mary and John went to the store, John gave a drink to"


def heat_pixel(page, row: int, col: int, dx: float, dy: float) -> list[int]:
    """RGB of the heatmap canvas at cell (row, col) + (dx, dy) cell widths, in device pixels."""
    return page.eval_on_selector(
        ".cb-attention .cb-heatmap",
        """(c, [r, k, dx, dy]) => {
            const d = c.dataset, s = +d.cell;
            const x = Math.round(+d.x0 + (k + dx) * s), y = Math.round(+d.y0 + (r + dy) * s);
            return [...c.getContext("2d").getImageData(x, y, 1, 1).data.slice(0, 3)];
        }""",
        [row, col, dx, dy],
    )


def test_demo_report_opens_on_the_top_head_and_explains_and_marks_its_cells(
    page, tmp_path, artifacts
):
    from circuitboard.testing import tiny_model

    model, tok = tiny_model("llama")
    cap = cli.capture_for_report(model, tok, PROMPT)
    items, _ = cli.build_board(cap, tok, target=5, baseline=7)
    attribution, attention = items[1].views[:2]
    heads = cb.direct_logit_attribution(cap, 5, baseline=7).heads.numpy()
    layer, head = np.unravel_index(np.abs(heads).argmax(), heads.shape)
    assert (layer, head) != (0, 0), "pick a seed whose top head is not L0H0"
    assert f"**L{layer}H{head}**" in items[0]
    path = cb.report(*items, path=tmp_path / "demo.html")
    open_report(page, path)
    root = ".cb-attention"
    assert page.get_attribute(root, "data-layer") == str(layer)
    assert page.get_attribute(root, "data-head") == str(head)

    # A cell of that head the page says it embeds: each query's most-attended key.
    pattern = attention.pattern(int(layer), int(head))
    q = next(i for i in range(cap.n_tokens - 1, 0, -1) if int(np.argmax(pattern[i])) != i)
    k = int(np.argmax(pattern[q]))
    page.locator(".cb-attention .cb-heatmap").scroll_into_view_if_needed()
    # The cell's right edge, halfway down: no row or column mark passes there.
    before = heat_pixel(page, q, k, 0.97, 0.5)
    click_cell(page, q, k)
    page.wait_for_selector(".cb-xp[data-state=ready]")
    assert "not in this report" not in page.inner_text(".cb-xp-summary")
    ex = cb.explain_attention(cap, layer=int(layer), head=int(head), query=q, key=k)
    assert page.inner_text(".cb-xp-summary").startswith("score ")
    assert abs(ex.matrix.sum() - ex.score) < 1e-4

    # The clicked cell is outlined (DOM and pixels); closing the panel removes the outline.
    assert page.get_attribute(root, "data-explained") == f"{q},{k}"
    edge = heat_pixel(page, q, k, 0.97, 0.5)
    assert edge != before, "the clicked cell is outlined"
    assert (edge[0] > 150 and edge[1] < 90) or sum(edge) < 150, edge  # accent red or dark halo
    page.locator(".cb-attention").screenshot(path=str(artifacts / "explained-cell.png"))
    page.click(".cb-xp-close")
    assert page.get_attribute(root, "data-explained") == ""
    assert heat_pixel(page, q, k, 0.97, 0.5) == before, "closing the panel removes the outline"
    assert page.cb_errors == []
