"""Causal tracing on the default model: ``cb.causal_trace`` vs the ROME code's loop, same run.

Run: ``python benchmarks/bench_causal_trace.py [--samples 3] [--kind mlp]`` (CPU; Markdown).

- ``cb.causal_trace`` of one kind (10-layer windows for MLP / attention) on a factual prompt:
  every sample's corrupted run once, then restorations started at their lowest restored layer
  from that sample's corrupted residual, batched.
- The reference does what the ROME code (``trace_with_patch``) does per cell: one forward from
  the embedding of ``samples`` noised rows, with the window's clean outputs written in, through
  circuitboard's write hooks (no sharing, no batching across cells). Both compute the same
  cells (positions from the subject's first token on), and the table checks they agree.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
import torch

import circuitboard as cb
from circuitboard.capture.adapters import get_adapter
from circuitboard.intervene import Edit, Site, write_hooks
from circuitboard.intervene._causal_trace import _SITE, _embed_std, _window, subject_positions

PROMPT = "The Colosseum is located in the city of"
SUBJECT = "Colosseum"


def reference(model: Any, tok: Any, kind: str, samples: int, seed: int = 0) -> np.ndarray:
    """ROME-style: one forward per (layer, position) cell, ``samples`` rows, from the embedding."""
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    T, L = ids.shape[1], model.config.num_hidden_layers
    subj = subject_positions(tok, PROMPT, SUBJECT)
    std = 3.0 * _embed_std(model, get_adapter(model))
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(samples, len(subj), model.config.hidden_size, generator=gen) * std
    site = _SITE[kind]
    reads = [Edit(Site(site, layer), op="read") for layer in range(L)]
    with torch.no_grad(), write_hooks(model, reads):
        logits = model(input_ids=ids, use_cache=False).logits[0, -1]
    answer = int(logits.argmax())
    x = ids.expand(samples, T)
    add = [Edit(Site("embed", 0, pos=tuple(subj)), "add", noise[s], rows=s) for s in range(samples)]
    with torch.no_grad(), write_hooks(model, add):
        corrupted = torch.softmax(model(input_ids=x, use_cache=False).logits[:, -1], -1)[:, answer]
    width = 1 if kind == "hidden" else 10
    out = np.zeros((L, T))
    for layer in range(L):
        for p in range(subj[0], T):
            put = [
                Edit(Site(site, j, pos=p), "replace", reads[j].activation[0, p])
                for j in _window(layer, width, L)
            ]
            with torch.no_grad(), write_hooks(model, [*add, *put]):
                lg = model(input_ids=x, use_cache=False).logits[:, -1]
            out[layer, p] = float((torch.softmax(lg, -1)[:, answer] - corrupted).mean())
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--kind", default="mlp", choices=["hidden", "mlp", "attn"])
    args = ap.parse_args(argv)
    model, tok = cb.load_default_model()
    load = os.getloadavg()[0]
    t = time.perf_counter()
    tr = cb.causal_trace(
        model, tok, PROMPT, subject=SUBJECT, kinds=(args.kind,), samples=args.samples
    )
    ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = reference(model, tok, args.kind, args.samples)
    theirs = time.perf_counter() - t
    err = float(np.abs(tr.effect(args.kind) - ref).max())
    cells = int(tr.cost["runs"]) // args.samples
    print(
        f"Causal trace, {args.kind}, {cells} cells × {args.samples} samples, "
        f"{len(tr.tokens)} tokens, load average {load:.1f} at start\n"
    )
    print("| method | seconds | max abs difference |")
    print("|---|---|---|")
    print(f"| cb.causal_trace (shared corrupted prefix, batched) | {ours:.1f} | — |")
    print(f"| ROME-style loop (one forward per cell) | {theirs:.1f} | {err:.1e} |")


if __name__ == "__main__":
    main()
