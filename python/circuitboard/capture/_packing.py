"""Lossless packing of weights that were de-quantized from a block-quantized file.

A model loaded from a GGUF file holds float32 weights that are exactly ``q * d + m`` (Q4_1:
4-bit ``q``, float16 ``d`` and ``m`` per block of 32 along the input axis) or ``q * d`` (Q8_0:
int8 ``q``, float16 ``d``). A saved capture stores such a weight as its blocks (6.4x / 3.8x
smaller) and rebuilds it on load. Packing is only kept when the rebuilt tensor equals the
original bit for bit; any other weight is stored as it is.
"""

from __future__ import annotations

from typing import Any

import torch

BLOCK = 32
SCHEMES = ("q4_1", "q8_0")


def _blocks(w: torch.Tensor, axis: int) -> torch.Tensor:
    return w.movedim(axis, -1).contiguous().reshape(-1, BLOCK)


def _rebuild(parts: dict[str, torch.Tensor], scheme: str) -> torch.Tensor:
    """``[n_blocks, 32]`` float32 values of packed blocks (the arithmetic of the loaders)."""
    d = parts["d"].float()[:, None]
    if scheme == "q4_1":
        packed = parts["q"]
        q = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(len(packed), BLOCK)
        return q.float() * d + parts["m"].float()[:, None]
    return parts["q"].float() * d


def _try(b: torch.Tensor, scheme: str) -> dict[str, torch.Tensor] | None:
    if scheme == "q4_1":
        lo, hi = b.min(1).values, b.max(1).values
        m, d = lo.half(), ((hi - lo) / 15).half()
        step = d.float().clamp_min(torch.finfo(torch.float32).tiny)[:, None]
        q = torch.round((b - m.float()[:, None]) / step).clamp(0, 15).to(torch.uint8)
        parts = {"q": q[:, 0::2] | (q[:, 1::2] << 4), "d": d, "m": m}
    else:
        d = (b.abs().max(1).values / 127).half()
        step = d.float().clamp_min(torch.finfo(torch.float32).tiny)[:, None]
        parts = {"q": torch.round(b / step).clamp(-128, 127).to(torch.int8), "d": d}
    same = _rebuild(parts, scheme).view(torch.int32) == b.view(torch.int32)
    return parts if bool(same.all()) else None


def pack(w: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """``(parts, meta)`` of a weight that packs losslessly, else None.

    Examples
    --------
    >>> q = (torch.arange(4 * 64).reshape(4, 64) * 7 % 16).float()  # every block spans 0..15
    >>> w = q * torch.tensor(0.5).half().float() + torch.tensor(-1.0).half().float()
    >>> parts, meta = pack(w)
    >>> meta["scheme"], torch.equal(unpack(parts, meta), w)
    ('q4_1', True)
    """
    if w.dtype != torch.float32 or w.numel() < BLOCK or not bool(torch.isfinite(w).all()):
        return None
    w = w.detach().to("cpu")
    for scheme in SCHEMES:
        for axis in reversed(range(w.dim())):  # the input axis is usually the last
            if w.shape[axis] % BLOCK:
                continue
            blocks = _blocks(w, axis)
            if _try(blocks[:: max(1, len(blocks) // 64)], scheme) is None:  # a cheap sample first
                continue
            parts = _try(blocks, scheme)
            if parts is not None:
                return parts, {"scheme": scheme, "axis": axis, "shape": list(w.shape)}
    return None


def unpack(parts: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
    """The float32 weight of :func:`pack`'s output; ValueError when the parts do not fit."""
    scheme, axis, shape = meta.get("scheme"), meta.get("axis"), meta.get("shape")
    if scheme not in SCHEMES or not isinstance(shape, list) or not isinstance(axis, int):
        raise ValueError(f"unknown packing {meta!r}")
    if not 0 <= axis < len(shape) or shape[axis] % BLOCK:
        raise ValueError(f"packing axis {axis} does not fit shape {shape}")
    n = 1
    for s in shape:
        n *= int(s)
    want = {"d": (n // BLOCK,), "q": (n // BLOCK, BLOCK // 2 if scheme == "q4_1" else BLOCK)}
    if scheme == "q4_1":
        want["m"] = (n // BLOCK,)
    dtypes = {"d": torch.float16, "m": torch.float16}
    dtypes["q"] = torch.uint8 if scheme == "q4_1" else torch.int8
    for k, s in want.items():
        if k not in parts or tuple(parts[k].shape) != s or parts[k].dtype != dtypes[k]:
            raise ValueError(f"packed part {k!r} should be {dtypes[k]} of shape {s}")
    moved = [*shape[:axis], *shape[axis + 1 :], shape[axis]]
    return _rebuild(parts, scheme).reshape(moved).movedim(-1, axis).contiguous()


__all__ = ["BLOCK", "SCHEMES", "pack", "unpack"]
