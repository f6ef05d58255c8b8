"""Exact explanations of one attention head: which components build a score (QK), and what the
head moves from each source position into a logit (OV).

QK: the layer's input is the sum of every upstream write (embeddings, each head's ``z · W_O``,
each MLP's output, the biases). With the input norm's scale frozen at its captured value
(``blocks.{l}.ln1.hook_scale``), the query and the key are linear in those writes; rotary
embeddings are linear per position, so the model's own rotary function applied to each
component's projection sums exactly to the rotated total. The score is then a bilinear form:
``score = Σ_ij q_i · k_j × scaling``, one entry per (query component, key component).

OV: the head's output at a query is ``Σ_src pattern[src] · v[src] · W_O``; through the frozen
final norm each source position's term is its share of the head's direct logit attribution.
"""

from __future__ import annotations

import importlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._direction import Direction
from ._attribution import logit_direction
from ._common import require_decoder, require_info, target_ids, token_text

WHAT_QK = "explain_attention"
WHAT_OV = "explain_head_output"
CAPTURE_HINT = (
    "Capture again with cb.capture(model, tokenizer, prompt) and its default `what=` (it records "
    "hook_embed, every layer's attn.hook_z, mlp.hook_post and hook_resid_pre, the norm scales "
    "'norm_scales' and the rotary embedding 'rotary'), for every layer up to this one "
    "(layers=None), ideally with dtype=torch.float32 for exact sums."
)


# -- results ------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class AttentionExplanation:
    """One pre-softmax attention score split into query-component × key-component terms.

    ``matrix[i, j]`` is what query-side component ``query_labels[i]`` and key-side component
    ``key_labels[j]`` contribute together; the entries sum to ``score``, the scaled score the
    model computed (rotary embeddings included; before soft-capping where the model caps).
    Components are ``embed``, ``pos_embed`` (learned positions), ``L{l}H{h}`` (what head h of
    layer l wrote), ``L{l}.mlp``, ``bias`` (every upstream output bias), ``ln1.b`` (the input
    norm's bias) and ``b_Q`` / ``b_K`` (the projection biases), where the model has them.

    Examples
    --------
    >>> ex = cb.explain_attention(cap, layer=18, head=6, query=40, key=21)  # doctest: +SKIP
    >>> abs(ex.total - ex.score) <= 1e-4 * abs(ex.score)  # doctest: +SKIP
    True
    >>> ex.top(1)  # doctest: +SKIP
    [{'label': 'L17.mlp × L16H3', 'query': 'L17.mlp', 'key': 'L16H3', 'value': 4.1}]
    """

    layer: int
    head: int
    kv_head: int
    query: int
    key: int
    score: float
    matrix: np.ndarray  # [query components, key components], float64
    query_labels: list[str]
    key_labels: list[str]
    query_token: str = ""
    key_token: str = ""
    score_source: str = ""
    residual_error: float = 0.0
    softcap: float | None = None

    @property
    def total(self) -> float:
        """Sum of every entry of ``matrix`` (equals ``score`` up to float error)."""
        return float(self.matrix.sum())

    @property
    def query_totals(self) -> np.ndarray:
        """``[query components]``: each query component against the whole key."""
        return self.matrix.sum(1)

    @property
    def key_totals(self) -> np.ndarray:
        """``[key components]``: each key component against the whole query."""
        return self.matrix.sum(0)

    def top(self, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` (query component, key component) pairs with the largest absolute terms."""
        flat = np.abs(self.matrix).ravel()
        k = max(0, min(int(k), flat.size))
        best = np.argpartition(-flat, k - 1)[:k] if 0 < k < flat.size else np.arange(flat.size)
        order = best[np.argsort(-flat[best], kind="stable")][:k]
        nk = self.matrix.shape[1]
        out = []
        for i in order.tolist():
            q, kk = self.query_labels[i // nk], self.key_labels[i % nk]
            out.append(
                {"label": f"{q} × {kk}", "query": q, "key": kk, "value": float(self.matrix.flat[i])}
            )
        return out

    def top_components(self, side: str, k: int = 10) -> list[tuple[str, float]]:
        """``(label, total)`` of the ``k`` components of ``side`` ("query" / "key") with the
        largest absolute total."""
        if side not in ("query", "key"):
            raise ValueError(f"side must be 'query' or 'key'; got {side!r}.")
        tot = self.query_totals if side == "query" else self.key_totals
        labels = self.query_labels if side == "query" else self.key_labels
        order = np.argsort(-np.abs(tot), kind="stable")[: max(0, int(k))]
        return [(labels[i], float(tot[i])) for i in order.tolist()]

    def __repr__(self) -> str:
        return (
            f"AttentionExplanation(L{self.layer}H{self.head} query {self.query} "
            f"{self.query_token!r} → key {self.key} {self.key_token!r}: score {self.score:.4g} "
            f"({self.score_source}), sum {self.total:.4g}, "
            f"{len(self.query_labels)}×{len(self.key_labels)} components)"
        )


@dataclass(frozen=True, eq=False)
class HeadOutputExplanation:
    """A head's direct logit attribution at ``query`` split by source position.

    ``values[s] = pattern[query, s] · (v[s] · W_O) · direction``: what the head moved from
    source ``s`` into the logit of ``target`` (minus ``baseline``'s), through the frozen final
    norm. The values sum to ``model_value``, that head's term in
    :func:`circuitboard.direct_logit_attribution` at ``query``.

    Examples
    --------
    >>> ov = cb.explain_head_output(cap, layer=18, head=6, query=-1,
    ...                             target=" Mary")  # doctest: +SKIP
    >>> abs(ov.total - ov.model_value) <= 1e-4 * abs(ov.model_value)  # doctest: +SKIP
    True
    """

    layer: int
    head: int
    query: int
    target: int
    baseline: int | None
    values: np.ndarray  # [positions] float64, zero where the head does not look
    weights: np.ndarray  # [positions] the attention weights used
    tokens: list[str]
    model_value: float
    value_error: float = 0.0
    target_text: str = ""
    baseline_text: str = ""

    @property
    def total(self) -> float:
        """Sum over source positions (equals ``model_value`` up to float error)."""
        return float(self.values.sum())

    @property
    def labels(self) -> list[str]:
        """``"{pos} {token!r}"`` per source position."""
        return [f"{i} {t!r}" for i, t in enumerate(self.tokens)]

    def top(self, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` source positions (among those the head attends to) with the largest
        absolute contribution."""
        seen = np.flatnonzero(self.weights != 0)
        order = seen[np.argsort(-np.abs(self.values[seen]), kind="stable")][: max(0, int(k))]
        return [
            {
                "label": f"{i} {self.tokens[i]!r}",
                "pos": i,
                "value": float(self.values[i]),
                "weight": float(self.weights[i]),
            }
            for i in order.tolist()
        ]

    @property
    def description(self) -> str:
        what = repr(self.target_text)
        if self.baseline is not None:
            what += f" − {self.baseline_text!r}"
        return f"L{self.layer}H{self.head} → logit {what} at position {self.query}"

    def __repr__(self) -> str:
        return (
            f"HeadOutputExplanation({self.description}: head term {self.model_value:.4g}, "
            f"sum over {len(self.values)} sources {self.total:.4g})"
        )


# -- checks -------------------------------------------------------------------------------------
def _index(name: str, value: Any, n: int, what: str) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{what}: {name} must be an int; got {type(value).__name__}.")
    v = int(value)
    i = v + n if v < 0 else v
    if not 0 <= i < n:
        raise IndexError(f"{what}: {name}={v} is out of range; valid: 0..{n - 1} (or -{n}..-1).")
    return i


def _need(cap: Any, name: str, what: str) -> torch.Tensor:
    t = cap.tensors.get(name) if hasattr(cap.tensors, "get") else None
    if t is None:
        try:
            t = cap[name]  # captures that compute some tensors on demand
        except KeyError:
            raise KeyError(
                f"{what} needs {name!r}, which this capture lacks. {CAPTURE_HINT}"
            ) from None
    return t


def _weight(cap: Any, name: str, what: str, optional: bool = False) -> torch.Tensor | None:
    w = (cap.weights or {}).get(name)
    if w is None:
        if optional:
            return None
        raise KeyError(
            f"{what} needs the weight {name!r}, which this capture does not hold. Captures from "
            "cb.capture(model, tokenizer, prompt) record it (and cap.save keeps it)."
        )
    return w.detach().to("cpu")


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def _refuse_unsupported(info: Any, what: str, softcap: str) -> None:
    if not info.causal:
        raise ValueError(
            f"{what}: {info.model_name!r} ({info.architecture}) normalizes after each residual "
            "addition (post-LayerNorm blocks), so a layer's input is not a sum of the upstream "
            "components' writes and the score has no exact per-component split. Use the "
            "attention view for its patterns, or explain a pre-norm decoder (GPT-2, Llama, ...)."
        )
    if softcap not in ("refuse", "pre"):
        raise ValueError(f"softcap must be 'refuse' or 'pre'; got {softcap!r}.")
    if info.qk_norm:
        raise ValueError(
            f"{what}: this model ({info.architecture}, {info.model_name!r}) normalizes queries "
            "and keys after projecting them (query/key norms, as in Qwen3, OLMo 2 and Gemma 3): "
            "the score is then not a sum of per-component terms, so no exact split exists. "
            "Use cb.direct_logit_attribution or patching for this model."
        )
    if info.attn_scales is None:
        raise ValueError(
            f"{what} needs each layer's attention scaling (cap.info.attn_scales), which this "
            "capture's info lacks (a TransformerLens import or an older file). Capture with "
            "cb.capture(model, tokenizer, prompt)."
        )
    if info.attn_softcap and softcap == "refuse":
        raise ValueError(
            f"{what}: this model soft-caps its attention scores (attn_softcap="
            f"{info.attn_softcap}): the weight is a tanh of the score, so only the score before "
            "the cap splits exactly. Pass softcap='pre' to explain the pre-cap score."
        )


def _rotary(cap: Any, info: Any, layer: int, what: str) -> tuple[Callable, Any, Any] | None:
    """The model's own rotary function and the cos / sin layer ``layer`` received."""
    if info.rotary_fn is None:
        return None
    mod_name, _, fn_name = info.rotary_fn.rpartition(".")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"{what}: the model's rotary function {info.rotary_fn!r} cannot be imported here "
            f"({err}); install the transformers version the capture was made with."
        ) from None
    names = [f"blocks.{layer}.attn.hook_rot_cos", "hook_rot_cos"]
    name = next((n for n in names if n in cap.tensors), None)
    if name is None:
        raise KeyError(
            f"{what} needs the rotary embedding this model applies ('hook_rot_cos' / "
            "'hook_rot_sin'), which this capture lacks: capture again with what= including "
            f"'rotary' (part of the default). {CAPTURE_HINT}"
        )
    return fn, cap.tensors[name], cap.tensors[name.replace("_cos", "_sin")]


def _rotate(rot: tuple | None, x: torch.Tensor, pos: int, side: int) -> torch.Tensor:
    """Rotate ``x`` ``[components, d_head]`` as the model rotates a query (side 0) or a key
    (side 1) at ``pos``, with its own function (rotary is linear: each component separately)."""
    if rot is None:
        return x
    fn, cos, sin = rot
    c = _f64(cos[pos])[None, None]  # [batch 1, seq 1, rotary dim]
    s = _f64(sin[pos])[None, None]
    y = x[None, :, None, :]  # [batch 1, "heads" = components, seq 1, d_head]
    return fn(y, y, c, s)[side][0, :, 0, :]


# -- the residual stream as a sum of components ----------------------------------------------------
def _post_mult(cap: Any, info: Any, layer: int, name: str, P: torch.Tensor) -> torch.Tensor | None:
    """Frozen multiplier of a norm on a sublayer's output (Gemma 2): ``[P, d_model]``."""
    scale = cap.tensors.get(f"blocks.{layer}.{name}.hook_scale")
    if scale is None:
        return None
    w = _weight(cap, f"blocks.{layer}.{name}.w", WHAT_QK).to(torch.float64)
    if info.norm == "gemma_rmsnorm":
        w = 1.0 + w
    return _f64(scale.reshape(cap.n_tokens, -1)[P, :1]) * w[None]


@dataclass(frozen=True, eq=False)
class _Fold:
    """The projection of one layer's input onto one head's query (or key) space, folded into
    every upstream write: ``x @ W`` for a residual vector ``x``, with the input norm's weight
    (and, for LayerNorm, its centring) in ``W``; per upstream layer ``W_O[l] @ W`` and
    ``W_out[l] @ W``, so a click reads a few small matrices instead of every upstream weight."""

    W: torch.Tensor  # [d_model, d_head] float64
    heads: torch.Tensor  # [upstream layers, heads, d_head, d_head] float32
    mlps: torch.Tensor  # [upstream layers, d_mlp, d_head] float32
    attn_bias: list[torch.Tensor | None]  # per upstream layer [d_head] float64 (b_O @ W)
    mlp_bias: list[torch.Tensor | None]  # per upstream layer [d_head] float64 (b_out @ W)


_FOLDS: OrderedDict[tuple, _Fold] = OrderedDict()
_FOLDS_LOCK = threading.Lock()
FOLD_CACHE = 8  # folds kept (each ~10 MB for the default model's deep layers)


def _post_weight(cap: Any, info: Any, layer: int, name: str) -> torch.Tensor | None:
    """The weight of a norm on a sublayer's output (Gemma 2's sandwich norms), or None."""
    if f"blocks.{layer}.{name}.hook_scale" not in cap.tensors:
        return None
    w = _weight(cap, f"blocks.{layer}.{name}.w", WHAT_QK).to(torch.float64)
    return 1.0 + w if info.norm == "gemma_rmsnorm" else w


def _fold(cap: Any, info: Any, layer: int, side: str, head: int, what: str) -> _Fold:
    """The (cached) :class:`_Fold` of ``layer``'s ``W_Q[head]`` (side "Q") or ``W_K[head]``."""
    W_side = _weight(cap, f"blocks.{layer}.attn.W_{side}", what)[head]
    names = [f"blocks.{li}.{n}" for li in range(layer) for n in ("attn.W_O", "mlp.W_out")]
    ups = [_weight(cap, n, what) for n in names]
    key = (id(cap.weights), layer, side, head, W_side._version, *(w._version for w in ups))
    with _FOLDS_LOCK:
        hit = _FOLDS.get(key)
        if hit is not None:
            _FOLDS.move_to_end(key)
            return hit
    w = _weight(cap, f"blocks.{layer}.ln1.w", what, optional=True)
    w = torch.ones(info.d_model, dtype=torch.float64) if w is None else _f64(w)
    if info.norm == "gemma_rmsnorm":
        w = 1.0 + w
    W = w[:, None] * _f64(W_side)
    if info.norm == "layernorm":  # (x - mean x) @ W == x @ (W - column means of W)
        W = W - W.mean(0, keepdim=True)
    heads, mlps, attn_bias, mlp_bias = [], [], [], []
    for li in range(layer):
        W_O, W_out = ups[2 * li].float(), ups[2 * li + 1].float()
        folds = []
        for name, b_name in (("ln1_post", "attn.b_O"), ("ln2_post", "mlp.b_out")):
            pw = _post_weight(cap, info, li, name)
            Wl = W if pw is None else pw[:, None] * W
            b = _weight(cap, f"blocks.{li}.{b_name}", what, optional=True)
            folds.append((Wl, None if b is None or not bool(b.any()) else _f64(b) @ Wl))
        heads.append(torch.einsum("hdm,me->hde", W_O, folds[0][0].float()))
        mlps.append(W_out @ folds[1][0].float())
        attn_bias.append(folds[0][1])
        mlp_bias.append(folds[1][1])
    dh = W.shape[1]
    stacked_heads = torch.stack(heads) if heads else torch.zeros(0, info.n_heads, dh, dh)
    stacked_mlps = torch.stack(mlps) if mlps else torch.zeros(0, info.d_mlp, dh)
    fold = _Fold(W, stacked_heads, stacked_mlps, attn_bias, mlp_bias)
    with _FOLDS_LOCK:
        _FOLDS[key] = fold
        while len(_FOLDS) > FOLD_CACHE:
            _FOLDS.popitem(last=False)
    return fold


def prepare_head(cap: Any, layer: int, head: int) -> None:
    """Fold ``head``'s query and key projections now (what the first explanation of one of its
    cells would do), e.g. in the background while a view shows the head."""
    info = require_info(cap, WHAT_QK)
    li = _index("layer", layer, info.n_layers, WHAT_QK)
    h = _index("head", head, info.n_heads, WHAT_QK)
    _fold(cap, info, li, "Q", h, WHAT_QK)
    _fold(cap, info, li, "K", h // (info.n_heads // info.n_kv_heads), WHAT_QK)


def _side(cap: Any, info: Any, layer: int, fold: _Fold, pos: int, what: str) -> tuple:
    """``(labels, parts [components, d_head] float64, relative error)``: each upstream write at
    ``pos`` through the frozen input norm, projected by ``fold``; the error compares their sum
    with the projection of the captured layer input (``hook_resid_pre``), when captured."""
    name = f"blocks.{layer}.ln1.hook_scale"
    scale = cap.tensors.get(name)
    if scale is None:
        raise KeyError(
            f"{what} freezes layer {layer}'s input norm at its captured scale ({name!r}), which "
            f"this capture lacks: capture again with what= including 'norm_scales' (part of the "
            f"default). {CAPTURE_HINT}"
        )
    s = float(scale.reshape(cap.n_tokens, -1)[pos, 0])
    labels: list[str] = []
    parts: list[torch.Tensor] = []
    pos_embed = cap.tensors.get("hook_pos_embed")
    if "hook_embed" in cap.tensors:
        embed = _f64(cap.tensors["hook_embed"][pos])
    else:
        embed = _f64(_need(cap, "blocks.0.hook_resid_pre", what)[pos])
        if pos_embed is not None:
            embed = embed - _f64(pos_embed[pos])
    labels.append("embed")
    parts.append(embed @ fold.W)
    if pos_embed is not None:
        labels.append("pos_embed")
        parts.append(_f64(pos_embed[pos]) @ fold.W)
    bias = torch.zeros(fold.W.shape[1], dtype=torch.float64)
    any_bias = False
    gemma2 = info.architecture == "gemma2"
    mults = torch.ones(2, layer, dtype=torch.float64)  # sublayer output norms (Gemma 2)
    for li in range(layer):
        for side, name in enumerate(("ln1_post", "ln2_post")):
            t = cap.tensors.get(f"blocks.{li}.{name}.hook_scale")
            if t is None and gemma2:
                raise KeyError(
                    f"{what}: Gemma 2 normalizes each head's and MLP's output before adding it; "
                    f"this needs blocks.{li}.{name}.hook_scale. {CAPTURE_HINT}"
                )
            if t is not None:
                mults[side, li] = float(t.reshape(cap.n_tokens, -1)[pos, 0])
        for b, m in ((fold.attn_bias[li], mults[0, li]), (fold.mlp_bias[li], mults[1, li])):
            if b is not None:
                bias = bias + b * m
                any_bias = True
    if layer:
        # every upstream layer at once: [layers, heads, d_head] and [layers, d_head]
        z = torch.stack([_need(cap, f"blocks.{li}.attn.hook_z", what)[pos] for li in range(layer)])
        post = torch.stack(
            [_need(cap, f"blocks.{li}.mlp.hook_post", what)[pos] for li in range(layer)]
        )
        heads = torch.einsum("lhd,lhde->lhe", z.float(), fold.heads).double()
        mlp = torch.bmm(post.float()[:, None, :], fold.mlps)[:, 0].double()
        heads = heads * mults[0][:, None, None]
        mlp = mlp * mults[1][:, None]
        per_layer = torch.cat([heads, mlp[:, None]], dim=1)  # [layers, heads + 1, d_head]
        parts.extend(per_layer.reshape(-1, per_layer.shape[-1]).unbind(0))
        for li in range(layer):
            labels.extend(f"L{li}H{h}" for h in range(info.n_heads))
            labels.append(f"L{li}.mlp")
    if any_bias:
        labels.append("bias")
        parts.append(bias)
    stacked = torch.stack(parts) * s
    err = 0.0
    resid = cap.tensors.get(f"blocks.{layer}.hook_resid_pre")
    if resid is not None:
        want = (_f64(resid[pos]) @ fold.W) * s
        err = float((stacked.sum(0) - want).norm() / want.norm().clamp_min(1e-12))
    return labels, stacked, err


def _ln_in(cap: Any, info: Any, layer: int, x: torch.Tensor, P: torch.Tensor, what: str) -> tuple:
    """The input norm of ``layer`` with its captured scale, applied to ``x`` ``[C, P, d]``:
    ``(normed x, norm bias or None)``."""
    name = f"blocks.{layer}.ln1.hook_scale"
    scale = cap.tensors.get(name)
    if scale is None:
        raise KeyError(
            f"{what} freezes layer {layer}'s input norm at its captured scale ({name!r}), which "
            f"this capture lacks: capture again with what= including 'norm_scales' (part of the "
            f"default). {CAPTURE_HINT}"
        )
    s = _f64(scale.reshape(cap.n_tokens, -1)[P, 0])
    w = _weight(cap, f"blocks.{layer}.ln1.w", what, optional=True)
    w = torch.ones(info.d_model, dtype=torch.float64) if w is None else _f64(w)
    if info.norm == "gemma_rmsnorm":
        w = 1.0 + w
    if info.norm == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    x = x * s[None, :, None] * w
    b = _weight(cap, f"blocks.{layer}.ln1.b", what, optional=True)
    return x, (_f64(b) if b is not None and bool(b.any()) else None)


# -- QK -----------------------------------------------------------------------------------------
def explain_attention(
    cap: Any,
    *,
    layer: int,
    head: int,
    query: int,
    key: int,
    softcap: str = "refuse",
) -> AttentionExplanation:
    """Split the pre-softmax score of ``head`` at (``query``, ``key``) into component pairs.

    Every write to the residual stream that ``layer`` reads (embeddings, each earlier head,
    each earlier MLP, the output biases) is passed through the layer's input norm with its
    scale frozen at the captured value, projected by ``W_Q`` (query side) and ``W_K`` of the
    head's key/value group (key side), and rotated with the model's own rotary function at
    its position. The score is bilinear in the two sides, so ``matrix[i, j] = scaling ·
    q_i · k_j`` and the entries sum exactly to the model's score.

    Parameters
    ----------
    cap : Capture
        From :func:`circuitboard.capture` with its default ``what=`` (float32 for exact sums).
    layer, head : int
        The head (``layer`` a model layer index; negative counts from the end).
    query, key : int
        Positions (negative counts from the end); in a causal model ``key <= query``.
    softcap : {"refuse", "pre"}
        Models that soft-cap attention scores (Gemma 2): ``"pre"`` explains the score before
        the cap; ``"refuse"`` (default) raises.

    Returns
    -------
    AttentionExplanation

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> cap = cb.capture(model, tok, "When Mary and John went to the store", dtype=torch.float32)
    >>> ex = cb.explain_attention(cap, layer=1, head=2, query=6, key=3)
    >>> bool(abs(ex.total - ex.score) <= 1e-4 * max(1.0, abs(ex.score)))
    True
    >>> ex.query_labels[:3], ex.key_labels[-1]
    (['embed', 'L0H0', 'L0H1'], 'L0.mlp')
    """
    info = require_info(cap, WHAT_QK)
    li = _index("layer", layer, info.n_layers, WHAT_QK)
    h = _index("head", head, info.n_heads, WHAT_QK)
    n = cap.n_tokens
    qp = _index("query", query, n, WHAT_QK)
    kp = _index("key", key, n, WHAT_QK)
    _refuse_unsupported(info, WHAT_QK, softcap)
    if info.causal and kp > qp:
        raise ValueError(
            f"{WHAT_QK}: key={kp} comes after query={qp}; in a causal model a query attends only "
            f"to keys at or before it (key <= query), so that score is masked. Swap them?"
        )
    window = info.attn_windows[li] if info.attn_windows else None
    if window is not None and qp - kp >= window:
        raise ValueError(
            f"{WHAT_QK}: layer {li} attends within a sliding window of {window} tokens; key={kp} "
            f"is {qp - kp} positions before query={qp}, outside it (masked, no score). Pick a key "
            f"in {max(0, qp - window + 1)}..{qp}."
        )
    kv = h // (info.n_heads // info.n_kv_heads)
    scaling = float(info.attn_scales[li])
    rot = _rotary(cap, info, li, WHAT_QK)

    q_labels, q_parts, q_err = _side(
        cap, info, li, _fold(cap, info, li, "Q", h, WHAT_QK), qp, WHAT_QK
    )
    k_labels, k_parts, k_err = _side(
        cap, info, li, _fold(cap, info, li, "K", kv, WHAT_QK), kp, WHAT_QK
    )
    W_Q = _f64(_weight(cap, f"blocks.{li}.attn.W_Q", WHAT_QK)[h])
    W_K = _f64(_weight(cap, f"blocks.{li}.attn.W_K", WHAT_QK)[kv])
    ln_b = _weight(cap, f"blocks.{li}.ln1.b", WHAT_QK, optional=True)
    b_Q = _weight(cap, f"blocks.{li}.attn.b_Q", WHAT_QK, optional=True)
    b_K = _weight(cap, f"blocks.{li}.attn.b_K", WHAT_QK, optional=True)
    if ln_b is not None and bool(ln_b.any()):
        q_parts = torch.cat([q_parts, (_f64(ln_b) @ W_Q)[None]])
        k_parts = torch.cat([k_parts, (_f64(ln_b) @ W_K)[None]])
        q_labels.append("ln1.b")
        k_labels.append("ln1.b")
    if b_Q is not None and bool(b_Q[h].any()):
        q_parts = torch.cat([q_parts, _f64(b_Q[h])[None]])
        q_labels.append("b_Q")
    if b_K is not None and bool(b_K[kv].any()):
        k_parts = torch.cat([k_parts, _f64(b_K[kv])[None]])
        k_labels.append("b_K")
    q_rot = _rotate(rot, q_parts, qp, 0)
    k_rot = _rotate(rot, k_parts, kp, 1)
    matrix = (q_rot @ k_rot.T) * scaling

    score, source = _model_score(cap, info, li, h, kv, qp, kp, rot, scaling)
    return AttentionExplanation(
        layer=li,
        head=h,
        kv_head=kv,
        query=qp,
        key=kp,
        score=float(matrix.sum()) if score is None else score,
        matrix=matrix.numpy(),
        query_labels=q_labels,
        key_labels=k_labels,
        query_token=cap.tokens[qp],
        key_token=cap.tokens[kp],
        score_source=source,
        residual_error=max(q_err, k_err),
        softcap=info.attn_softcap,
    )


def _model_score(cap, info, li, h, kv, qp, kp, rot, scaling) -> tuple:
    """The score as the model computed it: from the captured (rotated) queries and keys when
    the capture holds them, else from the layer's captured input through the same frozen
    norm, projections and rotary function."""
    qk = _captured_qk(cap, li, h, kv, qp, kp)
    if qk is not None:
        return float((qk[0] @ qk[1]) * scaling), "captured queries and keys"
    resid = cap.tensors.get(f"blocks.{li}.hook_resid_pre")
    if resid is None:
        return None, "sum of the parts (no hook_resid_pre captured to check against)"
    P = torch.tensor([qp, kp])
    normed, ln_b = _ln_in(cap, info, li, _f64(resid[P])[None], P, WHAT_QK)
    if ln_b is not None:
        normed = normed + ln_b
    q = normed[0, 0] @ _f64(cap.weights[f"blocks.{li}.attn.W_Q"][h])
    k = normed[0, 1] @ _f64(cap.weights[f"blocks.{li}.attn.W_K"][kv])
    b_Q, b_K = cap.weights.get(f"blocks.{li}.attn.b_Q"), cap.weights.get(f"blocks.{li}.attn.b_K")
    if b_Q is not None:
        q = q + _f64(b_Q[h])
    if b_K is not None:
        k = k + _f64(b_K[kv])
    q = _rotate(rot, q[None], qp, 0)[0]
    k = _rotate(rot, k[None], kp, 1)[0]
    return float((q @ k) * scaling), f"layer input (blocks.{li}.hook_resid_pre)"


def _captured_qk(cap: Any, li: int, h: int, kv: int, qp: int, kp: int) -> tuple | None:
    """The rotated query / key vectors the model's attention function received, if captured."""
    q = cap.tensors.get(f"blocks.{li}.attn.hook_q")
    k = cap.tensors.get(f"blocks.{li}.attn.hook_k")
    if q is None or k is None:
        return None
    # TransformerLens layout: [pos, heads, d_head]; keys per key/value head.
    return _f64(q[qp, h]), _f64(k[kp, kv])


# -- OV -----------------------------------------------------------------------------------------
def explain_head_output(
    cap: Any,
    *,
    layer: int,
    head: int,
    query: int,
    target: Any,
    baseline: Any = None,
    softcap: str = "refuse",
) -> HeadOutputExplanation:
    """Split one head's direct logit attribution at ``query`` by source position.

    The head writes ``Σ_s pattern[query, s] · v[s] · W_O`` at ``query``; ``v[s]`` is recomputed
    from the layer's captured input at ``s`` through the frozen input norm and ``W_V`` (of the
    head's key/value group). Through the frozen final norm each source's term is exact, and the
    terms sum to the head's value in :func:`circuitboard.direct_logit_attribution`.

    Parameters
    ----------
    cap : Capture
        From :func:`circuitboard.capture` (default ``what=``; float32 for exact sums).
    layer, head : int
        The head.
    query : int
        The position whose next-token logit is explained (negative counts from the end).
    target, baseline : str or int
        One token each (``" Mary"``) or token ids; with a baseline, the logit difference.
        ``target=cb.Direction(v)``: a logit or residual-stream direction (no baseline).
    softcap : {"refuse", "pre"}
        Models that soft-cap their final logits (Gemma 2): ``"pre"`` explains the pre-cap logit.

    Returns
    -------
    HeadOutputExplanation

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> cap = cb.capture(model, tok, "When Mary and John went to the store", dtype=torch.float32)
    >>> ov = cb.explain_head_output(cap, layer=1, head=0, query=-1, target=5, baseline=7)
    >>> term = cb.direct_logit_attribution(cap, 5, baseline=7)["L1H0"]
    >>> bool(abs(ov.total - term) <= 1e-4 * max(1.0, abs(term)))
    True
    """
    info = require_info(cap, WHAT_OV)
    require_decoder(info, WHAT_OV)
    if softcap not in ("refuse", "pre"):
        raise ValueError(f"softcap must be 'refuse' or 'pre'; got {softcap!r}.")
    if info.final_logit_softcap and softcap == "refuse":
        raise ValueError(
            f"this model soft-caps its logits (final_logit_softcap={info.final_logit_softcap}): "
            "no exact additive split exists. Pass softcap='pre' to explain the logit before the "
            "cap."
        )
    li = _index("layer", layer, info.n_layers, WHAT_OV)
    h = _index("head", head, info.n_heads, WHAT_OV)
    n = cap.n_tokens
    qp = _index("query", query, n, WHAT_OV)
    if isinstance(target, Direction) or isinstance(baseline, Direction):
        from ._attribution import prepare  # the same checks and resolution as the DLA's

        t, b, _ = prepare(cap, target, baseline, qp, softcap)
    else:
        t = target_ids(cap, target, "target")
        b = target_ids(cap, baseline, "baseline") if baseline is not None else None
    kv = h // (info.n_heads // info.n_kv_heads)

    direction = logit_direction(cap, info, t, b, torch.tensor([qp]))[0][0]  # [d_model]
    mult = _post_mult(cap, info, li, "ln1_post", torch.tensor([qp]))
    if info.architecture == "gemma2" and mult is None:
        raise KeyError(
            f"{WHAT_OV}: Gemma 2 normalizes the attention output before adding it; this needs "
            f"blocks.{li}.ln1_post.hook_scale. {CAPTURE_HINT}"
        )
    if mult is not None:
        direction = direction * mult[0]
    W_O = _f64(_weight(cap, f"blocks.{li}.attn.W_O", WHAT_OV)[h])  # [d_head, d_model]
    readout = W_O @ direction  # [d_head]: what one unit of z moves into the logit

    weights = _pattern_row(cap, li, h, qp)  # [key]
    src = torch.nonzero(weights != 0).flatten()
    # v[s] = norm(x[s]) @ W_V + b_V; only v · readout and Σ weight · v are needed, so the
    # projection is applied after the sums (O(sources · d_model), not · d_head).
    normed, W_V, b_V = _value_inputs(cap, info, li, kv, src)  # [sources, d_model], ...
    per_src = torch.zeros(n, dtype=torch.float64)
    w_src = weights[src]
    per_src[src] = w_src * (
        normed @ (W_V @ readout) + (float(b_V @ readout) if b_V is not None else 0.0)
    )

    z = _f64(_need(cap, f"blocks.{li}.attn.hook_z", WHAT_OV)[qp, h])
    rebuilt = (w_src @ normed) @ W_V + (w_src.sum() * b_V if b_V is not None else 0.0)
    value_error = float((rebuilt - z).norm() / z.norm().clamp_min(1e-12))
    return HeadOutputExplanation(
        layer=li,
        head=h,
        query=qp,
        target=t,
        baseline=b,
        values=per_src.numpy(),
        weights=weights.numpy(),
        tokens=list(cap.tokens),
        model_value=float(z @ readout),
        value_error=value_error,
        target_text=token_text(cap, t),
        baseline_text=token_text(cap, b) if b is not None else "",
    )


def _pattern_row(cap: Any, li: int, h: int, qp: int) -> torch.Tensor:
    """One query's attention weights ``[key]`` (float64), computing only that row when the
    capture computes patterns on demand from its queries and keys."""
    if hasattr(cap, "pattern"):
        try:
            return _f64(cap.pattern(li, head=h, queries=slice(qp, qp + 1))[0])
        except KeyError:
            pass  # explained below, with what to capture
    return _f64(_need(cap, f"blocks.{li}.attn.hook_pattern", WHAT_OV)[h, qp])


def _value_inputs(cap: Any, info: Any, li: int, kv: int, src: torch.Tensor) -> tuple:
    """``(norm(x[src]) [sources, d_model], W_V [d_model, d_head], b_V or None)`` of key/value
    head ``kv``: the value at ``s`` is ``norm(x[s]) @ W_V + b_V``."""
    x = _f64(_need(cap, f"blocks.{li}.hook_resid_pre", WHAT_OV)[src])[None]
    normed, ln_b = _ln_in(cap, info, li, x, src, WHAT_OV)
    normed = normed[0] + (ln_b if ln_b is not None else 0.0)
    W_V = _f64(_weight(cap, f"blocks.{li}.attn.W_V", WHAT_OV)[kv])
    b_V = _weight(cap, f"blocks.{li}.attn.b_V", WHAT_OV, optional=True)
    return normed, W_V, (_f64(b_V[kv]) if b_V is not None and bool(b_V[kv].any()) else None)
