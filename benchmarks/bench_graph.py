"""Time attribution graphs on the default model and compare with a dense reference.

Run: ``python -m benchmarks.bench_graph [max_nodes ...]`` (CPU; prints a Markdown table).

- ``cb.attribution_graph`` on the 14-token IOI prompt with ``basis="neurons"`` at each
  ``max_nodes`` (default: the library default), wall and CPU seconds, peak RSS growth, edges
  stored;
- a dense reference in the same run: the same rows stored as a dense ``rows x sources`` matrix
  (what circuit-tracer keeps), then pruned; its time and the bytes of that matrix.

Wall time on a shared 2-core machine mostly measures the other processes: the load average is
printed with every row.
"""

from __future__ import annotations

import os
import resource
import sys
import time

import numpy as np
import torch

import circuitboard as cb
from circuitboard.intervene._graph_attribute import DEFAULT_MAX_NODES
from circuitboard.intervene._graph_frozen import freeze
from circuitboard.intervene._graph_rows import NeuronBasis, compute_rows

PROMPT = "When Mary and John went to the store, John gave a drink to"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dense_reference(model, tok, max_nodes: int, batch_size: int = 64) -> dict:
    """The same algorithm with every row kept dense (rows x all sources), as circuit-tracer's
    edge matrix is; influence ordering identical."""
    t0, c0 = time.perf_counter(), time.process_time()
    fr = freeze(model, tok, PROMPT)
    b = NeuronBasis(fr)
    probs = torch.softmax(fr.logits.double(), -1)
    p, ids = probs.sort(descending=True)
    k = int(min(10, int((p.cumsum(0) < 0.95).sum()) + 1))
    dirs = torch.zeros(k, fr.W_U.shape[1])
    dirs[torch.arange(k), ids[:k]] = 1
    matrix = torch.zeros(max_nodes + k, b.n_cand)  # the dense edge matrix
    rows, _ = compute_rows(b, logit_dirs=dirs)
    matrix[:k] = rows
    w = torch.zeros(max_nodes + k, dtype=torch.float64)
    w[:k] = p[:k]
    done = torch.zeros(b.n_cand, dtype=torch.bool)
    done[b.n_basis :] = True
    n = k
    while n < max_nodes + k:
        a = matrix[:n].abs()
        infl = ((w[:n] / a.sum(1).double().clamp_min(1e-30))[None].float() @ a)[0]
        infl[done] = -1
        vals, cand = infl.topk(min(batch_size, max_nodes + k - n))
        cand = cand[vals > 0]
        if len(cand) == 0:
            break
        done[cand] = True
        matrix[n : n + len(cand)] = compute_rows(b, cand=cand)[0]
        w[n : n + len(cand)] = vals[: len(cand)].double()
        n += len(cand)
    return {
        "wall": time.perf_counter() - t0,
        "cpu": time.process_time() - c0,
        "matrix_bytes": matrix.numel() * 4,
        "rows": n,
    }


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    sizes = [int(a) for a in args] or [DEFAULT_MAX_NODES]
    torch.manual_seed(0)
    model, tok = cb.load_default_model()
    n_tok = len(tok(PROMPT)["input_ids"])
    print(f"IOI prompt, {n_tok} tokens, basis='neurons', {torch.get_num_threads()} threads\n")
    print(
        "| run | max_nodes | wall s | CPU s | kept nodes / edges | stored edges | "
        "edge storage | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for m in sizes:
        rss0 = peak_rss_mib()
        t0, c0 = time.perf_counter(), time.process_time()
        g = cb.attribution_graph(model, tok, PROMPT, basis="neurons", max_nodes=m, progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        stored = len(g.edge_src)
        print(
            f"| circuitboard | {m} | {wall:.1f} | {cpu:.1f} | {g.n_nodes} / {g.n_edges} | "
            f"{stored:,} | {stored * 20 / 2**20:.1f} MiB (peak RSS +{peak_rss_mib() - rss0:.0f} "
            f"MiB) | {os.getloadavg()[0]:.1f} |",
            flush=True,
        )
        ref = dense_reference(model, tok, min(m, 256))
        print(
            f"| dense reference | {min(m, 256)} | {ref['wall']:.1f} | {ref['cpu']:.1f} | - | "
            f"{ref['rows'] * NeuronBasis(freeze(model, tok, PROMPT)).n_cand:,} (dense) | "
            f"{ref['matrix_bytes'] / 2**20:.0f} MiB | {os.getloadavg()[0]:.1f} |",
            flush=True,
        )
        top = g.top(3)
        print(
            f"\ntop nodes: {[t['label'] for t in top]}; scores "
            f"{g.replacement_score:.3f}/{g.completeness_score:.3f}; "
            f"row mass stored {g.stats['stored_row_mass_mean']:.3f}\n"
        )
        _ = np  # keep numpy imported for interactive use


if __name__ == "__main__":
    main()
