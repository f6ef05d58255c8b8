"""Time circuits on the default model: EAP / EAP-IG scoring, one evaluation vs one forward,
batched evaluations, and how fast the circuit view paints 1,000 edges.

Run: ``python -m benchmarks.bench_circuit`` (CPU; prints a Markdown table). Wall and CPU time
are both reported: on a shared machine the wall time mostly measures the other processes.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import circuitboard as cb

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"


def timed(fn, repeat: int = 3) -> tuple[float, float, object]:
    """Median wall and CPU seconds of ``fn()`` and its last result."""
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), out


def paint_ms(circuit, k: int = 1000) -> float | None:
    """Median paint time of the circuit view with ``k`` edges in headless Chromium."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return None
    from playwright.sync_api import sync_playwright

    from circuitboard.export._figure import CHROMIUM_ARGS

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "circuit.html"
        cb.report(cb.circuit_view(circuit, k=k), path=path)
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
            page = b.new_page()
            page.goto(path.resolve().as_uri())
            page.wait_for_selector("html[data-cb-ready=true]")
            times = page.evaluate(
                "() => { const s = document.querySelector('.cb-circ-range'); const out = [];"
                " for (let i = 0; i < 7; i++) { s.dispatchEvent(new Event('input'));"
                " s.dispatchEvent(new Event('change'));"
                " out.push(Number(document.querySelector('.cb-circuit').dataset.paintMs)); }"
                " return out; }"
            )
            b.close()
    return statistics.median(times)


def main() -> None:
    model, tok = cb.load_default_model()
    ids = torch.tensor([tok(CLEAN)["input_ids"]])
    with torch.no_grad():
        model(input_ids=ids)
        fw, fc, _ = timed(lambda: model(input_ids=ids, use_cache=False), repeat=5)
    rows = []
    for method in ("eap", "eap-ig"):
        w, c, circ = timed(
            lambda method=method: cb.circuit(
                model, tok, CLEAN, CORRUPTED, answer=" Mary", wrong=" John", method=method
            )
        )
        rows.append(
            (f"cb.circuit(method={method!r}{', steps=5' if method == 'eap-ig' else ''})", w, c)
        )
    circ.faithfulness([0, 1, 10])  # warm
    masks8 = [circ._keep(k) for k in (10, 30, 100, 300, 1000, 3000, 10000, 30000)]
    w1, c1, _ = timed(lambda: circ.evaluate_masks([circ._keep(724)]), repeat=5)
    w8, c8, _ = timed(lambda: circ.evaluate_masks(masks8), repeat=3)
    rows.append(("one forward (14 tokens)", fw, fc))
    rows.append(("one evaluation (k = 724)", w1, c1))
    rows.append(("8 evaluations, batched", w8, c8))
    print(f"torch threads: {torch.get_num_threads()}; machine shared with other processes\n")
    print("| what | wall (s) | CPU (s) | CPU / one forward |")
    print("|---|---|---|---|")
    for name, w, c in rows:
        print(f"| {name} | {w:.3f} | {c:.3f} | {c / fc:.2f} |")
    print(f"\nper evaluation in a batch of 8: {c8 / 8 / fc:.2f} forwards (CPU)")
    print(f"edges: {circ.n_edges:,} (k/v per KV head); completeness {circ.completeness:.3f}")
    ms = paint_ms(circ)
    if ms is not None:
        print(f"circuit view, 1,000 edges: paint {ms:.1f} ms (median of 7, headless Chromium)")


if __name__ == "__main__":
    main()
