"""One attention function registered with transformers' attention interface, with per-layer hooks.

Every attention layer of a ``transformers`` 5.x model calls
``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, ...)`` with the queries and
keys it really uses (after rotary embeddings and query/key norms; key/value heads as they are in
grouped-query models), the values, the mask and its scaling / soft-capping. Inside
:func:`attention_hooks` the model's implementation is set to :data:`KEY`, whose function hands
each call to the hooks registered for its layer and then runs the kernel the model was loaded
with (``sdpa`` or ``eager``; other kernels are run as ``sdpa`` for the duration, see
:func:`interface_status`). The mask function registered for :data:`KEY` is the original
kernel's, so the kernel receives exactly the mask it would have. Nothing here knows an
architecture: scaling, soft-capping and masks are the values the model itself passes.

Contract of the extension point
-------------------------------
``with attention_hooks(model, {layer: LayerHooks(...)}) as session:`` run forwards of
``model``; on exit (also on errors) the implementation is restored. Sessions nest (a capture
inside a patching context): every active session's hooks for a layer run, outer first.

For each attention call of a hooked layer an :class:`AttentionCall` is built and

1. ``on_qkv(call)`` runs for every hook that has one. It may read ``call.query``
   ``[batch, heads, q, d_head]``, ``call.key`` / ``call.value`` ``[batch, kv_heads, k, d_head]``
   and ``call.allowed()`` (``[batch, 1, q, k]`` bool, True where attention may look), and may
   REPLACE them by assigning tensors of the same shape to ``call.query`` / ``call.key`` /
   ``call.value`` (later hooks see the replacements).
2. When some hook of the layer has ``on_pattern``, the weights are computed eager-style for this
   layer only (:meth:`AttentionCall.weights`: ``softmax(softcap(q k^T * scaling) + mask)``, the
   softmax in float32, cast to the query dtype) and each ``on_pattern(call, weights)`` may return
   a replacement ``[batch, heads, q, k]`` (or None to keep them). The output is then
   ``weights @ value`` per head, as eager attention computes it.
3. Otherwise the original kernel computes the output from the (possibly replaced) q, k, v.

Hooks must not keep ``call`` beyond the call; copy what they need. An exception in a hook
propagates out of the forward and the implementation is still restored. The function is
not thread-safe across concurrent forwards of the same model.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

KEY = "circuitboard"
"""The name registered with ``AttentionInterface`` / ``AttentionMaskInterface``."""

PASS_THROUGH = ("sdpa", "eager")
"""Kernels whose masks :meth:`AttentionCall.allowed` reads; others run as ``sdpa`` meanwhile."""

# kwargs that add to the attention logits beyond mask / scaling / soft-capping: a pattern
# recomputed from q and k alone would be wrong, so such layers are reported as unsupported
_BIAS_KWARGS = ("s_aux", "sinks", "position_bias", "alibi")


class InterfaceUnavailable(RuntimeError):
    """The model's attention does not (fully) go through the attention interface."""


@dataclass
class AttentionCall:
    """One attention call of one layer, as the model made it (see the module docstring)."""

    layer: int
    module: Any
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None
    scaling: float
    softcap: float | None
    is_causal: bool
    kwargs: dict[str, Any] = field(repr=False)

    @property
    def groups(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.query.shape[1] // self.key.shape[1]

    def allowed(self) -> torch.Tensor:
        """``[batch, 1 or heads, q, k]`` bool: True where a query may attend to a key."""
        return allowed_from_mask(self.mask, self.query.shape, self.key.shape[2], self.is_causal)

    def weights(self) -> torch.Tensor:
        """Eager-style attention weights ``[batch, heads, q, k]`` of this call (no dropout)."""
        k = self.key.repeat_interleave(self.groups, dim=1) if self.groups > 1 else self.key
        scores = torch.matmul(self.query, k.transpose(-1, -2)) * self.scaling
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        scores = scores.masked_fill(~self.allowed(), float("-inf"))
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(self.query.dtype)


@dataclass
class LayerHooks:
    """Callbacks for one layer; either may be None. See the module docstring for the contract."""

    on_qkv: Callable[[AttentionCall], None] | None = None
    on_pattern: Callable[[AttentionCall, torch.Tensor], torch.Tensor | None] | None = None


def allowed_from_mask(
    mask: torch.Tensor | None, q_shape: Sequence[int], k_len: int, is_causal: bool
) -> torch.Tensor:
    """Where attention may look, from a mask as ``sdpa`` or ``eager`` receive it.

    ``None`` means causal (``sdpa``'s ``is_causal`` when there is more than one query) or no
    mask; a bool mask is True where allowed; a float mask is additive (0 where allowed, the
    dtype's minimum where not).

    >>> allowed_from_mask(None, (1, 2, 3, 8), 3, True)[0, 0].int().tolist()
    [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    """
    b, _, q, _ = q_shape
    if mask is None:
        if is_causal and q > 1:
            ones = torch.ones(q, k_len, dtype=torch.bool)
            return ones.tril(k_len - q)[None, None].expand(b, 1, q, k_len)
        return torch.ones(b, 1, q, k_len, dtype=torch.bool)
    if mask.dtype == torch.bool:
        return mask[..., :k_len]
    m = mask[..., :k_len]
    allowed = m == 0
    blocked = m <= torch.finfo(m.dtype).min / 2
    if not bool((allowed | blocked).all()):
        raise InterfaceUnavailable(
            "the attention mask carries an additive bias (values other than 0 and -inf), so "
            "patterns cannot be recomputed from queries and keys alone."
        )
    return allowed


class _Session:
    def __init__(self, owner: dict[int, int], hooks: dict[int, list[LayerHooks]]) -> None:
        self.owner = owner  # id(submodule) -> layer
        self.hooks = hooks
        self.kernel = "sdpa"  # what computes the outputs (set when the model is switched)
        self.seen: set[int] = set()  # layers whose attention called the function


_ACTIVE: list[_Session] = []
_SWITCHED: dict[int, list[Any]] = {}  # id(model) -> [depth, original implementation]
_ORIGINAL_OF_CONFIG: dict[int, str] = {}  # id(config) -> kernel to run while switched
_REGISTERED = False


def _kernel(name: str, module: Any) -> Callable[..., Any]:
    if name == "eager":
        # transformers' convention: each modeling file defines its own eager_attention_forward
        fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
        if fn is None:
            raise InterfaceUnavailable(
                f"{type(module).__name__} has no module-level eager_attention_forward."
            )
        return fn
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[name]


def _attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    name = _ORIGINAL_OF_CONFIG.get(id(getattr(module, "config", None)))
    layer, hooks = None, []
    for s in _ACTIVE:
        lay = s.owner.get(id(module))
        if lay is not None:
            layer, name = lay, name or s.kernel
            s.seen.add(lay)
            hooks += s.hooks.get(lay, [])
    kernel = _kernel(name or "sdpa", module)
    if not hooks:
        return kernel(module, query, key, value, attention_mask, **kwargs)
    bias = [k for k in _BIAS_KWARGS if kwargs.get(k) is not None]
    if bias:
        raise InterfaceUnavailable(
            f"layer {layer}'s attention adds {bias} to its logits; circuitboard cannot "
            "reproduce its weights from queries and keys."
        )
    scaling = kwargs.get("scaling")
    causal = kwargs.get("is_causal")
    call = AttentionCall(
        layer=int(layer),  # type: ignore[arg-type]
        module=module,
        query=query,
        key=key,
        value=value,
        mask=attention_mask,
        scaling=float(scaling) if scaling is not None else query.shape[-1] ** -0.5,
        softcap=kwargs.get("softcap"),
        is_causal=bool(causal if causal is not None else getattr(module, "is_causal", True)),
        kwargs=kwargs,
    )
    for h in hooks:
        if h.on_qkv is not None:
            h.on_qkv(call)
    pattern_hooks = [h.on_pattern for h in hooks if h.on_pattern is not None]
    if not pattern_hooks:
        return kernel(module, call.query, call.key, call.value, attention_mask, **kwargs)
    w = call.weights()
    for fn in pattern_hooks:
        new = fn(call, w)
        if new is not None:
            if new.shape != w.shape:
                raise ValueError(
                    f"an on_pattern hook of layer {call.layer} returned shape "
                    f"{tuple(new.shape)}; expected {tuple(w.shape)} [batch, heads, q, k]."
                )
            w = new.to(w.dtype)
    v = call.value.repeat_interleave(call.groups, dim=1) if call.groups > 1 else call.value
    out = torch.matmul(w, v).transpose(1, 2).contiguous()
    return out, w


def _mask(*args: Any, config: Any = None, **kwargs: Any) -> Any:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    name = _ORIGINAL_OF_CONFIG.get(id(config), "sdpa")
    return ALL_MASK_ATTENTION_FUNCTIONS[name](*args, config=config, **kwargs)


def _register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(KEY, _attention)
    AttentionMaskInterface.register(KEY, _mask)
    _REGISTERED = True


def interface_status(model: Any) -> tuple[bool, str]:
    """Whether ``model`` can run through :data:`KEY`, and the kernel (or the reason it cannot).

    >>> from circuitboard.testing import tiny_model
    >>> interface_status(tiny_model("llama")[0])
    (True, 'sdpa')
    """
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False, "transformers is not installed"
    if not isinstance(model, PreTrainedModel):
        return False, f"{type(model).__name__} is not a transformers PreTrainedModel"
    if not type(model)._can_set_attn_implementation():
        return False, f"{type(model).__name__} does not dispatch through AttentionInterface"
    impl = model.config._attn_implementation
    if impl == KEY and id(model) in _SWITCHED:
        impl = _SWITCHED[id(model)][1]
    return True, impl if impl in PASS_THROUGH else "sdpa"


def _configs(model: Any) -> list[Any]:
    seen: dict[int, Any] = {id(model.config): model.config}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            seen.setdefault(id(cfg), cfg)
    return list(seen.values())


@contextlib.contextmanager
def _switched(model: Any) -> Iterator[str]:
    ok, kernel = interface_status(model)
    if not ok:
        raise InterfaceUnavailable(kernel)
    _register()
    entry = _SWITCHED.get(id(model))
    if entry is None:
        original = model.config._attn_implementation
        configs = _configs(model)
        for cfg in configs:
            own = cfg._attn_implementation
            _ORIGINAL_OF_CONFIG[id(cfg)] = own if own in PASS_THROUGH else "sdpa"
        entry = _SWITCHED[id(model)] = [0, original, configs]
        try:
            model.set_attn_implementation(KEY)
        except BaseException:
            del _SWITCHED[id(model)]
            for cfg in configs:
                _ORIGINAL_OF_CONFIG.pop(id(cfg), None)
            raise
    entry[0] += 1
    try:
        yield kernel
    finally:
        entry[0] -= 1
        if entry[0] == 0:
            del _SWITCHED[id(model)]
            try:
                model.set_attn_implementation(entry[1])
            finally:
                for cfg in entry[2]:
                    _ORIGINAL_OF_CONFIG.pop(id(cfg), None)


def layer_owner(blocks: Sequence[Any]) -> dict[int, int]:
    """``id(module) -> layer`` for every module inside each block."""
    return {id(m): layer for layer, blk in enumerate(blocks) for m in blk.modules()}


@contextlib.contextmanager
def attention_hooks(
    model: Any,
    hooks: Mapping[int, LayerHooks | Sequence[LayerHooks]],
    *,
    blocks: Sequence[Any] | None = None,
) -> Iterator[Any]:
    """Run ``model``'s attention through :data:`KEY` with ``hooks`` per layer index.

    ``blocks`` is the model's list of transformer blocks (default: found through its
    adapter). Yields the session; ``session.seen`` lists the layers whose attention went through
    the function (a layer missing after a forward bypassed the interface). Raises
    :class:`InterfaceUnavailable` when the model cannot be switched.

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> seen = []
    >>> with attention_hooks(model, {1: LayerHooks(on_qkv=lambda c: seen.append(c.key.shape))}):
    ...     _ = model(input_ids=torch.tensor([[1, 5, 6]]))
    >>> seen, model.config._attn_implementation
    ([torch.Size([1, 2, 3, 8])], 'sdpa')
    """
    if blocks is None:
        from .adapters import get_adapter

        adapter = get_adapter(model)
        blocks = [adapter.block(model, i) for i in range(adapter.n_blocks(model))]
    table = {int(k): [v] if isinstance(v, LayerHooks) else list(v) for k, v in hooks.items()}
    session = _Session(layer_owner(blocks), table)
    with _switched(model) as kernel:
        session.kernel = kernel
        _ACTIVE.append(session)
        try:
            yield session
        finally:
            _ACTIVE.remove(session)
