"""Sharded `patch` and `circuit` over many IOI pairs: serial against a process pool and Ray.

Run: ``python -m benchmarks scale_pairs`` or, from the repository root,
``PYTHONPATH=. python benchmarks/bench_scale_pairs.py [--pairs 32] [--workers 2]
[--engines processes ray] [--jobs patch circuit]`` (CPU; prints Markdown).

Measures, on the default model, ``cb.patch(..., site="heads")`` (exact: every head of
``--layers``, by default every fifth layer, patched from clean into corrupted) and
``cb.circuit(..., method="eap")`` over ``--pairs`` IOI-style pairs: each engine's cold call
(worker processes or actors importing torch and loading the model, plus ``ray.init`` for Ray)
and warm call (workers kept from the cold call), as pairs per second, each against a serial
run (today's path, a loaded model) timed just before it, since the load of a shared machine
drifts. Every engine's result is checked against the serial engine with the same shards and
torch threads (same bytes when saved) before any number is printed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

NAMES = [" Mary", " John", " Tom", " James", " Sarah", " Anna", " Paul", " Kate", " David"]
PLACES = [" store", " park", " school", " beach", " office", " garden"]
OBJECTS = [" drink", " book", " ball", " gift", " letter", " flower"]


def ioi_pairs(tok, n: int) -> tuple[list[str], list[str], list[str], list[str]]:
    """``n`` IOI pairs (clean, corrupted, answer, wrong) of one token length: the corrupted
    prompt names the indirect object again as the giver, so the answer flips."""

    def one_token(w: str) -> bool:
        return len(tok(w, add_special_tokens=False)["input_ids"]) == 1

    names = [w for w in NAMES if one_token(w)]
    out: dict[int, list[tuple[str, str, str, str]]] = {}
    combos = itertools.product(itertools.permutations(names, 2), PLACES, OBJECTS)
    for (a, b), place, obj in combos:
        clean = f"When{a} and{b} went to the{place},{b} gave a{obj} to"
        corrupt = f"When{a} and{b} went to the{place},{a} gave a{obj} to"
        length = len(tok(clean)["input_ids"])
        if length == len(tok(corrupt)["input_ids"]):
            out.setdefault(length, []).append((clean, corrupt, a, b))
    best = max(out.values(), key=len)  # one length: a per-position site averages too
    if len(best) < n:
        raise SystemExit(f"only {len(best)} IOI pairs of one length; ask for fewer --pairs.")
    step = len(best) // n  # spread over names, places and objects
    chosen = best[::step][:n]
    return tuple(list(x) for x in zip(*chosen, strict=True))  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    ap.add_argument("--engines", nargs="+", default=["processes", "ray"])
    ap.add_argument("--jobs", nargs="+", default=["patch", "circuit"])
    ap.add_argument("--repeat", type=int, default=3, help="warm runs per row (median)")
    ap.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=list(range(0, 30, 5)),
        help="layers whose heads patch patches (default every 5th: 54 heads per pair)",
    )
    args = ap.parse_args()

    import torch

    import circuitboard as cb
    from benchmarks.bench_scale import _digest, _start_ray, _timed
    from circuitboard.scale import shutdown

    t_load, (model, tok) = _timed(cb.load_default_model)
    clean, corrupt, answers, wrongs = ioi_pairs(tok, args.pairs)
    n_tokens = 2 * sum(len(tok(p)["input_ids"]) for p in clean)
    kw = {"answer": answers, "wrong": wrongs, "progress": False}
    jobs = {
        "patch": lambda m, t, **k: cb.patch(
            m, t, clean, corrupt, site="heads", layers=args.layers, **kw, **k
        ),
        "circuit": lambda m, t, **k: cb.circuit(m, t, clean, corrupt, method="eap", **kw, **k),
    }
    jobs = {name: jobs[name] for name in args.jobs}
    print(
        f"{args.pairs} IOI pairs ({n_tokens} tokens in both prompts, e.g. {clean[0]!r}); "
        f"default model loaded in {t_load:.1f} s; {os.cpu_count()} CPU cores, load average "
        f"{os.getloadavg()[0]:.1f} at start (the machine is shared: other engineers' jobs run "
        "too, so absolute times are noisy; compare within one run).\n",
        flush=True,
    )

    def median_time(fn):
        times = [_timed(fn) for _ in range(args.repeat)]
        return statistics.median(t for t, _ in times), [out for _, out in times]

    rows = []
    notes = []
    for engine in args.engines:
        if engine == "ray":
            try:
                import ray
            except ImportError:
                notes.append('Ray not installed: `pip install "circuitboard[ray]"`.')
                continue
            cpus = os.cpu_count() or 1  # every worker count below fits: workers × threads
            t_init, err = _timed(lambda cpus=cpus: _start_ray(ray, cpus))
            if err is not None:
                notes.append(f"Ray did not start here ({err}); no Ray numbers this run.")
                continue
            notes.append(f"`ray.init` (local, {cpus} CPUs): {t_init:.1f} s.")
        for w in args.workers:
            shards = 4 * w
            threads = max(1, (os.cpu_count() or 1) // w)
            spec = cb.ModelSpec("default", threads=threads)
            for name, job in jobs.items():
                # The serial engine's bytes, on as many torch threads as each worker runs
                # (float32 sums depend on the thread count); timed once, as a second baseline.
                before = torch.get_num_threads()
                torch.set_num_threads(threads)
                t_same, ref = _timed(lambda job=job, shards=shards: job(model, tok, shards=shards))
                want = _digest(ref)
                torch.set_num_threads(before)

                def call(job=job, w=w, engine=engine, shards=shards, spec=spec):
                    return job(spec, None, engine=engine, workers=w, shards=shards)

                # Serial next to each engine's runs: the load of a shared machine drifts.
                t_serial, _ = median_time(lambda job=job: job(model, tok))
                t_cold, got = _timed(call)
                assert _digest(got) == want, f"{engine} {name} differs from the serial engine"
                t_warm, outs = median_time(call)
                assert all(_digest(o) == want for o in outs)
                load = os.getloadavg()[0]
                rows.append((name, engine, w, t_serial, t_same, t_cold - t_warm, t_warm, load))
                print(
                    f"  {name}: serial {t_serial:.1f} s ({before} threads), {t_same:.1f} s "
                    f"({threads}); {engine} × {w}: cold {t_cold:.1f} s, "
                    f"warm {t_warm:.1f} s ({shards} shards); load average {load:.1f}",
                    flush=True,
                )
            shutdown()  # the next worker count (and engine) starts cold
        if engine == "ray":
            ray.shutdown()
    print(
        "\n| job | engine × workers | serial (s) | serial, worker's threads (s) | start-up (s) "
        "| warm run (s) | pairs/s (serial → engine) | vs serial (both) | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, engine, w, t_ser, t_same, start, t, load in rows:
        print(
            f"| {name} | {engine} × {w} | {t_ser:.1f} | {t_same:.1f} | {start:.1f} | {t:.1f} | "
            f"{args.pairs / t_ser:.2f} → {args.pairs / t:.2f} | {t_ser / t:.2f}× / "
            f"{t_same / t:.2f}× | {load:.1f} |"
        )
    print(
        f"\nWarm and serial times are medians of {args.repeat} runs; each row's serial run "
        f"(this process, a loaded model, {torch.get_num_threads()} torch threads) is timed just "
        "before its engine's; 'serial, worker's threads' is one serial run on as many threads as "
        "each worker (the byte reference). "
        "patch: site='heads', "
        f"exact, layers {args.layers} ({9 * len(args.layers)} patched runs per pair); circuit: "
        "method='eap' (one forward of both prompts and one backward per pair). Start-up = cold "
        "call minus warm call. Every result equals the serial engine's with the same shards "
        "and torch threads, byte for byte."
    )
    for n in notes:
        print(n)


if __name__ == "__main__":
    main()
