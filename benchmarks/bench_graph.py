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


def long_prompt(tok, n_tokens: int) -> str:
    """Prose from the package's texts, repeated, cut to ``n_tokens`` tokens."""
    from pathlib import Path

    text = (Path(cb.__file__).parent / "data" / "texts.txt").read_text()
    ids = tok(text)["input_ids"]
    while len(ids) < n_tokens:
        ids = ids + ids
    return tok.decode(ids[:n_tokens])


def long_context_run(n_tokens: int, max_nodes: int) -> None:
    """One transcoder-basis graph at ``n_tokens`` (run in a fresh process: its peak RSS is its
    own). Transcoders: TopK (k=32) 576 -> 4,608 at every layer, seeded random weights (the cost
    depends on the shapes and k, not on what the features mean)."""
    from circuitboard.dictionaries import SAE, TranscoderSet

    model, tok = cb.load_default_model()
    D = model.config.hidden_size
    ts = TranscoderSet(
        [
            SAE(
                D,
                4608,
                d_out=D,
                kind="topk",
                k=32,
                hook=f"blocks.{i}.mlp.hook_in",
                hook_out=f"blocks.{i}.hook_mlp_out",
                seed=i,
            )
            for i in range(model.config.num_hidden_layers)
        ]
    )
    prompt = long_prompt(tok, n_tokens)
    kw = dict(basis=ts, max_nodes=max_nodes, head_loadings=0, progress=False)
    est = cb.attribution_graph(model, tok, prompt, estimate=True, **kw)
    rss0 = peak_rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    g = cb.attribution_graph(model, tok, prompt, **kw)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"| transcoders | {len(g.tokens)} | {max_nodes} | {wall:.1f} | {cpu:.1f} | "
        f"{peak_rss_mib():.0f} (+{peak_rss_mib() - rss0:.0f}) | "
        f"{est['peak_bytes'] / 2**20:.0f} | {g.n_nodes} / {g.n_edges} | "
        f"{g.replacement_score:.2f} | {os.getloadavg()[0]:.1f} |",
        flush=True,
    )


def long_context(sizes: list[int], max_nodes: int = 16) -> None:
    """One subprocess per length (``--rows N`` first sets ``max_nodes``)."""
    import subprocess

    print(
        "| basis | tokens | rows | wall s | CPU s | peak RSS MiB (graph's own) | estimate MiB | "
        "kept nodes / edges | replacement | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_graph", "--long-one", str(n), str(max_nodes)],
            check=False,
        )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--long-one"]:
        long_context_run(int(args[1]), int(args[2]))
        return
    if args[:1] == ["--long"]:
        rest = args[1:]
        rows = 16
        if rest[:1] == ["--rows"]:
            rows, rest = int(rest[1]), rest[2:]
        long_context([int(a) for a in rest] or [128, 256, 512], rows)
        return
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
    for run, m in enumerate(sizes):
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
        if run:
            continue  # one dense reference per run is enough
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
