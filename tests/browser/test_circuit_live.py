"""Live JupyterLab: "ablate selection" in a circuit view runs in the kernel and updates the
metric in place (no re-render), and the selection is a trait Python reads and sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.test_jupyter_live import (
    kernel_output,
    live_lab,
    open_and_run,
)

pytestmark = [pytest.mark.jupyter, pytest.mark.slow]

REPO = str(Path(__file__).resolve().parents[2])
CELLS = [
    f"import sys; sys.path.insert(0, {REPO!r})\n"
    "import circuitboard as cb\n"
    "from tests.unit.tiny_models import tiny_llama\n"
    "model, tok = tiny_llama()\n"
    "c = cb.circuit(model, tok, '1 2 3 4 5 6 7 8', '9 8 7 6 5 4 3 2', method='eap')\n"
    "view = cb.circuit_view(c, k=20)\n"
    "view",
    "view.selected = ['L1H0']",
]


def test_ablate_selection_in_live_jupyterlab(browser, tmp_path, artifacts):
    errors: list[str] = []
    with live_lab(browser, tmp_path, "circuit.ipynb", CELLS, {"width": 1400, "height": 1400}) as (
        page,
        url,
    ):
        page.on("pageerror", lambda e: errors.append(str(e)))
        open_and_run(page, url)
        view = ".jp-Notebook .jp-Cell:nth-child(1) .cb-circuit[data-ready=true]"
        page.wait_for_selector(view, timeout=90_000)
        page.wait_for_function(
            "() => [...document.querySelectorAll('.cb-circuit')].length === 1", timeout=10_000
        )
        canvas = page.locator(f"{view} .cb-circ-graph").element_handle()
        page.locator(f"{view} .cb-circ-ablate").click()
        page.wait_for_selector(f"{view}[data-ablation]", timeout=60_000)
        shown = float(page.locator(view).get_attribute("data-ablation"))
        expected = kernel_output(page, "print(c.evaluate(20, without=['L1H0']))")
        assert shown == pytest.approx(float(expected), abs=1e-6)
        assert "without L1H0 at k = 20" in page.locator(f"{view} .cb-circ-result").inner_text()
        # no re-render: the same canvas element is still there
        assert canvas.evaluate("c => c.isConnected")
        assert float(kernel_output(page, "print(view.ablation['value'])")) == pytest.approx(
            shown, abs=1e-6
        )
        page.locator(view).screenshot(path=str(artifacts / "circuit_live_ablation.png"))
        assert not errors, errors
