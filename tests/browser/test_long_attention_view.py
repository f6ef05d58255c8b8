"""The attention view at 8,192 tokens in Chromium: pooled overview, thumbnails with progress,
full-resolution tiles on zoom, hostile token text staying text."""

from __future__ import annotations

import dataclasses
import functools

import torch

import circuitboard as cb
from tests.browser.test_hostile_every_view import INJECTED
from tests.conftest import open_report
from tests.hostile import HOSTILE_TOKENS, shown

N = 8192


@functools.cache
def long_capture():
    """A tiny Llama (2 layers x 4 heads) read to its 8,192-token context."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.unit.tiny_models import tiny_tokenizer

    cfg = LlamaConfig(
        vocab_size=384,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=N + 64,
        attn_implementation="sdpa",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    tok = tiny_tokenizer("bos")
    text = "When Mary and John went to the store, John gave a drink to Mary. " * 400
    offsets = tok(text, return_offsets_mapping=True)["offset_mapping"]
    cap = cb.capture(model, tok, text[: offsets[N][0]], what=["pattern"])
    assert cap.n_tokens == N, cap.n_tokens
    return cap


def test_8192_tokens_overview_tiles_and_hostile_text(page, tmp_path, artifacts):
    cap = long_capture()
    tokens = (HOSTILE_TOKENS * (N // len(HOSTILE_TOKENS) + 1))[:N]
    cap = dataclasses.replace(cap, tokens=tokens)
    view = cb.attention(cap, layer=1, head=2)
    assert view.overview_size == 512 and not view._thumbs_ready
    path = cb.report(view, path=tmp_path / "long.html", title=HOSTILE_TOKENS[0])
    assert path.stat().st_size < 25_000_000
    open_report(page, path, timeout=60_000)
    page.wait_for_selector(".cb-attention[data-thumbs-done=true]", timeout=60_000)
    root = page.locator(".cb-attention")
    # first paint: the head in token coordinates, drawn from its 512 x 512 overview
    assert page.locator(".cb-heatmap").get_attribute("data-rows") == str(N)
    page.screenshot(path=str(artifacts / "attention_8192_overview.png"))
    status = page.locator(".cb-status").text_content()
    assert "pooled overview: max of each 16×16-token block" in status
    assert page.locator(".cb-progress").is_hidden()
    # thumbnails of every head arrived (their canvases are painted, not blank)
    painted = page.eval_on_selector_all(
        ".cb-thumb canvas",
        "cs => cs.map(c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height)"
        ".data; let s = 0; for (let i = 0; i < d.length; i += 4) s += 255 - d[i]; return s; })",
    )
    assert len(painted) == 8 and min(painted) > 0
    # zoom far in: the visible region arrives as full-resolution tiles (embedded in the report)
    page.focus(".cb-attention")
    for _ in range(5):
        page.keyboard.press("+")
    page.wait_for_selector(".cb-attention[data-tiles]", timeout=30_000)
    assert int(root.get_attribute("data-tiles")) >= 1
    page.wait_for_timeout(200)
    assert "at full resolution" in page.locator(".cb-status").text_content()
    page.screenshot(path=str(artifacts / "attention_8192_zoomed.png"))
    # hostile tokens stay text: the strip shows them exactly and nothing was injected
    page.locator(".cb-heatmap").hover(position={"x": 200, "y": 200})
    shown_tokens = page.eval_on_selector_all(".cb-token", "ts => ts.map(t => t.textContent)")
    assert shown_tokens and set(shown_tokens) <= {shown(t) for t in HOSTILE_TOKENS}
    assert page.evaluate("() => window.__pwned === undefined")
    assert page.evaluate(f"() => document.querySelectorAll({INJECTED!r}).length") == 0
    assert page.cb_errors == []
