"""Steering: a residual-stream direction from contrasting prompts, and the hooks that add it.

Conventions (stated in every result): ``layer`` names the block whose *input* is steered,
``blocks.{layer}.hook_resid_pre`` (TransformerLens' ``resid_pre``); a vector is added there,
times ``scale``, at the chosen absolute token positions. :func:`steering_vector` reads the
same place, so a vector taken at layer ``l`` and added at layer ``l`` lives in the space it
was measured in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..capture._prompts import encode
from ..capture._run import _capture_mode, _parse_prompts, model_info
from ..capture.adapters import get_adapter
from ..capture.adapters._base import get_module
from ._hooks import Edit, write_hooks
from ._sites import Site

SteerFn = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | None"]
"""``fn(resid [batch, pos, d_model], positions [pos]) -> new resid or None`` (None: unchanged)."""


class SteeringVector(torch.Tensor):
    """A ``[d_model]`` tensor (use it as one) that remembers how it was measured.

    ``layer`` (the block whose input, ``hook_resid_pre``, it was read from), ``pos``,
    ``diff_norm`` (its own norm), ``resid_norm`` (the mean norm of the residual stream there,
    at ``pos``, over every prompt of both sets, for a sense of scale:
    ``scale * diff_norm / resid_norm`` is the relative size of the push) and ``n_positive`` /
    ``n_negative``.
    Arithmetic on it gives plain tensors.

    Examples
    --------
    >>> v = SteeringVector.wrap(torch.ones(4), layer=2, pos=-1, resid_norm=4.0, n=(1, 1))
    >>> float(v.sum()), v.layer, round(v.diff_norm, 3), type(v * 2).__name__
    (4.0, 2, 2.0, 'Tensor')
    """

    layer: int
    pos: int
    diff_norm: float
    resid_norm: float
    n_positive: int
    n_negative: int

    @staticmethod
    def wrap(
        vector: torch.Tensor, *, layer: int, pos: int, resid_norm: float, n: tuple[int, int]
    ) -> SteeringVector:
        v = torch.Tensor._make_subclass(SteeringVector, vector.detach())
        v.layer, v.pos = int(layer), int(pos)
        v.diff_norm = float(vector.norm())
        v.resid_norm = float(resid_norm)
        v.n_positive, v.n_negative = n
        return v

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001
        # Results are plain tensors: the metadata describes this vector, not what is made of it.
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))

    def __repr__(self) -> str:
        return (
            f"SteeringVector(layer={self.layer} resid_pre, pos={self.pos}, d_model={self.numel()}, "
            f"|diff|={self.diff_norm:.4g}, mean |resid|={self.resid_norm:.4g}, "
            f"{self.n_positive} positive / {self.n_negative} negative prompts)"
        )


def _check_layer(layer: Any, n_layers: int, what: str) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(
            f"{what}: layer must be an int in [0, {n_layers - 1}]; got {layer!r}. Example: "
            f"layer={n_layers // 2}."
        )
    if not -n_layers <= layer < n_layers:
        raise ValueError(
            f"{what}: layer={layer} is out of range; the model has {n_layers} layers, so use "
            f"0..{n_layers - 1} (negative counts from the end). The vector is added to that "
            "block's input (hook_resid_pre)."
        )
    return layer % n_layers


def steering_vector(
    model: Any,
    tokenizer: Any,
    positive: str | Sequence[str],
    negative: str | Sequence[str],
    *,
    layer: int,
    pos: int = -1,
) -> SteeringVector:
    """Mean difference of the residual stream at ``layer`` between two sets of prompts.

    ``mean(resid_pre[layer][pos] | positive) - mean(... | negative)``, in float32, read by
    the model's own forward (one forward per prompt, eval mode, no gradients). Adding it with
    ``cb.generate(..., steer=v, layer=layer)`` pushes the model toward the positive prompts.

    Parameters
    ----------
    positive, negative : str or list of str
        The two sets (an unequal number of prompts is fine: each side is averaged).
    layer : int
        The block whose input (``blocks.{layer}.hook_resid_pre``) is read.
    pos : int
        Token position read in each prompt (default the last; negative counts from the end).

    Returns
    -------
    SteeringVector
        A ``[d_model]`` tensor with ``layer``, ``diff_norm`` and ``resid_norm`` reported.

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> v = steering_vector(model, tok, ["I love cats"], ["I love dogs"], layer=1)
    >>> tuple(v.shape), v.layer
    ((32,), 1)
    """
    pos_items, _ = _parse_prompts(positive)
    neg_items, _ = _parse_prompts(negative)
    adapter = get_adapter(model)
    n_layers = adapter.n_blocks(model)
    layer = _check_layer(layer, n_layers, "steering_vector")
    if isinstance(pos, bool) or not isinstance(pos, int):
        raise TypeError(f"pos must be an int token position; got {pos!r}.")
    device = get_module(model, adapter.embed).weight.device
    read = Edit(Site("resid_pre", layer), op="read")

    def means(items: list[Any]) -> tuple[torch.Tensor, list[float]]:
        rows, norms = [], []
        for p in items:
            ids, _ = encode(tokenizer, p, f"prompt {p!r}")
            if not -len(ids) <= pos < len(ids):
                raise ValueError(
                    f"pos={pos} is outside the prompt {p!r}, which has {len(ids)} tokens; use "
                    "pos=-1 (the last token) or a position every prompt has."
                )
            model(input_ids=torch.tensor([ids], device=device), use_cache=False)
            x = read.activation[0, pos].to("cpu", torch.float32)
            rows.append(x)
            norms.append(float(x.norm()))
        return torch.stack(rows).mean(0), norms

    with torch.no_grad(), _capture_mode(model, eager=False):
        with write_hooks(model, [read], adapter=adapter):
            mp, np_ = means(pos_items)
            mn, nn_ = means(neg_items)
    all_norms = np_ + nn_
    return SteeringVector.wrap(
        mp - mn,
        layer=layer,
        pos=pos,
        resid_norm=sum(all_norms) / len(all_norms),
        n=(len(pos_items), len(neg_items)),
    )


# -- what `steer=` means ---------------------------------------------------------------------


@dataclass(frozen=True)
class Steering:
    """A resolved intervention: per layer, a vector (times ``scale``) or a callable (whose
    change to the residual is multiplied by ``scale``).

    ``positions`` is ``"all"`` (every position, prompt included), ``"new"`` (the positions
    whose forwards choose generated tokens: the last prompt token and every generated one; the
    prompt before it is read unsteered) or a list of absolute positions.
    """

    hooks: dict[int, torch.Tensor | SteerFn] = field(default_factory=dict)
    scale: float = 1.0
    positions: str | tuple[int, ...] = "all"
    description: str = "none"

    @property
    def active(self) -> bool:
        return bool(self.hooks)

    def __repr__(self) -> str:
        return f"Steering({self.description})"


NO_STEERING = Steering()


def _vector(v: Any, d_model: int, where: str) -> torch.Tensor:
    t = torch.as_tensor(v.detach() if hasattr(v, "detach") else v)
    if t.ndim != 1 or t.shape[0] != d_model:
        raise ValueError(
            f"{where} must be a vector of size d_model={d_model}; got shape {tuple(t.shape)}. "
            "Make one with cb.steering_vector(model, tok, positive, negative, layer=...) or "
            "cmp.direction(a, b, layer)."
        )
    if not torch.isfinite(t).all():
        raise ValueError(f"{where} holds NaN or inf values; it cannot be added to the residual.")
    return t.detach().float()


def resolve_steering(
    steer: Any,
    layer: Any,
    scale: Any,
    positions: Any,
    *,
    n_layers: int,
    d_model: int,
) -> Steering:
    """Check and normalize ``steer=`` / ``layer=`` / ``scale=`` / ``positions=``."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a number; got {scale!r}.")
    if not float(scale) == float(scale) or abs(float(scale)) == float("inf"):
        raise ValueError(f"scale must be finite; got {scale!r}.")
    if isinstance(positions, str):
        if positions not in ("all", "new"):
            raise ValueError(
                f"positions must be 'all', 'new' or a list of token positions; got {positions!r}."
            )
        pos: str | tuple[int, ...] = positions
    else:
        try:
            pos = tuple(int(p) for p in positions)
        except TypeError:
            raise TypeError(
                f"positions must be 'all', 'new' or a list of ints; got {positions!r}."
            ) from None
        if any(p < 0 for p in pos):
            raise ValueError(f"positions are absolute token indices >= 0; got {list(pos)}.")
    if steer is None:
        if layer is not None:
            raise ValueError(
                f"layer={layer} was given without steer=; pass the vector to add "
                "(cb.steering_vector(...)) or drop layer=."
            )
        return Steering(scale=float(scale), positions=pos)
    hooks: dict[int, Any] = {}
    if isinstance(steer, Mapping):
        if layer is not None:
            raise ValueError(
                "steer= is a {layer: vector} mapping, which names its layers; drop layer=."
            )
        if not steer:
            raise ValueError("steer= is an empty mapping; give {layer: vector} or None.")
        for li, v in steer.items():
            li = _check_layer(li, n_layers, "steer")
            hooks[li] = v if callable(v) else _vector(v, d_model, f"steer[{li}]")
    else:
        if layer is None:
            layer = getattr(steer, "layer", None)
        if layer is None:
            raise ValueError(
                "steer= needs layer=: the block whose input (hook_resid_pre) is steered, e.g. "
                "layer=12 (a cb.steering_vector result remembers its own layer)."
            )
        layer = _check_layer(layer, n_layers, "steer")
        hooks[layer] = steer if callable(steer) else _vector(steer, d_model, "steer")
    parts = []
    for li, h in hooks.items():
        what = (
            getattr(h, "__name__", "hook") + "()" if callable(h) else f"|v|={float(h.norm()):.3g}"
        )
        parts.append(f"L{li} resid_pre {what}")
    where = pos if isinstance(pos, str) else f"positions {list(pos)}"
    desc = f"{', '.join(parts)} × {float(scale):g} at {where}"
    return Steering(hooks=hooks, scale=float(scale), positions=pos, description=desc)


class SteeringHooks:
    """The per-forward state of steering: which positions each forward steers, what was added.

    ``offset`` (the absolute position of the first token of the next forward) and
    ``n_prompt`` are set by the caller; :meth:`before` (called before each forward with its
    number of tokens) sets the ``add`` edits' values for those positions. With a KV cache each
    forward sees only its new positions. ``deltas[layer]`` collects what was added, one
    ``[pos, d_model]`` float32 block per forward (zeros where unsteered).
    """

    def __init__(self, steering: Steering, d_model: int) -> None:
        self.steering = steering
        self.d_model = d_model
        self.offset = 0
        self.n_prompt = 0
        self.deltas: dict[int, list[torch.Tensor]] = {li: [] for li in steering.hooks}
        self.vector_edits = {
            li: Edit(Site("resid_pre", li), op="add", value=torch.zeros(d_model))
            for li, h in steering.hooks.items()
            if not callable(h)
        }

    def mask(self, n: int, device: Any = "cpu") -> torch.Tensor:
        """``[n]`` bool: which of the next forward's ``n`` positions are steered."""
        pos = torch.arange(self.offset, self.offset + n, device=device)
        p = self.steering.positions
        if p == "all":
            return torch.ones(n, dtype=torch.bool, device=device)
        if p == "new":
            return pos >= self.n_prompt - 1
        return torch.isin(pos, torch.tensor(p, device=device, dtype=torch.long))

    def before(self, n: int) -> None:
        """Set the vector edits for a forward over ``n`` new positions."""
        m = self.mask(n).to(torch.float32)[None, :, None]
        for li, edit in self.vector_edits.items():
            delta = m * (self.steering.scale * self.steering.hooks[li])  # [1, n, d_model]
            edit.value = delta
            self.deltas[li].append(delta[0])

    def callable_hook(self, layer: int, fn: SteerFn) -> Any:
        """A block pre-hook running ``fn``; its change is scaled and kept to the positions."""
        scale = self.steering.scale

        def hook(mod: Any, args: tuple, kwargs: dict) -> Any:
            from_args = bool(args)
            x = args[0] if from_args else kwargs["hidden_states"]
            n = x.shape[1]
            positions = torch.arange(self.offset, self.offset + n, device=x.device)
            y = fn(x, positions)
            y = x if y is None else y
            if not isinstance(y, torch.Tensor) or y.shape != x.shape:
                raise ValueError(
                    f"the steering hook at layer {layer} must return a tensor of the "
                    f"residual's shape {tuple(x.shape)} or None; got "
                    f"{getattr(y, 'shape', type(y).__name__)}."
                )
            # scale multiplies the hook's change, so scale=0 is "no steering" here too
            y = torch.where(self.mask(n, x.device)[None, :, None], x + scale * (y - x), x)
            self.deltas[layer].append((y - x)[0].detach().to("cpu", torch.float32))
            return ((y, *args[1:]), kwargs) if from_args else (args, {**kwargs, "hidden_states": y})

        return hook

    def added(self, layer: int) -> torch.Tensor:
        """``[positions, d_model]`` everything added at ``layer`` so far (float32, CPU)."""
        return torch.cat(self.deltas[layer]) if self.deltas[layer] else torch.zeros(0)


@contextlib.contextmanager
def steering_hooks(model: Any, adapter: Any, steering: Steering) -> Iterator[SteeringHooks]:
    """Install the steering; every hook is removed on exit, also on errors.

    Vectors are ``add`` edits of :func:`~circuitboard.intervene.write_hooks` at
    ``resid_pre`` of their layer. A callable needs the activation before it can say what to
    write, which no ``Edit`` op expresses, so it gets one block pre-hook, registered after
    ``write_hooks``' and removed in the same ``finally``.
    """
    d_model = model_info(model, adapter).d_model
    state = SteeringHooks(steering, d_model)
    handles: list[Any] = []
    with write_hooks(model, list(state.vector_edits.values()), adapter=adapter):
        try:
            for li, h in steering.hooks.items():
                if callable(h):
                    blk = adapter.block(model, li)
                    hook = state.callable_hook(li, h)
                    handles.append(blk.register_forward_pre_hook(hook, with_kwargs=True))
            yield state
        finally:
            while handles:
                handles.pop().remove()
