"""AttentionView: every head as a thumbnail, a zoomable head on canvas, the prompt as tokens."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import traitlets

from ._codec import encode, is_causal, to_numpy
from ._explain_panel import ExplainCells
from ._validate import attention_array, index_in, token_list
from ._view import pack

THUMB = 32  # thumbnail side in cells (prompts shorter than this keep every position)
SCORE_NAMES = ("previous_token", "induction", "duplicate_token", "first_token", "entropy")


def thumbnails(att: np.ndarray, size: int = THUMB) -> np.ndarray:
    """Downsample ``[layers, heads, n, n]`` patterns to ``[.., t, t]``, ``t = min(n, size)``.

    Cell ``(a, b)`` is the attention mass that the queries of block ``a`` put on the keys of
    block ``b``, averaged over those queries: rows still sum to 1 and a sharp head stays sharp.

    Examples
    --------
    >>> att = np.tril(np.ones((1, 1, 64, 64))); att /= att.sum(-1, keepdims=True)
    >>> th = thumbnails(att, 32)
    >>> th.shape, bool(np.allclose(th.sum(-1), 1))
    ((1, 1, 32, 32), True)
    """
    n = att.shape[-1]
    t = min(n, size)
    edges = (np.arange(t + 1) * n) // t
    counts = np.diff(edges).astype(np.float32)
    out = np.empty(att.shape[:2] + (t, t), dtype=np.float32)
    for li in range(att.shape[0]):  # one layer at a time bounds the temporaries
        cols = np.add.reduceat(att[li], edges[:-1], axis=-1)  # [heads, n, t]
        out[li] = np.add.reduceat(cols, edges[:-1], axis=-2) / counts[:, None]
    return out


def pattern_scores(att: np.ndarray) -> dict[str, np.ndarray]:
    """Cheap per-prompt head scores from ``[layers, heads, n, n]`` patterns (numpy only).

    - ``previous_token``: mean attention of each query ``q >= 1`` on ``q - 1``;
    - ``first_token``: mean attention on position 0;
    - ``entropy``: mean entropy of the query rows, in nats (low = sharp, focused heads).

    Examples
    --------
    >>> att = np.zeros((1, 1, 3, 3)); att[0, 0, 0, 0] = 1; att[0, 0, 1, 0] = att[0, 0, 2, 1] = 1
    >>> {k: round(float(v[0, 0]), 2) for k, v in pattern_scores(att).items()}
    {'previous_token': 1.0, 'first_token': 0.67, 'entropy': 0.0}
    """
    n_layers, n_heads, n, _ = att.shape
    prev = np.zeros((n_layers, n_heads), dtype=np.float32)
    first = np.zeros((n_layers, n_heads), dtype=np.float32)
    ent = np.zeros((n_layers, n_heads), dtype=np.float32)
    q = np.arange(1, n)
    for li in range(n_layers):
        a = att[li]
        if n > 1:
            prev[li] = a[:, q, q - 1].mean(-1)
        first[li] = a[:, :, 0].mean(-1)
        for h in range(n_heads):
            p = np.clip(a[h], 0.0, None)
            with np.errstate(divide="ignore", invalid="ignore"):
                logp = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), 0.0)
            ent[li, h] = max(0.0, float(-(p * logp).sum(-1).mean()))
    return {"previous_token": prev, "first_token": first, "entropy": ent}


def _score_table(name: str, value: Any, shape: tuple[int, int]) -> list[list[float | None]]:
    arr = to_numpy(value)
    if arr.shape != shape:
        raise ValueError(
            f"scores[{name!r}] has shape {tuple(arr.shape)}, expected [layers, heads] = {shape}. "
            "Pass one score per captured head, e.g. cb.head_scores(cap)[name]."
        )
    return [[None if not np.isfinite(v) else round(float(v), 5) for v in row] for row in arr]


class AttentionView(ExplainCells):
    """Attention patterns of one prompt: every head at a glance, zoom one, hover a token.

    A grid shows every layer × head as a small thumbnail; clicking one zooms it on a
    canvas (wheel or +/− to zoom, drag to pan) with token labels on both axes. Hovering a
    token colours the prompt by where it looks (before it) and who looks at it (after it);
    a click locks it, a second click or Escape unlocks. Heads arrive from the kernel on
    demand, as uint8 (lower triangle only for causal patterns), and are cached in the browser.

    Parameters
    ----------
    attention : array or tensor, ``[layers, heads, query, key]`` or ``[heads, query, key]``
        Attention probabilities (rows sum to 1).
    tokens : list of str
        One string per position.
    layers : list of int, optional
        The model layer index of each entry of the first dim (default ``0..layers-1``).
    layer, head : int
        The head shown first (``layer`` indexes the first dim of ``attention``).
    scores : mapping of str to ``[layers, heads]`` arrays, optional
        Head scores to sort and highlight by (e.g. ``cb.head_scores(model, tok)``). When
        left out, previous-token and first-token scores are computed from the patterns;
        entropy always is.
    export_heads : list of (layer, head), optional
        Heads a report keeps at full resolution first when not all of them fit its budget
        (``layer`` is the model's layer index). By default: the selected head, then the
        heads with the highest scores.
    explainer, head_output : callable, optional
        Make a click on a cell explain it (see :func:`circuitboard.attention`, which passes
        :func:`circuitboard.explain_attention` / :func:`circuitboard.explain_head_output`).
    explain_target : str
        How the panel names the attribution target of ``head_output``.

    Examples
    --------
    >>> import numpy as np
    >>> att = np.tril(np.ones((2, 4, 5, 5))); att /= att.sum(-1, keepdims=True)
    >>> view = AttentionView(attention=att, tokens=["a", "b", "c", "d", "e"])
    >>> view.n_layers, view.n_heads, view.causal
    (2, 4, True)
    >>> view.link.head = 3  # moves the view; view.selection reads it back
    >>> view.selection["head"]
    3
    """

    _view = traitlets.Unicode("attention").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Token strings, one per position."""
    layer_indices = traitlets.List(traitlets.Int()).tag(sync=True)
    """Model layer index of each captured layer."""
    n_heads = traitlets.Int().tag(sync=True)
    """Heads per layer."""
    causal = traitlets.Bool(False).tag(sync=True)
    """Whether every pattern is zero above the diagonal (heads then travel as lower triangles)."""
    scores = traitlets.Dict().tag(sync=True)
    """Head scores ``{name: [layers][heads]}`` the grid can sort and highlight by."""
    _initial = traitlets.Dict().tag(sync=True)  # {layer, head, pattern: Encoded} first paint
    _thumbs = traitlets.Dict().tag(sync=True)  # Encoded [layers, heads, t, t] uint8

    _fetchers: ClassVar[dict[str, str]] = {
        "fetch-head": "_fetch_head",
        "fetch-included": "_fetch_included",
        **ExplainCells._fetchers,
    }

    def __init__(
        self,
        attention: Any,
        tokens: Any,
        *,
        layers: list[int] | None = None,
        layer: int = 0,
        head: int = 0,
        scores: Mapping[str, Any] | None = None,
        export_heads: Iterable[tuple[int, int]] | None = None,
        explainer: Any = None,
        head_output: Any = None,
        explain_target: str = "",
        prepare_head: Any = None,
        **kwargs: Any,
    ) -> None:
        arr = attention_array(attention)
        n_layers, n_heads, n_q, n_k = arr.shape
        if n_q != n_k:
            raise ValueError(
                f"attention must be square over positions [.., query, key]; got query={n_q}, "
                f"key={n_k}. Slice cached keys away before passing a generation step."
            )
        tokens = token_list(tokens, n_q, "attention")
        layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
        if len(layers) != n_layers:
            raise ValueError(f"layers has {len(layers)} entries for {n_layers} captured layers.")
        li = index_in("layer", layer, n_layers)
        hi = index_in("head", head, n_heads)
        if scores is not None and not isinstance(scores, Mapping):
            raise TypeError(
                f"scores must be a mapping of name to a [layers, heads] array; got "
                f"{type(scores).__name__}. Example: scores={{'induction': array}}."
            )
        self._attention = arr
        self._causal = is_causal(arr)
        computed = pattern_scores(arr)
        given = dict(scores or {})
        table = {k: _score_table(k, v, (n_layers, n_heads)) for k, v in given.items()}
        for k, v in computed.items():
            if k not in table:
                table[k] = _score_table(k, v, (n_layers, n_heads))
        self._export_heads = [(int(lay), int(h)) for lay, h in (export_heads or [])]
        for lay, h in self._export_heads:
            if lay not in layers:
                raise IndexError(f"export_heads has layer {lay}, which was not captured: {layers}.")
            index_in("head", h, n_heads)
        self._pending_plan: list[tuple[int, int]] | None = None
        self._page_cost: float | None = None
        super().__init__(
            tokens=tokens,
            layer_indices=layers,
            n_heads=n_heads,
            causal=self._causal,
            scores=table,
            _initial={"layer": li, "head": hi, "pattern": self._encode_head(li, hi)},
            _thumbs=encode(thumbnails(arr), lo=0.0, hi=1.0),
            **kwargs,
        )
        if self.link.layer is None:
            self.link.select(layer=layers[li], head=hi)
        self._init_explain(explainer, head_output, explain_target, prepare_head)

    @property
    def n_layers(self) -> int:
        """Number of captured layers."""
        return len(self.layer_indices)

    @property
    def n_tokens(self) -> int:
        """Number of positions."""
        return self._attention.shape[-1]

    def _position(self, model_layer: int) -> int:
        try:
            return self.layer_indices.index(int(model_layer))
        except (ValueError, TypeError):
            raise IndexError(
                f"layer {model_layer} was not captured; captured layers: {self.layer_indices}."
            ) from None

    def pattern(self, layer: int, head: int) -> np.ndarray:
        """The ``[query, key]`` pattern of a head (``layer`` is the model's layer index)."""
        return self._attention[self._position(layer), index_in("head", head, self.n_heads)]

    def _encode_head(self, pos: int, head: int) -> dict[str, Any]:
        return dict(encode(self._attention[pos, head], lo=0.0, hi=1.0, tril=self._causal))

    # -- fetch handlers ------------------------------------------------------------------
    def _fetch_head(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        pos = self._position(msg.get("layer"))  # type: ignore[arg-type]
        head = index_in("head", msg.get("head"), self.n_heads)  # type: ignore[arg-type]
        return pack(layer=self.layer_indices[pos], head=head, pattern=self._encode_head(pos, head))

    def _fetch_included(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        # Live: every head can be fetched. While a report is written, the heads it embeds.
        plan, self._pending_plan = self._pending_plan, None
        if plan is None or len(plan) == self.n_layers * self.n_heads:
            return pack(all=True, heads=[])
        return pack(all=False, heads=[[lay, h] for lay, h in plan])

    # -- export --------------------------------------------------------------------------
    def head_bytes(self) -> int:
        """Bytes of one full-resolution head as sent (uint8, lower triangle when causal)."""
        n = self.n_tokens
        return n * (n + 1) // 2 if self._causal else n * n

    def _ranked_heads(self) -> list[tuple[int, int]]:
        """Every head (model layer, head), most worth keeping at full resolution first."""
        init = self._initial
        order: list[tuple[int, int]] = list(self._export_heads)
        order.insert(0 if not order else 1, (self.layer_indices[init["layer"]], init["head"]))
        rankings = []
        for name in ("induction", "previous_token", "duplicate_token", "entropy"):
            table = self.scores.get(name)
            if not table:
                continue
            vals = np.array([[np.nan if v is None else v for v in row] for row in table], float)
            vals = -vals if name == "entropy" else vals  # sharp heads first
            vals = np.nan_to_num(vals, nan=-np.inf)
            flat = np.argsort(-vals, axis=None, kind="stable")
            rankings.append(
                [(self.layer_indices[i // self.n_heads], int(i % self.n_heads)) for i in flat]
            )
        for group in zip(*rankings, strict=False):
            order += group
        order += [(lay, h) for lay in self.layer_indices for h in range(self.n_heads)]
        seen: set[tuple[int, int]] = set()
        return [x for x in order if not (x in seen or seen.add(x))]

    def _page_bytes_per_head(self) -> float:
        """Estimated bytes one full head adds to a report (compressed, base64), from a sample."""
        if getattr(self, "_page_cost", None) is None:
            ranked = self._ranked_heads()
            sample = ranked[:: max(1, len(ranked) // 6)][:6]
            sizes = []
            for lay, h in sample:
                data = self._encode_head(self._position(lay), h)["data"]
                sizes.append(len(zlib.compress(data, 6)) * 4 / 3 + 80)
            self._page_cost = float(max(sizes))
        return self._page_cost

    def export_plan(self, budget_bytes: int) -> list[tuple[int, int]]:
        """Heads (model layer, head) a report keeps at full resolution, best first.

        ``budget_bytes`` counts raw bytes, as the report writer passes it (it assumes ~2x
        compression); heads are counted at their measured compressed size. Every head is
        kept when they all fit; otherwise the chosen heads (``export_heads``, then the
        selected head and the best-scoring ones) while they fit, at least one. The others
        show their thumbnails.
        """
        fit = max(1, int((int(budget_bytes) / 2) // self._page_bytes_per_head()))
        ranked = self._ranked_heads()
        return ranked if fit >= len(ranked) else ranked[:fit]

    def export_requests(self, budget_bytes: int) -> list[dict[str, Any]]:
        explain = self.explain_requests(budget_bytes)  # the selected head's cells, explained
        budget_bytes -= self.explain_budget(budget_bytes)
        plan = self.export_plan(budget_bytes)
        self._pending_plan = plan  # answered by the fetch-included request, first in line
        reqs: list[dict[str, Any]] = [{"kind": "fetch-included"}]
        reqs += [{"kind": "fetch-head", "layer": lay, "head": h} for lay, h in plan]
        return reqs + explain

    def export_notes(self, budget_bytes: int) -> list[str]:
        explained = self.explain_notes(budget_bytes)
        budget_bytes -= self.explain_budget(budget_bytes)
        plan = self.export_plan(budget_bytes)
        total = self.n_layers * self.n_heads
        if len(plan) == total:
            return explained
        t = self._thumbs["shape"][-1]
        kept = ", ".join(f"L{lay}H{h}" for lay, h in sorted(plan))
        return [
            f"Attention: {len(plan)} of {total} heads at full resolution ({kept}); the other "
            f"{total - len(plan)} are {t}×{t} thumbnails; raise budget_bytes= in cb.report "
            "to include more."
        ] + explained
