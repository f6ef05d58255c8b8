"""Training throughput and peak memory of ``cb.train_sae`` on the default model.

End to end (model forward stopped after the hook's layer + SAE steps), at
``blocks.6.hook_resid_post``, 576 → 4,608 features, k = 32, batch 4,096 — the setting in which
SAELens' own trainer measured 371 tok/s on this machine. Each token count runs in a fresh
process so that its peak RSS is its own; with a buffer of 8,192 tokens, memory should stay flat
as tokens grow.

    python benchmarks/bench_sae_train.py [--tokens 8192 16384 32768] [--threads 1]

SAELens is not run here: it does not import next to TransformerLens 4 (SAELens #738), and a
throwaway environment for it needs a second torch; its number above is from an earlier
measurement on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OURS = r"""
import json, resource, sys, time, torch
import circuitboard as cb
tokens, threads = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
model, tok = cb.load_default_model()
texts = cb.load_corpus("train")
t = time.perf_counter()
sae = cb.train_sae(model, tok, texts, hook="blocks.6.hook_resid_post", d_sae=4608, k=32,
                   tokens=tokens, batch_size=4096, buffer_tokens=8192, progress=False,
                   threads=threads)
dt = time.perf_counter() - t
print(json.dumps({"tokens": tokens, "seconds": dt, "tok_per_s": tokens / dt,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "last_fvu": sae.metadata["training"]["last_fvu"]}))
"""


def run_ours(tokens: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python"), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", OURS, str(tokens), str(threads)],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, nargs="+", default=[8_192, 16_384, 32_768])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    load = os.getloadavg()[0]
    rows = []
    for n in args.tokens:
        r = run_ours(n, args.threads)
        rows.append(r)
        print(
            f"circuitboard  tokens={n:>7}  {r['tok_per_s']:7.0f} tok/s  "
            f"peak RSS {r['peak_rss_mib']:6.0f} MiB  ({r['seconds']:.0f} s)",
            flush=True,
        )
    summary = {"load_average_at_start": load, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
