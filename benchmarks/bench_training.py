"""Overhead of recording training with ``cb.TrainingRecorder`` (target: ≤ 5 % at every=10).

The notebook's model (a 2-layer attention-only transformer, d_model 64, 4 heads, vocab 64,
64 tokens, batch 32, AdamW) trains on repeated sequences. Blocks of ``--block`` steps (one
``every``-step cycle by default) run alternately without and with a recorder, A B A B ...
(every 10th step recorded, the defaults: every hook point's output and gradient but attention
patterns, every parameter and its gradient; plus first-period / repeated-token categories, 4
kept samples, probe patterns and head scores every 50 steps, so every fifth recorded block
probes). A recorded block ends by waiting for the recorder's background write
(``rec.flush()``), so all of the recorder's work is charged to its block, none to the next
plain one. Short blocks, many of them, let a change of machine load hit both arms alike.
Estimates:

- **paired blocks**: each recorded block over the mean of the plain blocks either side of
  it; the median of those ratios (robust to load bursts, which hit single blocks), with a
  bootstrap 90 % interval of that median;
- **per step**: median step times by type (plain; not recorded inside a recorder's block;
  recorded; recorded with probes), combined as one ``every``-step cycle with its share of
  probe steps (the background write is not in these).

    python benchmarks/bench_training.py [--blocks 150] [--block 10] [--every 10] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import tempfile
import time

import torch

from circuitboard.training import AttentionOnlyTransformer, TrainingRecorder, repeated_sequences


def train_block(
    model, opt, rec, start: int, n: int, gen: torch.Generator, cats: dict, times: dict
) -> float:
    """Seconds per step of ``n`` steps (recorded when ``rec`` is given, its writes waited
    for); each step's own time goes into ``times[step]``."""
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
    if rec is not None:
        rec.flush()  # the block's background write, charged to it
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=150, help="recorded blocks (as many plain + 1)")
    ap.add_argument("--block", type=int, default=10, help="steps per block")
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    probe_every = 5 * args.every
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
        probe_every=probe_every,
        path=os.path.join(tempfile.mkdtemp(), "bench.sqlite"),
        categories=lambda ids: {"first period": ~cats["repeated"], "repeated": cats["repeated"]},
    )
    loads = [os.getloadavg()[0]]
    plain, recorded = [], []
    step = 0
    times: dict[int, float] = {}
    rec_times: dict[int, float] = {}
    train_block(model, opt, None, step, 5, gen, cats, {})  # warm-up
    for i in range(2 * args.blocks + 1):  # A B A B ... A
        if i % 2 == 0:
            plain.append(train_block(model, opt, None, step, args.block, gen, cats, times))
        else:
            recorded.append(train_block(model, opt, rec, step, args.block, gen, cats, rec_times))
        step += args.block
        loads.append(os.getloadavg()[0])
    t_close = time.perf_counter()
    run = rec.close()  # deflates the probe patterns stored while training
    t_close = time.perf_counter() - t_close
    ratios = [r / ((plain[i] + plain[i + 1]) / 2) for i, r in enumerate(recorded)]
    ratio = statistics.median(ratios)
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    rng = random.Random(0)
    boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    lo, hi = boot[100], boot[1899]
    # per step: one every-step cycle = (every - 1) unrecorded steps + one recorded step, and
    # a probe on every (probe_every / every)-th recorded step
    base = statistics.median(times.values())
    unrec = statistics.median(t for s, t in rec_times.items() if s % args.every)
    hit = statistics.median(
        t for s, t in rec_times.items() if s % args.every == 0 and s % probe_every
    )
    probe = statistics.median(t for s, t in rec_times.items() if s % probe_every == 0)
    share = args.every / probe_every
    cycle = (args.every - 1) * unrec + (1 - share) * hit + share * probe
    per_step = cycle / (args.every * base) - 1
    print("| setting | ms / step | overhead |\n|---|---|---|")
    print(f"| plain training (median block) | {statistics.median(plain) * 1e3:.1f} | — |")
    print(
        f"| recorder, every={args.every} (median block) | {statistics.median(recorded) * 1e3:.1f} "
        f"| {100 * (ratio - 1):+.1f} % (median of {len(ratios)} paired ratios, 90 % interval "
        f"{100 * (lo - 1):+.1f} % to {100 * (hi - 1):+.1f} %; quartiles {100 * (q1 - 1):+.1f} %, "
        f"{100 * (q3 - 1):+.1f} %) |"
    )
    print(
        f"| per step: plain {base * 1e3:.1f}, unrecorded {unrec * 1e3:.1f}, recorded "
        f"{hit * 1e3:.1f}, recorded + probe {probe * 1e3:.1f} | {cycle / args.every * 1e3:.1f} "
        f"| {100 * per_step:+.1f} % at every={args.every}, probes every {probe_every} |"
    )
    print(
        f"\n{len(run.steps)} recorded steps, {len(run.labels)} tensors, "
        f"{len(run.probe_steps)} probe steps (close() took {t_close * 1e3:.0f} ms); torch "
        f"threads {torch.get_num_threads()}; "
        f"load average (1 min) {min(loads):.1f}-{max(loads):.1f}, median "
        f"{statistics.median(loads):.1f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


if __name__ == "__main__":
    main()
