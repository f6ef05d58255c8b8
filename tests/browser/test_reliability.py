"""Failures and limits in the browser: a silent kernel, hover storms, NaN and inf values."""

from __future__ import annotations

import numpy as np

import circuitboard as cb
from tests.browser.test_report_attention import canvas_pixels
from tests.conftest import open_report


def attention(layers: int = 3, heads: int = 3, n: int = 12) -> cb.AttentionView:
    rng = np.random.default_rng(0)
    att = np.tril(rng.random((layers, heads, n, n)) + 1e-3)
    return cb.AttentionView(att / att.sum(-1, keepdims=True), [f" t{i}" for i in range(n)])


def test_silent_kernel_shows_a_message_instead_of_hanging(page, tmp_path, artifacts):
    # 40 tokens: past 32 a head is fetched (shorter prompts draw heads from their thumbnails)
    path = cb.report(attention(n=40), path=tmp_path / "gone.html")
    open_report(page, path)
    # From now on requests go unanswered (a stopped kernel), and time out after 400 ms.
    page.eval_on_selector(
        "html", "h => { h.dataset.cbKernel = 'gone'; h.dataset.cbFetchTimeoutMs = '400'; }"
    )
    page.click('.cb-attention [data-layer="2"][data-head="2"]')
    page.wait_for_selector(".cb-attention.cb-error", timeout=5_000)
    text = page.inner_text(".cb-attention")
    assert "no answer from the Python kernel" in text and "Re-run the cell" in text
    page.screenshot(path=str(artifacts / "reliability-kernel-gone.png"))
    page.cb_errors.clear()  # the rejected fetch may be logged; the message is what matters


def test_hover_storm_updates_the_link_once_per_frame(page, tmp_path):
    path = cb.report(attention(n=40), path=tmp_path / "storm.html")
    open_report(page, path)
    changes, token = page.eval_on_selector(
        ".cb-attention",
        """async (root) => {
            let changes = 0;
            const obs = new MutationObserver((ms) => { changes += ms.length; });
            obs.observe(root, { attributes: true, attributeFilter: ["data-token"] });
            const tokens = root.querySelectorAll(".cb-token");
            for (let i = 0; i < 40; i++) {
                tokens[i].dispatchEvent(new PointerEvent("pointerover", { bubbles: true }));
            }
            for (let f = 0; f < 3; f++) await new Promise((r) => requestAnimationFrame(r));
            obs.disconnect();
            return [changes, root.dataset.token];
        }""",
    )
    assert token == "39"  # the latest hover wins
    assert changes <= 2, f"{changes} link updates for 40 hovers in one frame"
    assert page.cb_errors == []


def test_nan_and_inf_tokens_are_drawn_distinctly_and_labelled(page, tmp_path, artifacts):
    acts = np.linspace(-1, 1, 6 * 8, dtype=np.float32).reshape(1, 6, 8)
    acts[0, 2, :] = np.nan
    acts[0, 4, :] = np.inf
    view = cb.NeuronsView(acts, ["a", "b", "nan here", "c", "inf here", "d"], neuron=0)
    path = cb.report(view, path=tmp_path / "nan.html")
    open_report(page, path)
    page.wait_for_selector(".cb-token.cb-token-nan")
    flagged = page.eval_on_selector_all(
        ".cb-token",
        "els => els.map(e => [e.classList.contains('cb-token-nan'), e.title,"
        " getComputedStyle(e).backgroundColor])",
    )
    assert [f[0] for f in flagged] == [False, False, True, False, True, False]
    assert "NaN" in flagged[2][1] and "Infinity" in flagged[4][1]
    assert flagged[2][2] == flagged[4][2] == "rgb(255, 0, 255)"
    assert all(f[2] != "rgb(255, 0, 255)" for i, f in enumerate(flagged) if i not in (2, 4))
    page.hover(".cb-token >> nth=2")  # its top-neuron list is all NaN
    page.wait_for_timeout(300)
    page.click(".cb-token >> nth=4")
    page.wait_for_timeout(300)
    page.screenshot(path=str(artifacts / "reliability-nan-tokens.png"))
    assert "Cannot read" not in page.inner_text(".cb-neurons")
    assert page.cb_errors == []


def test_nan_attention_renders_without_errors(page, tmp_path):
    att = np.tril(np.full((1, 1, 4, 4), 0.25, dtype=np.float32))
    att[0, 0, 2, 1] = np.nan
    att[0, 0, 3, 0] = np.inf
    path = cb.report(cb.AttentionView(att, list("abcd")), path=tmp_path / "nanatt.html")
    open_report(page, path)
    px = canvas_pixels(page)[..., :3]
    magenta = (px == [255, 0, 255]).all(-1)
    assert magenta[2, 1] and magenta[3, 0], "NaN and inf cells are drawn magenta"
    assert magenta.sum() == 2, "only the non-finite cells are magenta"
    # The token strip marks the non-finite weights of the hovered row, and the tooltip says so.
    page.hover('.cb-token[data-i="2"]')
    page.wait_for_selector('.cb-token[data-i="1"].cb-token-nan')
    left, top, x0, y0, k = page.eval_on_selector(
        ".cb-heatmap",
        "c => { const r = c.getBoundingClientRect(), d = c.dataset;"
        " return [r.left, r.top, +d.x0, +d.y0, +d.cell]; }",
    )
    dpr = page.evaluate("() => window.devicePixelRatio || 1")
    page.mouse.move(left + (x0 + 1.5 * k) / dpr, top + (y0 + 2.5 * k) / dpr)
    assert "NaN" in page.inner_text(".cb-tip")
    assert page.cb_errors == []
