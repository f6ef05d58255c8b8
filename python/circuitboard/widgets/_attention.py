"""AttentionView: every head as a thumbnail, a zoomable head on canvas, the prompt as tokens."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import traitlets

from .._threads import one_thread
from ._attention_frames import FRAMES_SHARE, AttentionFrames
from ._codec import encode, is_causal, to_numpy
from ._explain_panel import ExplainCells
from ._pattern_source import ArraySource, CaptureSource, HeadSummary
from ._validate import attention_array, index_in, token_list
from ._view import pack

THUMB = 32  # thumbnail side in cells (prompts shorter than this keep every position)
SCORE_NAMES = ("previous_token", "induction", "duplicate_token", "first_token", "entropy")
FULL_MAX = 2048
"""Up to this many tokens a head travels whole; beyond, as a pooled overview plus tiles."""
OVERVIEW = 512  # overview side (cells) of a long prompt's head
TILE = 512  # full-resolution tiles are TILE x TILE blocks on a fixed grid (cacheable, exportable)
TILE_MAX_BYTES = 4 * 2**20  # one tile reply, well under the 10 MiB message cap
POOLS = ("max", "mean")


def tile_requests(
    layer: int,
    head: int,
    q: tuple[int, int],
    k: tuple[int, int],
    *,
    n: int,
    tile: int = TILE,
    causal: bool = True,
) -> list[dict[str, Any]]:
    """The grid-aligned ``fetch-tile`` requests that cover queries ``q`` x keys ``k``.

    Any region is split into ``tile`` x ``tile`` blocks of the fixed grid (each reply is
    ``tile**2`` bytes, far under the 10 MiB message cap; the browser builds the same list, so
    live replies are cached and a report's embedded ones are found). Causal heads skip the
    blocks that lie wholly above the diagonal.

    >>> [(r["q0"], r["k0"]) for r in tile_requests(0, 1, (0, 900), (0, 900), n=1000, tile=512)]
    [(0, 0), (512, 0), (512, 512)]
    """
    out = []
    for q0 in range((max(0, q[0]) // tile) * tile, min(n, q[1]), tile):
        for k0 in range((max(0, k[0]) // tile) * tile, min(n, k[1]), tile):
            if causal and k0 > q0 + tile - 1:
                continue
            out.append(
                {
                    "kind": "fetch-tile",
                    "layer": layer,
                    "head": head,
                    "q0": q0,
                    "q1": min(n, q0 + tile),
                    "k0": k0,
                    "k1": min(n, k0 + tile),
                }
            )
    return out


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


class AttentionView(ExplainCells, AttentionFrames):
    """Attention patterns of one prompt: every head at a glance, zoom one, hover a token.

    A grid shows every layer × head as a small thumbnail; clicking one zooms it on a
    canvas (wheel or +/− to zoom, drag to pan) with token labels on both axes. Hovering a
    token colours the prompt by where it looks (before it) and who looks at it (after it);
    a click locks it, a second click or Escape unlocks. Heads arrive from the kernel on
    demand, as uint8 (lower triangle only for causal patterns), and are cached in the browser.

    Long prompts (more than :data:`FULL_MAX` tokens, or ``overview_size`` set) work like a map:
    the zoomed head is a pooled overview (``pool="max"``: the largest weight of each block, so
    one sharp weight stays visible; or ``"mean"``: the block's mean mass), and zooming in fetches
    full-resolution tiles of the visible region only. Thumbnails (mean mass per block) and the
    computed scores arrive head by head after the first paint, with a progress bar. A capture
    passed as ``attention`` is read in blocks from its queries and keys
    (:meth:`~circuitboard.capture.Capture.pattern`): no ``[heads, n, n]`` array is ever built.

    Parameters
    ----------
    attention : array, tensor or Capture
        Attention probabilities ``[layers, heads, query, key]`` or ``[heads, query, key]``
        (rows sum to 1), or a capture (its patterns are computed on demand).
    tokens : list of str
        One string per position (default: a capture's tokens).
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
    overview_size : int, optional
        Side of the pooled overview of a long prompt's head (default :data:`OVERVIEW` above
        :data:`FULL_MAX` tokens, else 0: heads travel whole).
    pool : "max" or "mean"
        How the overview pools a block (stated in the view).
    tile_size : int
        Side of the full-resolution tiles fetched when zoomed in (default :data:`TILE`).
    export_region : (first, last) query positions, optional
        Long prompts: the query rows ``[first, last)`` a report keeps at full resolution for
        the selected head and ``export_heads`` (default: every row, when it fits the budget).

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
    overview_size = traitlets.Int(0).tag(sync=True)
    """Side of a long prompt's pooled overview; 0 when every head travels whole."""
    pool = traitlets.Unicode("max").tag(sync=True)
    """How the overview pools a block of tokens: "max" or "mean"."""
    tile_size = traitlets.Int(TILE).tag(sync=True)
    """Side of the full-resolution tiles fetched when zoomed in (long prompts)."""
    _initial = traitlets.Dict().tag(sync=True)  # {layer, head, pattern | overview} first paint
    _thumbs = traitlets.Dict().tag(sync=True)  # Encoded [layers, heads, t, t] uint8
    image = traitlets.Dict().tag(sync=True)
    """An image capture's patch grid (:func:`image_state`); the tokens are then CLS + patches."""
    _thumbs_ready = traitlets.Bool(True).tag(sync=True)  # False: fetch them head by head
    _revision = traitlets.Int(0).tag(sync=True)  # set_attention bumps it: every copy redraws

    _fetchers: ClassVar[dict[str, str]] = {
        "fetch-head": "_fetch_head",
        "fetch-layer": "_fetch_layer",
        "fetch-included": "_fetch_included",
        "fetch-overview": "_fetch_overview",
        "fetch-thumb": "_fetch_thumb",
        "fetch-tile": "_fetch_tile",
        **ExplainCells._fetchers,
        **AttentionFrames._fetchers,
    }

    @one_thread()  # many small per-head operations (see one_thread)
    def __init__(
        self,
        attention: Any,
        tokens: Any = None,
        *,
        layers: list[int] | None = None,
        layer: int = 0,
        head: int = 0,
        scores: Mapping[str, Any] | None = None,
        export_heads: Iterable[tuple[int, int]] | None = None,
        overview_size: int | None = None,
        pool: str = "max",
        tile_size: int = TILE,
        export_region: tuple[int, int] | None = None,
        explainer: Any = None,
        head_output: Any = None,
        explain_target: str = "",
        prepare_head: Any = None,
        **kwargs: Any,
    ) -> None:
        source: ArraySource | CaptureSource
        if hasattr(attention, "pattern_rows") and hasattr(attention, "tokens"):  # a Capture
            captured = attention.layers("attn.hook_pattern")
            if not captured:
                raise ValueError(
                    "this capture has no attention patterns; capture again with "
                    "what=('pattern', ...) or the default what."
                )
            if layers is None:
                layers = captured
            missing = [x for x in layers if x not in captured]
            if missing:
                raise IndexError(f"layers {missing} were not captured; captured: {captured}.")
            source = CaptureSource(attention, [int(x) for x in layers])
            tokens = attention.tokens if tokens is None else tokens
            causal = source.causal()
        else:
            arr = attention_array(attention)
            n_q, n_k = arr.shape[-2:]
            if n_q != n_k:
                raise ValueError(
                    f"attention must be square over positions [.., query, key]; got query={n_q}, "
                    f"key={n_k}. Slice cached keys away before passing a generation step."
                )
            source = ArraySource(arr)
            causal = is_causal(arr)
        n_layers, n_heads, n_q = source.n_layers, source.n_heads, source.n
        tokens = token_list(tokens, n_q, "attention")
        layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
        if len(layers) != n_layers:
            raise ValueError(f"layers has {len(layers)} entries for {n_layers} captured layers.")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}; got {pool!r}.")
        if overview_size is None:
            overview_size = OVERVIEW if n_q > FULL_MAX else 0
        for name, v, least in (("overview_size", overview_size, 0), ("tile_size", tile_size, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ValueError(f"{name} must be an int >= {least}; got {v!r}.")
        li = index_in("layer", layer, n_layers)
        hi = index_in("head", head, n_heads)
        if scores is not None and not isinstance(scores, Mapping):
            raise TypeError(
                f"scores must be a mapping of name to a [layers, heads] array; got "
                f"{type(scores).__name__}. Example: scores={{'induction': array}}."
            )
        self._source = source
        self._causal = causal
        self._long = overview_size > 0
        self._overview = min(overview_size, n_q) if self._long else 0
        self._summaries: dict[tuple[int, int], tuple[HeadSummary, dict[str, Any] | None]] = {}
        given = dict(scores or {})
        self._given_scores = set(given)  # kept by set_attention; computed ones are redone
        table = {k: _score_table(k, v, (n_layers, n_heads)) for k, v in given.items()}
        if self._long:
            t = min(n_q, THUMB)
            thumbs = np.zeros((n_layers, n_heads, t, t), dtype=np.float32)
            computed: dict[str, Any] = {}  # they arrive with the thumbnails (fetch-thumb)
        elif isinstance(source, ArraySource):
            thumbs, computed = thumbnails(source.arr), pattern_scores(source.arr)
        else:
            thumbs, computed = self._all_summaries()
        for k, v in computed.items():
            if k not in table:
                table[k] = _score_table(k, v, (n_layers, n_heads))
        self._export_heads = [(int(lay), int(h)) for lay, h in (export_heads or [])]
        for lay, h in self._export_heads:
            if lay not in layers:
                raise IndexError(f"export_heads has layer {lay}, which was not captured: {layers}.")
            index_in("head", h, n_heads)
        if export_region is not None:
            a, b = (int(x) for x in export_region)
            if not 0 <= a < b <= n_q:
                raise ValueError(
                    f"export_region must be (first, last) query positions with 0 <= first < last "
                    f"<= {n_q}; got {export_region!r}."
                )
            export_region = (a, b)
        self._export_region = export_region
        self._pending_plan: list[tuple[int, int]] | None = None
        self._pending_tiles: list[tuple[int, int]] = []
        self._page_cost: float | None = None
        self._tile_cost: float | None = None
        first = (
            {"layer": li, "head": hi, "overview": self._overview_of(li, hi)}
            if self._long
            else {"layer": li, "head": hi, "pattern": self._encode_head(li, hi)}
        )
        super().__init__(
            tokens=tokens,
            layer_indices=layers,
            n_heads=n_heads,
            causal=self._causal,
            scores=table,
            overview_size=self._overview,
            pool=pool,
            tile_size=tile_size,
            _initial=first,
            _thumbs=encode(thumbs, lo=0.0, hi=1.0),
            _thumbs_ready=not self._long,
            **kwargs,
        )
        if self.link.layer is None:
            self.link.select(layer=layers[li], head=hi)
        self._init_explain(explainer, head_output, explain_target, prepare_head)
        self._init_frames()

    def set_attention(
        self, attention: Any, *, layer: int | None = None, head: int | None = None
    ) -> None:
        """Show other patterns of the same prompt (same layers, heads and tokens), e.g. a
        probe batch at another training step: every rendered copy of the view redraws.

        Scores passed to the constructor are kept; the computed ones are recomputed.
        ``layer`` (the model's layer index) and ``head`` pick the head drawn first.

        >>> import numpy as np
        >>> att = np.tril(np.ones((1, 2, 3, 3))); att /= att.sum(-1, keepdims=True)
        >>> view = AttentionView(att, ["a", "b", "c"])
        >>> view.set_attention(np.tril(np.ones((1, 2, 3, 3))) / 3, head=1)
        >>> round(float(view.pattern(0, 1)[2, 0]), 3)
        0.333
        """
        arr = self._same_prompt(attention)
        li = self._position(layer) if layer is not None else int(self._initial["layer"])
        hi = (
            index_in("head", head, self.n_heads) if head is not None else int(self._initial["head"])
        )
        fields = self._frame_fields(arr, heads=False)
        self._source = ArraySource(arr)
        self._causal = fields["causal"]
        self._summaries.clear()
        with self.hold_trait_notifications():
            self.causal = self._causal
            self.scores = fields["scores"]
            self._thumbs = fields["_thumbs"]
            self._initial = {"layer": li, "head": hi, "pattern": self._encode_head(li, hi)}
            self._revision += 1

    def _same_prompt(self, attention: Any) -> np.ndarray:
        """``attention`` as an array of the shown shape, for ``set_attention`` and frames."""
        if self._long or not isinstance(self._source, ArraySource):
            raise ValueError(
                "set_attention replaces array patterns of a short prompt; for a capture or a "
                "long prompt build a new AttentionView."
            )
        arr = attention_array(attention)
        want = (self.n_layers, self.n_heads, len(self.tokens), len(self.tokens))
        if tuple(arr.shape) != want:
            raise ValueError(
                f"set_attention needs patterns of the same shape {list(want)} [layers, heads, "
                f"query, key]; got {list(arr.shape)}. Build a new AttentionView for another "
                "prompt or model."
            )
        return arr

    def _frame_fields(self, attention: Any, *, heads: bool = True) -> dict[str, Any]:
        """What showing ``attention`` changes in the view's state: ``causal``, ``scores``
        (given ones kept, computed ones redone), ``_thumbs``, and, when the thumbnails are
        not the heads themselves, every head as ``_heads`` (a report's frame draws from it)."""
        arr = self._same_prompt(attention)
        causal = is_causal(arr)
        thumbs, computed = thumbnails(arr), pattern_scores(arr)
        table = {k: v for k, v in self.scores.items() if k in self._given_scores}
        for k, v in computed.items():
            if k not in table:
                table[k] = _score_table(k, v, (self.n_layers, self.n_heads))
        fields: dict[str, Any] = {
            "causal": causal,
            "scores": table,
            "_thumbs": encode(thumbs, lo=0.0, hi=1.0),
        }
        if heads and not self._thumbs_are_heads:
            fields["_heads"] = encode(arr, lo=0.0, hi=1.0, tril=causal)
        return fields

    @property
    def n_layers(self) -> int:
        """Number of captured layers."""
        return len(self.layer_indices)

    @property
    def n_tokens(self) -> int:
        """Number of positions."""
        return self._source.n

    def _position(self, model_layer: int) -> int:
        try:
            return self.layer_indices.index(int(model_layer))
        except (ValueError, TypeError):
            raise IndexError(
                f"layer {model_layer} was not captured; captured layers: {self.layer_indices}."
            ) from None

    def pattern(self, layer: int, head: int) -> np.ndarray:
        """The ``[query, key]`` pattern of a head (``layer`` is the model's layer index)."""
        return self._source.head(self._position(layer), index_in("head", head, self.n_heads))

    def _encode_head(self, pos: int, head: int) -> dict[str, Any]:
        return dict(encode(self._source.head(pos, head), lo=0.0, hi=1.0, tril=self._causal))

    # -- one pass per head: thumbnail, overview and scores -------------------------------
    def _summary(self, pos: int, head: int) -> tuple[HeadSummary, dict[str, Any] | None]:
        key = (pos, head)
        if key not in self._summaries:
            src = self._source
            s = src.summary(pos, head, THUMB, self._overview)
            enc = None
            if s.overview is not None:
                enc = dict(encode(s.overview, lo=0.0, hi=1.0, tril=self._causal))
                s.overview = None  # keep the (small) encoded copy only
            self._summaries[key] = (s, enc)
        return self._summaries[key]

    def _overview_of(self, pos: int, head: int) -> dict[str, Any]:
        enc = self._summary(pos, head)[1]
        if enc is None:
            raise ValueError("this view sends whole heads (fetch-head); it has no overviews.")
        return enc

    def _all_summaries(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        L, H = self._source.n_layers, self._source.n_heads
        t = min(self._source.n, THUMB)
        thumbs = np.zeros((L, H, t, t), dtype=np.float32)
        computed = {
            k: np.zeros((L, H), np.float32) for k in ("previous_token", "first_token", "entropy")
        }
        for li in range(L):
            for h in range(H):
                s = self._summary(li, h)[0]
                thumbs[li, h] = s.thumb
                for k in computed:
                    computed[k][li, h] = getattr(s, k)
        self._summaries.clear()  # short prompts: heads travel whole, nothing else to keep
        return thumbs, computed

    # -- fetch handlers ------------------------------------------------------------------
    def _fetch_head(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        pos = self._position(msg.get("layer"))  # type: ignore[arg-type]
        head = index_in("head", msg.get("head"), self.n_heads)  # type: ignore[arg-type]
        return pack(layer=self.layer_indices[pos], head=head, pattern=self._encode_head(pos, head))

    def _fetch_layer(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        # Every head of a layer in one message: Jupyter's cost is per message (about 100 ms
        # here), so the view fetches heads ahead of clicks a layer at a time.
        pos = self._position(msg.get("layer"))  # type: ignore[arg-type]
        heads = np.stack([self._source.head(pos, h) for h in range(self.n_heads)])
        enc = encode(heads, lo=0.0, hi=1.0, tril=self._causal)
        return pack(layer=self.layer_indices[pos], patterns=dict(enc))

    def _fetch_overview(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        pos, head = self._head_of(msg)
        if not self._long:
            raise ValueError("this view sends whole heads (fetch-head); it has no overviews.")
        return pack(layer=self.layer_indices[pos], head=head, overview=self._overview_of(pos, head))

    def _fetch_thumb(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        pos, head = self._head_of(msg)
        s = self._summary(pos, head)[0]
        scores = {k: getattr(s, k) for k in ("previous_token", "first_token", "entropy")}
        return pack(
            layer=self.layer_indices[pos],
            head=head,
            thumb=encode(s.thumb, lo=0.0, hi=1.0),
            scores=scores,
        )

    def _fetch_tile(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        pos, head = self._head_of(msg)
        n = self.n_tokens
        bounds = []
        for a, b in (("q0", "q1"), ("k0", "k1")):
            lo, hi = msg.get(a), msg.get(b)
            ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi))
            if not ok or not 0 <= lo < hi <= n:  # type: ignore[operator]
                raise ValueError(
                    f"fetch-tile needs ints 0 <= {a} < {b} <= {n}; got {a}={lo!r}, {b}={hi!r}."
                )
            bounds += [lo, hi]
        q0, q1, k0, k1 = bounds
        size = (q1 - q0) * (k1 - k0)
        if size > TILE_MAX_BYTES:
            raise ValueError(
                f"a {q1 - q0}x{k1 - k0} tile is {size / 2**20:.1f} MiB, above one reply's "
                f"{TILE_MAX_BYTES / 2**20:.0f} MiB; split the region into grid tiles "
                "(circuitboard.widgets._attention.tile_requests)."
            )
        block = self._source.block(pos, head, q0, q1, k0, k1)
        return pack(
            layer=self.layer_indices[pos],
            head=head,
            q0=q0,
            k0=k0,
            tile=encode(block, lo=0.0, hi=1.0),
        )

    def _head_of(self, msg: dict[str, Any]) -> tuple[int, int]:
        pos = self._position(msg.get("layer"))  # type: ignore[arg-type]
        return pos, index_in("head", msg.get("head"), self.n_heads)  # type: ignore[arg-type]

    def _fetch_included(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        # Live: every head can be fetched. While a report is written, the heads it embeds
        # (whole heads, or overviews of long prompts) and the heads whose tiles it embeds.
        plan, self._pending_plan = self._pending_plan, None
        tiles = [[lay, h] for lay, h in self._pending_tiles]
        self._pending_tiles = []
        frames = self._frames_included()  # a report's embedded frames (None: all, or none)
        if plan is None or (len(plan) == self.n_layers * self.n_heads and not self._long):
            return pack(all=True, heads=[], tiles=tiles, frames=frames)
        q, _ = self._region()
        heads = [[lay, h] for lay, h in plan]
        return pack(all=False, heads=heads, tiles=tiles, region=list(q), frames=frames)

    # -- export --------------------------------------------------------------------------
    def head_bytes(self) -> int:
        """Bytes of one head as sent (uint8, lower triangle when causal): the whole head, or
        its overview for long prompts."""
        n = self._overview or self.n_tokens
        return n * (n + 1) // 2 if self._causal else n * n

    @property
    def _thumbs_are_heads(self) -> bool:
        """A prompt no longer than the thumbnail side: each thumbnail is its head, whole (same
        codes as fetch-head), so the page draws clicks from them and reports embed no heads."""
        return not self._long and self.n_tokens <= THUMB

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
                pos = self._position(lay)
                enc = self._overview_of(pos, h) if self._long else self._encode_head(pos, h)
                sizes.append(len(zlib.compress(enc["data"], 6)) * 4 / 3 + 80)
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
        ranked = self._ranked_heads()
        if self._thumbs_are_heads:
            return ranked
        fit = max(1, int((int(budget_bytes) / 2) // self._page_bytes_per_head()))
        return ranked if fit >= len(ranked) else ranked[:fit]

    def _region(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(queries, keys) a report keeps at full resolution."""
        n = self.n_tokens
        q = self._export_region or (0, n)
        return q, (0, q[1] if self._causal else n)

    def _head_tiles(self, lay: int, h: int) -> list[dict[str, Any]]:
        q, k = self._region()
        n = self.n_tokens
        return tile_requests(lay, h, q, k, n=n, tile=self.tile_size, causal=self._causal)

    def _tiles_bytes(self, lay: int, h: int) -> float:
        """Estimated report bytes of one head's full-resolution tiles (from a sampled tile)."""
        reqs = self._head_tiles(lay, h)
        if self._tile_cost is None:
            sample = reqs[len(reqs) // 2]  # a tile off the first rows: typical density
            data = self._fetch_tile(sample)[1][0]
            self._tile_cost = len(zlib.compress(data, 6)) * 4 / 3 + 120
        return self._tile_cost * len(reqs)

    def _long_export(
        self, budget_bytes: int
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(heads whose overviews a report embeds, heads whose full tiles it embeds)."""
        ranked = self._ranked_heads()
        left = int(budget_bytes) / 2 - self.n_layers * self.n_heads * 1_500  # thumbnails
        tiles: list[tuple[int, int]] = []
        init = (self.layer_indices[self._initial["layer"]], self._initial["head"])
        per = self._page_bytes_per_head()
        for cand in dict.fromkeys([init, *self._export_heads]):  # selected, then export_heads
            cost = self._tiles_bytes(*cand)
            if cost + per > left:
                break
            tiles.append(cand)
            left -= cost
        fit = max(1, int(left // per))
        return (ranked if fit >= len(ranked) else ranked[:fit]), tiles

    def export_requests(self, budget_bytes: int) -> list[dict[str, Any]]:
        frames = self.frames_requests(budget_bytes)  # other steps of a followed view
        if frames:
            budget_bytes = int(budget_bytes * (1 - FRAMES_SHARE))
        explain = self.explain_requests(budget_bytes)  # the selected head's cells, explained
        budget_bytes -= self.explain_budget(budget_bytes)
        if self._long:
            heads, tiles = self._long_export(budget_bytes)
            self._pending_plan, self._pending_tiles = heads, tiles
            reqs = [{"kind": "fetch-included"}]
            reqs += [
                {"kind": "fetch-thumb", "layer": lay, "head": h}
                for lay in self.layer_indices
                for h in range(self.n_heads)
            ]
            reqs.append({"kind": "fetch-overview", "layer": heads[0][0], "head": heads[0][1]})
            for lay, h in tiles:
                reqs += self._head_tiles(lay, h)
            reqs += [{"kind": "fetch-overview", "layer": lay, "head": h} for lay, h in heads[1:]]
            return reqs + explain + frames
        plan = self.export_plan(budget_bytes)
        self._pending_plan = plan  # answered by the fetch-included request, first in line
        reqs: list[dict[str, Any]] = [{"kind": "fetch-included"}]
        if not self._thumbs_are_heads:
            reqs += [{"kind": "fetch-head", "layer": lay, "head": h} for lay, h in plan]
        return reqs + explain + frames

    def export_notes(self, budget_bytes: int) -> list[str]:
        framed = self.frames_notes(budget_bytes)
        if self.n_frames:
            budget_bytes = int(budget_bytes * (1 - FRAMES_SHARE))
        explained = self.explain_notes(budget_bytes) + framed
        budget_bytes -= self.explain_budget(budget_bytes)
        total = self.n_layers * self.n_heads
        if self._long:
            heads, tiles = self._long_export(budget_bytes)
            o = self._overview
            block = -(-self.n_tokens // o)
            full = ", ".join(f"L{lay}H{h}" for lay, h in tiles) or "none"
            (qa, qb), _ = self._region()
            if tiles and (qa, qb) != (0, self.n_tokens):
                full += f" (queries {qa}–{qb - 1})"
            t = self._thumbs["shape"][-1]
            rest = (
                f", the others only their {t}×{t} thumbnail (mean attention mass per block)"
                if len(heads) < total
                else f" (thumbnails: {t}×{t}, mean attention mass per block)"
            )
            return [
                f"Attention ({self.n_tokens} tokens): heads are pooled overviews of {o}×{o} "
                f"cells ({self.pool} of each block of up to {block}×{block} tokens); "
                f"{len(heads)} of {total} heads have their overview in this page{rest}. Full "
                f"resolution (every token, zoom in): {full}. Raise budget_bytes in cb.report "
                "to include more."
            ] + explained
        plan = self.export_plan(budget_bytes)
        if len(plan) == total:
            return explained
        t = self._thumbs["shape"][-1]
        kept = ", ".join(f"L{lay}H{h}" for lay, h in sorted(plan))
        return [
            f"Attention: {len(plan)} of {total} heads at full resolution ({kept}); the other "
            f"{total - len(plan)} are {t}×{t} thumbnails; raise budget_bytes= in cb.report "
            "to include more."
        ] + explained
