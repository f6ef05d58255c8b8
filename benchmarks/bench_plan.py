"""What the plan protocol itself costs per job: a toy plan of near-empty jobs on each engine.

Run: ``python benchmarks/bench_plan.py [--jobs 200] [--workers 2] [--engines serial processes]``
(CPU; prints Markdown). Each job squares and sums 1,000 numbers (microseconds), so the time per
job is the protocol's: sending the job, running it on a warm worker, sending the part back,
merging in plan order (and, with a checkpoint, writing one file per job). The engine is opened
once (``cb.open_engine``), so worker start-up (with a first run of the plan) is reported
apart. The merged sum is checked
against one pass before any number is printed. Use it to choose how much work one job holds.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def square_sum(model, tokenizer, numbers):
    return sum(x * x for x in numbers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--engines", nargs="+", default=["serial", "processes"])
    args = ap.parse_args()

    import circuitboard as cb
    from circuitboard.scale import last_run

    numbers = list(range(args.jobs * 1000))
    want = sum(x * x for x in numbers)

    def plan() -> cb.Plan:
        jobs = [cb.Job(square_sum, numbers[i : i + 1000]) for i in range(0, len(numbers), 1000)]
        return cb.Plan(
            "bench",
            jobs,
            merge=lambda a, b: a + b,
            save=lambda part, path: Path(path).write_text(str(part)),
            load=lambda path: int(Path(path).read_text()),
        )

    if "ray" in args.engines:
        import ray

        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    rows = []
    for engine in args.engines:
        workers = None if engine == "serial" else args.workers
        t0 = time.perf_counter()
        with cb.open_engine(engine=engine, workers=workers) as eng:
            cb.run_plan(plan(), engine=eng, progress=False)  # workers start on first use
            start = time.perf_counter() - t0
            t = time.perf_counter()
            got = cb.run_plan(plan(), engine=eng, progress=False)
            plain = time.perf_counter() - t
            assert got == want, (engine, got, want)
            with tempfile.TemporaryDirectory() as folder:
                t = time.perf_counter()
                got = cb.run_plan(plan(), engine=eng, checkpoint=folder, progress=False)
                ckpt = time.perf_counter() - t
                assert got == want
                t = time.perf_counter()
                got = cb.run_plan(plan(), engine=eng, checkpoint=folder, progress=False)
                resume = time.perf_counter() - t
                assert got == want and last_run().resumed == args.jobs
        n = args.jobs
        rows.append(
            f"| {engine} | {eng.workers} | {start:.2f} s | {1e3 * plain / n:.2f} ms | "
            f"{1e3 * ckpt / n:.2f} ms | {1e3 * resume / n:.2f} ms |"
        )
    if "ray" in args.engines:
        ray.shutdown()
    load = os.getloadavg()[0]
    print(f"{args.jobs} jobs, 1-minute load average {load:.1f} on {os.cpu_count()} CPUs\n")
    print("| engine | workers | start + first run | per job | checkpointed | resumed |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
