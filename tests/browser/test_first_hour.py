"""What broke or confused a new user in the first hour (issue 14), each checked in Chromium.

Figures are the view's content whatever its scroll, zoom or hover state; a neuron click never
moves the attention view to a head nobody chose (nor a head click the neuron view to another
layer's neuron); a report opens every neuron the attribution view lists; a dead kernel is
named and the controls keep matching the drawing; the small things stay fixed.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import circuitboard as cb
from tests.browser.test_linked_report import synthetic_board
from tests.conftest import open_report

SVG = "{http://www.w3.org/2000/svg}"
TOKENS = ["When", " Mary", " and", " John", " went", " to", " the", " store", ",", " John"]


def many_heads(n_layers: int = 30, n_heads: int = 9, n: int = len(TOKENS)) -> np.ndarray:
    rng = np.random.default_rng(3)
    att = np.tril(rng.random((n_layers, n_heads, n, n)) ** 4 + 1e-3)
    return att / att.sum(-1, keepdims=True)


def figure_bytes(page, fmt: str, slot: int = 0) -> bytes:
    """Click a view's ⤓ button and return the downloaded file."""
    button = page.locator(".cb-slot").nth(slot).locator(f".cb-figure-button[data-format={fmt}]")
    with page.expect_download(timeout=30_000) as info:
        button.click()
    return open(info.value.path(), "rb").read()


COMPARE = """async ([a, b, rows]) => {
    const load = async (b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const img = await createImageBitmap(new Blob([bytes], { type: "image/png" }));
        const c = document.createElement("canvas");
        c.width = img.width; c.height = img.height;
        const ctx = c.getContext("2d");
        ctx.drawImage(img, 0, 0);
        return ctx.getImageData(0, 0, img.width, img.height);
    };
    const [x, y] = [await load(a), await load(b)];
    const same = (n) => {
        for (let i = 0; i < n; i++) if (x.data[i] !== y.data[i]) return false;
        return true;
    };
    const shape = x.width === y.width && x.height === y.height;
    return { shape, header: shape && same(4 * x.width * rows), all: shape && same(x.data.length) };
}"""


def compare_pngs(page, a: bytes, b: bytes, header_rows: int) -> dict:
    """Decode two PNGs in the page; whether their first ``header_rows`` rows / all pixels agree."""
    enc = [base64.b64encode(x).decode("ascii") for x in (a, b)]
    return page.evaluate(COMPARE, [enc[0], enc[1], header_rows])


def pixel_colours(page, png: bytes) -> list[list[int]]:
    """Every 7th pixel of a PNG as [r, g, b]."""
    return page.evaluate(
        """async (b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const img = await createImageBitmap(new Blob([bytes], { type: "image/png" }));
            const c = document.createElement("canvas");
            c.width = img.width; c.height = img.height;
            const ctx = c.getContext("2d");
            ctx.drawImage(img, 0, 0);
            const d = ctx.getImageData(0, 0, img.width, img.height).data;
            const out = [];
            for (let i = 0; i < d.length; i += 28) out.push([d[i], d[i + 1], d[i + 2]]);
            return out;
        }""",
        base64.b64encode(png).decode("ascii"),
    )


def svg_texts(svg: bytes) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg).iter(f"{SVG}text")]


def test_figure_ignores_scroll_zoom_and_hover(page, tmp_path, artifacts):
    view = cb.AttentionView(many_heads(), TOKENS, layer=0, head=0)
    open_report(page, cb.report(view, path=tmp_path / "grid.html"))
    before = figure_bytes(page, "png")
    # Scroll the head grid to the bottom, zoom the heatmap in and leave a hover behind.
    page.eval_on_selector(".cb-att-grid", "g => { g.scrollTop = g.scrollHeight; }")
    page.click('.cb-attention button[aria-label="zoom in (+)"]')
    page.hover('.cb-attention .cb-token[data-i="4"]')
    page.wait_for_selector('.cb-attention[data-token="4"]')
    assert float(page.get_attribute(".cb-attention", "data-zoom")) > 1.5
    after = figure_bytes(page, "png")
    (artifacts / "figure-grid-unscrolled.png").write_bytes(before)
    (artifacts / "figure-grid-scrolled.png").write_bytes(after)
    same = compare_pngs(page, before, after, header_rows=240)  # title and key labels, 2x
    assert same["shape"], "the figure's size depends on the scroll or zoom state"
    assert same["header"], "the scrolled grid leaked into the header"
    assert same["all"], "zoom or hover state leaked into the figure"
    # The live view is back as it was: still zoomed, still hovered.
    assert float(page.get_attribute(".cb-attention", "data-zoom")) > 1.5
    # SVG: text as text; a title, labelled axes and a colour scale; no controls, no help.
    texts = svg_texts(figure_bytes(page, "svg"))
    joined = " ".join(texts)
    assert "Attention · layer 0, head 0" in texts
    assert "key →" in texts and "query ↓" in texts
    assert "attention weight" in texts and "0" in texts
    assert any(t.startswith("0 When") or t == "0 When" for t in texts)
    for residue in ("Layer 0", "scores: off", "linear", "fit", "PNG", "SVG", "Hover", "zoom"):
        assert residue not in joined, f"{residue!r} is a control or help text"
    assert page.cb_errors == []


def test_figure_dark_uses_the_same_blue_map(page, tmp_path, artifacts):
    view = cb.AttentionView(many_heads(2, 2), TOKENS, theme="dark")
    open_report(page, cb.report(view, path=tmp_path / "dark.html"))
    png = figure_bytes(page, "png")
    (artifacts / "figure-attention-dark.png").write_bytes(png)
    img = np.array(pixel_colours(page, png), dtype=int)
    blue = img[(img[:, 2] > img[:, 0] + 60) & (img[:, 2] > 150)]
    yellowish = img[(img[:, 0] > 180) & (img[:, 1] > 180) & (img[:, 2] < 100)]
    assert len(blue) > 200 and len(yellowish) < 20, "dark mode must not switch to viridis"


def test_neuron_click_leaves_the_head_and_head_click_leaves_the_neuron(page, tmp_path):
    board = synthetic_board()  # attribution, attention, neurons (layer 1, neuron 3)
    open_report(page, cb.report(board, path=tmp_path / "linked.html"))
    att = page.locator(".cb-attention")
    layer0, head0 = att.get_attribute("data-layer"), att.get_attribute("data-head")
    # A neuron in the attribution view's list: the neurons view opens it ...
    row = page.locator(".cb-dla-list .cb-dla-row[data-neuron]").first
    lay, neu = row.get_attribute("data-layer"), row.get_attribute("data-neuron")
    row.click()
    page.wait_for_selector(f'.cb-neurons[data-layer="{lay}"][data-neuron="{neu}"]')
    # ... and the attention view stays on its head (nobody chose a head in that layer).
    page.wait_for_timeout(100)
    assert (att.get_attribute("data-layer"), att.get_attribute("data-head")) == (layer0, head0)
    assert page.get_attribute(".cb-dla", "data-head") is None
    # A head click: the attention view opens it; the neurons view keeps its neuron.
    box = page.query_selector(".cb-dla-heat").bounding_box()
    page.mouse.click(box["x"] + box["width"] * (1.5 / 3), box["y"] + box["height"] * (2.5 / 4))
    page.wait_for_selector('.cb-attention[data-layer="2"][data-head="1"]')
    page.wait_for_timeout(100)
    assert page.get_attribute(".cb-neurons", "data-layer") == lay
    assert page.get_attribute(".cb-neurons", "data-neuron") == neu
    # The neurons view's own layer menu opens that layer's strongest neuron, not the same index.
    page.select_option('.cb-neurons select[aria-label="layer"]', "0")
    page.wait_for_selector('.cb-neurons[data-layer="0"]:not([data-loading])')
    strongest = board.views[2].default_neuron(0)
    assert page.get_attribute(".cb-neurons", "data-neuron") == str(strongest)
    assert (att.get_attribute("data-layer"), att.get_attribute("data-head")) == ("2", "1")
    assert page.cb_errors == []


def test_dead_kernel_says_so_and_controls_match_the_drawing(page, tmp_path):
    # Longer than a thumbnail (32 tokens), so a head is fetched from the kernel, not drawn
    # from its thumbnail.
    tokens = TOKENS * 4
    view = cb.AttentionView(many_heads(3, 3, len(tokens)), tokens)
    open_report(page, cb.report(view, path=tmp_path / "dead.html", budget_bytes=10**9))
    page.evaluate("() => { document.documentElement.dataset.cbKernel = 'dead'; }")
    page.click('.cb-thumb[data-layer="2"][data-head="2"]')
    page.wait_for_selector(".cb-attention.cb-error")
    status = page.inner_text(".cb-attention .cb-status")
    assert "kernel is gone" in status and "still works" in status and "Re-run the cell" in status
    # The selectors show the head that is drawn, not the one that could not be loaded.
    drawn = (
        page.get_attribute(".cb-attention", "data-layer"),
        page.get_attribute(".cb-attention", "data-head"),
    )
    shown = (
        page.eval_on_selector('.cb-attention select[aria-label="layer"]', "s => s.value"),
        page.eval_on_selector('.cb-attention select[aria-label="head"]', "s => s.value"),
    )
    assert drawn == shown == ("0", "0")
    page.cb_errors.clear()  # the host's deliberate throw is logged by the widget code


def test_small_things(page, tmp_path):
    rng = np.random.default_rng(0)
    att = many_heads(2, 2)
    scores_a = {"induction": rng.random((2, 2)), "previous_token": rng.random((2, 2))}
    scores_b = {"previous_token": rng.random((2, 2)), "induction": rng.random((2, 2))}
    board = cb.board(
        cb.AttentionView(att, TOKENS, scores=scores_a),
        cb.AttentionView(att, TOKENS, scores=scores_b),
        synthetic_board().views[0],
    )
    open_report(page, cb.report(board, path=tmp_path / "small.html"))
    # The scores menu lists its options in one order in every view.
    orders = page.eval_on_selector_all(
        '.cb-attention select[aria-label="head score"]',
        "ss => ss.map(s => [...s.options].map(o => o.value).join(','))",
    )
    assert len(set(orders)) == 1 and orders[0].startswith(",previous_token,induction")
    # Zoom goes to 8x and says when it stops.
    first = page.locator(".cb-slot").first
    for _ in range(3):  # 2x per click: 8x is the deepest zoom
        first.locator('button[aria-label="zoom in (+)"]').click()
    assert first.locator(".cb-attention").get_attribute("data-zoom") == "8.00"
    assert "(max)" in first.locator(".cb-status").inner_text()
    assert first.locator('button[aria-label="zoom in (+)"]').is_disabled()
    # Help text wraps instead of being cut at 820 px.
    page.set_viewport_size({"width": 820, "height": 900})
    cap = first.locator(".cb-caption")
    assert cap.evaluate("c => c.scrollHeight <= c.clientHeight + 1")
    # Hovering a head in the attribution view leaves no stale value behind.
    page.hover(".cb-dla-heat", position={"x": 4, "y": 4})
    page.wait_for_selector(".cb-dla[data-hover]", state="attached")
    assert "L0H0" in page.inner_text(".cb-dla-readout")
    page.hover(".cb-dla .cb-title")
    page.wait_for_selector(".cb-dla:not([data-hover])", state="attached")
    assert "L0H0" not in page.inner_text(".cb-dla-readout")
    assert page.cb_errors == []


@pytest.mark.real
def test_report_opens_every_neuron_the_attribution_lists(
    page, default_model, ioi_capture, tmp_path, artifacts
):
    from circuitboard.cli import build_board

    _model, tok = default_model
    items, _ = build_board(ioi_capture, tok, target=" Mary", baseline=" John")
    path = cb.report(*items, path=tmp_path / "ioi.html", title="IOI")
    open_report(page, path, timeout=30_000)
    notes = page.inner_text(".cb-notes") if page.locator(".cb-notes").count() else ""
    assert "did not fit" not in notes, notes
    attribution = items[1].views[0]
    listed = [(lay, n) for lay, n, _ in attribution._top(None, 12)]
    listed += [(lay, n) for lay, n, _ in attribution._top(29, 12)]
    rows = page.locator(".cb-dla-list .cb-dla-row[data-neuron]")
    assert rows.count() == 12
    for i in range(rows.count()):
        row = rows.nth(i)
        lay, neu = row.get_attribute("data-layer"), row.get_attribute("data-neuron")
        row.click()
        page.wait_for_selector(
            f'.cb-neurons[data-layer="{lay}"][data-neuron="{neu}"]:not(.cb-failed)'
        )
    # Every neuron of a layer, too (the per-layer list), and any other neuron by number.
    page.fill('.cb-neurons input[aria-label="neuron"]', "7")
    page.press('.cb-neurons input[aria-label="neuron"]', "Enter")
    page.wait_for_selector('.cb-neurons[data-neuron="7"]:not(.cb-failed)')
    page.screenshot(path=str(artifacts / "report-every-neuron.png"), full_page=True)
    assert page.cb_errors == []
    assert listed  # the attribution view did list neurons
