"""Exact direct logit attribution: every component's share of one logit (or logit difference)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from .._direction import Direction
from .._threads import one_thread
from ._common import (
    TokenSet,
    as_id_list,
    norm_weight,
    position,
    precision,
    require_decoder,
    require_info,
    spacing_warning,
    target_ids,
    tensor,
    token_text,
    weight,
)

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
    target: int | TokenSet
    baseline: int | TokenSet | None
    pos: int
    n_layers: int
    n_heads: int
    target_text: str = ""
    baseline_text: str = ""
    biases: dict[str, float] = field(default_factory=dict)
    residual_error: float = 0.0
    # The least precise dtype the model computed in or the capture stored, and how far the sum
    # of parts may then sit from model_value: eps × (|logits compared| + Σ_i |x_i · d_i|, the
    # final residual's terms along the logit direction), at least 1e-4 relative (float32).
    # Parts are summed in float64 whatever the dtype.
    dtype: str = "float32"
    tolerance: float = 0.0
    _neurons: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    _experts: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    _features: dict[str, Any] = field(default_factory=dict, repr=False)

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

    def experts(self, layer: int) -> torch.Tensor:
        """Mixture-of-experts layers: ``[n_experts]`` contributions of each expert of ``layer``
        (one more, last, for a shared expert); they sum to its ``.mlp``. ``neurons(layer)``
        lists the experts' neurons in the same order (expert 0's first)."""
        if layer not in self._experts:
            raise KeyError(
                f"layer {layer} has no experts in this attribution: experts() is for "
                "mixture-of-experts layers (Mixtral, Qwen-MoE); use .neurons(layer) for dense "
                "MLPs."
            )
        return self._experts[layer]

    def features(self, layer: int | str) -> Any:
        """A dictionary's features as terms of this attribution (``saes=`` given): a
        :class:`~circuitboard.analysis._features.FeatureAttribution` whose features, decoder
        bias, error and rest sum to ``model_value``. ``layer``: the layer of the hook the
        dictionary writes to, or that hook's name (``"blocks.12.hook_resid_post"``)."""
        if isinstance(layer, str) and layer in self._features:
            return self._features[layer]
        found = [f for h, f in self._features.items() if h.startswith(f"blocks.{layer}.")]
        if len(found) == 1:
            return found[0]
        have = sorted(self._features) or "none (pass saes=[...] to direct_logit_attribution)"
        raise KeyError(
            f"no single dictionary at {layer!r} in this attribution; dictionaries: {have}. "
            "Pass the hook name when a layer has several."
        )

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

        def shown(t: Any, text: str) -> str:
            return f"mean {text}" if isinstance(t, tuple) else repr(text)

        if isinstance(self.target, Direction):
            return f"{self.target.label} at position {self.pos}"
        what = shown(self.target, self.target_text)
        if self.baseline is not None:
            what += f" − {shown(self.baseline, self.baseline_text)}"
        return f"logit {what} at position {self.pos}"

    def __repr__(self) -> str:
        return (
            f"Attribution({self.description}: model {self.model_value:.4g}, "
            f"sum {self.total:.4g}, {len(self.labels)} components)"
        )


def direct_logit_attribution(
    cap: Any,
    target: Any,
    baseline: Any = None,
    pos: int | None = None,
    *,
    softcap: str = "refuse",
    saes: Any = None,
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
    target, baseline : str, int or a list of them
        A token (a string that is exactly one token, e.g. ``" Mary"``) or a token id.
        With a baseline the attributed quantity is ``logit[target] - logit[baseline]``.
        A list of tokens is a set target, valued as the **mean logit** of its tokens (e.g.
        every year digit above the start in the greater-than task: ``[" 5", " 6", ...]``).
        The mean is linear in the residual, so the sum stays exact; the log-probability mass
        of a set is not, and has no exact additive split.
    pos : int, optional
        Position whose logits are explained (default: where the model reads its prediction,
        the last token of a language model, the CLS token of a ViT).
    softcap : {"refuse", "pre"}
        Models with final logit soft-capping (Gemma 2) are not linear in the residual:
        ``"refuse"`` raises, ``"pre"`` attributes the logit before the cap.
    saes : dictionary, list of them, or True, optional
        Dictionaries the capture ran (``cb.capture(..., saes=[...])``; ``True``: all of them):
        ``attr.features(layer)`` then splits the hooked activation into per-feature terms,
        the decoder bias, the error and the rest, summing to ``model_value``.

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
    t, b, p = prepare(cap, target, baseline, pos, softcap)
    attr = attribute_positions(cap, t, b, [p])[0]
    if saes is None or saes is False:
        return attr
    from ._features import resolve_saes, split_by_features

    dictionaries = resolve_saes(cap, saes, WHAT)
    info = require_info(cap, WHAT)
    direction = logit_direction(cap, info, t, b, torch.tensor([p]))[0][0]
    attr._features.update(split_by_features(cap, attr, dictionaries, direction))
    return attr


def prepare(
    cap: Any, target: Any, baseline: Any = None, pos: int | None = None, softcap: str = "refuse"
) -> tuple[int | TokenSet, int | TokenSet | None, int]:
    """Check the arguments of :func:`direct_logit_attribution`; returns ``(target id or set,
    baseline id, set or None, position)``."""
    info = require_info(cap, WHAT)
    require_decoder(info, WHAT)
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
    if pos is None:  # where the model reads its prediction: the last token, or ViT's CLS
        pos = 0 if getattr(cap, "image", None) is not None else -1
    p = position(pos, cap.n_tokens)
    if isinstance(baseline, Direction):
        raise ValueError(
            "baseline= takes tokens; a direction is the whole target: pass "
            "target=cb.Direction(v_target − v_baseline)."
        )
    if isinstance(target, Direction):
        if baseline is not None:
            raise ValueError(
                "target=cb.Direction(...) takes no baseline=: fold it into the vector (for a "
                "vocabulary direction subtract the baseline's one-hot, v[b] -= 1)."
            )
        return target.resolve(info.d_model, getattr(info, "d_vocab", None), "target"), None, p
    t = target_ids(cap, target, "target")
    b = target_ids(cap, baseline, "baseline") if baseline is not None else None
    for given, tid, name in ((target, t, "target"), (baseline, b, "baseline")):
        single = isinstance(tid, int)
        msg = spacing_warning(cap, given, tid, p, name) if single else None
        if msg:
            warnings.warn(msg, UserWarning, stacklevel=3)
    return t, b, p


# Many per-layer products: on a busy 2-core machine 9x faster on one thread; on an idle one,
# 1.5x slower.
@one_thread(when_busy=True)
def attribute_positions(
    cap: Any,
    t: int | TokenSet | Direction,
    b: int | TokenSet | None,
    positions: list[int],
    *,
    final: torch.Tensor | None = None,
) -> list[Attribution]:
    """:func:`direct_logit_attribution` at several positions at once (token ids, checked
    positions, soft-cap policy already decided by the caller); one pass over the weights.

    ``final``: the model's real last residual ``[pos, d_model]`` where ``cap`` leaves it out on
    purpose (a steered generation's), read only for a residual direction's ``model_value``."""
    info = require_info(cap, WHAT)
    L, H = info.n_layers, info.n_heads
    P = torch.tensor(positions, dtype=torch.long)
    Q = len(positions)

    direction, scale, w, u, last = logit_direction(cap, info, t, b, P)
    dtype, eps = precision(cap)

    labels: list[str] = []
    columns: list[torch.Tensor] = []  # one [Q] column per label
    vectors: list[torch.Tensor] = []  # every term's [Q, d_model], to check the total
    biases: dict[str, torch.Tensor] = {}

    def dot(x: torch.Tensor) -> torch.Tensor:
        return (x * direction).sum(-1)

    resid0 = tensor(cap, "blocks.0.hook_resid_pre", WHAT)[P]
    pos_embed = tensor(cap, "hook_pos_embed", WHAT, optional=True)
    labels.append("embed")
    columns.append(dot(resid0 - pos_embed[P] if pos_embed is not None else resid0))
    vectors.append(resid0)
    if pos_embed is not None:
        labels.append("pos_embed")
        columns.append(dot(pos_embed[P]))

    neurons: dict[int, torch.Tensor] = {}
    experts: dict[int, torch.Tensor] = {}  # mixture-of-experts layers: [Q, experts]
    bias_vec = torch.zeros_like(resid0)
    for li in range(L):
        z = tensor(cap, f"blocks.{li}.attn.hook_z", WHAT)[P]  # [Q, heads, d_head]
        W_O = weight(cap, f"blocks.{li}.attn.W_O", WHAT)  # [heads, d_head, d_model]
        if z.shape[1] != W_O.shape[0] or z.shape[-1] != W_O.shape[1]:
            raise ValueError(
                f"blocks.{li}.attn.hook_z has shape {tuple(z.shape[1:])} per position but W_O is "
                f"{tuple(W_O.shape)}; expected [heads, d_head] and [heads, d_head, d_model]."
            )
        head_out = torch.einsum("qhd,hdm->qhm", z, W_O)
        attn_mult = _post_norm(cap, info, li, "ln1_post", P)  # Gemma-2 style sandwich norm
        if attn_mult is not None:
            head_out = head_out * attn_mult[:, None]
        vectors.append(head_out.sum(1))
        head_vals = torch.einsum("qhm,qm->qh", head_out, direction)
        for h in range(H):
            labels.append(f"L{li}H{h}")
            columns.append(head_vals[:, h])
        b_O = weight(cap, f"blocks.{li}.attn.b_O", WHAT, optional=True)
        if b_O is not None and bool(b_O.any()):
            b_O = b_O * attn_mult if attn_mult is not None else b_O.expand(Q, -1)
            biases[f"L{li}.attn.b_O"] = dot(b_O)
            bias_vec = bias_vec + b_O

        mlp_mult = _post_norm(cap, info, li, "ln2_post", P)
        eff = direction * mlp_mult if mlp_mult is not None else direction  # [Q, d_model]
        moe = _moe_terms(cap, li, P, eff)
        if moe is None:
            post = tensor(cap, f"blocks.{li}.mlp.hook_post", WHAT)[P]  # [Q, d_mlp]
            W_out = weight(cap, f"blocks.{li}.mlp.W_out", WHAT)  # [d_mlp, d_model]
            per_neuron = post * (eff @ W_out.T)  # [Q, d_mlp]
            out = post @ W_out
        else:
            per_neuron, out, experts[li] = moe
        neurons[li] = per_neuron.float()
        vectors.append(out * mlp_mult if mlp_mult is not None else out)
        labels.append(f"L{li}.mlp")
        columns.append(per_neuron.sum(-1))
        b_out = weight(cap, f"blocks.{li}.mlp.b_out", WHAT, optional=True)
        if b_out is not None and bool(b_out.any()):
            b_out = b_out * mlp_mult if mlp_mult is not None else b_out.expand(Q, -1)
            biases[f"L{li}.mlp.b_out"] = dot(b_out)
            bias_vec = bias_vec + b_out
    vectors.append(bias_vec)

    ln_b = weight(cap, "ln_final.b", WHAT, optional=True)
    if ln_b is not None and bool(ln_b.any()):
        biases["ln_final.b"] = (ln_b @ u).expand(Q)
    b_U = weight(cap, "unembed.b_U", WHAT, optional=True)
    if b_U is not None and bool(b_U.any()) and not _residual(t):
        biases["unembed.b_U"] = torch.as_tensor(readout(b_U, t, b)).expand(Q)
    labels.append("bias")
    columns.append(
        torch.stack(list(biases.values())).sum(0) if biases else torch.zeros(Q, dtype=torch.float64)
    )

    # The components must rebuild the final residual; else the architecture adds a term the
    # capture does not record (e.g. Gemma-2's norms after attention / MLP outputs).
    errs = torch.zeros(Q, dtype=torch.float64)
    if last is not None:
        rebuilt = torch.stack(vectors).sum(0)
        errs = (rebuilt - last[P]).norm(dim=-1) / last[P].norm(dim=-1).clamp_min(1e-12)
        err = float(errs.max())
        # Each of the 2L + 1 writes is rounded to the model's (or storage) dtype: a random walk
        # of relative steps of eps / 2, given 8x room.
        if err > max(1e-3, 4 * eps * math.sqrt(2 * L + 1)):
            raise ValueError(
                f"the captured components do not add up to the final residual (relative error "
                f"{err:.2g}): this architecture ({info.architecture}) changes head or MLP "
                "outputs before adding them (for example Gemma 2's norms after attention and "
                "MLP, which need blocks.{l}.ln1_post / ln2_post.hook_scale in the capture), so "
                "a direct attribution would not be exact. File an issue with the model name."
            )

    values = torch.stack(columns, dim=1).float()  # [Q, labels]
    ends = last[P] if last is not None else torch.stack(vectors).sum(0)
    magnitude = (ends * direction).abs().sum(-1)  # [Q]: Σ_i |x_i · direction_i|
    out: list[Attribution] = []
    for qi, p in enumerate(positions):
        model_value = _model_value(
            cap, info, p, t, b, last if final is None else final, float(scale[qi]), w, u, b_U,
            ln_b, info.final_logit_softcap,
        )  # fmt: skip
        out.append(
            Attribution(
                labels=labels,
                values=values[qi].clone(),
                model_value=model_value,
                target=t,
                baseline=b,
                pos=p,
                n_layers=L,
                n_heads=H,
                target_text=token_text(cap, t),
                baseline_text=token_text(cap, b) if b is not None else "",
                biases={k: float(v[qi]) for k, v in biases.items()},
                residual_error=float(errs[qi]),
                dtype=dtype,
                tolerance=_tolerance(cap, info, p, t, b, model_value, magnitude[qi], eps),
                _neurons={li: v[qi].clone() for li, v in neurons.items()},
                _experts={li: v[qi].float() for li, v in experts.items()},
            )
        )
    return out


def _moe_terms(
    cap: Any, layer: int, P: torch.Tensor, direction: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """A mixture-of-experts layer's ``(per-neuron [Q, neurons], output [Q, d_model],
    per-expert [Q, experts])`` terms; None for a dense MLP. Expert ``e`` writes
    ``w_e * post_e @ W_out_e`` (routing weight ``w_e``, zero where ``e`` was not chosen);
    a shared expert writes ``gate * post @ W_out``."""
    p = f"blocks.{layer}.mlp."
    if p + "experts.0.hook_post" not in cap.tensors:
        return None
    routing = tensor(cap, p + "hook_expert_weights", WHAT)[P]  # [Q, experts], 0 = not chosen
    n_experts = routing.shape[-1]
    scaled = [
        (routing[:, e, None] * tensor(cap, p + f"experts.{e}.hook_post", WHAT)[P],
         weight(cap, p + f"experts.{e}.W_out", WHAT))
        for e in range(n_experts)
    ]  # fmt: skip
    if p + "shared_expert.hook_post" in cap.tensors:
        gate = tensor(cap, p + "hook_shared_expert_gate", WHAT)[P]  # [Q, 1]
        post = tensor(cap, p + "shared_expert.hook_post", WHAT)[P]
        scaled.append((gate * post, weight(cap, p + "shared_expert.W_out", WHAT)))
    per_neuron = [post * (direction @ W_out.T) for post, W_out in scaled]
    out = sum(post @ W_out for post, W_out in scaled)
    per_expert = torch.stack([v.sum(-1) for v in per_neuron], dim=1)
    return torch.cat(per_neuron, dim=1), out, per_expert


def readout(x: torch.Tensor, t: Any, b: int | TokenSet | None) -> torch.Tensor:
    """``mean(x[..., t]) − mean(x[..., b])`` over the last axis (vocabulary): a logit row, the
    bias ``b_U`` or the columns of ``W_U`` (then the unembedding vector of the quantity). A
    vocabulary :class:`~circuitboard.Direction` reads ``x · vector``."""
    if isinstance(t, Direction):
        return x.double() @ t.vector.to(x.device)
    out = x[..., as_id_list(t)].mean(-1)
    return out - x[..., as_id_list(b)].mean(-1) if b is not None else out


def logit_direction(cap: Any, info: Any, t: int, b: int | None, P: torch.Tensor) -> tuple:
    """The unembedding direction of ``t`` (minus ``b``) with the frozen final norm folded in,
    at positions ``P``: ``(direction [Q, d_model], scale [Q], norm weight, u, last residual)``.
    A component ``x`` at position ``P[i]`` adds ``x · direction[i]`` to the logit (difference).
    """
    n, L = cap.n_tokens, info.n_layers
    W_U = cap.weights.get("unembed.W_U") if cap.weights else None
    if W_U is None:
        weight(cap, "unembed.W_U", WHAT)  # raises the explanatory KeyError
    if _residual(t):
        u = t.vector
    elif isinstance(t, Direction):
        u = readout(W_U.detach().to("cpu", torch.float64), t, b)
    else:
        # Only the target's (and baseline's) columns are read: converting them alone to
        # float64 gives the same numbers as converting the whole unembedding (~0.3 s per call
        # for 50k tokens, which every explanation panel and generation step paid).
        cols = as_id_list(t) + (as_id_list(b) if b is not None else [])
        sub = W_U.detach()[..., cols].to("cpu", torch.float64)
        nt = len(as_id_list(t))
        u = sub[..., :nt].mean(-1)
        if b is not None:
            u = u - sub[..., nt:].mean(-1)
    captured = tensor(cap, "ln_final.hook_scale", WHAT, optional=True)
    last = tensor(cap, f"blocks.{L - 1}.hook_resid_post", WHAT, optional=True)
    if captured is None:
        if last is None:
            raise KeyError(
                f"{WHAT} needs 'ln_final.hook_scale' (or the last layer's hook_resid_post to "
                "recompute it); capture again with cb.capture's default `what=`."
            )
        scale = _scale_from_residual(cap, info, last[P])
    else:
        scale = captured.reshape(n, -1)[P, 0]
        if last is not None:
            scale = _as_multiplier(scale, _scale_from_residual(cap, info, last[P]))
    w = norm_weight(cap, info, WHAT)
    direction = scale[:, None] * (w * u)[None]
    if info.norm == "layernorm":  # (x - mean x) . v == x . (v - mean v)
        direction = direction - direction.mean(-1, keepdim=True)
    return direction, scale, w, u, last


def _post_norm(cap: Any, info: Any, layer: int, name: str, P: torch.Tensor) -> torch.Tensor | None:
    """``[Q, d_model]`` frozen multiplier of a norm applied to an attention / MLP output
    before it joins the residual (Gemma 2), when the capture recorded its scale."""
    scale = tensor(cap, f"blocks.{layer}.{name}.hook_scale", WHAT, optional=True)
    if scale is None:
        return None
    w = weight(cap, f"blocks.{layer}.{name}.w", WHAT, optional=True)
    if w is None:
        w = torch.ones(info.d_model, dtype=torch.float64)
    if info.norm == "gemma_rmsnorm":
        w = 1.0 + w
    return scale.reshape(cap.n_tokens, -1)[P, :1] * w[None]


def _scale_from_residual(cap: Any, info: Any, x: torch.Tensor) -> torch.Tensor:
    """``[Q]`` the final norm's multiplier recomputed from residual rows ``x`` ``[Q, d]``."""
    from ._common import norm_eps

    if info.norm == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    return torch.rsqrt((x * x).mean(-1) + norm_eps(cap))


def _as_multiplier(s: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
    """``hook_scale`` as the factor the norm multiplies by (accepts TransformerLens' divisor)."""
    as_multiplier = float((s / est).log().abs().median())
    as_divisor = float((s * est).log().abs().median())
    return 1.0 / s if as_divisor < 0.5 * as_multiplier and as_multiplier > 0.05 else s


def _tolerance(cap, info, p, t, b, model_value, terms, eps) -> float:
    """How far the parts' sum may sit from ``model_value`` at this precision (see the field):
    the model rounds the final norm's output (each of its terms ``x_i · direction_i``) and the
    logits it compares to its dtype."""
    if cap.logits is not None and not info.final_logit_softcap and not _residual(t):
        row = cap.logits[p].double()

        def size(ids: Any) -> float:  # one token, the mean logit of a token set, a direction
            if isinstance(ids, Direction):
                return float(row.abs() @ ids.vector.abs())
            return float(row[list(ids) if isinstance(ids, tuple | list) else ids].abs().mean())

        compared = size(t) + (size(b) if b is not None else 0.0)
    else:
        compared = abs(model_value)
    return max(1e-4 * max(1.0, abs(model_value)), eps * (compared + float(terms)))


def _model_value(cap, info, p, t, b, last, scale, w, u, b_U, ln_b, cap_value) -> float:
    """The logit (difference) as the model computed it (pre-cap when soft-capped)."""
    if not cap_value and cap.logits is not None and not _residual(t):
        return float(readout(cap.logits[p].double(), t, b))
    if last is None:
        what = "the final residual" if _residual(t) else "cap.logits or the final residual"
        raise KeyError(
            f"{WHAT} needs {what} to know the model's value; capture with the default what= "
            f"(it records blocks.{info.n_layers - 1}.hook_resid_post)."
        )
    x = last[p]
    if info.norm == "layernorm":
        x = x - x.mean()
    value = float((x * scale * w) @ u)
    if ln_b is not None:
        value += float(ln_b @ u)
    if b_U is not None and not _residual(t):
        value += float(readout(b_U, t, b))
    return value


def _residual(t: Any) -> bool:
    """Whether the target is a residual-stream direction (read before the unembedding)."""
    return isinstance(t, Direction) and t.space == "resid"
