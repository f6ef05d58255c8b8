"""Capture speed and memory on the default model: capture of everything vs a plain forward and
TransformerLens 4.

Prints markdown tables. For each prompt length: median wall time of a plain forward with eager
attention (what the model costs when attention weights are wanted) and of
``cb.capture(..., what="all")`` (float16 storage on CPU; queries/keys in the model's float32;
patterns recomputed on demand), their ratio, the bytes the capture stores, and the extra peak
resident memory of each (VmHWM, reset before every measurement). Then, in the same run, at
``--peer-tokens``: a plain SDPA forward, ``cb.capture`` and TransformerLens 4's
``run_with_cache`` through ``TransformerBridge`` (its own copy of the model), interleaved. Then one
capture of everything at ``--long`` tokens (the default model's 8,192-token context) under the
default ``max_memory`` of 8 GiB, with its stored bytes and peak memory.

    python benchmarks/bench_capture.py [--repeats 5] [--lengths 256 1024] [--peer-tokens 1024]
        [--long 8192]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import time
from pathlib import Path

import torch

import circuitboard as cb

TEXT = (
    "When Mary and John went to the store, John gave a drink to Mary. The quick brown fox "
    "jumps over the lazy dog while the cat watches from the window. In 1905 Albert Einstein "
    "published four papers that changed physics: on the photoelectric effect, Brownian motion, "
    "special relativity and the equivalence of mass and energy. "
)


def _rss() -> tuple[int, int]:
    """(current, peak) resident set size in bytes, from /proc/self/status."""
    vals = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            k, v = line.split(":")
            vals[k] = int(v.split()[0]) * 1024
    return vals["VmRSS"], vals["VmHWM"]


def _reset_peak() -> None:
    gc.collect()
    try:  # give freed heap pages back to the OS, so reused pages do not hide new memory
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def _once(fn) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (all threads of this process) and extra peak RSS of one run."""
    _reset_peak()
    base, _ = _rss()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    _, peak = _rss()
    del out
    return dt, dc, peak - base


def _measure(fns, repeats: int) -> list[tuple[float, float, int]]:
    """Median wall seconds, CPU seconds and extra peak RSS of each function; runs are
    interleaved (a, b, a, b, ...) so that load from other processes hits all of them alike."""
    for fn in fns:
        fn()  # warm-up
    runs: list[list[tuple[float, float, int]]] = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            runs[k].append(_once(fn))
    return [tuple(statistics.median(x[i] for x in r) for i in range(3)) for r in runs]


def prompt_of(tok, n: int) -> str:
    ids = tok(TEXT * (n // 40 + 2))["input_ids"][:n]
    return tok.decode(ids)


def bridge_of(tok):
    """TransformerLens 4's TransformerBridge around a fresh copy of the default model."""
    import tempfile
    import warnings

    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    model, _ = cb.load_default_model()
    folder = tempfile.mkdtemp()
    tok.save_pretrained(folder)  # the bridge re-creates the tokenizer from a path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformerBridge.boot_transformers(
            "SmolLM2-135M-Instruct", hf_model=model, tokenizer=AutoTokenizer.from_pretrained(folder)
        )


def peer(model, tok, n: int, repeats: int) -> None:
    """cb.capture vs a plain SDPA forward vs TransformerLens 4 run_with_cache, same run."""
    bridge = bridge_of(tok)
    prompt = prompt_of(tok, n)
    ids = torch.tensor([tok(prompt)["input_ids"]])

    def plain_sdpa():
        with torch.no_grad():
            return model(ids).logits

    def capture_all():
        return cb.capture(model, tok, prompt, what="all", max_memory=None)

    def tl_cache():
        with torch.no_grad():
            return bridge.run_with_cache(ids)

    (tp, cp, mp), (tc, cc, mc), (tt, ct, mt) = _measure(
        [plain_sdpa, capture_all, tl_cache], repeats
    )
    cap = capture_all()
    stored = sum(t.nbytes for t in cap.tensors.values()) + cap.logits.nbytes
    _, cache = tl_cache()
    tl_bytes = sum(v.nbytes for v in cache.values())
    mib = 2**20
    print(
        f"\n{ids.shape[1]} tokens, median of {repeats} interleaved runs (same process, same "
        "prompt). TransformerLens 4 run_with_cache through TransformerBridge caches every hook "
        "including [heads, n, n] patterns (float32).\n"
    )
    print("| run | wall / CPU | stored | extra peak RSS |\n|---|---:|---:|---:|")
    print(f"| plain SDPA forward | {tp:.2f} s / {cp:.2f} s | – | {mp / mib:.0f} MiB |")
    print(
        f"| cb.capture what='all' | {tc:.2f} s / {cc:.2f} s | {stored / mib:.0f} MiB "
        f"| {mc / mib:.0f} MiB |"
    )
    print(
        f"| TransformerLens 4 run_with_cache | {tt:.2f} s / {ct:.2f} s | {tl_bytes / mib:.0f} MiB "
        f"| {mt / mib:.0f} MiB |"
    )
    print(
        f"\ncapture vs TransformerLens 4: {tt / tc:.2f}× faster (wall), {ct / cc:.2f}× (CPU); "
        f"capture vs plain SDPA forward: {tc / tp:.2f}× (wall)."
    )


def long_capture(model, tok, n: int) -> None:
    """One capture of everything at n tokens under the default max_memory (8 GiB)."""
    prompt = prompt_of(tok, n)
    holder = {}

    def run():
        holder["cap"] = cb.capture(model, tok, prompt, what="all")  # default max_memory="8GiB"
        return holder["cap"]

    wall, cpu, extra = _once(run)
    cap = holder.pop("cap")
    stored = sum(t.nbytes for t in cap.tensors.values()) + cap.logits.nbytes
    qk = sum(t.nbytes for k, t in cap.tensors.items() if k.endswith(("hook_q", "hook_k")))
    eager = cap.info.n_layers * cap.info.n_heads * cap.n_tokens**2 * 2
    gib = 2**30
    print(
        f"\ncapture of everything at {cap.n_tokens} tokens (what='all', default max_memory 8 GiB, "
        f"path: {cap.info.attention_path}, kernel: {cap.info.attn_implementation}): "
        f"{wall:.0f} s wall / {cpu:.0f} s CPU; stored {stored / gib:.2f} GiB (of which queries "
        f"and keys {qk / gib:.2f} GiB, logits {cap.logits.nbytes / gib:.2f} GiB); extra peak RSS "
        f"{extra / gib:.2f} GiB. Stored float16 patterns would be {eager / gib:.1f} GiB alone."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--peer-tokens", type=int, default=1024, help="0: skip TransformerLens")
    ap.add_argument("--long", type=int, default=8192, help="0: skip the long capture")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = cb.load_default_model()
    rows = []
    for n in args.lengths:
        prompt = prompt_of(tok, n)
        ids = torch.tensor([tok(prompt)["input_ids"]])

        def plain_eager(ids=ids):
            before = model.config._attn_implementation
            model.set_attn_implementation("eager")
            try:
                with torch.no_grad():
                    return model(ids).logits
            finally:
                model.set_attn_implementation(before)

        def capture_all(prompt=prompt):
            return cb.capture(model, tok, prompt, what="all", max_memory=None)

        plain, capt = _measure([plain_eager, capture_all], args.repeats)
        cap = capture_all()
        stored = sum(t.nbytes for t in cap.tensors.values()) + cap.logits.nbytes
        rows.append((ids.shape[1], plain, capt, stored))
        del cap

    mib = 2**20
    print(
        f"SmolLM2-135M-Instruct, float32 weights on CPU, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} interleaved runs; capture = what='all', float16 storage. "
        "CPU time is this process's (all threads), less sensitive to other load than wall time.\n"
    )
    print(
        "| tokens | eager forward wall / CPU | capture wall / CPU | ratio wall / CPU | stored "
        "| extra peak RSS, forward | extra peak RSS, capture |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, (tp, cp, mp), (tc, cc, mc), st in rows:
        print(
            f"| {n} | {tp:.2f} s / {cp:.2f} s | {tc:.2f} s / {cc:.2f} s "
            f"| {tc / tp:.2f}× / {cc / cp:.2f}× | {st / mib:.0f} MiB "
            f"| {mp / mib:.0f} MiB | {mc / mib:.0f} MiB |"
        )
    if args.peer_tokens:
        peer(model, tok, args.peer_tokens, args.repeats)
    if args.long:
        long_capture(model, tok, args.long)


if __name__ == "__main__":
    main()
