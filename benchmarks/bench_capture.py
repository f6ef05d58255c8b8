"""Capture speed and memory on the default model: capture of everything vs a plain eager forward.

Prints a markdown table. For each prompt length: median wall time of a plain forward with eager
attention (the baseline: what the model costs anyway when attention weights are wanted) and of
``cb.capture(..., what="all")`` (float16 storage on CPU), their ratio, the bytes the capture
stores, and the extra peak resident memory of each (VmHWM, reset before every measurement).

    python benchmarks/bench_capture.py [--repeats 5] [--lengths 256 1024]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import time
from pathlib import Path

import torch

import circuitboard as cb

TEXT = (
    "When Mary and John went to the store, John gave a drink to Mary. The quick brown fox "
    "jumps over the lazy dog while the cat watches from the window. In 1905 Albert Einstein "
    "published four papers that changed physics: on the photoelectric effect, Brownian motion, "
    "special relativity and the equivalence of mass and energy. "
)


def _rss() -> tuple[int, int]:
    """(current, peak) resident set size in bytes, from /proc/self/status."""
    vals = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            k, v = line.split(":")
            vals[k] = int(v.split()[0]) * 1024
    return vals["VmRSS"], vals["VmHWM"]


def _reset_peak() -> None:
    gc.collect()
    try:  # give freed heap pages back to the OS, so reused pages do not hide new memory
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def _once(fn) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (all threads of this process) and extra peak RSS of one run."""
    _reset_peak()
    base, _ = _rss()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    _, peak = _rss()
    del out
    return dt, dc, peak - base


def _measure(fns, repeats: int) -> list[tuple[float, float, int]]:
    """Median wall seconds, CPU seconds and extra peak RSS of each function; runs are
    interleaved (a, b, a, b, ...) so that load from other processes hits all of them alike."""
    for fn in fns:
        fn()  # warm-up
    runs: list[list[tuple[float, float, int]]] = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            runs[k].append(_once(fn))
    return [tuple(statistics.median(x[i] for x in r) for i in range(3)) for r in runs]


def prompt_of(tok, n: int) -> str:
    ids = tok(TEXT * (n // 40 + 2))["input_ids"][:n]
    return tok.decode(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = cb.load_default_model()
    rows = []
    for n in args.lengths:
        prompt = prompt_of(tok, n)
        ids = torch.tensor([tok(prompt)["input_ids"]])

        def plain_eager(ids=ids):
            before = model.config._attn_implementation
            model.set_attn_implementation("eager")
            try:
                with torch.no_grad():
                    return model(ids).logits
            finally:
                model.set_attn_implementation(before)

        def capture_all(prompt=prompt):
            return cb.capture(model, tok, prompt, what="all", max_memory=None)

        plain, capt = _measure([plain_eager, capture_all], args.repeats)
        cap = capture_all()
        stored = sum(t.nbytes for t in cap.tensors.values()) + cap.logits.nbytes
        rows.append((ids.shape[1], plain, capt, stored))
        del cap

    mib = 2**20
    print(
        f"SmolLM2-135M-Instruct, float32 weights on CPU, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} interleaved runs; capture = what='all', float16 storage. "
        "CPU time is this process's (all threads), less sensitive to other load than wall time.\n"
    )
    print(
        "| tokens | eager forward wall / CPU | capture wall / CPU | ratio wall / CPU | stored "
        "| extra peak RSS, forward | extra peak RSS, capture |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, (tp, cp, mp), (tc, cc, mc), st in rows:
        print(
            f"| {n} | {tp:.2f} s / {cp:.2f} s | {tc:.2f} s / {cc:.2f} s "
            f"| {tc / tp:.2f}× / {cc / cp:.2f}× | {st / mib:.0f} MiB "
            f"| {mp / mib:.0f} MiB | {mc / mib:.0f} MiB |"
        )


if __name__ == "__main__":
    main()
