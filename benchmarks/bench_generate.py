"""Generation with capture of everything vs plain ``model.generate`` with the KV cache.

Prints a markdown table. For each prompt length, 64 new tokens (greedy, ``min_new_tokens=64``
on both sides so every run makes the same tokens), median wall and CPU time of:

- ``model.generate`` (the peer): transformers' own loop, KV cache, the model's default
  attention kernel (SDPA), nothing recorded;
- ``cb.generate(..., what="all")``: the same tokens, every activation of every step recorded
  (float32), patterns included (eager attention), assembled into one Capture;
- ``cb.capture(..., max_new_tokens=64, what="all")``: the re-run approach (TransformerLens'
  answer to "activations during generation"): ``model.generate``, then one eager forward over
  prompt + continuation (float16 storage, the capture's default), for reference.

    python benchmarks/bench_generate.py [--repeats 5] [--lengths 16 256] [--new 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import circuitboard as cb

from .bench_capture import prompt_of


def _measure(fns, repeats: int) -> list[tuple[float, float]]:
    """Median (wall, CPU) seconds of each function; runs interleaved so load hits all alike."""
    for fn in fns:
        fn()  # warm-up
    runs: list[list[tuple[float, float]]] = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            runs[k].append((time.perf_counter() - t0, time.process_time() - c0))
    return [
        (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)) for rs in runs
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 256])
    ap.add_argument("--new", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = cb.load_default_model()
    new = args.new
    rows = []
    for n in args.lengths:
        prompt = prompt_of(tok, n)
        ids = torch.tensor([tok(prompt)["input_ids"]])

        def plain(ids=ids):
            with torch.no_grad():
                return model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    pad_token_id=tok.eos_token_id,
                )

        def ours(prompt=prompt):
            return cb.generate(
                model,
                tok,
                prompt,
                max_new_tokens=new,
                min_new_tokens=new,
                what="all",
                max_memory=None,
            )

        def rerun(prompt=prompt):
            kw = {"min_new_tokens": new}
            return cb.capture(
                model,
                tok,
                prompt,
                what="all",
                max_new_tokens=new,
                generate_kwargs=kw,
                max_memory=None,
            )

        gen = ours()
        same = gen.token_ids == plain()[0, ids.shape[1] :].tolist()
        timings = _measure([plain, ours, rerun], args.repeats)
        stored = sum(t.nbytes for t in gen.capture.tensors.values()) + gen.capture.logits.nbytes
        rows.append((ids.shape[1], timings, stored, same))
        del gen

    print(
        f"SmolLM2-135M-Instruct, float32 weights on CPU, {torch.get_num_threads()} threads, "
        f"{new} new tokens (greedy), median of {args.repeats} interleaved runs. The machine is "
        "shared with other jobs: compare ratios within one run. cb.generate stores every "
        "activation of every step in float32 (patterns included).\n"
    )
    print(
        "| prompt tokens | model.generate wall / CPU | cb.generate what='all' wall / CPU "
        "| ratio wall / CPU | re-run capture wall | stored | same tokens |"
    )
    print("|---:|---:|---:|---:|---:|---:|:---:|")
    for n, ((tp, cp), (tg, cg), (tr, _)), st, same in rows:
        print(
            f"| {n} | {tp:.2f} s / {cp:.2f} s | {tg:.2f} s / {cg:.2f} s "
            f"| {tg / tp:.2f}× / {cg / cp:.2f}× | {tr:.2f} s | {st / 2**20:.0f} MiB "
            f"| {'yes' if same else 'no'} |"
        )


if __name__ == "__main__":
    main()
