"""Write hooks: read, replace, add to, or differentiate activations at :class:`Site` s.

One context manager, :func:`write_hooks`, installs every hook a batch of interventions needs
and removes them all on exit, also when the forward, a hook or the metric raises. It is the
single owner of hook registration for patching, attribution patching, circuits, steering and
generation; build on it instead of calling ``register_forward_hook`` yourself.

Contract
--------
An :class:`Edit` is one operation on one site for some batch rows:

- ``op="read"``: ``edit.activation`` receives the site's tensor as the forward computed it
  (detached, on the model's device, its dtype), shape ``[R, P, *rest]`` (rows × positions ×
  the kind's trailing shape, see :func:`~circuitboard.intervene._sites.site_shape`; a ``head``
  or ``neuron`` drops that axis).
- ``op="replace"``: the site's tensor becomes ``value`` (broadcast to ``[R, P, *rest]``).
- ``op="add"``: ``value`` is added (steering vectors, ``ε``-patches).
- ``op="grad"``: a zero tensor ``edit.delta`` (``requires_grad``) is added, so
  ``torch.autograd.grad(metric, edit.delta)`` is the gradient of the metric with respect to the
  tensor the forward really used (never a reshaped copy that autograd forgets). The activation
  before the delta is in ``edit.activation``. Run the forward under ``torch.enable_grad()``.

``rows`` picks batch rows (``None``: all), so one forward carries many patched runs: each hook
writes only the rows whose site lives at its module. Edits on the same module apply in list
order. Values are cast to the activation's dtype and device. Hooks clone a tensor before the
first write, so caches and the model's other tensors are never modified in place.

Sites inside attention (``q``, ``k``, ``v``, ``pattern``) are written through the attention
function capture registers (:func:`circuitboard.capture._attn_interface.attention_hooks`): the
model's attention implementation is switched for the duration of the block and restored after.

Two options make batched patching cheap:

- ``expand_at=l, batch=B``: the input is one prompt (batch 1); at the input of block ``l`` its
  hidden state is repeated to ``B`` rows. Blocks before ``l`` run once for all rows (the shared
  prefix); every edit must then be at block ``l`` or later (``resid_pre`` of ``l`` included).
  Masks and rotary tables built for batch 1 broadcast over the rows.
- ``logits_at``: the unembedding sees only this position (an int, or one per row as a
  ``LongTensor [B]``), so the model returns logits ``[B, 1, vocab]``.

Examples
--------
>>> import torch
>>> from circuitboard.testing import tiny_model
>>> from circuitboard.intervene import Edit, Site, write_hooks
>>> model, tok = tiny_model("llama")
>>> ids = torch.tensor([tok("the store")["input_ids"]])
>>> read = Edit(Site("resid_post", 0), op="read")
>>> with torch.no_grad(), write_hooks(model, [read]):
...     _ = model(input_ids=ids)
>>> read.activation.shape == (1, ids.shape[1], 32)
True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..capture.adapters import Adapter, get_adapter
from ..capture.adapters._base import get_module
from ._sites import ATTN_KINDS, Location, Site, locate

OPS = ("read", "replace", "add", "grad")


@dataclass(eq=False)
class Edit:
    """One operation (``op``) on one :class:`Site` for some batch ``rows`` (see the module)."""

    site: Site
    op: str = "replace"
    value: torch.Tensor | None = None
    rows: int | Sequence[int] | None = None
    activation: torch.Tensor | None = field(default=None, repr=False)
    """Filled by ``read`` and ``grad``: the site's tensor as the forward computed it."""
    delta: torch.Tensor | None = field(default=None, repr=False)
    """Filled by ``grad``: the zero the forward added; differentiate the metric w.r.t. it."""
    hits: int = field(default=0, repr=False)
    """How many times a hook applied this edit (0 after a forward: its module never ran)."""

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"Edit op must be one of {OPS}; got {self.op!r}.")
        if self.op in ("replace", "add") and self.value is None:
            raise ValueError(f"Edit op={self.op!r} at {self.site.label} needs a value tensor.")


def _row_list(rows: int | Sequence[int] | None, batch: int) -> list[int] | None:
    if rows is None:
        return None
    items = [rows] if isinstance(rows, int) else list(rows)
    for r in items:
        if not 0 <= r < batch:
            raise ValueError(f"Edit rows {items} outside the batch of {batch} rows.")
    return items


def _index(edit: Edit, batch: int, n_tokens: int, device: Any) -> tuple:
    """Index selecting ``[R, P, *rest]`` of the site's (head-split) tensor."""
    s = edit.site
    rows = _row_list(edit.rows, batch)
    comp = s.head if s.head is not None else s.neuron
    if rows is None and s.pos is None:
        return (slice(None), slice(None)) if comp is None else (slice(None), slice(None), comp)
    r = torch.arange(batch) if rows is None else torch.tensor(rows)
    p = torch.tensor(s.positions(n_tokens))
    idx: tuple = (r.to(device)[:, None], p.to(device)[None, :])
    return idx if comp is None else (*idx, comp)


class _Module:
    """The edits on one (module, hook kind) and the function that applies them."""

    def __init__(self, loc: Location) -> None:
        self.loc = loc
        self.edits: list[Edit] = []

    def apply(self, x: torch.Tensor, resid_pre: torch.Tensor | None) -> torch.Tensor | None:
        """Apply the edits to ``x``; the new tensor, or None when nothing was written."""
        writes = any(e.op != "read" for e in self.edits)
        B, T = x.shape[0], x.shape[1]
        y = x.clone() if writes else x
        H = self.loc.split_heads
        v = y.view(*y.shape[:-1], H, y.shape[-1] // H) if H else y
        for e in self.edits:
            e.hits += 1
            idx = _index(e, B, T, x.device)
            base = resid_pre[idx[:2]] if self.loc.via_attn_out and resid_pre is not None else None
            if e.op in ("read", "grad"):
                cur = v[idx]
                e.activation = (cur + base if base is not None else cur).detach()
            if e.op == "read":
                continue
            if e.op == "grad":
                e.delta = torch.zeros_like(v[idx], requires_grad=True)
                v[idx] = v[idx] + e.delta
                continue
            val = e.value.to(device=v.device, dtype=v.dtype)
            target_shape = v[idx].shape
            try:
                val = torch.broadcast_to(val, target_shape)
            except RuntimeError:
                raise ValueError(
                    f"{e.op} value at {e.site.label} ({e.site.kind}) has shape "
                    f"{tuple(e.value.shape)}; it must broadcast to {tuple(target_shape)} "
                    "(rows, positions, then the site's own dims)."
                ) from None
            if e.op == "replace":
                v[idx] = val - base if base is not None else val
            else:
                v[idx] = v[idx] + val
        return y if writes else None


def _hidden(args: tuple, kwargs: dict) -> tuple[torch.Tensor, str | int]:
    if args:
        return args[0], 0
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"], "hidden_states"
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            return v, k
    raise RuntimeError("circuitboard: found no hidden-state tensor in a module's inputs.")


def _replace_input(args: tuple, kwargs: dict, key: str | int, x: torch.Tensor) -> tuple:
    if key == 0:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, key: x}


def _out_tensor(out: Any, index: int | None) -> torch.Tensor:
    if isinstance(out, tuple | list):
        return out[index or 0]
    return out


def _replace_output(out: Any, index: int | None, x: torch.Tensor) -> Any:
    if isinstance(out, tuple | list):
        i = index or 0
        return type(out)((*out[:i], x, *out[i + 1 :]))
    return x


def _attention_hooks(attn: dict[int, dict[str, _Module]]) -> dict[int, Any]:
    """LayerHooks that apply q / k / v edits (``on_qkv``) and pattern edits (``on_pattern``).

    The call's tensors are ``[B, heads, T, ·]``; edits see them as ``[B, T, heads, ·]``."""
    from ..capture._attn_interface import LayerHooks

    def qkv_fn(grp: _Module) -> Any:
        def on_qkv(call: Any) -> None:
            for kind in ("q", "k", "v"):
                sub = [e for e in grp.edits if e.site.kind == kind]
                if not sub:
                    continue
                name = {"q": "query", "k": "key", "v": "value"}[kind]
                part = _Module(grp.loc)
                part.edits = sub
                y = part.apply(getattr(call, name).transpose(1, 2), None)
                if y is not None:
                    setattr(call, name, y.transpose(1, 2))

        return on_qkv

    def pattern_fn(grp: _Module) -> Any:
        def on_pattern(call: Any, weights: torch.Tensor) -> torch.Tensor | None:
            y = grp.apply(weights.transpose(1, 2), None)
            return None if y is None else y.transpose(1, 2)

        return on_pattern

    out = {}
    for layer, parts in attn.items():
        out[layer] = LayerHooks(
            on_qkv=qkv_fn(parts["qkv"]) if "qkv" in parts else None,
            on_pattern=pattern_fn(parts["pattern"]) if "pattern" in parts else None,
        )
    return out


@contextlib.contextmanager
def write_hooks(
    model: Any,
    edits: Sequence[Edit] = (),
    *,
    adapter: Adapter | None = None,
    expand_at: int | None = None,
    batch: int | None = None,
    logits_at: int | torch.Tensor | None = None,
) -> Iterator[list[Edit]]:
    """Install the hooks that carry out ``edits`` on ``model``; remove them all on exit.

    See the module docstring for the contract of each :class:`Edit` and of ``expand_at`` /
    ``batch`` / ``logits_at``. Yields ``edits`` (their ``activation`` / ``delta`` are filled
    during the forward).
    """
    from ..capture._run import model_info

    adapter = adapter or get_adapter(model)
    info = model_info(model, adapter)
    if expand_at is not None:
        if batch is None or batch < 1:
            raise ValueError("expand_at= needs batch= (the number of rows to expand to).")
        early = [
            e
            for e in edits
            if e.site.kind == "embed" or (e.site.kind != "unembed_in" and e.site.layer < expand_at)
        ]
        if early:
            raise ValueError(
                f"expand_at={expand_at}: {early[0].site.label} is before block {expand_at}, "
                "where the batch is still one row; lower expand_at."
            )
    groups: dict[tuple[int, str, bool], _Module] = {}
    attn: dict[int, dict[str, _Module]] = {}  # layer -> {"qkv" | "pattern": edits}
    stash_layers: set[int] = set()
    for e in edits:
        loc = locate(model, adapter, info, e.site)
        if loc.hook == "attn":
            part = "pattern" if e.site.kind == "pattern" else "qkv"
            attn.setdefault(e.site.layer, {}).setdefault(part, _Module(loc)).edits.append(e)
            continue
        key = (id(loc.module), loc.hook, loc.via_attn_out)
        groups.setdefault(key, _Module(loc)).edits.append(e)
        if loc.via_attn_out:
            stash_layers.add(e.site.layer)

    handles: list[Any] = []
    resid_pre: dict[int, torch.Tensor] = {}
    stack = contextlib.ExitStack()
    try:
        if attn:
            from ..capture._attn_interface import attention_hooks

            blocks = [adapter.block(model, i) for i in range(adapter.n_blocks(model))]
            stack.enter_context(attention_hooks(model, _attention_hooks(attn), blocks=blocks))
        if expand_at is not None:
            n = batch

            def expand(mod: Any, args: tuple, kwargs: dict) -> tuple:
                x, key = _hidden(args, kwargs)
                if x.shape[0] != 1:
                    raise ValueError(
                        f"expand_at={expand_at} needs a one-row input; got {x.shape[0]} rows."
                    )
                return _replace_input(args, kwargs, key, x.expand(n, *x.shape[1:]).contiguous())

            blk = adapter.block(model, expand_at)
            handles.append(blk.register_forward_pre_hook(expand, with_kwargs=True))

        for grp in groups.values():
            loc = grp.loc
            mid_layer = grp.edits[0].site.layer if loc.via_attn_out else None
            if loc.hook == "pre":

                def pre(mod: Any, args: tuple, kwargs: dict, grp: _Module = grp) -> Any:
                    x, key = _hidden(args, kwargs)
                    y = grp.apply(x, None)
                    return None if y is None else _replace_input(args, kwargs, key, y)

                handles.append(loc.module.register_forward_pre_hook(pre, with_kwargs=True))
            else:

                def post(mod: Any, args: tuple, out: Any, grp: _Module = grp, ml=mid_layer) -> Any:
                    x = _out_tensor(out, grp.loc.index)
                    y = grp.apply(x, resid_pre.get(ml) if ml is not None else None)
                    return None if y is None else _replace_output(out, grp.loc.index, y)

                handles.append(loc.module.register_forward_hook(post))

        # after the edits' pre-hooks: resid_mid writes see the resid_pre the block really used
        for layer in sorted(stash_layers):

            def stash(mod: Any, args: tuple, kwargs: dict, layer: int = layer) -> None:
                resid_pre[layer] = _hidden(args, kwargs)[0]

            blk = adapter.block(model, layer)
            handles.append(blk.register_forward_pre_hook(stash, with_kwargs=True))

        if logits_at is not None:
            at = logits_at

            def select(mod: Any, args: tuple) -> tuple:
                x = args[0]
                if isinstance(at, torch.Tensor):
                    rows = torch.arange(x.shape[0], device=x.device)
                    sel = x[rows, at.to(x.device) % x.shape[1]][:, None]
                else:
                    sel = x[:, at][:, None]
                return (sel, *args[1:])

            head = get_module(model, adapter.unembed)
            handles.append(head.register_forward_pre_hook(select))
        yield list(edits)
    finally:
        while handles:
            handles.pop().remove()
        resid_pre.clear()
        stack.close()


def check_applied(edits: Sequence[Edit]) -> None:
    """Raise when a forward never reached an edit's site (its module did not run)."""
    missed = [e for e in edits if e.hits == 0]
    if missed:
        s = missed[0].site
        inside = s.kind in ATTN_KINDS
        raise RuntimeError(
            f"the forward never reached site {s.label} ({s.kind}), so the edit did nothing"
            + (
                ": the model's attention did not call transformers' attention interface (was "
                "the model wrapped, e.g. by a TransformerLens bridge? Load a fresh copy)."
                if inside
                else "; its module was not called."
            )
        )


__all__ = ["OPS", "Edit", "check_applied", "write_hooks"]
