"""Dictionary features as places to intervene: clamping features during generation.

A clamp ``{(sae, i): value}`` sets feature ``i`` of ``sae`` to ``value`` wherever generation
steers, in the *delta* form: the residual gets ``decode(clamped) − decode(original)`` added, so
the dictionary's error term stays in the stream (a plain splice would drop it and often move
nothing, the failure seen in SAELens-based steering). Clamping a feature to its own value adds
exactly zero, so the generation is unchanged bit for bit.

Dictionaries that read ``blocks.{l}.hook_resid_pre`` clamp at block ``l``'s input; those that
read ``blocks.{l}.hook_resid_post`` at block ``l + 1``'s input (the same tensor).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

_RESID = re.compile(r"blocks\.(\d+)\.hook_resid_(pre|post)$")


def clamp_layer(sae: Any, n_layers: int, d_model: int) -> int:
    """The block whose input a clamp of ``sae``'s features edits; refuses dictionaries that
    do not fit the model or do not read the residual stream."""
    from ..capture._saes import sae_hook

    hook = sae_hook(sae)
    m = _RESID.match(hook)
    d_in = getattr(sae, "d_in", None)
    if d_in is not None and int(d_in) != d_model:
        raise ValueError(
            f"clamp: the dictionary reading {hook!r} has d_in={d_in}, but this model's residual "
            f"stream has d_model={d_model}: it was made for another model. Use a dictionary "
            "trained on this model (cb.load_default_saes() for the default model)."
        )
    if m is None:
        raise ValueError(
            f"clamp: the dictionary reads {hook!r}; clamping during generation works on "
            "residual-stream dictionaries (blocks.{l}.hook_resid_pre / hook_resid_post). Use "
            "cb.patch(..., site='features') for other hooks."
        )
    layer = int(m.group(1)) + (1 if m.group(2) == "post" else 0)
    if layer >= n_layers:
        raise ValueError(
            f"clamp: {hook!r} is the model's last residual (it has {n_layers} layers), which no "
            "block reads; clamp a dictionary at an earlier layer."
        )
    return layer


def _check_feature(sae: Any, i: Any) -> int:
    d_sae = int(getattr(sae, "d_sae", 0))
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < d_sae:
        raise IndexError(
            f"clamp: feature index {i!r} is out of range for a dictionary of d_sae={d_sae}; "
            f"use 0..{d_sae - 1} (cb.features(cap) lists the active ones)."
        )
    return i


def clamp_hooks(clamp: Mapping, n_layers: int, d_model: int) -> dict[int, Any]:
    """``{block: fn(resid, positions) -> resid}`` for :func:`circuitboard.generate`'s steering
    hooks, one per block, from ``{(sae, feature): value}``."""
    if not isinstance(clamp, Mapping) or not clamp:
        raise TypeError(
            f"clamp= must be a non-empty {{(sae, feature): value}} mapping; got {clamp!r}. "
            "Example: clamp={(sae, 301): 8.0}."
        )
    by_layer: dict[int, dict[int, tuple[Any, dict[int, float]]]] = {}
    for key, value in clamp.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise TypeError(
                f"clamp keys are (sae, feature) pairs; got {key!r}. "
                "Example: clamp={(sae, 3): 5.0}."
            )
        sae, i = key
        layer = clamp_layer(sae, n_layers, d_model)
        i = _check_feature(sae, i)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"clamp value of feature {i} must be a number; got {value!r}.")
        group = by_layer.setdefault(layer, {})
        group.setdefault(id(sae), (sae, {}))[1][i] = float(value)
    return {layer: _clamp_fn(list(group.values())) for layer, group in by_layer.items()}


def feature_delta(sae: Any, x: torch.Tensor, idx: Any, new: Any) -> torch.Tensor:
    """``decode(acts') − decode(acts)`` for ``acts = encode(x)`` and ``acts'`` the same with
    columns ``idx`` set to ``new`` (a number, or a tensor broadcasting to ``acts[..., idx]``),
    in ``x``'s dtype and device: add it to ``x`` to change those features and keep the
    dictionary's error term. A feature set to its own value adds exactly 0.

    ``x`` is ``[..., d_in]`` (flatten heads first for ``attn.hook_z``).
    """
    ref = next(iter(sae.parameters()), None) if hasattr(sae, "parameters") else None
    xs = x.to(ref.dtype if ref is not None else torch.float32)
    if ref is not None and xs.device != ref.device:
        xs = xs.to(ref.device)
    acts = sae.encode(xs)
    changed = acts.clone()
    cols = torch.as_tensor(idx, device=acts.device, dtype=torch.long)
    changed[..., cols] = torch.as_tensor(new, dtype=acts.dtype, device=acts.device)
    delta = sae.decode(changed) - sae.decode(acts)
    return delta.to(device=x.device, dtype=x.dtype)


def _clamp_fn(saes: list[tuple[Any, dict[int, float]]]) -> Any:
    def clamp_features(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = x
        for sae, values in saes:
            # delta-clamp: the error term stays in the stream; equal values add exactly 0
            out = out + feature_delta(sae, x, list(values), list(values.values()))
        return out

    clamp_features.__name__ = (
        "clamp[" + ", ".join(f"{i}={v:g}" for _, values in saes for i, v in values.items()) + "]"
    )
    return clamp_features


def merge_clamp(steer: Any, layer: Any, clamp: Any, n_layers: int, d_model: int) -> tuple[Any, Any]:
    """``(steer, layer)`` for the steering resolver with the clamps added as per-block hooks."""
    if clamp is None:
        return steer, layer
    hooks: dict[int, Any] = dict(clamp_hooks(clamp, n_layers, d_model))
    if steer is None:
        return hooks, None
    if isinstance(steer, Mapping):
        items = dict(steer)
    else:
        li = layer if layer is not None else getattr(steer, "layer", None)
        if li is None:
            raise ValueError("steer= needs layer= when given with clamp=; e.g. layer=12.")
        items = {int(li) % n_layers: steer}
    clash = sorted(set(items) & set(hooks))
    if clash:
        raise ValueError(
            f"steer= and clamp= both edit the input of block(s) {clash}; steer at another "
            "layer, or fold the vector into the clamp's dictionary layer in two generations."
        )
    return {**items, **hooks}, None
