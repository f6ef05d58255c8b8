"""Time the analyses on the default model: DLA, logit lens, head scores, and the views' payload.

Run: ``python benchmarks/bench_analysis.py`` (CPU; prints a Markdown table).
"""

from __future__ import annotations

import time

import torch

import circuitboard as cb
from circuitboard.analysis import direct_logit_attribution, head_scores, logit_lens
from circuitboard.capture import capture

PROMPT = "When Mary and John went to the store, John gave a drink to"


def best(fn, repeat: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    model, tok = cb.load_default_model()
    rows = []
    for n_rep in (1, 8):
        prompt = " ".join([PROMPT] * n_rep)
        cap = capture(model, tok, prompt, dtype=torch.float32)
        t_dla, attr = best(lambda cap=cap: direct_logit_attribution(cap, " Mary", baseline=" John"))
        t_lens, _ = best(lambda cap=cap: logit_lens(cap))
        t_view, _ = best(
            lambda cap=cap: cb.logit_attribution(cap, " Mary", baseline=" John"), repeat=1
        )
        err = abs(attr.total - attr.model_value) / abs(attr.model_value)
        view = cb.LogitLensView(logit_lens(cap))
        payload = sum(
            len(getattr(view, k)["data"])
            for k in ("_top_index", "_top_prob", "_target_prob", "_target_rank")
        )
        rows.append((cap.n_tokens, t_dla, t_view, t_lens, err, payload))
    t_scores, _ = best(lambda: head_scores(model, tok), repeat=1)
    print(
        "| tokens | DLA, 1 position (s) | attribution view, every position (s) | logit lens (s) "
        "| DLA rel. error | lens view payload (bytes) |"
    )
    print("|---|---|---|---|---|---|")
    for n, a, v, b, e, p in rows:
        print(f"| {n} | {a:.3f} | {v:.3f} | {b:.3f} | {e:.1e} | {p} |")
    print(f"\nhead_scores(model, tok) (4 × 101 tokens, eager attention): {t_scores:.2f} s")


if __name__ == "__main__":
    main()
