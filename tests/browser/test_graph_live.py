"""Live JupyterLab: in an attribution graph view, pinning nodes, grouping them and "run" ablate
the supernode in the kernel and the result appears in place (no re-render); a click on a head
loading asks the kernel for ``cb.explain_attention`` of that head at (target, source) and the
panel shows the kernel's exact score."""

from __future__ import annotations

import json
import re
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
    "import json\n"
    "import numpy as np, torch\n"
    "import circuitboard as cb\n"
    "from tests.unit.tiny_models import tiny_llama\n"
    "model, tok = tiny_llama()\n"
    "prompt = 'When Mary and John went to the store, John gave'\n"
    "g = cb.attribution_graph(model, tok, prompt, basis='neurons', max_nodes=64,\n"
    "                         node_threshold=0.95, edge_threshold=0.99, head_loadings=4,\n"
    "                         progress=False)\n"
    "kept = np.flatnonzero(g.node_mask)\n"
    "remap = {int(n): i for i, n in enumerate(kept)}\n"
    "basis = [i for i, n in enumerate(kept) if g.node_kind[n] == 1][:2]\n"
    "loaded = [int(e) for e in g.hl_edge if g.edge_mask[e]]\n"
    "target = remap[int(g.edge_dst[loaded[0]])]\n"
    "view = cb.graph_view(g, model=model, tokenizer=tok)\n"
    "view",
]


def test_supernode_ablation_and_head_explanation_in_live_jupyterlab(browser, tmp_path, artifacts):
    errors: list[str] = []
    with live_lab(browser, tmp_path, "graph.ipynb", CELLS, {"width": 1500, "height": 1400}) as (
        page,
        url,
    ):
        page.on("pageerror", lambda e: errors.append(str(e)))
        open_and_run(page, url)
        view = ".jp-Notebook .jp-Cell:nth-child(1) .cb-graph[data-edges]"
        page.wait_for_selector(view, timeout=120_000)
        info = json.loads(
            kernel_output(page, "print(json.dumps({'basis': basis, 'target': target}))")
        )
        canvas = page.locator(f"{view} .cb-graph-canvas")
        handle = canvas.element_handle()

        # pin two neurons (shift-click), group them, run the ablation (factor 0) in the kernel
        for i in info["basis"]:
            x, y = canvas.evaluate(f"c => c.cbNodeXY({i})")
            canvas.click(position={"x": x, "y": y}, modifiers=["Shift"])
        pinned = None
        for _ in range(50):  # the pinned trait reaches the kernel
            pinned = json.loads(kernel_output(page, "print(json.dumps(view.pinned))"))
            if pinned == sorted(info["basis"]):
                break
            page.wait_for_timeout(200)
        assert pinned == sorted(info["basis"])
        page.locator(f"{view} .cb-graph-name").fill("pair")
        page.locator(f"{view} .cb-graph-groupbtn").click()
        page.wait_for_selector(f"{view} .cb-graph-run", timeout=10_000)
        page.locator(f"{view} .cb-graph-run").first.click()
        page.wait_for_selector(f"{view}[data-interventions='1']", timeout=60_000)
        out = json.loads(kernel_output(page, "print(json.dumps(view.interventions[-1]))"))
        assert out["name"] == "pair" and out["nodes"] == sorted(info["basis"])
        assert out["factor"] == 0.0
        text = page.locator(f"{view} .cb-graph-result").first.inner_text()
        shown = [float(v.replace("−", "-")) for v in re.findall(r"−?\d+\.\d+", text)[:2]]
        assert shown[0] == pytest.approx(out["metric_before"], rel=5e-3, abs=1e-3), text
        assert shown[1] == pytest.approx(out["metric_after"], rel=5e-3, abs=1e-3), text
        # the same ablation computed again in the kernel gives the value shown
        again = kernel_output(page, "print(view.intervene('pair', 0.0)['metric_after'])")
        assert float(again) == pytest.approx(out["metric_after"], abs=1e-6)
        assert handle.evaluate("c => c.isConnected")  # updated in place, not re-rendered

        # a head loading: one click explains the head's score at (target, source) in the kernel
        x, y = canvas.evaluate(f"c => c.cbNodeXY({info['target']})")
        canvas.click(position={"x": x, "y": y})
        button = page.locator(f"{view} .cb-graph-head").first
        label = button.inner_text()
        layer, head = (int(v) for v in re.match(r"L(\d+)H(\d+)", label).groups())
        query, key = (
            int(v)
            for v in re.search(r"query (\d+), key (\d+)", button.get_attribute("title")).groups()
        )
        button.click()
        panel = page.locator(f"{view} .cb-xp")
        page.wait_for_selector(f"{view} .cb-xp[data-state='ready']", timeout=60_000)
        assert (
            panel.locator(".cb-xp-title")
            .inner_text()
            .startswith(f"L{layer}H{head} · query #{query}")
        )
        score = kernel_output(
            page,
            "cap = cb.capture(model, tok, prompt, dtype=torch.float32)\n"
            f"print(cb.explain_attention(cap, layer={layer}, head={head}, query={query}, "
            f"key={key}).score)",
        )
        summary = panel.locator(".cb-xp-summary").inner_text()
        shown_score = float(
            re.match(r"score (−?[\d.]+(?:e[-+]?\d+)?)", summary).group(1).replace("−", "-")
        )
        assert shown_score == pytest.approx(float(score), rel=5e-3, abs=1e-3), summary
        assert kernel_output(page, "print(view._cap is not None)").strip() == "True"
        page.locator(view).screenshot(path=str(artifacts / "graph_live.png"))
        assert not errors, errors
