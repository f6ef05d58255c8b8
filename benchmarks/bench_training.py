"""Overhead of recording training with ``cb.TrainingRecorder`` (target: ≤ 5 % at every=10).

The notebook's model (a 2-layer attention-only transformer, d_model 64, 4 heads, vocab 64,
64 tokens, batch 32, AdamW) trains on repeated sequences. Blocks of ``--block`` steps run
alternately without and with a recorder (every 10th step recorded, the defaults: every hook
point's output and gradient but attention patterns, every parameter and its gradient; plus
first-period / repeated-token categories, 4 kept samples, probe patterns and head scores every
50 steps), so a change of machine load hits both the same way. Two estimates: the median
recorded block over the median plain block, and (robust to load bursts) the median recorded
step's extra time over ``every`` median plain steps.

    python benchmarks/bench_training.py [--blocks 6] [--block 50] [--every 10]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time

import torch

from circuitboard.training import AttentionOnlyTransformer, TrainingRecorder, repeated_sequences


def train_block(
    model, opt, rec, start: int, n: int, gen: torch.Generator, cats: dict, times: dict
) -> float:
    """Seconds per step of ``n`` steps (recorded when ``rec`` is given); each step's own time
    goes into ``times[step]``."""
    t0 = time.perf_counter()
    for step in range(start, start + n):
        ts = time.perf_counter()
        ids, rep = repeated_sequences(32, generator=gen)
        cats["repeated"] = rep  # the categories function reads this batch's repeat mask
        ctx = rec.step(step) if rec is not None else contextlib.nullcontext()
        with ctx:
            logits = model(ids)
            tok = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1), reduction="none"
            ).view(32, -1)
            if rec is not None:
                rec.loss(torch.cat([torch.zeros(32, 1), tok.detach()], 1))
            tok.mean().backward()
        opt.step()
        opt.zero_grad()
        times[step] = time.perf_counter() - ts
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--block", type=int, default=50)
    ap.add_argument("--every", type=int, default=10)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = AttentionOnlyTransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    probes, _ = repeated_sequences(8, generator=torch.Generator().manual_seed(2))
    cats: dict = {}
    rec = TrainingRecorder(
        model,
        every=args.every,
        probes=probes,
        probe_every=5 * args.every,
        path=os.path.join(tempfile.mkdtemp(), "bench.sqlite"),
        categories=lambda ids: {"first period": ~cats["repeated"], "repeated": cats["repeated"]},
    )
    plain, recorded = [], []
    step = 0
    times: dict[int, float] = {}
    rec_times: dict[int, float] = {}
    train_block(model, opt, None, step, 5, gen, cats, {})  # warm-up
    for _ in range(args.blocks):
        plain.append(train_block(model, opt, None, step, args.block, gen, cats, times))
        step += args.block
        recorded.append(train_block(model, opt, rec, step, args.block, gen, cats, rec_times))
        step += args.block
    run = rec.close()
    p, r = statistics.median(plain), statistics.median(recorded)
    # Per step, robust to load bursts: the median recorded step against the median plain step
    # (steps of the recorded blocks that are not recorded run without hooks: plain steps).
    base = statistics.median(list(times.values()))
    hit = [t for s, t in rec_times.items() if s % args.every == 0]
    extra = statistics.median(hit) - base
    print("| setting | ms / step | overhead |\n|---|---|---|")
    print(f"| plain training | {p * 1e3:.1f} | — |")
    print(
        f"| recorder, every={args.every} (alternating blocks) | {r * 1e3:.1f} "
        f"| {100 * (r - p) / p:+.1f} % |"
    )
    print(
        f"| one recorded step (median) | {(base + extra) * 1e3:.1f} "
        f"| {100 * extra / (args.every * base):+.1f} % at every={args.every} |"
    )
    print(
        f"\n{len(run.steps)} recorded steps, {len(run.labels)} tensors, "
        f"{len(run.probe_steps)} probe steps; torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}; ms per step of each block: plain "
        f"{[round(x * 1e3) for x in plain]}, recorded {[round(x * 1e3) for x in recorded]}"
    )


if __name__ == "__main__":
    main()
