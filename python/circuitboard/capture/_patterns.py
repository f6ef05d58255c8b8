"""Attention patterns recomputed on demand, in blocks, from the queries and keys a capture recorded.

A layer's weights are ``softmax(softcap(q k^T * scaling) masked)`` over the keys each query may
see; :class:`LayerSpec` holds what the model's attention call used (its scaling, soft-cap and
mask, the mask as one ``[lo, hi)`` key interval per query when it is one, else dense), so the
result equals the model's eager ``output_attentions`` to float error. Queries are processed in
chunks whose temporaries stay under :data:`CHUNK_BYTES`; whole layers asked for by name are
cached up to a byte bound (:attr:`Patterns.cache_bytes`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

CHUNK_BYTES = 32 * 2**20
"""Upper bound of the float32 scores one chunk of query rows holds while it is computed."""

DEFAULT_CACHE_BYTES = 512 * 2**20
"""Whole-layer patterns kept (least recently used dropped first) by :meth:`Patterns.full`."""

REDUCES = ("mean", "max")

Heads = int | Sequence[int] | slice | None


@dataclass(frozen=True)
class LayerSpec:
    """What reproduces one layer's attention weights for one prompt.

    ``span`` is ``int32 [n, 2]``: query ``i`` attends to keys ``span[i, 0] <= j < span[i, 1]``
    (causal: ``[0, i + 1)``; a sliding window of ``w``: ``[max(0, i - w + 1), i + 1)``;
    bidirectional: ``[0, n)``). When the mask is not one interval per query, ``allowed`` is the
    dense ``bool [n, n]`` mask instead and ``span`` the rows' outer bounds.
    """

    scaling: float
    softcap: float | None
    span: torch.Tensor
    allowed: torch.Tensor | None = None

    def to_meta(self) -> dict[str, Any]:
        return {"scaling": self.scaling, "softcap": self.softcap, "dense": self.allowed is not None}


def span_from_allowed(allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[n, n]`` bool mask -> (``span [n, 2]``, ``None`` or the dense mask if not intervals).

    >>> span, dense = span_from_allowed(torch.ones(3, 3, dtype=torch.bool).tril())
    >>> span.tolist(), dense
    ([[0, 1], [0, 2], [0, 3]], None)
    """
    n_k = allowed.shape[-1]
    any_ = allowed.any(-1)
    idx = torch.arange(n_k, device=allowed.device)
    lo = torch.where(allowed, idx, n_k).amin(-1)
    hi = torch.where(allowed, idx + 1, 0).amax(-1)
    lo = torch.where(any_, lo, 0)
    span = torch.stack([lo, hi], -1).to(torch.int32).cpu()
    intervals = bool((allowed.sum(-1) == (hi - lo).clamp(min=0)).all())
    return span, None if intervals else allowed.cpu().clone()


def _heads(heads: Heads, n: int) -> list[int]:
    if heads is None:
        return list(range(n))
    if isinstance(heads, slice):
        return list(range(n))[heads]
    items = [heads] if isinstance(heads, int) else list(heads)
    for h in items:
        if not isinstance(h, int) or isinstance(h, bool) or not -n <= h < n:
            raise IndexError(f"head {h!r} is out of range: this layer has {n} heads (0..{n - 1}).")
    return [h % n for h in items]


def _range(s: slice | int | None, n: int, what: str) -> tuple[int, int]:
    if s is None:
        return 0, n
    if isinstance(s, int):
        if not -n <= s < n:
            raise IndexError(f"{what} {s} is out of range for {n} tokens.")
        s %= n
        return s, s + 1
    if not isinstance(s, slice) or s.step not in (None, 1):
        raise ValueError(f"{what} must be an int or a slice with step 1; got {s!r}.")
    a, b, _ = s.indices(n)
    return a, max(a, b)


def rows_per_chunk(n_heads: int, n_keys: int, budget: int = CHUNK_BYTES) -> int:
    """Query rows whose float32 scores for ``n_heads`` heads fit ``budget`` bytes (at least 1)."""
    return max(1, budget // max(1, 4 * n_heads * n_keys))


class Patterns:
    """Every captured layer's attention pattern, recomputed from ``blocks.{l}.attn.hook_q/k``.

    ``tensors`` is the capture's tensor dict (``hook_q`` ``[pos, heads, d_head]``, ``hook_k``
    ``[pos, kv_heads, d_head]``); ``specs`` maps layer -> :class:`LayerSpec`.
    """

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        specs: Mapping[int, LayerSpec],
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self._tensors = tensors
        self.specs = dict(sorted(specs.items()))
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def layers(self) -> list[int]:
        return list(self.specs)

    def _qk(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, LayerSpec]:
        spec = self.specs.get(layer)
        if spec is None:
            raise KeyError(
                f"layer {layer}'s queries and keys were not captured; captured layers: "
                f"{self.layers()}. Capture again with layers=[..., {layer}]."
            )
        p = f"blocks.{layer}.attn."
        return self._tensors[p + "hook_q"], self._tensors[p + "hook_k"], spec

    def n_heads(self, layer: int) -> int:
        return self._qk(layer)[0].shape[1]

    def n_tokens(self, layer: int) -> int:
        return self._qk(layer)[0].shape[0]

    def dtype(self, layer: int) -> torch.dtype:
        return self._qk(layer)[0].dtype

    def _block(self, layer: int, heads: list[int], a: int, b: int) -> tuple[torch.Tensor, int]:
        """Float32 weights of query rows ``[a, b)`` over the keys they may see: ``[h, b-a, w]``
        and the first key index ``w`` starts at."""
        q, k, spec = self._qk(layer)
        groups = q.shape[1] // k.shape[1]
        span = spec.span[a:b]
        lo, hi = int(span[:, 0].min()), int(span[:, 1].max())
        hi = max(hi, lo + 1)
        hs = torch.tensor(heads)
        qb = q[a:b, hs].float().transpose(0, 1)  # [h, nq, d]
        kb = k[lo:hi, hs // groups].float().transpose(0, 1)  # [h, w, d]
        scores = torch.matmul(qb, kb.transpose(-1, -2)) * spec.scaling
        if spec.softcap is not None:
            scores = torch.tanh(scores / spec.softcap) * spec.softcap
        if spec.allowed is not None:
            ok = spec.allowed[a:b, lo:hi]
        else:
            j = torch.arange(lo, hi)
            ok = (j >= span[:, :1]) & (j < span[:, 1:])
        scores.masked_fill_(~ok, float("-inf"))
        return torch.softmax(scores, dim=-1), lo

    def rows(
        self,
        layer: int,
        heads: Heads = None,
        queries: slice | int | None = None,
        keys: slice | int | None = None,
        chunk: int | None = None,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(first_query, weights [h, rows, keys])`` float32 chunks of query rows."""
        q, _, _ = self._qk(layer)
        n = q.shape[0]
        hs = _heads(heads, q.shape[1])
        qa, qb = _range(queries, n, "queries")
        ka, kb = _range(keys, n, "keys")
        step = chunk or rows_per_chunk(len(hs), n)
        for a in range(qa, qb, step):
            b = min(qb, a + step)
            w, lo = self._block(layer, hs, a, b)
            out = torch.zeros(len(hs), b - a, kb - ka)
            s, e = max(ka, lo), min(kb, lo + w.shape[-1])
            if e > s:
                out[:, :, s - ka : e - ka] = w[:, :, s - lo : e - lo]
            yield a, out
            # drop this chunk before computing the next: its buffers would otherwise stay alive
            # (bound here) next to the new chunk's scores and softmax, one more chunk of peak
            del w, out

    def pattern(
        self,
        layer: int,
        heads: Heads = None,
        queries: slice | int | None = None,
        keys: slice | int | None = None,
    ) -> torch.Tensor:
        """Float32 ``[h, queries, keys]`` block of the pattern, computed in chunks."""
        parts = [w for _, w in self.rows(layer, heads, queries, keys)]
        return torch.cat(parts, dim=1)

    def full(self, layer: int) -> torch.Tensor:
        """``[heads, pos, pos]`` in the recorded dtype (as eager ``output_attentions``), cached."""
        hit = self._cache.get(layer)
        if hit is not None:
            self._cache.move_to_end(layer)
            return hit
        out = self.pattern(layer).to(self.dtype(layer))
        size = out.numel() * out.element_size()
        if size <= self.cache_bytes:
            while (
                self._cache
                and sum(t.numel() * t.element_size() for t in self._cache.values()) + size
                > self.cache_bytes
            ):
                self._cache.popitem(last=False)
            self._cache[layer] = out
        return out

    def clear_cache(self) -> None:
        self._cache.clear()


def block_edges(n: int, size: int) -> torch.Tensor:
    """Edges of ``min(n, size)`` near-equal blocks over ``n`` positions (as the thumbnails cut)."""
    t = max(1, min(n, size))
    return (torch.arange(t + 1) * n) // t


def pool_rows(
    chunks: Iterator[tuple[int, torch.Tensor]],
    n: int,
    n_heads: int,
    size: int,
    reduce: str = "mean",
) -> torch.Tensor:
    """Pooled ``[h, t, t]`` overview (``t = min(n, size)``) from chunks of query rows.

    ``chunks`` yields ``(first_query, weights [h, rows, n])`` as :meth:`Patterns.rows` does.
    ``"mean"``: cell ``(A, B)`` is the attention mass the queries of block ``A`` put on the keys
    of block ``B``, averaged over those queries (rows still sum to 1, as the full pattern's do).
    ``"max"``: the largest single weight in the block (one sharp cell stays visible).

    >>> w = torch.eye(4)[None]
    >>> pool_rows(iter([(0, w)]), 4, 1, 2, "mean")[0].tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    if reduce not in REDUCES:
        raise ValueError(f"reduce must be one of {REDUCES}; got {reduce!r}.")
    edges = block_edges(n, size)
    t = len(edges) - 1
    block_of = torch.repeat_interleave(torch.arange(t), torch.diff(edges))  # position -> block
    out = torch.zeros(n_heads, t, t)
    for a, w in chunks:
        r = block_of[a : a + w.shape[1]]
        if reduce == "mean":
            cols = torch.zeros(n_heads, w.shape[1], t).index_add_(2, block_of, w)
            out.index_add_(1, r, cols)
        else:
            cols = torch.full((n_heads, w.shape[1], t), float("-inf"))
            cols.scatter_reduce_(2, block_of.expand_as(w), w, "amax")
            out.scatter_reduce_(1, r[None, :, None].expand_as(cols), cols, "amax")
    if reduce == "mean":
        out /= torch.diff(edges).to(out.dtype)[None, :, None]
    return out


def _pool_keys(w: torch.Tensor, lo: int, edges: torch.Tensor, reduce: str) -> torch.Tensor:
    """``[rows, t]``: the sum or max of window ``w`` (keys ``lo..``) over each key block."""
    n, t = int(edges[-1]), len(edges) - 1
    width = w.shape[1]
    if n % t == 0:  # equal blocks: a reshape instead of a scatter (several times faster)
        blk = n // t
        a0, a1 = (lo // blk) * blk, -(-(lo + width) // blk) * blk
        if a0 != lo or a1 != lo + width:
            padded = w.new_zeros(w.shape[0], a1 - a0)
            padded[:, lo - a0 : lo - a0 + width] = w
            w = padded
        r = w.reshape(w.shape[0], -1, blk)
        part = r.sum(-1) if reduce == "sum" else r.amax(-1)
        out = w.new_zeros(w.shape[0], t)
        out[:, a0 // blk : a1 // blk] = part
        return out
    of = torch.repeat_interleave(torch.arange(t), torch.diff(edges))[lo : lo + width]
    out = w.new_zeros(w.shape[0], t)
    if reduce == "sum":
        return out.index_add_(1, of, w)
    return out.scatter_reduce_(1, of.expand_as(w), w, "amax")


def summarize_head(
    patterns: Patterns, layer: int, head: int, thumb: int, overview: int
) -> dict[str, Any]:
    """One pass over one head of ``layer``: what an attention view shows before zooming in.

    Returns ``thumb`` ``[t, t]`` (mean attention mass per block, ``t = min(n, thumb)``),
    ``overview`` ``[o, o]`` (the max weight per block; None when ``overview`` is 0) and the
    scores ``previous_token`` (mean weight on ``q - 1`` over queries ``q >= 1``),
    ``first_token`` (mean weight on position 0) and ``entropy`` (mean row entropy, nats). Rows
    are computed in chunks over only the keys they may see, never the whole pattern.
    """
    q, _, spec = patterns._qk(layer)
    n = q.shape[0]
    te = block_edges(n, thumb)
    t_of = torch.repeat_interleave(torch.arange(len(te) - 1), torch.diff(te))
    th = torch.zeros(len(te) - 1, len(te) - 1, dtype=torch.float64)
    ov = o_of = oe = None
    if overview:
        oe = block_edges(n, overview)
        o_of = torch.repeat_interleave(torch.arange(len(oe) - 1), torch.diff(oe))
        ov = torch.zeros(len(oe) - 1, len(oe) - 1)
    prev = first = ent = 0.0
    step = rows_per_chunk(1, n)
    for a in range(0, n, step):
        b = min(n, a + step)
        w, lo = patterns._block(layer, [head], a, b)
        w = w[0]  # [rows, window]
        cols = _pool_keys(w, lo, te, "sum")
        th.index_add_(0, t_of[a:b], cols.double())
        if ov is not None:
            cmax = _pool_keys(w, lo, oe, "max")
            ov.scatter_reduce_(0, o_of[a:b, None].expand_as(cmax), cmax, "amax")
        i = torch.arange(a, b)
        ok = (i >= 1) & (i - 1 >= lo) & (i - 1 < lo + w.shape[1])
        if ok.any():
            prev += float(w[ok.nonzero()[:, 0], (i[ok] - 1 - lo)].double().sum())
        if lo == 0:
            first += float(w[:, 0].double().sum())
        ent -= float(torch.special.xlogy(w, w).double().sum())
    th /= torch.diff(te).double()[:, None]
    return {
        "thumb": th.float(),
        "overview": ov,
        "previous_token": prev / (n - 1) if n > 1 else 0.0,
        "first_token": first / n,
        "entropy": max(0.0, ent / n),
    }
