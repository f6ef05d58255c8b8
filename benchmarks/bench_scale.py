"""Engine overhead of the sharded `compare`: serial against a process pool and Ray actors.

Run: ``python benchmarks/bench_scale.py [--prompts 256] [--workers 1 2]`` (CPU; prints Markdown).

Measures, for ``cb.compare`` over ``--prompts`` prompts of the default model (two categories,
every statistic): the serial run; each engine's start-up (cold call minus warm call: worker
processes or actors importing torch and loading the model, plus ``ray.init`` for Ray); its
per-shard cost (warm runs with many against few shards); throughput with 1 and 2 workers;
and an estimate of cluster-scale throughput from the per-worker tokens/s. Results are checked
against the serial run (same bytes when saved) before any number is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _digest(result) -> str:
    path = Path(tempfile.mkdtemp()) / "r.npz"
    result.save(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _start_ray(ray, cpus: int, tries: int = 2):
    """``ray.init``; on a saturated machine Ray's raylet can time out (ray-project/ray#65983)."""
    for _ in range(tries):
        try:
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            return None
        except Exception as e:  # "The current node timed out during startup"
            ray.shutdown()
            err = str(e).split(".")[0]
    return err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--engines", nargs="+", default=["processes", "ray"])
    ap.add_argument("--cluster-workers", type=int, default=64)
    ap.add_argument("--stats", nargs="+", default=None, help="compare's stats= (default all)")
    args = ap.parse_args()

    import circuitboard as cb
    from circuitboard.scale import shutdown

    texts = cb.load_texts()
    prompts = [
        texts[i % len(texts)] + ("" if i < len(texts) else f" ({i})") for i in range(args.prompts)
    ]
    half = len(prompts) // 2
    cats = {"first half": prompts[:half], "second half": prompts[half:]}
    spec = cb.ModelSpec("default")
    t_load, (model, tok) = _timed(spec.load)
    n_tokens = sum(len(tok(p)["input_ids"]) for p in prompts)
    bs = args.batch_size
    n_blocks = -(-half // (4 * bs)) * 2
    opts = {"batch_size": bs, "progress": False, "stats": args.stats}
    run = lambda **kw: cb.compare(model, tok, cats, **opts, **kw)  # noqa: E731
    t_serial, ref = _timed(run)
    want = _digest(ref)
    t_serial_many, many = _timed(lambda: run(shards=n_blocks))
    rows = [("serial (this process)", 1, "—", t_serial, "—")]
    per_shard_plan = (t_serial_many - t_serial) / max(n_blocks - 1, 1)
    print(
        f"compare over {args.prompts} prompts ({n_tokens} tokens, 2 categories, "
        f"stats={args.stats or 'all'}, "
        f"batch_size={bs}, {n_blocks} blocks); default model loaded in {t_load:.1f} s; "
        f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start.\n"
    )
    print(
        f"  serial: {t_serial:.1f} s ({n_tokens / t_serial:.0f} tokens/s), "
        f"{n_blocks} shards {t_serial_many:.1f} s",
        flush=True,
    )
    notes = []
    shard_cost = {}
    warm = {}
    for engine in args.engines:
        if engine == "ray":
            try:
                import ray
            except ImportError:
                notes.append('Ray not installed: `pip install "circuitboard[ray]"`.')
                continue
            t_init, err = _timed(lambda: _start_ray(ray, max(args.workers)))
            if err is not None:
                notes.append(f"Ray did not start here ({err}); no Ray numbers this run.")
                continue
            notes.append(f"`ray.init` (local, {max(args.workers)} CPUs): {t_init:.1f} s.")
        for w in args.workers:
            src = spec
            few = 2 * w

            def call(shards, src=src, w=w, engine=engine):
                return cb.compare(
                    src,
                    None,
                    cats,
                    **opts,
                    engine=engine,
                    workers=w,
                    shards=shards,
                )

            t_cold, got = _timed(lambda few=few: call(few))
            assert _digest(got) == _digest(cb.compare(model, tok, cats, **opts, shards=few))
            t_warm, _ = _timed(lambda few=few: call(few))
            t_many, got_many = _timed(lambda: call(n_blocks))
            assert _digest(got_many) == _digest(many), "sharded result differs from serial"
            per_shard = (t_many - t_warm) / max(n_blocks - few, 1)
            shard_cost[(engine, w)] = per_shard
            warm[(engine, w)] = t_warm
            rows.append(
                (f"{engine}", w, f"{t_cold - t_warm:.1f}", t_warm, f"{per_shard * 1e3:.0f}")
            )
            print(
                f"  {engine} × {w}: cold {t_cold:.1f} s, warm {t_warm:.1f} s, "
                f"{n_blocks} shards {t_many:.1f} s",
                flush=True,
            )
            shutdown()  # the next worker count starts cold too
        if engine == "ray":
            ray.shutdown()
    assert _digest(ref) == want
    print(
        "\n| engine | workers | start-up (s) | compare, warm (s) | prompts/s | tokens/s "
        "| per-shard cost (ms) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, w, start, t, ps in rows:
        print(
            f"| {name} | {w} | {start} | {t:.1f} | {args.prompts / t:.1f} "
            f"| {n_tokens / t:.0f} | {ps} |"
        )
    print(
        f"\nPlan overhead in-process (serial, {n_blocks} shards against 1): "
        f"{per_shard_plan * 1e3:.1f} ms per shard. Start-up = cold call minus warm call "
        "(workers importing torch and loading the model; warm workers are kept between calls)."
    )
    for n in notes:
        print(n)
    for (engine, w), cost in sorted(shard_cost.items()):
        if w != 1:
            continue
        per_worker = n_tokens / warm[(engine, 1)]  # one worker's tokens/s, engine included
        work = warm[(engine, 1)] / (2 * w)  # seconds per shard of the warm run
        eff = work / (work + max(cost, 0.0))
        print(
            f"Estimate, {engine}: {args.cluster_workers} workers × {per_worker:.0f} tokens/s per "
            f"worker (one worker of this CPU) × {eff:.2f} shard efficiency (a {work:.2f} s shard "
            f"against {max(cost, 0) * 1e3:.0f} ms per-shard cost) ≈ "
            f"{args.cluster_workers * per_worker * eff:,.0f} tokens/s; not measured, a product."
        )


if __name__ == "__main__":
    main()
