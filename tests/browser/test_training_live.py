"""The training view in a live JupyterLab: a (step, head) click moves the linked attention view
to that head AT THAT STEP (the kernel swaps in the probe's patterns of the step; the view
redraws), not only to the head."""

from __future__ import annotations

import pytest

from tests.browser.test_jupyter_live import (
    kernel_output,
    live_lab,
    open_and_run,
    output_text,
)

pytestmark = [pytest.mark.jupyter, pytest.mark.slow]

CELLS = [
    "import torch, numpy as np, circuitboard as cb\n"
    "from circuitboard.training import TrainingRecorder\n"
    "from tests.unit.training_helpers import tiny_toy, toy_batch, train_toy\n"
    "model = tiny_toy()\n"
    "rec = TrainingRecorder(model, every=2, probes=toy_batch(999, 2)[0], probe_every=4)\n"
    "train_toy(model, 13, rec)\n"
    "run = rec.close()\n"
    "view = cb.training_view(run)\n"
    "attn = view.attention_view(0)  # built at probe step 0; follows clicks\n"
    "view",
    "attn",
]


def test_clicked_step_reaches_the_linked_attention_view_live(browser, tmp_path, artifacts):
    with live_lab(browser, tmp_path, "training.ipynb", CELLS, {"width": 1300, "height": 1600}) as (
        page,
        url,
    ):
        try:
            open_and_run(page, url)
            page.wait_for_selector(".cb-train-scores", timeout=90_000)
            page.wait_for_selector(".cb-attention", timeout=60_000)
            steps = kernel_output(
                page, "print(view.probe_steps, run.head_scores['induction'].shape)"
            )
            probe_steps = [int(s) for s in steps.split("]")[0].strip("[ ").split(",")]
            P = len(probe_steps)
            thumbs = "cs => cs.map(c => c.toDataURL())"
            before = page.eval_on_selector_all(".cb-attention .cb-thumb canvas", thumbs)
            assert len(before) == 4  # 2 layers x 2 heads
            # click (last probe step, layer 1 head 1) in the head-score map (2 layers x 2 heads)
            box = page.query_selector(".cb-train-scores").bounding_box()
            page.mouse.click(
                box["x"] + box["width"] * (P - 0.5) / P, box["y"] + box["height"] * 3.5 / 4
            )
            # the attention view redrew (new patterns from the kernel) on L1H1 ...
            page.wait_for_selector("[data-cb-revision='1'] .cb-attention", timeout=30_000)
            page.wait_for_selector('.cb-attention[data-layer="1"][data-head="1"]', timeout=15_000)
            # ... and holds the probe's patterns at the clicked step, not at step 0
            out = kernel_output(
                page,
                "p = view.picked['p']\n"
                "print('STEP', view.probe_steps[p], attn._revision,\n"
                "      float(np.abs(attn.pattern(1, 1) - run.patterns[p, 0, 1, 1] / 255).max()),\n"
                "      float(np.abs(attn.pattern(1, 1) - run.patterns[0, 0, 1, 1] / 255).max()))",
            )
            word, step, rev, here, first = out.split()
            assert word == "STEP" and int(step) == probe_steps[-1] and rev == "1", out
            assert float(here) < 1e-6 < float(first), out
            # the page shows it: the redrawn thumbnails are the clicked step's, not step 0's
            after = page.eval_on_selector_all(".cb-attention .cb-thumb canvas", thumbs)
            assert len(after) == 4 and after != before
            page.screenshot(path=str(artifacts / "training-live.png"), full_page=True)
        except Exception as err:
            page.screenshot(path=str(artifacts / "training-live-failure.png"))
            raise AssertionError(f"{err}\noutput: {output_text(page, 0)}") from None
