"""The thread policy of heavy calls: one torch thread, two, and the default, at two loads.

Run: ``python benchmarks/bench_threads.py [--repeat 2] [--seconds 240] [--extra 2]
[--calls patch,circuit,generate,compare]`` (CPU; prints Markdown).

``cb.patch(..., site="heads")`` (exact, 270 heads, 8-token pair on the default model),
``cb.circuit(...)`` then ``edges_for(0.8)``, ``cb.generate`` (32 greedy tokens) and
``cb.compare`` (two categories of 4 shipped texts, serial), each timed with
``torch.set_num_threads(1)``, with 2 threads and with the default policy
(``circuitboard._threads.one_thread(when_busy=True)``: one thread while the 1-minute load
average exceeds the core count). First at the machine's own load, then with a controlled extra
load this script starts itself: ``--extra`` busy-looping processes (default: one per core),
killed when the measurements end or after ``--seconds``, whichever is first.

Why two threads collapse under load: every intra-op parallel region ends at a barrier, so
each op waits for its slower thread; when other processes hold the cores, the second thread
is often descheduled and each of the thousands of small ops in a patching run waits out a
scheduler slice. One thread never waits for a partner.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from typing import Any

import torch

import circuitboard as cb
from circuitboard import _threads

CLEAN = "When Mary and John left, John gave"
CORRUPT = "When Mary and John left, Mary gave"


def _spin(until: float) -> None:
    while time.time() < until:
        pass


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _time(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _modes(fn: Any, repeat: int) -> dict[str, float]:
    """Seconds of ``fn`` on 1 thread, on 2, and under the default policy (from 2 threads)."""
    out = {}
    real_busy = _threads.busy
    for name, threads in (("1 thread", 1), ("2 threads", 2)):
        torch.set_num_threads(threads)
        _threads.busy = lambda: False  # the decorators then keep the threads as set here
        try:
            out[name] = _time(fn, repeat)
        finally:
            _threads.busy = real_busy
    torch.set_num_threads(2)
    out["default policy"] = _time(fn, repeat)
    out["policy chose"] = 1.0 if _threads.busy() else 2.0
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=240.0)
    ap.add_argument("--extra", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--calls", default="patch,circuit,generate,compare")
    args = ap.parse_args(argv)
    model, tok = cb.load_default_model()
    kw = dict(answer=" Mary", wrong=" John")
    texts = cb.load_texts()
    categories = {"first": texts[:4], "second": texts[4:8]}
    work = {
        "patch heads (270, exact)": lambda: cb.patch(
            model, tok, CLEAN, CORRUPT, site="heads", progress=False, **kw
        ),
        "circuit + edges_for(0.8)": lambda: cb.circuit(model, tok, CLEAN, CORRUPT, **kw).edges_for(
            0.8, progress=False
        ),
        "generate (32 greedy tokens)": lambda: cb.generate(
            model, tok, CLEAN, max_new_tokens=32, stop_at_eos=False
        ),
        "compare (2 × 4 texts, serial)": lambda: cb.compare(model, tok, categories, progress=False),
    }
    wanted = args.calls.split(",")
    work = {k: f for k, f in work.items() if k.split()[0] in wanted}
    rows = []
    for level in ("machine's own load", f"+{args.extra} busy processes"):
        procs = []
        if level.startswith("+"):
            until = time.time() + args.seconds
            procs = [mp.Process(target=_spin, args=(until,)) for _ in range(args.extra)]
            for p in procs:
                p.start()
            time.sleep(5)
        try:
            for name, fn in work.items():
                before = _load()
                t = _modes(fn, args.repeat)
                rows.append((level, name, before, _load(), t))
        finally:
            for p in procs:
                p.terminate()
                p.join()
    print(f"{os.cpu_count()} cores; seconds, median of {args.repeat}\n")
    print("| load | call | load avg before → after | 1 thread | 2 threads | default policy |")
    print("|---|---|---|---|---|---|")
    for level, name, before, after, t in rows:
        chose = f" ({int(t['policy chose'])} thr.)"
        print(
            f"| {level} | {name} | {before} → {after} | {t['1 thread']:.1f} | "
            f"{t['2 threads']:.1f} | {t['default policy']:.1f}{chose} |"
        )


if __name__ == "__main__":
    main()
