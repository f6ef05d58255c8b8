"""Dictionary features on the default model: what attaching SAEs costs a capture, and what the
feature-dashboard scan costs next to the bare forward pass to the dictionary's layer.

Run: ``python benchmarks/bench_features.py [--tokens N]`` (CPU; prints Markdown tables).

- Capture of one 1,024-token prompt without and with four 576 → 4,608 TopK (k = 32) SAEs on
  the residual stream (layers 6, 12, 18, 24), float32 storage.
- Dashboard data (``top_activations(features=(sae, None))``: running top-k, histograms, moments
  of all 4,608 features) over ``--tokens`` corpus tokens, against a forward that stops at the
  same layer over the same batches; and the peak of the Python heap each holds (streaming:
  independent of the corpus length), next to what holding every activation of the corpus for
  a batch of 256 features would take (SAEDashboard's approach).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import tracemalloc

import torch

import circuitboard as cb
from circuitboard.dictionaries import SAE

LAYERS = (6, 12, 18, 24)
REPEAT = 5


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def saes(layers=LAYERS) -> list[SAE]:
    return [
        SAE(576, 4608, kind="topk", k=32, hook=f"blocks.{li}.hook_resid_post", seed=li)
        for li in layers
    ]


def bench_capture(model, tok) -> None:
    text = " ".join(cb.load_texts())
    ids = tok(text)["input_ids"][:1024]
    prompt = tok.decode(ids)
    dicts = saes()
    kw = dict(dtype=torch.float32)
    n = cb.capture(model, tok, prompt, what=["logits"], **kw).n_tokens
    runs = {
        "plain": lambda: cb.capture(model, tok, prompt, **kw),
        "saes": lambda: cb.capture(model, tok, prompt, saes=dicts, **kw),
        "plain_logits": lambda: cb.capture(model, tok, prompt, what=["logits"], **kw),
        "saes_logits": lambda: cb.capture(model, tok, prompt, what=["logits"], saes=dicts, **kw),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(REPEAT):  # interleaved, so a change of machine load hits both sides
        for k, fn in runs.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            times[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)  # less sensitive to other processes
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"\n### Capture, {n} tokens, 4 SAEs 576 → 4,608 (k = 32), float32")
    print(f"(medians of {REPEAT} interleaved runs; load average {os.getloadavg()})\n")
    print("| capture | without SAEs (s) | with 4 SAEs (s) | ratio | CPU-time ratio |")
    print("|---|---|---|---|---|")
    for label, a, b in (("default `what=`", "plain", "saes"),
                        ("`what=['logits']`", "plain_logits", "saes_logits")):  # fmt: skip
        print(f"| {label} | {med[a]:.2f} | {med[b]:.2f} | {med[b] / med[a]:.2f}× | "
              f"{med_cpu[b] / med_cpu[a]:.2f}× |")  # fmt: skip


def bench_dashboard(model, tok, n_tokens: int) -> None:
    from circuitboard.analysis._neuron_scan import _Stop, plan_texts

    texts, total = [], 0
    for t in cb.load_corpus():
        texts.append(t)
        total += len(tok(t, truncation=True, max_length=128)["input_ids"])
        if total >= n_tokens:
            break
    sae = saes((12,))[0]
    plan = plan_texts(tok, texts, max_length=128, batch_size=16, skip_special=True)
    blk = model.model.layers[12]

    def stop(*_):
        raise _Stop

    def bare() -> None:
        h = blk.register_forward_hook(stop)
        try:
            for b in range(len(plan.batches)):
                _, rows = plan.batch_inputs(b)
                n = max(map(len, rows))
                ids = torch.full((len(rows), n), plan.pad_id)
                mask = torch.zeros_like(ids)
                for i, r in enumerate(rows):
                    ids[i, : len(r)] = torch.tensor(r)
                    mask[i, : len(r)] = 1
                with torch.no_grad():
                    try:
                        model(input_ids=ids, attention_mask=mask)
                    except _Stop:
                        pass
        finally:
            h.remove()

    def dash():
        return cb.top_activations(model, tok, texts, features=(sae, None), progress=False)

    from circuitboard.analysis._feature_scan import feature_logit_effects

    t_bare = best(bare, repeat=1)
    # a fixed cost, independent of the corpus: every decoder row through the unembedding
    t_fixed = best(lambda: feature_logit_effects(model, sae, range(sae.d_sae)), repeat=1)
    tracemalloc.start()
    t = time.perf_counter()
    top = dash()
    t_dash = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    n = sum(len(e) for e in plan.encoded)
    # SAEDashboard holds every activation of a feature batch over the corpus (float32)
    held = 200_000 * 256 * 4
    t_scan = t_dash - t_fixed
    print(f"\n### Dashboard data, 4,608 features at layer 12, {n:,} corpus tokens\n")
    print("| bare forward to layer 12 (s) | dashboard data (s) | of which logit effects, fixed (s) "
          "| corpus-dependent part / bare | numpy peak | SAEDashboard-style: 256 features × 200k "
          "tokens held |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    print(f"| {t_bare:.1f} | {t_dash:.1f} | {t_fixed:.1f} | {t_scan / t_bare:.2f}× | "
          f"{peak / 2**20:.0f} MiB | {held / 2**20:.0f} MiB |")  # fmt: skip
    per_tok = t_scan / n
    print(
        f"\n200k tokens at this rate: {(t_fixed + 200_000 * per_tok) / 60:.0f} min "
        f"(bare forward {200_000 * t_bare / n / 60:.0f} min); {top!r}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--skip-capture", action="store_true")
    args = ap.parse_args()
    model, tok = cb.load_default_model()
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    if not args.skip_capture:
        bench_capture(model, tok)
    bench_dashboard(model, tok, args.tokens)


if __name__ == "__main__":
    main()
