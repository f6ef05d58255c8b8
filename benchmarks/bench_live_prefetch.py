"""Interactions that wait on the kernel, live in JupyterLab, with and without fetching ahead.

The default model (SmolLM2-135M-Instruct) in a live JupyterLab kernel, one notebook with an
attention view of the IOI prompt (with an attribution target, so the explanation panel also
splits the head's output) and a generation view of 24 new tokens. Measured in the page, from
the event to the next frame after the view drew:

- one step of the generation scrubber: the scrubber moved one step forward (``input`` and
  ``change``, as a drag released there), every step of the generation once;
- the first click on a cell of a head: a head thumbnail clicked, the head drawn, then one
  click on a random cell of it → its explanation panel painted.

Each is measured twice in the same run, in two fresh labs: with the views fetching ahead
(the default) and with ``html[data-cb-prefetch=off]`` (what a click costs without it). With
fetching ahead, a head's cell is clicked once the view has fetched that head's explanations
(``data-explain-ahead``), and the scrubber moves once every step is fetched; without it,
cells are clicked 1.5 s after the head is drawn (the kernel has folded the head's weights by
then, as it does in the background).

    python benchmarks/bench_live_prefetch.py [--heads 10] [--steps 24]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import circuitboard as cb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IOI = "When Mary and John went to the store, John gave a drink to"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
# set once the page has its <html> (an init script runs before it exists)
PREFETCH_OFF = (
    "document.addEventListener('DOMContentLoaded', "
    "() => { document.documentElement.dataset.cbPrefetch = 'off'; });"
)

# Resolves [drawn, painted]: ms from the event to the view's DOM holding the new state (seen
# by a MutationObserver, as bench_board times a head click) and to the next frame after it.
UNTIL = """
    const drawn = await new Promise((resolve) => {
        if (ok()) return resolve(performance.now());
        const obs = new MutationObserver(() => {
            if (ok()) { obs.disconnect(); resolve(performance.now()); }
        });
        obs.observe(watched, { attributes: true, subtree: true });
    });
    await new Promise((r) => requestAnimationFrame(() => r()));
    const painted = performance.now();
"""

SCRUB = (
    """async (s) => {
    const root = document.querySelector(".cb-gen");
    const scrub = root.querySelector(".cb-gen-scrub");
    const watched = root;
    const ok = () => root.dataset.step === String(s) && root.dataset.stepReady === "true";
    const t0 = performance.now();
    scrub.value = String(s);
    scrub.dispatchEvent(new Event("input", { bubbles: true }));
    scrub.dispatchEvent(new Event("change", { bubbles: true }));
"""
    + UNTIL
    + """
    return [drawn - t0, painted - t0];
}"""
)

SHOW_HEAD = """async ([layer, head]) => {
    const root = document.querySelector(".cb-attention");
    root.querySelector(`.cb-thumb[data-layer="${layer}"][data-head="${head}"]`).click();
    while (!(root.dataset.layer === String(layer) && root.dataset.head === String(head))) {
        await new Promise((r) => setTimeout(r, 5));
    }
}"""

WAIT_AHEAD = """async (key) => {
    const root = document.querySelector(".cb-attention");
    const t0 = performance.now();
    while (root.dataset.explainAhead !== key) await new Promise((r) => setTimeout(r, 20));
    return performance.now() - t0;
}"""

CLICK_CELL = (
    """async ([q, k]) => {
    const root = document.querySelector(".cb-attention");
    const canvas = root.querySelector(".cb-heatmap");
    const panel = root.querySelector(".cb-xp");
    const watched = panel;
    const r = canvas.getBoundingClientRect(), d = canvas.dataset, s = devicePixelRatio;
    const x = r.left + (+d.x0 / s) + (k + 0.5) * (+d.cell / s);
    const y = r.top + (+d.y0 / s) + (q + 0.5) * (+d.cell / s);
    const count = Number(panel.dataset.count ?? 0);
    const ok = () => Number(panel.dataset.count ?? 0) > count && panel.dataset.state === "ready";
    const t0 = performance.now();
    canvas.dispatchEvent(new MouseEvent("click", { clientX: x, clientY: y, bubbles: true }));
"""
    + UNTIL
    + """
    const cached = panel.dataset.cached === "true";
    root.dispatchEvent(new KeyboardEvent("keydown", { key: "Escape", bubbles: true }));
    return [drawn - t0, painted - t0, cached, panel.hidden];
}"""
)


def cells(steps: int) -> list[str]:
    return [
        "import circuitboard as cb, torch\n"
        "model, tok = cb.load_default_model()\n"
        f"cap = cb.capture(model, tok, {IOI!r}, dtype=torch.float32)\n"
        "att = cb.attention(cap, target=' Mary', baseline=' John')\n"
        "att",
        f"gen = cb.generate(model, tok, 'My favourite pet is a', max_new_tokens={steps},\n"
        "                  stop_at_eos=False)\n"
        "view = cb.generation_view(gen)\n"
        "view",
    ]


def run_lab(browser: Any, root: Path, ahead: bool, heads: int, steps: int) -> dict[str, Any]:
    from benchmarks._live import live_notebook

    root.mkdir()
    out: dict[str, Any] = {
        "scrub": [],
        "scrub_frame": [],
        "click": [],
        "click_frame": [],
        "cached": [],
        "ahead_ms": [],
        "load": [],
    }
    init = None if ahead else PREFETCH_OFF
    viewport = {"width": 1400, "height": 1600}
    with live_notebook(
        browser, root, cells(steps), viewport=viewport, ready=".cb-gen", init_script=init
    ) as page:
        page.wait_for_selector(".cb-gen[data-step-ready=true]", timeout=300_000)
        page.wait_for_selector(".cb-attention[data-first-paint-ms]", timeout=300_000)
        flag = page.evaluate("() => document.documentElement.dataset.cbPrefetch ?? 'on'")
        assert flag == ("on" if ahead else "off"), flag
        if ahead:
            page.wait_for_function(
                "() => document.querySelector('.cb-gen').dataset.stepsAhead", timeout=300_000
            )
            out["steps_ahead_ms"] = float(page.get_attribute(".cb-gen", "data-steps-ahead-ms"))
        out["load"].append(os.getloadavg()[0])
        n_steps = int(page.eval_on_selector(".cb-gen .cb-gen-scrub", "e => +e.max")) + 1
        for s in range(1, n_steps):
            drawn, painted = page.evaluate(SCRUB, s)
            out["scrub"].append(drawn)
            out["scrub_frame"].append(painted)
        out["load"].append(os.getloadavg()[0])
        n = page.eval_on_selector_all(".cb-attention .cb-tokens .cb-token", "e => e.length")
        rng = random.Random(0)
        picks = rng.sample([(layer, h) for layer in range(30) for h in range(9)], heads)
        for layer, head in picks:
            page.evaluate(SHOW_HEAD, [layer, head])
            if ahead:
                out["ahead_ms"].append(page.evaluate(WAIT_AHEAD, f"{layer}:{head}"))
            else:
                page.wait_for_timeout(1500)
            q = rng.randrange(n // 2, n)
            k = rng.randrange(q + 1)
            drawn, painted, cached, closed = page.evaluate(CLICK_CELL, [q, k])
            assert closed, "Escape did not close the explanation panel"
            out["click"].append(drawn)
            out["click_frame"].append(painted)
            out["cached"].append(cached)
        out["load"].append(os.getloadavg()[0])
    return out


def stats(xs: list[float]) -> str:
    if not xs:
        return "—"
    return f"median {statistics.median(xs):.0f} ms, p95 {float(np.percentile(xs, 95)):.0f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--heads", type=int, default=10, help="heads whose first cell is clicked")
    ap.add_argument("--steps", type=int, default=24, help="new tokens generated (scrub steps)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("chromium is not installed (apt-get install chromium).")
    print(f"circuitboard {cb.__version__} from {cb.__file__}", flush=True)
    res = {}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=ARGS)
        for name, ahead in (("without fetching ahead", False), ("fetching ahead", True)):
            res[name] = run_lab(
                browser, Path(tmp) / name.replace(" ", "-"), ahead, args.heads, args.steps
            )
            r = res[name]
            print(
                f"{name}: scrub step {stats(r['scrub'])}; first cell click {stats(r['click'])} "
                f"({sum(r['cached'])}/{len(r['cached'])} from the cache); "
                f"load average {', '.join(f'{v:.1f}' for v in r['load'])}",
                flush=True,
            )
        browser.close()
    print(
        "\n| interaction (live JupyterLab, default model) | without fetching ahead | "
        "fetching ahead | target |\n|---|---|---|---|"
    )
    off, on = res["without fetching ahead"], res["fetching ahead"]
    for what, key in (
        (f"one scrubber step → step drawn ({len(on['scrub'])} steps)", "scrub"),
        ("… and the next frame", "scrub_frame"),
        (f"first click on a head's cell → panel drawn ({len(on['click'])} heads)", "click"),
        ("… and the next frame", "click_frame"),
    ):
        print(f"| {what} | {stats(off[key])} | {stats(on[key])} | p95 ≤ 100 ms |")
    if on["ahead_ms"]:
        print(
            "| … a head's explanations fetched ahead (105 cells) | | "
            f"median {statistics.median(on['ahead_ms']) / 1000:.1f} s after the head is drawn | |"
        )
    if "steps_ahead_ms" in on:
        print(
            f"| … every step fetched ahead | | {on['steps_ahead_ms'] / 1000:.1f} s after first "
            "paint | |"
        )
    loads = off["load"] + on["load"]
    print(f"1-minute load average during the run: {min(loads):.1f}–{max(loads):.1f}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
