"""A 1–2B-parameter model at real shapes (random bf16 weights, built offline): what capture,
head patching, EAP and generation cost in time and peak memory, next to the default model.

    python -m benchmarks big_model                       # Qwen2.5-1.5B shapes, 1,024 tokens
    python benchmarks/bench_big_model.py --shape llama-3.2-1b --tokens 512

Peak memory is the process's resident set, sampled every 10 ms during each step, minus what
was resident before the step (the model's weights are counted once, in "build").
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable
from typing import Any

GIB = 1024**3


class PeakRSS:
    """Largest resident set size seen while inside the ``with`` block (a sampling thread)."""

    def __init__(self, every: float = 0.01) -> None:
        self.every, self.peak, self.start = every, 0, 0
        self._stop = threading.Event()

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.every)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self.now()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())

    @property
    def added(self) -> int:
        return self.peak - self.start


def measure(name: str, fn: Callable[[], Any], rows: list[dict[str, Any]]) -> Any:
    out, error = None, ""
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - a failing step is reported, the rest still run
            error = f"{type(e).__name__}: {e}"[:200]
        seconds = time.perf_counter() - t0
    rows.append({"step": name, "s": seconds, "peak": mem.peak, "added": mem.added, "error": error})
    return out


def run(shape: str, tokens: int, layers: int | None = None) -> tuple[list[dict[str, Any]], dict]:
    import torch

    import circuitboard as cb
    from circuitboard.capture import _memory
    from circuitboard.testing import random_model, tiny_tokenizer

    rows: list[dict[str, Any]] = []
    model = measure("build (random bf16 weights)", lambda: random_model(shape, layers=layers), rows)
    tok = tiny_tokenizer("plain")  # ids < 384: valid tokens of any of these vocabularies
    words = "the cat sat on a mat and then it ran to the door of the house".split()
    text = " ".join(words[i % len(words)] for i in range(4 * tokens))
    ids = tok(text)["input_ids"][:tokens]
    prompt = tok.decode(ids)
    cap = measure(
        f"capture everything, {tokens} tokens",
        lambda: cb.capture(model, tok, prompt, what="all", dtype=torch.bfloat16, max_memory=None),
        rows,
    )
    kinds = _memory.parse_what("all")
    info = cap.info
    est = sum(
        _memory.estimate(
            info, [cap.n_tokens], info.n_layers, kinds, torch.bfloat16, qk_dtype=torch.bfloat16
        ).values()
    ) + _memory.forward_bytes(info, cap.n_tokens, torch.bfloat16)
    stored = sum(t.numel() * t.element_size() for t in cap.tensors.values())
    if cap.logits is not None:
        stored += cap.logits.numel() * cap.logits.element_size()
    del cap
    clean = "When Mary and John went to the store"
    corrupted = "When John and Mary went to the store"
    with torch.no_grad():  # random weights: contrast the tokens the two prompts separate most
        a, b = (
            model(tok(s, return_tensors="pt").input_ids).logits[0, -1] for s in (clean, corrupted)
        )
    diff = (a - b).float()[: len(tok)]
    kw = {"answer": int(diff.argmax()), "wrong": int(diff.argmin())}
    measure(
        "patch every head, 8-token pair",
        lambda: cb.patch(model, tok, clean, corrupted, site="heads", **kw),
        rows,
    )
    measure(
        "EAP, 8-token pair",
        lambda: cb.circuit(model, tok, clean, corrupted, **kw),
        rows,
    )
    measure(
        "generate 32 tokens with capture",
        lambda: cb.generate(model, tok, clean, max_new_tokens=32, stop_at_eos=False),
        rows,
    )
    params = sum(p.numel() for p in model.parameters())
    return rows, {"params": params, "estimate": est, "stored": stored, "tokens": tokens}


def table(rows: list[dict[str, Any]], meta: dict[str, Any], shape: str) -> str:
    out = [
        f"{shape}: {meta['params'] / 1e9:.2f}B parameters, bfloat16, random weights; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
        "",
        "| step | time (s) | peak RSS (GiB) | added by the step (GiB) |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        step = r["step"] + (f" (failed: {r['error']})" if r["error"] else "")
        out.append(f"| {step} | {r['s']:.1f} | {r['peak'] / GIB:.2f} | {r['added'] / GIB:.2f} |")
    cap = next(r for r in rows if r["step"].startswith("capture"))
    out += [
        "",
        f"Capture's up-front estimate (stored + the forward's logits): "
        f"{meta['estimate'] / GIB:.2f} GiB; stored: "
        f"{meta['stored'] / GIB:.2f} GiB; measured added peak: {cap['added'] / GIB:.2f} GiB.",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", default="qwen2.5-1.5b")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=None, help="keep only the first layers")
    args = parser.parse_args(argv)
    rows, meta = run(args.shape, args.tokens, args.layers)
    print(table(rows, meta, args.shape))


if __name__ == "__main__":
    main()
