"""``cb.attribution_graph``: circuit-tracer's attribution graph on the frozen replacement model.

Rows (the direct effects into one target node) come from batched backward passes
(:mod:`._graph_rows`), logit rows first, then basis nodes in order of their estimated influence
on the logits. Each row is thinned as it arrives (edges under ``min_edge_share`` of the row's
absolute total are not stored), so memory grows with the rows kept, never with
nodes x nodes. Pruning and scores are circuit-tracer's (:mod:`._graph_prune`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._direction import Direction
from ._graph_frozen import Frozen, freeze
from ._graph_prune import prune, scores
from ._graph_result import AttributionGraph
from ._graph_rows import NeuronBasis, compute_rows

DEFAULT_MAX_NODES = 1024
QUEUE_BATCHES = 4
"""Batches of rows taken per ranking by estimated influence (circuit-tracer's update interval):
the ranking is refreshed after each queue, and a queue's rows run grouped by layer."""
_BASES = ("neurons",)


def _parse_bytes(v: int | float | str | None) -> float | None:
    if v is None or isinstance(v, (int, float)):
        return v
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 1e3, "MB": 1e6, "GB": 1e9, "B": 1}
    s = v.strip().upper().replace(" ", "")
    for u, f in units.items():
        if s.endswith(u):
            return float(s[: -len(u)]) * f
    return float(s)


ROW_BUFFER_BYTES = 512 * 2**20
"""Bound on the dense rows of one batch (``batch x candidate sources``): a batch whose rows
would pass it is made smaller (long prompts with the neuron basis)."""

TAKE_BYTES = 64 * 2**20
"""Rows are thinned this many bytes of rows at a time (their ``|row|`` and masks)."""


def batch_rows(batch_size: int, n_cand: int) -> int:
    """Rows per batch: ``batch_size``, fewer where their dense rows would pass
    :data:`ROW_BUFFER_BYTES`."""
    return max(1, min(batch_size, ROW_BUFFER_BYTES // (4 * n_cand)))


def estimate_cost(
    n_layers: int,
    n_pos: int,
    d_model: int,
    d_mlp: int,
    n_heads: int,
    max_nodes: int,
    batch_size: int,
    n_sources_per_layer: int | None = None,
    *,
    n_kv_heads: int | None = None,
    d_head: int | None = None,
    d_vocab: int = 0,
    d_sae: int = 0,
    head_loadings: int = 0,
    min_edge_share: float = 1e-4,
    weights_copied: bool = False,
) -> dict[str, float]:
    """The cost model of docs/attribution_graphs.md: FLOPs and bytes of one run.

    A row costs one backward pass through frozen attention (``4 P D^2``-ish per layer: the
    output and value projections, plus ``2 P^2 D`` for the pattern) plus reading edges from the
    sources (``2 P D d_mlp`` per layer for all neurons; ``2 P D k`` with ``k`` active transcoder
    features per position: pass ``n_sources_per_layer = k + 1``, the error node included).

    Bytes are float32 tensors alive at the peak: the frozen system (weight copies, per-token
    state, patterns whole while ``L H P^2`` fits :data:`PATTERN_CACHE_BYTES`, else queries and
    keys), plus the largest of the phases that follow one another: the capture while freezing,
    the transcoders' encoder outputs, a batch of rows with its backward passes, head loadings.
    """
    from ._graph_frozen import PATTERN_BLOCK_ROWS, PATTERN_CACHE_BYTES
    from ._graph_rows import BACKWARD_COPIES, rows_per_backward

    L, P, D, M, H = n_layers, n_pos, d_model, d_mlp, n_heads
    KV, dh = n_kv_heads or n_heads, d_head or d_model // n_heads
    transcoders = n_sources_per_layer is not None
    srcs = n_sources_per_layer or M
    # output and value projections (~4 P D^2) and the frozen pattern (2 H P^2 d_head)
    per_layer_back = 4 * P * D * D + 2 * P * P * D
    per_layer_read = 2 * P * D * srcs
    rows = max_nodes + 10
    flops = rows * L * (per_layer_back + per_layer_read) / 2  # rows sit at all depths
    n_cand = L * P * srcs + P
    f4 = 4.0
    weights = f4 * L * (2 * D * M + (H + KV) * dh * D) + (f4 * D * d_vocab if weights_copied else 0)
    dense_patterns = f4 * L * H * P * P <= PATTERN_CACHE_BYTES
    patterns = f4 * L * H * P * P if dense_patterns else f4 * L * P * (H + KV) * dh
    per_token = f4 * P * D * (1 + L) + (f4 * L * P * D if transcoders else 2 * f4 * L * P * M)
    frozen = weights + patterns + per_token
    # while freezing: the capture (residuals, queries/keys, all positions' logits, neurons or
    # MLP outputs) and the model's own forward (one layer's scores and MLP at a time)
    capture = f4 * P * (2 * L * D + L * (H + KV) * dh + 2 * d_vocab)
    capture += f4 * L * P * D if transcoders else 2 * f4 * L * P * M
    capture += f4 * (2 * H * P * P + 3 * P * M)
    encode = f4 * (L * P * D + 3 * P * d_sae) if transcoders else 0.0  # errors; one layer's codes
    B = batch_rows(batch_size, n_cand)
    row_buffer = f4 * B * n_cand
    take = 3 * min(row_buffer, f4 * max(1, TAKE_BYTES // (4 * n_cand)) * n_cand)
    R = min(B, rows_per_backward(P, D))
    backward = BACKWARD_COPIES * f4 * R * P * D
    if not dense_patterns:  # a block's scores, softmax and padded copy
        backward += 3 * f4 * H * PATTERN_BLOCK_ROWS * P
    if transcoders:  # decoder rows laid out by position for a block of positions, the product
        from ._graph_transcoders import READ_BLOCK_BYTES

        k = srcs - 1
        backward += min(READ_BLOCK_BYTES, f4 * P * k * D) + f4 * P * R * k
    seeds = f4 * B * D * 2  # seed vectors and what they read
    rows_phase = row_buffer + take + backward + seeds
    heads = f4 * BACKWARD_COPIES * H * P * D if head_loadings else 0.0
    # edges kept: at most 1 / min_edge_share per row; rows keep far fewer in practice (a few
    # hundred to a few thousand), counted at 1 / (10 min_edge_share) per row, 20 bytes each
    per_row = min(n_cand, 1 / (10 * max(min_edge_share, 1e-9)))
    edges = 20.0 * rows * per_row
    peak = frozen + max(capture, encode, rows_phase, heads) + edges
    return {
        "rows": rows,
        "flops": float(flops),
        "frozen_bytes": float(frozen),
        "row_buffer_bytes": float(row_buffer),
        "capture_bytes": float(capture),
        "backward_bytes": float(backward),
        "edge_bytes": float(edges),
        "peak_bytes": float(peak),
    }


def _throughput() -> float:
    """Measured matmul FLOP/s on this machine right now (about 0.1 s)."""
    a = torch.randn(512, 512)
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < 0.1:
        a @ a
        n += 1
    return 2 * 512**3 * n / (time.perf_counter() - t0)


def _sparse(v: torch.Tensor) -> list[list]:
    """``[ids, weights]`` of a vocabulary vector's nonzero entries (JSON for the stats)."""
    nz = v.nonzero()[:, 0]
    return [nz.tolist(), v[nz].double().tolist()]


def _targets(fr: Frozen, tokenizer: Any, target, baseline) -> tuple[torch.Tensor, list, list, list]:
    """Logit directions ``[k, vocab]``, weights, labels and token ids of the target nodes."""
    from ._metric import token_id as _token_id

    def token_id(tok: Any, token: Any, what: str) -> int:
        if isinstance(token, str):
            ids = tok(token, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                pieces = [tok.decode([i]) for i in ids]
                raise ValueError(
                    f"{what}={token!r} is {len(ids)} tokens {pieces}; a logit node is one token. "
                    f"Pass its first token ({pieces[0]!r}) or a token id."
                )
        return _token_id(tok, token, what)

    V = fr.W_U.shape[1]
    if target is None:
        if baseline is not None:
            raise ValueError("baseline= needs target= too (the graph explains target - baseline).")
        probs = torch.softmax(fr.logits.double(), -1)
        p, ids = probs.sort(descending=True)
        k = int(min(10, int((p.cumsum(0) < 0.95).sum()) + 1))
        ids, p = ids[:k].tolist(), p[:k].float()
        dirs = torch.zeros(k, V)
        dirs[torch.arange(k), ids] = 1
        labels = [tokenizer.decode([i]) for i in ids]
        return dirs, p.tolist(), labels, ids
    from .._direction import Direction

    def vector(x: Any, what: str) -> tuple[torch.Tensor, str, list[int]]:
        """A target's vocabulary vector, its label and its token ids (a token or a set)."""
        if isinstance(x, Direction):
            d = x.resolve(fr.W_U.shape[0], V, what)
            return (d if d.space == "resid" else d.vector.float()), d.name, []
        if isinstance(x, list | tuple | set | frozenset):
            items = sorted(x, key=repr) if isinstance(x, set | frozenset) else list(x)
            if not items:
                raise ValueError(f"{what}=[] is an empty token set; give one token or several.")
            ids = sorted({token_id(tokenizer, y, f"{what}[{i}]") for i, y in enumerate(items)})
        else:
            ids = [token_id(tokenizer, x, what)]
        v = torch.zeros(V)
        v[ids] = 1.0 / len(ids)  # a token set: the mean of its logits
        texts = [tokenizer.decode([i]) for i in ids]
        return v, texts[0] if len(ids) == 1 else "{" + ", ".join(map(repr, texts)) + "}", ids

    if isinstance(baseline, Direction):
        raise ValueError(
            "baseline= takes tokens; a direction is the whole target: pass "
            "target=cb.Direction(v_target − v_baseline)."
        )
    if isinstance(target, Direction) and baseline is not None:
        raise ValueError(
            "target=cb.Direction(...) takes no baseline=: fold it into the vector (v[b] -= 1)."
        )
    d, label, t_ids = vector(target, "target")
    if isinstance(d, Direction):  # a residual direction: rows seed the final norm's output
        return [d], [1.0], [label], []
    b_ids: list[int] = []
    if baseline is not None:
        bv, b_label, b_ids = vector(baseline, "baseline")
        d = d - bv
        label = f"{label} - {b_label}"
    if len(t_ids) == 1 and len(b_ids) <= 1:  # one token (minus one): as the graph always was
        return d[None], [1.0], [label], t_ids + b_ids
    return d[None], [1.0], [label], []


def attribution_graph(
    model: Any,
    tokenizer: Any,
    prompt: str | Sequence[int] | torch.Tensor,
    *,
    basis: str | Any = None,
    target: Any = None,
    baseline: Any = None,
    max_nodes: int = DEFAULT_MAX_NODES,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    batch_size: int = 64,
    min_edge_share: float = 1e-4,
    head_loadings: int = 1,
    max_memory: int | float | str | None = "8GiB",
    progress: bool = True,
    estimate: bool = False,
) -> AttributionGraph | dict[str, float]:
    """Attribution graph of ``prompt``: direct effects between tokens, basis nodes and logits.

    The replacement model freezes every attention pattern, every norm's scale and each MLP
    neuron's activation multiplier at the prompt's values (``basis="neurons"``: SwiGLU's
    ``silu(gate)``, GELU's ``act(z)/z``), so the residual stream is linear in its sources and
    edges are exact direct effects: into each node, the edges from all sources plus its bias
    terms equal its activation. This is a local linearization, like the frozen attention.

    Parameters
    ----------
    model, tokenizer
        A Llama/Mistral/Qwen2, Gemma 1, GPT-2 or GPT-NeoX family model and its tokenizer.
    prompt
        The text to explain (the graph explains the prediction after its last token), or its
        token ids (a list or a 1-D tensor), used as given.
    basis
        ``"neurons"`` (the MLPs' own neurons; no dictionary needed). Required.
    target, baseline
        One token each: the graph explains ``logit(target) - logit(baseline)``. A list of
        tokens is a token set, valued as the mean of its logits (``target=[" 5", " 6"]``);
        ``target=cb.Direction(v)`` a vocabulary direction, ``logits · v``, or a residual one,
        ``final_norm(resid) · v`` (no baseline).
        Default: the top tokens until their probabilities sum to 0.95 (at most 10), weighted
        by probability.
    max_nodes
        Basis nodes whose rows are computed (in order of estimated influence).
    node_threshold, edge_threshold
        Pruning: keep nodes holding this share of influence on the logits, then edges holding
        this share of edge influence (circuit-tracer's defaults). ``graph.prune(...)`` redoes it.
    batch_size
        Rows per backward pass.
    min_edge_share
        Edges under this share of their row's absolute total are not stored (0 stores all).
    head_loadings
        Split the kept edges that cross positions into per-attention-head parts for this many
        target nodes (logit nodes first, then by influence); each costs about one backward
        pass of ``n_layers * n_heads`` rows.
    max_memory
        Refuse before running when the estimated peak exceeds this (bytes or "8GiB"); None: no
        limit.
    progress
        Print progress to stderr.
    estimate
        Return (and print) the estimated FLOPs, seconds and bytes without computing the graph.

    Examples
    --------
    >>> import circuitboard as cb
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> g = cb.attribution_graph(model, tok, "When Mary and John went", basis="neurons",
    ...                          max_nodes=64, progress=False)
    >>> bool(g.node_mask[g.node_kind == 3].all())
    True
    """
    if basis is None:
        raise ValueError(
            "basis is required: basis='neurons' uses the MLPs' own neurons (no dictionary needed)."
        )
    if isinstance(basis, str) and basis not in _BASES:
        raise ValueError(
            f"basis must be 'neurons' or transcoders (cb.SAE, cb.TranscoderSet, a list); got "
            f"{basis!r}."
        )
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1]; got {v}. 0.8 / 0.98 are the defaults.")
    prompt, n_pos = _prompt_and_length(tokenizer, prompt)
    cfg = model.config
    from ..capture.adapters import get_adapter

    adapter = get_adapter(model)
    dims = adapter.dims(cfg)
    transcoders = None
    per_layer_sources = None
    if not isinstance(basis, str):
        from ._graph_transcoders import transcoder_list

        parallel = bool(dims.get("parallel_attn_mlp")) or adapter.block_mid is None
        transcoders = transcoder_list(basis, dims["n_layers"], dims["d_model"], parallel)
        ks = [t.k or 64 for t in transcoders]  # ReLU transcoders: ~64 active per position
        per_layer_sources = max(ks) + 1
    dtype = next(iter(model.parameters())).dtype
    cost = estimate_cost(
        dims["n_layers"],
        n_pos,
        dims["d_model"],
        dims["d_mlp"],
        dims["n_heads"],
        max_nodes,
        batch_size,
        per_layer_sources,
        n_kv_heads=dims.get("n_kv_heads"),
        d_head=dims.get("d_head"),
        d_vocab=dims.get("d_vocab") or 0,
        d_sae=max((t.d_sae for t in transcoders), default=0) if transcoders else 0,
        head_loadings=head_loadings,
        min_edge_share=min_edge_share,
        weights_copied=dtype != torch.float32,
    )
    cost["seconds"] = cost["flops"] / _throughput() if estimate else float("nan")
    budget = _parse_bytes(max_memory)
    if budget is not None and cost["peak_bytes"] > budget:
        raise ValueError(
            f"a {n_pos}-token graph with basis={basis!r} needs about "
            f"{cost['peak_bytes'] / 2**30:.1f} GiB, past max_memory={max_memory!r}. Shorten the "
            "prompt, lower batch_size or max_nodes, or raise max_memory."
        )
    if estimate:
        print(
            f"[circuitboard] attribution graph estimate: {n_pos} tokens, {cost['rows']:.0f} rows, "
            f"{cost['flops'] / 1e12:.2f} TFLOP (~{cost['seconds']:.0f} s here now), peak "
            f"{cost['peak_bytes'] / 2**30:.2f} GiB",
            file=sys.stderr,
        )
        return cost
    t0 = time.perf_counter()
    fr = freeze(
        model, tokenizer, prompt, keep_mlp_out=transcoders is not None, neurons=transcoders is None
    )
    if transcoders is None:
        b = NeuronBasis(fr)
    else:
        from ._graph_transcoders import TranscoderBasis

        b = TranscoderBasis(fr, transcoders)
    dirs, weights, labels, ids = _targets(fr, tokenizer, target, baseline)
    graph = _build(
        fr,
        b,
        dirs,
        weights,
        labels,
        ids,
        prompt,
        max_nodes,
        node_threshold,
        edge_threshold,
        batch_size,
        min_edge_share,
        progress,
        t0,
    )
    if head_loadings > 0:
        graph = _add_head_loadings(graph, b, dirs, head_loadings)
    return graph


def _add_head_loadings(graph: AttributionGraph, basis: Any, dirs, n_targets: int):
    """Fill ``graph.hl_*`` for the kept cross-position edges into the top ``n_targets`` nodes."""
    from dataclasses import replace

    from ._graph_heads import head_parts

    fr = basis.fr
    g = graph
    e = np.flatnonzero(g.edge_mask & (g.node_pos[g.edge_src] != g.node_pos[g.edge_dst]))
    if len(e) == 0:
        return g
    targets = np.unique(g.edge_dst[e])
    order = sorted(
        targets.tolist(),
        key=lambda n: (g.node_kind[n] != 3, -float(g.node_influence[n])),
    )[:n_targets]
    P = fr.n_pos
    if isinstance(basis, NeuronBasis):
        lookup = None
    else:
        lookup = {
            (int(a), int(b), int(c)): i
            for i, (a, b, c) in enumerate(zip(basis.layer, basis.pos, basis.feat, strict=True))
        }

    def cand_of(n: int) -> int:
        """The column (candidate) of graph node ``n``."""
        kind, layer, pos, idx = (
            int(g.node_kind[n]),
            int(g.node_layer[n]),
            int(g.node_pos[n]),
            int(g.node_index[n]),
        )
        if kind == 0:
            return basis.token_offset + pos
        if kind == 2:
            return basis.n_basis + layer * P + pos
        if lookup is None:
            return (layer * P + pos) * fr.d_mlp + idx
        return lookup[(layer, pos, idx)]

    out_e, out_l, out_h, out_v = [], [], [], []
    for node in order:
        mine = e[g.edge_dst[e] == node]
        cols = torch.as_tensor([cand_of(int(n)) for n in g.edge_src[mine]], dtype=torch.long)
        if g.node_kind[node] == 3:
            tags, parts = head_parts(basis, cols, direction=dirs[g.node_index[node]])
        else:
            tags, parts = head_parts(basis, cols, cand=cand_of(int(node)))
        t_idx, c_idx = (parts != 0).nonzero(as_tuple=True)
        out_e.append(mine[c_idx.numpy()])
        out_l.append(tags[t_idx, 0].numpy())
        out_h.append(tags[t_idx, 1].numpy())
        out_v.append(parts[t_idx, c_idx].numpy())
    return replace(
        g,
        hl_edge=np.concatenate(out_e).astype(np.int64),
        hl_layer=np.concatenate(out_l).astype(np.int32),
        hl_head=np.concatenate(out_h).astype(np.int32),
        hl_value=np.concatenate(out_v).astype(np.float32),
    )


def _prompt_and_length(tokenizer: Any, prompt: Any) -> tuple[str | list[int], int]:
    """``prompt`` as text or a list of token ids (as given: ids are used as they are, with no
    special tokens added), and its length in tokens."""
    if isinstance(prompt, torch.Tensor):
        if prompt.dim() == 2 and prompt.shape[0] == 1:
            prompt = prompt[0]
        if prompt.dim() != 1 or prompt.dtype.is_floating_point:
            raise ValueError(
                f"a tensor prompt must hold one sequence of token ids (shape [pos] or [1, pos]); "
                f"got {prompt.dtype} of shape {tuple(prompt.shape)}."
            )
        prompt = prompt.tolist()
    if isinstance(prompt, str) and prompt:
        return prompt, len(tokenizer(prompt)["input_ids"])
    if (
        isinstance(prompt, (list, tuple))
        and prompt
        and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt)
    ):
        return [int(i) for i in prompt], len(prompt)
    raise ValueError(
        f"prompt must be a non-empty string or a list of token ids; got {prompt!r:.80}."
    )


def _build(
    fr,
    basis,
    dirs,
    weights,
    labels,
    ids,
    prompt,
    max_nodes,
    node_threshold,
    edge_threshold,
    batch_size,
    min_edge_share,
    progress,
    t0,
) -> AttributionGraph:
    n_cand = basis.n_cand
    infl = torch.zeros(n_cand, dtype=torch.float64)
    done = torch.zeros(n_cand, dtype=torch.bool)
    done[basis.n_basis :] = True  # tokens and error nodes are leaves: they get no rows
    row_cand: list[int] = []  # candidate of each computed basis row
    row_bias: list[float] = []
    store_src, store_dst, store_w = [], [], []
    kept_mass = []

    def take(rows: torch.Tensor, bias: torch.Tensor, row_ids: list[int], row_infl) -> None:
        step = max(1, TAKE_BYTES // (4 * rows.shape[1]))  # temporaries: a few rows at a time
        for s in range(0, len(rows), step):
            part = rows[s : s + step]
            a = part.abs()
            total = a.sum(1)
            w = torch.as_tensor(row_infl[s : s + step], dtype=torch.float32)
            w = w / total.clamp_min(1e-30)
            infl.add_((w[None] @ a)[0].double())  # influence pushed back through these rows
            keep = a >= (min_edge_share * total)[:, None]
            keep &= a > 0
            r, c = keep.nonzero(as_tuple=True)
            del keep
            store_src.append(c.numpy().astype(np.int64))
            store_dst.append(np.asarray(row_ids[s : s + step], np.int64)[r.numpy()])
            store_w.append(part[r, c].numpy().astype(np.float32))
            mass = torch.zeros(len(part)).index_add_(0, r, a[r, c]) / total.clamp_min(1e-30)
            kept_mass.append(mass)
        row_bias.extend(bias.tolist())

    # logit rows first: their ids are -1 - k until the node layout is known
    lrows, lbias = compute_rows(basis, logit_dirs=dirs)
    take(lrows, lbias, [-1 - k for k in range(len(dirs))], weights)
    n_rows = 0
    batch_size = batch_rows(batch_size, n_cand)
    while n_rows < max_nodes:
        masked = torch.where(done, torch.full_like(infl, -1.0), infl)
        vals, cand = masked.topk(min(batch_size * QUEUE_BATCHES, max_nodes - n_rows))
        cand, vals = cand[vals > 0], vals[vals > 0]
        if len(cand) == 0:
            break
        done[cand] = True
        # a backward pass runs down from its highest target's layer and carries the positions
        # up to its last target's: the queue's rows go in batches of neighbouring layers
        layer, pos, _ = basis.locate(cand)
        order = torch.argsort(layer * fr.n_pos + pos, stable=True)
        cand, vals = cand[order], vals[order]
        for a in range(0, len(cand), batch_size):
            batch = cand[a : a + batch_size]
            rows, bias = compute_rows(basis, cand=batch)
            take(rows, bias, batch.tolist(), vals[a : a + batch_size].tolist())
            row_cand.extend(batch.tolist())
            n_rows += len(batch)
            if progress:
                print(
                    f"\r[circuitboard] attribution graph: {n_rows}/{max_nodes} rows, "
                    f"{time.perf_counter() - t0:.1f} s",
                    end="",
                    file=sys.stderr,
                )
    if progress:
        print(file=sys.stderr)

    # node layout: computed basis nodes, error nodes, tokens, logits (circuit-tracer's order)
    P, K = fr.n_pos, len(dirs)
    n_b, n_e = len(row_cand), basis.n_error
    cand_t = torch.tensor(row_cand, dtype=torch.long)
    node_of = np.full(n_cand, -1, np.int64)
    node_of[np.asarray(row_cand, np.int64)] = np.arange(n_b)
    node_of[basis.n_basis : basis.n_basis + n_e] = n_b + np.arange(n_e)
    tok0 = n_b + n_e
    node_of[basis.token_offset : basis.token_offset + P] = tok0 + np.arange(P)
    n_nodes = tok0 + P + K
    src = np.concatenate(store_src)
    dst = np.concatenate(store_dst)
    w = np.concatenate(store_w)
    dst = np.where(dst < 0, tok0 + P + (-1 - dst), node_of[np.maximum(dst, 0)])
    src = node_of[src]
    ok = src >= 0
    src, dst, w = src[ok], dst[ok], w[ok]

    kind = np.concatenate([np.ones(n_b), np.full(n_e, 2), np.zeros(P), np.full(K, 3)])
    kind = kind.astype(np.uint8)
    if n_b:
        layer, pos, idx = (t.numpy() for t in basis.locate(cand_t))
        act = basis.activation(cand_t).numpy()
    else:
        layer = pos = idx = np.zeros(0, np.int64)
        act = np.zeros(0, np.float32)
    err_layer = np.repeat(np.arange(fr.n_layers), P) if n_e else np.zeros(0, np.int64)
    err_pos = np.tile(np.arange(P), fr.n_layers) if n_e else np.zeros(0, np.int64)
    err_size = torch.stack(basis.errors).norm(dim=-1).reshape(-1).numpy() if n_e else np.zeros(0)
    node_layer = np.concatenate([layer, err_layer, np.full(P, -1), np.full(K, fr.n_layers)])
    node_layer = node_layer.astype(np.int32)
    node_pos = np.concatenate([pos, err_pos, np.arange(P), np.full(K, P - 1)]).astype(np.int32)
    node_index = np.concatenate([idx, np.full(n_e, -1), fr.token_ids.numpy(), np.arange(K)]).astype(
        np.int64
    )
    # a logit row plus its bias is the target's value exactly (compute_rows); a residual
    # direction has no logit to read it from
    logit_vals = np.array(
        [
            float(lrows[k].double().sum() + lbias[k])
            if isinstance(d, Direction)
            else float(d @ fr.logits)
            for k, d in enumerate(dirs)
        ]
    )
    node_act = np.concatenate([act, err_size, np.zeros(P), logit_vals]).astype(np.float32)
    biases = np.asarray(row_bias, np.float32)  # logit rows first, then basis rows
    node_bias = np.concatenate([biases[K:], np.zeros(n_e + P), biases[:K]]).astype(np.float32)
    logit_w = np.zeros(n_nodes)
    logit_w[tok0 + P :] = weights
    node_mask, edge_mask, node_infl = prune(
        kind, src, dst, w, logit_w, node_threshold, edge_threshold
    )
    rep, comp = scores(kind, src, dst, w, logit_w)
    km = torch.cat(kept_mass)
    return AttributionGraph(
        prompt=prompt if isinstance(prompt, str) else "".join(fr.tokens),
        tokens=fr.tokens,
        token_ids=fr.token_ids.numpy().astype(np.int64),
        basis=basis.name,
        model_name=fr.model_name,
        n_layers=fr.n_layers,
        node_kind=kind,
        node_layer=node_layer,
        node_pos=node_pos,
        node_index=node_index,
        node_activation=node_act,
        node_bias=node_bias,
        node_influence=node_infl.astype(np.float32),
        node_mask=node_mask,
        edge_src=src,
        edge_dst=dst,
        edge_weight=w,
        edge_mask=edge_mask,
        logit_weights=logit_w.astype(np.float32),
        logit_labels=labels,
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
        replacement_score=rep,
        completeness_score=comp,
        stats={
            "rows": n_b + K,
            "seconds": round(time.perf_counter() - t0, 3),
            "min_edge_share": min_edge_share,
            "stored_row_mass_mean": float(km.mean()),
            "logit_token_ids": [int(i) for i in ids[: len(dirs)]],
            "baseline_id": int(ids[1]) if len(ids) > len(dirs) else None,
            # a set or direction target: its vocabulary vector's nonzero entries
            "logit_direction": None if ids or isinstance(dirs[0], Direction) else _sparse(dirs[0]),
            "residual_direction": (
                dirs[0].vector.tolist() if isinstance(dirs[0], Direction) else None
            ),
        },
    )
