"""Dictionary features as ablation components: ``cb.ablate(..., [(sae, 301), (sae, [3, 7])])``.

Ablating feature ``f`` of a dictionary reading hook ``H`` replaces its activation (by 0, its
mean over the reference prompts, or its value on a resampled reference prompt) in the *delta*
form the generation clamps use (:func:`~circuitboard.intervene._feature_sites.feature_delta`):
``H`` gets ``decode(acts with f replaced) − decode(acts)`` added, with ``acts = encode(H)`` of
the run being ablated, so the dictionary's error term stays. Replacing a feature by its own
value adds exactly 0. Several dictionaries at one hook each add their delta, computed from the
same hooked activation; a feature edit at a place a component edit also writes (``L0N5`` and a
dictionary over ``blocks.0.mlp.hook_post``) sees the activation after the component edit.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._feature_sites import feature_delta

_SHAPE_HELP = (
    "a feature component is (sae, i) or (sae, [i, j, ...]) with the dictionary first, e.g. "
    "(sae, 301) or (sae, [3, 7])"
)


def is_dictionary(obj: Any) -> bool:
    """Whether ``obj`` looks like a dictionary (``encode`` and ``decode``)."""
    return callable(getattr(obj, "encode", None)) and callable(getattr(obj, "decode", None))


@dataclass(frozen=True, eq=False)
class Features:
    """Features ``idx`` of one dictionary, read and written at its ``hook``."""

    sae: Any
    idx: tuple[int, ...]
    hook: str


def _d_sae(sae: Any) -> int | None:
    d = getattr(sae, "d_sae", None) or getattr(getattr(sae, "cfg", None), "d_sae", None)
    return int(d) if d is not None else None


def _name(sae: Any, hook: str) -> str:
    """The dictionary's own name where it has one (``metadata["name"]``), else its hook."""
    meta = getattr(sae, "metadata", None)
    name = meta.get("name") if isinstance(meta, dict) else None
    return str(name) if name else hook


def feature_component(spec: tuple, model: Any, adapter: Any, n_layers: int) -> tuple[str, Features]:
    """A label and the :class:`Features` of ``(sae, i)`` / ``(sae, [i, j])``; errors say the
    fix."""
    from ..analysis._features import feature_labels
    from ..capture._saes import locate_hook, sae_hook, sae_hook_out

    if len(spec) != 2:
        raise ValueError(f"{_SHAPE_HELP}; got a tuple of {len(spec)} items.")
    sae, which = spec
    hook = sae_hook(sae)
    if sae_hook_out(sae) != hook:
        raise ValueError(
            f"ablate takes features of dictionaries that reconstruct what they read; the one "
            f"reading {hook!r} is a transcoder (writes {sae_hook_out(sae)!r}). Ablate the "
            "component it replaces instead (e.g. 'L6.mlp')."
        )
    locate_hook(model, adapter, hook, n_layers)  # the model has the hook (else: which it has)
    items = list(which) if isinstance(which, list | tuple | range) else [which]
    if not items:
        raise ValueError(f"{_SHAPE_HELP}; the list of features of {hook!r} is empty.")
    d_sae = _d_sae(sae)
    for i in items:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"{_SHAPE_HELP}; feature indices are ints, got {i!r}.")
    items = [int(i) for i in items]  # numpy ints (from a top-features list) too
    for i in items:
        if d_sae is not None and not 0 <= i < d_sae:
            raise IndexError(
                f"feature {i} of the dictionary reading {hook!r} is out of range; it has "
                f"d_sae={d_sae} features (0..{d_sae - 1})."
            )
    idx = tuple(dict.fromkeys(items))
    names = feature_labels(sae)
    label = (
        _name(sae, hook)
        + "#"
        + ",".join(str(i) + (f" {names[i]}" if i in names else "") for i in idx)
    )
    return label, Features(sae, idx, hook)


def check_tuple(spec: tuple) -> None:
    """Refuse a tuple holding a dictionary anywhere but first (``(3, sae)``)."""
    if any(is_dictionary(x) for x in spec[1:]):
        raise ValueError(f"{_SHAPE_HELP}; got {spec!r}.")


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(*x.shape[:2], -1)  # attn.hook_z: heads flattened, as SAELens


def _encode(sae: Any, x: torch.Tensor) -> torch.Tensor:
    from ..capture._saes import _param_device, _param_dtype

    return sae.encode(x.to(device=_param_device(sae, x.device), dtype=_param_dtype(sae, x.dtype)))


def _check(sae: Any, hook: str, flat: torch.Tensor, cols: Sequence[int]) -> None:
    from ..capture._saes import check_fits

    check_fits(sae, flat.shape[-1], hook)
    d_sae = _d_sae(sae)
    if d_sae is None:  # a dictionary without d_sae: check against what it encodes
        n = int(_encode(sae, flat[:1, :1]).shape[-1])
        bad = [i for i in cols if not 0 <= i < n]
        if bad:
            raise IndexError(
                f"feature {bad[0]} of the dictionary reading {hook!r} is out of range; it has "
                f"{n} features (0..{n - 1})."
            )


def _point(model: Any, adapter: Any, hook: str) -> Any:
    from ..capture._saes import locate_hook

    return locate_hook(model, adapter, hook, adapter.n_blocks(model))


def columns(feats: Sequence[Features]) -> dict[int, list[int]]:
    """Per dictionary (by ``id``), the sorted features any ablation touches."""
    out: dict[int, set[int]] = {}
    for f in feats:
        out.setdefault(id(f.sae), set()).update(f.idx)
    return {k: sorted(v) for k, v in out.items()}


@contextlib.contextmanager
def reading(
    model: Any, adapter: Any, feats: Sequence[Features], out: dict[int, torch.Tensor]
) -> Iterator[None]:
    """While open, each forward stores ``out[id(sae)] = encode(hooked)[0][:, columns] [T, k]``
    (the columns of :func:`columns`) for each dictionary in ``feats``."""
    from ..capture._saes import _register

    first = {id(f.sae): f for f in feats}
    cols_of = columns(feats)
    handles = []
    try:
        for key, f in first.items():

            def read(x: torch.Tensor, f: Features = f, key: int = key) -> None:
                flat = _flat(x)
                _check(f.sae, f.hook, flat, cols_of[key])
                with torch.no_grad():
                    out[key] = _encode(f.sae, flat[:1])[0][:, cols_of[key]].float()

            handles.append(_register(_point(model, adapter, f.hook), read))
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class FeatureEdit:
    """Set ``features`` of batch row ``row`` to ``value`` (a number, ``[k]`` or ``[T, k]``)."""

    features: Features
    row: int
    value: torch.Tensor


@contextlib.contextmanager
def writing(model: Any, adapter: Any, edits: Sequence[FeatureEdit]) -> Iterator[list[int]]:
    """While open, each forward adds each edit's delta at its dictionary's hook. Yields one hit
    counter per hook (0 after a forward: the hook's module never ran)."""
    from ..capture._saes import _register

    by_hook: dict[str, list[FeatureEdit]] = {}
    for e in edits:
        by_hook.setdefault(e.features.hook, []).append(e)
    hits = [0] * len(by_hook)
    handles = []
    try:
        for n, (hook, group) in enumerate(by_hook.items()):

            def write(x: torch.Tensor, group=group, n=n) -> torch.Tensor:
                hits[n] += 1
                flat = _flat(x)
                out = flat.clone()
                for e in group:
                    f = e.features
                    _check(f.sae, f.hook, flat, f.idx)
                    r = slice(e.row, e.row + 1)
                    # every delta from the hooked activation itself, never from another's edit
                    out[r] = out[r] + feature_delta(f.sae, flat[r], list(f.idx), e.value)
                return out.reshape(x.shape)

            handles.append(_register(_point(model, adapter, hook), write))
        yield hits
    finally:
        for h in handles:
            h.remove()
