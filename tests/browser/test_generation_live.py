"""Live JupyterLab: a fork made from Python appears in the open GenerationView, and the view's
step fetches and clicks go through the kernel."""

from __future__ import annotations

import re
import time

import pytest

from tests.browser.test_jupyter_live import (
    kernel_output,
    live_lab,
    open_and_run,
    output_text,
)

pytestmark = [pytest.mark.jupyter, pytest.mark.slow]

CELLS = [
    "import torch\n"
    "import circuitboard as cb\n"
    "from tests.unit.tiny_models import tiny_llama\n"
    "model, tok = tiny_llama()\n"
    "gen = cb.generate(model, tok, 'When Mary and John went to the store', max_new_tokens=6,\n"
    "                  stop_at_eos=False)\n"
    "view = cb.generation_view(gen)\n"
    "view",
]
FORK = (
    "v = torch.zeros(32)\n"
    "v[:4] = 30.0\n"
    "fork = view.fork(2, steer=v, layer=1)\n"
    "print('ROWS', len(view.generations), fork.token_ids[:2] == gen.token_ids[:2])"
)


def test_fork_from_python_appears_in_the_open_view(browser, tmp_path, artifacts):
    t0 = time.monotonic()
    errors: list[str] = []
    with live_lab(
        browser, tmp_path, "generation.ipynb", CELLS, {"width": 1400, "height": 1200}
    ) as (page, url):
        try:
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on(
                "console",
                lambda m: errors.append(m.text) if m.type == "error" else None,
            )
            open_and_run(page, url)
            gen_view = ".jp-Cell:nth-child(1) .cb-gen"
            page.wait_for_selector(
                f'{gen_view}[data-rows="1"][data-step-ready=true]', timeout=90_000
            )
            assert page.locator(f'{gen_view} .cb-gen-tok[data-row="1"]').count() == 0
            # A fork made from Python: a new row in the view that is already open.
            out = kernel_output(page, FORK)
            assert "ROWS 2 True" in out, out
            page.wait_for_selector(f'{gen_view}[data-rows="2"]', timeout=30_000)
            fork_cells = page.locator(f'{gen_view} .cb-gen-tok[data-row="1"]')
            assert fork_cells.count() == 6
            assert page.locator(f'{gen_view} .cb-gen-kl[data-row="1"]').count() == 6
            # Its internals come from the kernel; the click reaches Python.
            fork_cells.nth(4).click()
            page.wait_for_selector(
                f'{gen_view}[data-step="4"][data-row="1"][data-step-ready=true]', timeout=30_000
            )
            text = kernel_output(page, "print('SEL', view.step, view.row, view.selection['token'])")
            n_prompt = int(re.search(r"(\d+)", kernel_output(page, "print(gen.n_prompt)")).group(1))
            assert f"SEL 4 1 {n_prompt + 3}" in text, text
            page.locator(gen_view).screenshot(path=str(artifacts / "generation-live-fork.png"))
            assert errors == []
        except Exception as err:
            page.screenshot(path=str(artifacts / "generation-live-failure.png"))
            raise AssertionError(
                f"{err}\noutputs: {output_text(page, 0)}\nerrors: {errors}"
            ) from None
    assert time.monotonic() - t0 < 180
