"""Exact direct logit attribution: every component's share of one logit (or logit difference)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ._common import norm_weight, position, require_info, tensor, token_id, token_text, weight

WHAT = "direct_logit_attribution"


@dataclass(frozen=True, eq=False)
class Attribution:
    """Direct contributions of every component to a logit (difference), with the final norm frozen.

    ``values[i]`` is the contribution of ``labels[i]``; the values sum to ``model_value``
    (up to float error). Heads are labelled ``L{layer}H{head}``, MLP layers ``L{layer}.mlp``
    (the sum of that layer's neurons, see :meth:`neurons`), embeddings ``embed`` and
    ``pos_embed`` (absent for rotary models), and every bias together ``bias`` (see
    ``biases`` for the breakdown).

    Examples
    --------
    >>> attr = cb.direct_logit_attribution(cap, " Mary", baseline=" John")  # doctest: +SKIP
    >>> float(attr.values.sum()), attr.model_value  # doctest: +SKIP
    (3.21, 3.21)
    >>> attr.top(3)  # doctest: +SKIP
    [('L22H6', 1.9), ('L29.mlp', 0.8), ('L18H1', -0.6)]
    """

    labels: list[str]
    values: torch.Tensor
    model_value: float
    target: int
    baseline: int | None
    pos: int
    n_layers: int
    n_heads: int
    target_text: str = ""
    baseline_text: str = ""
    biases: dict[str, float] = field(default_factory=dict)
    residual_error: float = 0.0
    _neurons: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {lab: i for i, lab in enumerate(self.labels)})

    def __getitem__(self, label: str) -> float:
        try:
            return float(self.values[self._index[label]])  # type: ignore[attr-defined]
        except KeyError:
            raise KeyError(
                f"no component {label!r}; labels look like {self.labels[:4]} ..."
            ) from None

    @property
    def total(self) -> float:
        """Sum of every contribution (equals ``model_value`` up to float error)."""
        return float(self.values.double().sum())

    @property
    def heads(self) -> torch.Tensor:
        """``[layers, heads]`` contributions of each attention head."""
        idx = [
            self._index[f"L{li}H{h}"] for li in range(self.n_layers) for h in range(self.n_heads)
        ]  # type: ignore[attr-defined]
        return self.values[idx].reshape(self.n_layers, self.n_heads)

    @property
    def mlp(self) -> torch.Tensor:
        """``[layers]`` contributions of each MLP layer (sum of its neurons)."""
        return self.values[[self._index[f"L{li}.mlp"] for li in range(self.n_layers)]]  # type: ignore[attr-defined]

    def neurons(self, layer: int) -> torch.Tensor:
        """``[d_mlp]`` contributions of the neurons of ``layer`` (they sum to its ``.mlp``)."""
        if layer not in self._neurons:
            raise IndexError(
                f"layer={layer} is out of range: the model has {self.n_layers} layers."
            )
        return self._neurons[layer]

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` components with the largest absolute contribution."""
        order = self.values.abs().argsort(descending=True)[:k]
        return [(self.labels[i], float(self.values[i])) for i in order.tolist()]

    def top_neurons(self, k: int = 10) -> list[tuple[int, int, float]]:
        """``(layer, neuron, value)`` of the ``k`` neurons with the largest absolute value."""
        allv = torch.stack([self._neurons[li] for li in range(self.n_layers)])
        flat = allv.flatten()
        order = flat.abs().argsort(descending=True)[:k].tolist()
        d = allv.shape[1]
        return [(i // d, i % d, float(flat[i])) for i in order]

    @property
    def description(self) -> str:
        """``' Mary' − ' John' at position 14`` style text."""
        what = repr(self.target_text)
        if self.baseline is not None:
            what += f" − {self.baseline_text!r}"
        return f"logit {what} at position {self.pos}"

    def __repr__(self) -> str:
        return (
            f"Attribution({self.description}: model {self.model_value:.4g}, "
            f"sum {self.total:.4g}, {len(self.labels)} components)"
        )


def direct_logit_attribution(
    cap: Any, target: Any, baseline: Any = None, pos: int = -1, *, softcap: str = "refuse"
) -> Attribution:
    """Split the logit of ``target`` (minus ``baseline``'s) at ``pos`` into component contributions.

    The final residual is the sum of the embeddings, every head's output (its ``z`` times
    its slice of ``W_O``), every MLP neuron's output (activation times its row of ``W_out``)
    and the output biases. With the final norm's scale frozen at its value in the real
    forward (``ln_final.hook_scale``), the logit is linear in that sum, so each term's
    contribution is exact and they add up to the model's logit. LayerNorm's centering is
    applied to each term; Gemma's ``(1 + w)`` norm weight is used as such.

    Parameters
    ----------
    cap : Capture
        A capture with every layer's ``attn.hook_z``, ``mlp.hook_post``, residuals,
        ``ln_final.hook_scale`` and the weights (``cb.capture`` records them). Capture in
        float32 for exact sums.
    target, baseline : str or int
        A token (a string that is exactly one token, e.g. ``" Mary"``) or a token id.
        With a baseline the attributed quantity is ``logit[target] - logit[baseline]``.
    pos : int
        Position whose next-token logits are explained (default: the last).
    softcap : {"refuse", "pre"}
        Models with final logit soft-capping (Gemma 2) are not linear in the residual:
        ``"refuse"`` raises, ``"pre"`` attributes the logit before the cap.

    Returns
    -------
    Attribution

    Examples
    --------
    >>> prompt = "When Mary and John went to the store, John gave a drink to"
    >>> cap = cb.capture(model, tokenizer, prompt)  # doctest: +SKIP
    >>> attr = cb.direct_logit_attribution(cap, " Mary", baseline=" John")  # doctest: +SKIP
    >>> abs(attr.total - attr.model_value) < 1e-4 * abs(attr.model_value)  # doctest: +SKIP
    True
    """
    info = require_info(cap, WHAT)
    if softcap not in ("refuse", "pre"):
        raise ValueError(f"softcap must be 'refuse' or 'pre'; got {softcap!r}.")
    cap_value = info.final_logit_softcap
    if cap_value and softcap == "refuse":
        raise ValueError(
            f"this model soft-caps its logits (final_logit_softcap={cap_value}): the logit is "
            "tanh of a linear function of the components, so no exact additive split exists. "
            "Pass softcap='pre' to attribute the logit before the cap (model_value is then the "
            "pre-cap logit too)."
        )
    n = cap.n_tokens
    p = position(pos, n)
    t = token_id(cap, target, "target")
    b = token_id(cap, baseline, "baseline") if baseline is not None else None
    L, H = info.n_layers, info.n_heads

    # The unembedding direction, then the frozen final norm folded into it.
    W_U = cap.weights.get("unembed.W_U") if cap.weights else None
    if W_U is None:
        weight(cap, "unembed.W_U", WHAT)  # raises the explanatory KeyError
    cols = W_U[:, [t] if b is None else [t, b]].detach().to("cpu", torch.float64)
    u = cols[:, 0] - (cols[:, 1] if b is not None else 0.0)
    scale = tensor(cap, "ln_final.hook_scale", WHAT, optional=True)
    last = tensor(cap, f"blocks.{L - 1}.hook_resid_post", WHAT, optional=True)
    if scale is None:
        scale = _scale_from_residual(cap, info, last, p)
    else:
        scale = _multiplier(scale.reshape(n, -1)[p, 0], cap, info, last, p)
    w = norm_weight(cap, info, WHAT)
    direction = scale * w * u
    if info.norm == "layernorm":
        direction = direction - direction.mean()  # (x - mean x) . v == x . (v - mean v)

    labels: list[str] = []
    values: list[float] = []
    vectors: list[torch.Tensor] = []  # every term's residual vector, to check the total
    biases: dict[str, float] = {}

    resid0 = tensor(cap, "blocks.0.hook_resid_pre", WHAT)[p]
    pos_embed = tensor(cap, "hook_pos_embed", WHAT, optional=True)
    embed = resid0 - pos_embed[p] if pos_embed is not None else resid0
    labels.append("embed")
    values.append(float(embed @ direction))
    vectors.append(resid0)
    if pos_embed is not None:
        labels.append("pos_embed")
        values.append(float(pos_embed[p] @ direction))

    neurons: dict[int, torch.Tensor] = {}
    bias_vec = torch.zeros_like(resid0)
    for li in range(L):
        z = tensor(cap, f"blocks.{li}.attn.hook_z", WHAT)[p]  # [heads, d_head]
        W_O = weight(cap, f"blocks.{li}.attn.W_O", WHAT)  # [heads, d_head, d_model]
        if z.shape[0] != W_O.shape[0] or z.shape[-1] != W_O.shape[1]:
            raise ValueError(
                f"blocks.{li}.attn.hook_z has shape {tuple(z.shape)} but W_O is "
                f"{tuple(W_O.shape)}; expected [heads, d_head] and [heads, d_head, d_model]."
            )
        head_out = torch.einsum("hd,hdm->hm", z, W_O)
        attn_mult = _post_norm(cap, info, li, "ln1_post", p)  # Gemma-2 style sandwich norm
        if attn_mult is not None:
            head_out = head_out * attn_mult
        vectors.append(head_out.sum(0))
        head_vals = head_out @ direction
        for h in range(H):
            labels.append(f"L{li}H{h}")
            values.append(float(head_vals[h]))
        b_O = weight(cap, f"blocks.{li}.attn.b_O", WHAT, optional=True)
        if b_O is not None and attn_mult is not None:
            b_O = b_O * attn_mult
        if b_O is not None and bool(b_O.any()):
            biases[f"L{li}.attn.b_O"] = float(b_O @ direction)
            bias_vec = bias_vec + b_O

        post = tensor(cap, f"blocks.{li}.mlp.hook_post", WHAT)[p]  # [d_mlp]
        W_out = weight(cap, f"blocks.{li}.mlp.W_out", WHAT)  # [d_mlp, d_model]
        mlp_mult = _post_norm(cap, info, li, "ln2_post", p)
        if mlp_mult is not None:
            W_out = W_out * mlp_mult
        per_neuron = post * (W_out @ direction)
        neurons[li] = per_neuron.float()
        vectors.append(post @ W_out)
        labels.append(f"L{li}.mlp")
        values.append(float(per_neuron.sum()))
        b_out = weight(cap, f"blocks.{li}.mlp.b_out", WHAT, optional=True)
        if b_out is not None and mlp_mult is not None:
            b_out = b_out * mlp_mult
        if b_out is not None and bool(b_out.any()):
            biases[f"L{li}.mlp.b_out"] = float(b_out @ direction)
            bias_vec = bias_vec + b_out
    vectors.append(bias_vec)

    ln_b = weight(cap, "ln_final.b", WHAT, optional=True)
    if ln_b is not None and bool(ln_b.any()):
        biases["ln_final.b"] = float(ln_b @ u)
    b_U = weight(cap, "unembed.b_U", WHAT, optional=True)
    if b_U is not None and bool(b_U.any()):
        biases["unembed.b_U"] = float(b_U[t] - (b_U[b] if b is not None else 0.0))
    labels.append("bias")
    values.append(sum(biases.values()))

    # The components must rebuild the final residual; else the architecture adds a term the
    # capture does not record (e.g. Gemma-2's norms after attention / MLP outputs).
    err = 0.0
    if last is not None:
        rebuilt = torch.stack(vectors).sum(0)
        err = float((rebuilt - last[p]).norm() / last[p].norm().clamp_min(1e-12))
        low = cap.tensors[f"blocks.{L - 1}.hook_resid_post"].dtype in (
            torch.float16,
            torch.bfloat16,
        )
        if err > (3e-2 if low else 1e-3):  # half-precision captures round every term
            raise ValueError(
                f"the captured components do not add up to the final residual (relative error "
                f"{err:.2g}): this architecture ({info.architecture}) changes head or MLP "
                "outputs before adding them (for example Gemma 2's norms after attention and "
                "MLP, which need blocks.{l}.ln1_post / ln2_post.hook_scale in the capture), so "
                "a direct attribution would not be exact. File an issue with the model name."
            )

    model_value = _model_value(cap, info, p, t, b, last, scale, w, u, b_U, ln_b, cap_value)
    return Attribution(
        labels=labels,
        values=torch.tensor(values, dtype=torch.float32),
        model_value=model_value,
        target=t,
        baseline=b,
        pos=p,
        n_layers=L,
        n_heads=H,
        target_text=token_text(cap, t),
        baseline_text=token_text(cap, b) if b is not None else "",
        biases=biases,
        residual_error=err,
        _neurons=neurons,
    )


def _post_norm(cap: Any, info: Any, layer: int, name: str, p: int) -> torch.Tensor | None:
    """Frozen multiplier of a norm applied to an attention / MLP output before it joins the
    residual (Gemma 2's ``post_attention_layernorm``), when the capture recorded it."""
    scale = tensor(cap, f"blocks.{layer}.{name}.hook_scale", WHAT, optional=True)
    if scale is None:
        return None
    w = weight(cap, f"blocks.{layer}.{name}.w", WHAT, optional=True)
    if w is None:
        w = torch.ones(info.d_model, dtype=torch.float64)
    if info.norm == "gemma_rmsnorm":
        w = 1.0 + w
    return scale.reshape(cap.n_tokens, -1)[p, 0] * w


def _scale_from_residual(cap: Any, info: Any, last: torch.Tensor | None, p: int) -> torch.Tensor:
    from ._common import norm_eps

    if last is None:
        raise KeyError(
            f"{WHAT} needs 'ln_final.hook_scale' (or the last layer's hook_resid_post to "
            "recompute it); capture again with cb.capture's default `what=`."
        )
    x = last[p]
    if info.norm == "layernorm":
        x = x - x.mean()
    return torch.rsqrt((x * x).mean() + norm_eps(cap))


def _multiplier(
    s: torch.Tensor, cap: Any, info: Any, last: torch.Tensor | None, p: int
) -> torch.Tensor:
    """``hook_scale`` as the factor the norm multiplies by (accepts TransformerLens' divisor)."""
    if last is None:
        return s
    est = _scale_from_residual(cap, info, last, p)
    as_multiplier = abs(math.log(float(s / est)))
    as_divisor = abs(math.log(float(s * est)))
    return 1.0 / s if as_divisor < 0.5 * as_multiplier and as_multiplier > 0.05 else s


def _model_value(cap, info, p, t, b, last, scale, w, u, b_U, ln_b, cap_value) -> float:
    """The logit (difference) as the model computed it (pre-cap when soft-capped)."""
    if not cap_value and cap.logits is not None:
        row = cap.logits[p].double()
        return float(row[t] - (row[b] if b is not None else 0.0))
    if last is None:
        raise KeyError(f"{WHAT} needs cap.logits or the final residual to know the model's value.")
    x = last[p]
    if info.norm == "layernorm":
        x = x - x.mean()
    value = float((x * scale * w) @ u)
    if ln_b is not None:
        value += float(ln_b @ u)
    if b_U is not None:
        value += float(b_U[t] - (b_U[b] if b is not None else 0.0))
    return value
