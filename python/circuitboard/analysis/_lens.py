"""Logit lens: each layer's residual read out through the final norm and the unembedding."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ._common import norm_eps, norm_weight, require_info, tensor, token_id, weight

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


def _layer_logits(cap: Any, info: Any, layer: int, params: tuple | None = None) -> torch.Tensor:
    w, b, W_U, b_U = params if params is not None else _norm_params(cap, info)
    x = tensor(cap, f"blocks.{layer}.hook_resid_post", WHAT)
    if info.norm == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    scale = torch.rsqrt((x * x).mean(-1, keepdim=True) + norm_eps(cap))
    if layer == info.n_layers - 1 and "ln_final.hook_scale" in cap.tensors:
        # The final layer uses the scale the model used, so the lens equals its output.
        captured = tensor(cap, "ln_final.hook_scale", WHAT).reshape(scale.shape)
        flip = (captured * scale - 1).abs().max() < 1e-2 and (
            captured / scale - 1
        ).abs().max() > 1e-2
        scale = 1.0 / captured if flip else captured
    y = (x * scale).float() * w
    if b is not None:
        y = y + b
    logits = y @ W_U
    if b_U is not None:
        logits = logits + b_U
    soft = info.final_logit_softcap
    if soft:
        logits = soft * torch.tanh(logits / soft)
    return logits


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
    top_ids, top_probs, t_probs, t_ranks = [], [], [], []
    for li in layers:
        logits = _layer_logits(cap, info, li, params)
        logp = torch.log_softmax(logits, dim=-1)
        tp, ti = logp.topk(k, dim=-1)
        top_ids.append(ti)
        top_probs.append(tp.exp())
        tl = logits.gather(-1, safe[:, None])
        rank = (logits > tl).sum(-1)
        prob = logp.gather(-1, safe[:, None])[:, 0].exp()
        t_probs.append(torch.where(valid, prob, torch.full_like(prob, float("nan"))))
        t_ranks.append(torch.where(valid, rank, torch.full_like(rank, -1)))
    top_ids_t = torch.stack(top_ids)
    tok = getattr(cap, "tokenizer", None)
    uniq = top_ids_t.unique().tolist()
    text = {i: (tok.decode([i]) if tok is not None else f"#{i}") for i in uniq}
    top_tokens = [[[text[i] for i in cell] for cell in row] for row in top_ids_t.tolist()]
    return LogitLens(
        layers=layers,
        tokens=list(cap.tokens),
        top_ids=top_ids_t,
        top_probs=torch.stack(top_probs),
        top_tokens=top_tokens,
        target_ids=target_ids,
        target_probs=torch.stack(t_probs),
        target_ranks=torch.stack(t_ranks),
        target=tid,
        _cap=cap,
    )
