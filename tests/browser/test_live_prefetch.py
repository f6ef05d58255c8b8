"""Live JupyterLab: after the first paint the attention view fetches the shown head's
explanations ahead and the generation view fetches every step ahead, so a click on a cell
and a scrub through the steps send no request to the kernel and draw what the kernel would
send; Escape closes the explanation panel."""

from __future__ import annotations

import json
import time

import pytest

from tests.browser.test_explain_panel import click_cell
from tests.browser.test_jupyter_live import (
    kernel_output,
    live_lab,
    open_and_run,
    output_text,
)

pytestmark = [pytest.mark.jupyter, pytest.mark.slow]

LAYER, HEAD = 1, 2
CELLS = [
    "import torch\n"
    "import circuitboard as cb\n"
    "from tests.unit.tiny_models import tiny_llama\n"
    "model, tok = tiny_llama()\n"
    "cap = cb.capture(model, tok, 'When Mary and John went to the store', dtype=torch.float32)\n"
    f"att = cb.attention(cap, layer={LAYER}, head={HEAD}, target=5, baseline=7)\n"
    "att",
    "gen = cb.generate(model, tok, 'When Mary and John went', max_new_tokens=6,\n"
    "                  stop_at_eos=False)\n"
    "view = cb.generation_view(gen)\n"
    "view",
]
ATT = ".jp-Cell:nth-child(1) .cb-attention"
GEN = ".jp-Cell:nth-child(2) .cb-gen"


def test_clicks_and_scrubs_draw_from_what_was_fetched_ahead(browser, tmp_path, artifacts):
    t0 = time.monotonic()
    errors: list[str] = []
    sent: list[str] = []  # the kinds of fetch requests sent to the kernel, in order

    def on_frame(payload: str | bytes) -> None:
        data = payload if isinstance(payload, bytes) else payload.encode()
        for kind in (b"fetch-explain-row", b"fetch-explain", b"fetch-step"):
            if kind in data:
                sent.append(kind.decode())
                return

    with live_lab(browser, tmp_path, "prefetch.ipynb", CELLS, {"width": 1400, "height": 1400}) as (
        page,
        url,
    ):
        try:
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("websocket", lambda ws: ws.on("framesent", on_frame))
            open_and_run(page, url)
            page.wait_for_selector(f'{ATT}[data-explain-ahead="{LAYER}:{HEAD}"]', timeout=120_000)
            page.wait_for_selector(
                f"{GEN}[data-steps-ahead]:not([data-steps-ahead=''])", timeout=60_000
            )
            n = int(kernel_output(page, "print(cap.n_tokens)").strip())
            cells = int(page.get_attribute(ATT, "data-explain-ahead-cells"))
            assert cells == n * (n + 1) // 2  # a short prompt: every cell of the head
            assert "fetch-explain-row" in sent and "fetch-explain" not in sent
            assert int(page.get_attribute(GEN, "data-steps-ahead")) == 6
            assert sent.count("fetch-step") == 6  # each step once: the first paint's, then ahead

            # A click on a cell: drawn from the cache, no request, the kernel's explanation.
            before = len(sent)
            page.locator(f"{ATT} .cb-heatmap").scroll_into_view_if_needed()
            q, k = n - 1, 3
            click_cell(page, q, k)
            page.wait_for_selector(f"{ATT} .cb-xp[data-state=ready]", timeout=10_000)
            assert page.get_attribute(f"{ATT} .cb-xp", "data-cached") == "true"
            shown = page.eval_on_selector_all(
                f"{ATT} .cb-xp-pair",
                "els => els.map(e => [...e.querySelectorAll('.cb-xp-comp')]"
                ".map(c => c.textContent).join('×'))",
            )
            code = (
                f"x = att.explain({LAYER}, {HEAD}, {q}, {k})\n"
                "print(json.dumps([p['query'] + '×' + p['key'] for p in x['pairs']]))"
            )
            want = json.loads(kernel_output(page, "import json\n" + code).strip())
            assert shown == want
            title = page.text_content(f"{ATT} .cb-xp-title")
            assert f"query #{q}" in title and f"key #{k}" in title
            page.locator(ATT).screenshot(path=str(artifacts / "live-prefetch-explain.png"))

            # Escape closes the panel (its close button's tooltip says so) and unlocks the query.
            page.keyboard.press("Escape")
            page.wait_for_selector(
                f"{ATT} .cb-xp[data-state=closed]", state="attached", timeout=5_000
            )
            assert page.locator(f"{ATT} .cb-xp").is_hidden()
            assert page.get_attribute(ATT, "data-explained") == ""

            # Scrubbing every step: no request, each step's internals as the kernel computes them.
            page.locator(GEN).scroll_into_view_if_needed()
            page.focus(GEN)
            for s in range(1, 6):
                page.keyboard.press("ArrowRight")
                page.wait_for_selector(
                    f'{GEN}[data-step="{s}"][data-step-ready=true]', timeout=5_000
                )
                note = page.text_content(f"{GEN} .cb-gen-dla .cb-gen-note")
                labels = page.eval_on_selector_all(
                    f"{GEN} .cb-gen-dla .cb-gen-line", "els => els.map(e => e.dataset.label)"
                )
                out = kernel_output(
                    page,
                    f"a = gen.attribution({s})\n"
                    "import numpy as np\n"
                    "v = np.abs(np.asarray(a.values, dtype=np.float32))\n"
                    "top = np.argsort(-v, kind='stable')\n"
                    "print(json.dumps([f'{a.model_value:.3f}', [a.labels[i] for i in top[:10]]]))",
                )
                model_value, top = json.loads(out.strip())
                assert note.startswith(f"logit {model_value} "), (note, model_value)
                assert sorted(labels) == sorted(top)
            page.locator(GEN).screenshot(path=str(artifacts / "live-prefetch-generation.png"))
            assert len(sent) == before, sent[before:]  # nothing asked of the kernel
            assert errors == []
        except Exception as err:
            page.screenshot(path=str(artifacts / "live-prefetch-failure.png"))
            raise AssertionError(
                f"{err}\noutputs: {output_text(page, 0)} {output_text(page, 1)}\n"
                f"errors: {errors}\nsent: {sent}"
            ) from None
    assert time.monotonic() - t0 < 240
