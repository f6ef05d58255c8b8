"""Logit lens: each layer's residual read out through the final norm and the unembedding."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ._common import norm_eps, norm_weight, require_decoder, require_info, tensor, token_id, weight

WHAT = "logit_lens"


@dataclass(frozen=True, eq=False)
class LogitLens:
    """Next-token predictions read from every layer's residual stream.

    Arrays are ``[layers, positions, ...]``: row ``i`` belongs to model layer ``layers[i]``
    (its ``hook_resid_post``); the last row equals the model's own output.

    Attributes
    ----------
    top_ids, top_probs : ``[layers, pos, k]`` the ``k`` most likely tokens and their probabilities.
    top_tokens : nested lists of the same tokens as strings.
    target_ids : ``[pos]`` the token followed at each position: ``target`` if given, else the
        true next token (``-1`` at the last position, where it is unknown).
    target_probs, target_ranks : ``[layers, pos]`` its probability and rank (0 = top-1;
        NaN / -1 where there is no target).

    Examples
    --------
    >>> lens = cb.logit_lens(cap)  # doctest: +SKIP
    >>> lens.top_tokens[-1][-1][0]  # doctest: +SKIP
    ' Mary'
    """

    layers: list[int]
    tokens: list[str]
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    top_tokens: list[list[list[str]]]
    target_ids: torch.Tensor
    target_probs: torch.Tensor
    target_ranks: torch.Tensor
    target: int | None = None
    _cap: Any = field(default=None, repr=False)

    @property
    def k(self) -> int:
        return int(self.top_ids.shape[-1])

    def logits(self, layer: int) -> torch.Tensor:
        """``[pos, vocab]`` lens logits of model layer ``layer`` (recomputed, float32)."""
        if layer not in self.layers:
            raise IndexError(f"layer {layer} is not in this lens; it has layers {self.layers}.")
        return _layer_logits(self._cap, require_info(self._cap, WHAT), layer)

    def __repr__(self) -> str:
        return f"LogitLens({len(self.layers)} layers × {len(self.tokens)} positions, top-{self.k})"


def _norm_params(
    cap: Any, info: Any
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    w = norm_weight(cap, info, WHAT).float()
    b = weight(cap, "ln_final.b", WHAT, optional=True)
    W_U = weight(cap, "unembed.W_U", WHAT, dtype=torch.float32)
    b_U = weight(cap, "unembed.b_U", WHAT, optional=True)
    return (
        w,
        (b.float() if b is not None else None),
        W_U,
        (b_U.float() if b_U is not None else None),
    )


def _normalized(cap: Any, info: Any, layer: int, params: tuple) -> torch.Tensor:
    """``[pos, d_model]`` float32: the layer's residual through the final norm (own scale)."""
    w, b, _, _ = params
    x = tensor(cap, f"blocks.{layer}.hook_resid_post", WHAT)
    if info.norm == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    scale = torch.rsqrt((x * x).mean(-1, keepdim=True) + norm_eps(cap))
    if layer == info.n_layers - 1 and "ln_final.hook_scale" in cap.tensors:
        # The final layer uses the scale the model used, so the lens equals its output
        # (stored as a multiplier; TransformerLens' divisor convention is accepted too).
        captured = tensor(cap, "ln_final.hook_scale", WHAT).reshape(scale.shape)
        as_mult = (captured / scale).log().abs().median()
        as_div = (captured * scale).log().abs().median()
        scale = 1.0 / captured if as_div < 0.5 * as_mult and as_mult > 0.05 else captured
    y = (x * scale).float() * w
    return y + b if b is not None else y


def _unembed(y: torch.Tensor, info: Any, params: tuple) -> torch.Tensor:
    _, _, W_U, b_U = params
    logits = y @ W_U
    if b_U is not None:
        logits = logits + b_U
    soft = info.final_logit_softcap
    return soft * torch.tanh(logits / soft) if soft else logits


def _layer_logits(cap: Any, info: Any, layer: int, params: tuple | None = None) -> torch.Tensor:
    params = params if params is not None else _norm_params(cap, info)
    return _unembed(_normalized(cap, info, layer, params), info, params)


CHUNK_ROWS = 256  # rows of [layers * pos] unembedded at once (256 x 50k vocab = 50 MB)


def logit_lens(
    cap: Any, *, target: Any = None, k: int = 5, layers: list[int] | None = None
) -> LogitLens:
    """For every layer and position, the next-token distribution read from the residual.

    Each layer's ``hook_resid_post`` is normalized with its own scale, multiplied by the final
    norm's weight and unembedded. The last layer uses the scale the model used, so its row
    equals the model's logits.

    Parameters
    ----------
    cap : Capture
        A capture with every layer's ``hook_resid_post`` and the final norm / unembedding weights.
    target : str or int, optional
        Track this token's probability everywhere; default: the true next token.
    k : int
        How many top tokens to keep per cell.
    layers : list of int, optional
        Model layers to read (default: all).

    Examples
    --------
    >>> lens = cb.logit_lens(cap, k=5)  # doctest: +SKIP
    >>> lens.top_probs.shape  # doctest: +SKIP
    torch.Size([30, 15, 5])
    """
    info = require_info(cap, WHAT)
    require_decoder(info, WHAT)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}.")
    k = min(k, info.d_vocab)
    all_layers = list(range(info.n_layers))
    layers = all_layers if layers is None else [int(li) for li in layers]
    bad = [li for li in layers if li not in all_layers]
    if bad:
        raise IndexError(
            f"layers {bad} are out of range: the model has {info.n_layers} layers "
            f"(0..{info.n_layers - 1})."
        )
    n = cap.n_tokens
    ids = torch.as_tensor(cap.token_ids).reshape(-1).long().cpu()
    if target is not None:
        tid = token_id(cap, target, "target")
        target_ids = torch.full((n,), tid, dtype=torch.long)
    else:
        tid = None
        target_ids = torch.cat([ids[1:], torch.tensor([-1])]) if n else ids
    valid = target_ids >= 0
    safe = target_ids.clamp_min(0)

    params = _norm_params(cap, info)
    # Every layer's rows in one matrix, unembedded in chunks: one large matmul is much
    # faster than one per layer, and chunks bound the memory of [rows, vocab] logits.
    ys = torch.cat([_normalized(cap, info, li, params) for li in layers])
    tgt = safe.repeat(len(layers))
    ok = valid.repeat(len(layers))
    ids_parts, prob_parts, tprob_parts, rank_parts = [], [], [], []
    for start in range(0, ys.shape[0], CHUNK_ROWS):
        logits = _unembed(ys[start : start + CHUNK_ROWS], info, params)
        t = tgt[start : start + CHUNK_ROWS, None]
        logp = torch.log_softmax(logits, dim=-1)
        tp, ti = logp.topk(k, dim=-1)
        ids_parts.append(ti)
        prob_parts.append(tp.exp())
        # rank = how many logits beat the target's; clamp/sign counts them without a bool
        # tensor, twice as fast (exact: counts stay far below 2**24)
        above = (logits - logits.gather(-1, t)).clamp_(min=0).sign_().sum(-1)
        rank_parts.append(above.long())
        tprob_parts.append(logp.gather(-1, t)[:, 0].exp())
    shape = (len(layers), n)
    top_ids_t = torch.cat(ids_parts).reshape(*shape, k)
    top_probs_t = torch.cat(prob_parts).reshape(*shape, k)
    okm = ok.reshape(shape)
    t_probs = torch.where(okm, torch.cat(tprob_parts).reshape(shape), float("nan"))
    t_ranks = torch.where(okm, torch.cat(rank_parts).reshape(shape), -1)
    tok = getattr(cap, "tokenizer", None)
    uniq = top_ids_t.unique().tolist()
    text = {i: (tok.decode([i]) if tok is not None else f"#{i}") for i in uniq}
    top_tokens = [[[text[i] for i in cell] for cell in row] for row in top_ids_t.tolist()]
    return LogitLens(
        layers=layers,
        tokens=list(cap.tokens),
        top_ids=top_ids_t,
        top_probs=top_probs_t,
        top_tokens=top_tokens,
        target_ids=target_ids,
        target_probs=t_probs,
        target_ranks=t_ranks,
        target=tid,
        _cap=cap,
    )
