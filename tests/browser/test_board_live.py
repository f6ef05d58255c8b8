"""A board in a live JupyterLab (issue 14): ``board.observe(f, names="selection")`` fires on
clicks, a neuron click leaves the attention view's head alone and a head click leaves the
neuron view's neuron alone, with the kernel in the loop."""

from __future__ import annotations

import re

import pytest

from tests.browser.test_jupyter_live import (
    kernel_output,
    live_lab,
    open_and_run,
    output_text,
)

pytestmark = [pytest.mark.jupyter, pytest.mark.slow]

CELLS = [
    "from tests.browser.test_linked_report import synthetic_board\n"
    "board = synthetic_board()  # attribution, attention, neurons\n"
    "events = []\n"
    "board.observe(lambda ch: events.append(dict(ch['new'])), names='selection')\n"
    "board",
]


def test_board_observe_and_linking_live(browser, tmp_path, artifacts):
    with live_lab(browser, tmp_path, "board.ipynb", CELLS, {"width": 1400, "height": 1600}) as (
        page,
        url,
    ):
        try:
            open_and_run(page, url)
            page.wait_for_selector(".cb-neurons[data-ready=true]", timeout=60_000)
            page.wait_for_selector(".cb-dla[data-ready=true]", timeout=60_000)
            att = page.locator(".cb-attention")
            head0 = att.get_attribute("data-layer"), att.get_attribute("data-head")
            neurons0 = (
                page.get_attribute(".cb-neurons", "data-layer"),
                page.get_attribute(".cb-neurons", "data-neuron"),
            )
            # A head click in the attribution heatmap (L2 H1 of 4 layers x 3 heads) ...
            box = page.query_selector(".cb-dla-heat").bounding_box()
            page.mouse.click(box["x"] + box["width"] * 1.5 / 3, box["y"] + box["height"] * 2.5 / 4)
            page.wait_for_selector('.cb-attention[data-layer="2"][data-head="1"]', timeout=15_000)
            # ... reaches Python through board.observe ...
            text = ""
            for _ in range(30):
                text = kernel_output(
                    page, "print('EV', len(events), events[-1] if events else None)"
                )
                if re.search(r"'layer': 2.*'head': 1", text):
                    break
                page.wait_for_timeout(200)
            assert re.search(
                r"EV [1-9]\d* \{'layer': 2, 'head': 1, 'token': None, 'neuron': None", text
            )
            # ... and leaves the neuron view on its neuron.
            assert (
                page.get_attribute(".cb-neurons", "data-layer"),
                page.get_attribute(".cb-neurons", "data-neuron"),
            ) == neurons0
            # A neuron click (the attribution's list): the neuron view opens it, the head stays.
            row = page.locator(".cb-dla-list .cb-dla-row[data-neuron]").first
            lay, neu = row.get_attribute("data-layer"), row.get_attribute("data-neuron")
            row.click()
            page.wait_for_selector(f'.cb-neurons[data-layer="{lay}"][data-neuron="{neu}"]')
            assert (att.get_attribute("data-layer"), att.get_attribute("data-head")) == ("2", "1")
            for _ in range(30):
                text = kernel_output(page, "print('EV', events[-1])")
                if f"'neuron': {neu}" in text:
                    break
                page.wait_for_timeout(200)
            assert f"'layer': {lay}, 'head': None" in text and f"'neuron': {neu}" in text, text
            # Python moves the board; the views follow.
            kernel_output(page, "board.selection = {'layer': 3, 'head': 0}")
            page.wait_for_selector('.cb-attention[data-layer="3"][data-head="0"]', timeout=15_000)
            page.screenshot(path=str(artifacts / "board-live.png"))
            assert head0 != ("3", "0")
        except Exception as err:
            page.screenshot(path=str(artifacts / "board-live-failure.png"))
            raise AssertionError(f"{err}\noutput: {output_text(page, 0)}") from None
