"""Tensor codec: arrays → ``{dtype, shape, lo, scale, data}`` binary dicts for the browser.

Probabilities travel as uint8 (``value = lo + q * scale``, error ≤ scale / 2), activations
as float16 or uint8, never as JSON lists. ``js/src/codec.ts`` is the only decoder.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

import numpy as np

Dtype = Literal["uint8", "float16", "float32"]


class Encoded(TypedDict):
    dtype: Dtype
    shape: list[int]
    lo: float
    scale: float
    data: bytes


def to_numpy(x: Any) -> np.ndarray:
    """Convert a numpy array, torch tensor or nested list to a float32 numpy array (no torch import)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    arr = np.asarray(x)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise TypeError(f"expected a numeric array or tensor; got {type(x).__name__} of {arr.dtype}.")
    return arr.astype(np.float32, copy=False)


def encode(
    x: Any, dtype: Dtype = "uint8", *, lo: float | None = None, hi: float | None = None
) -> Encoded:
    """Encode an array for the browser.

    ``uint8`` maps ``[lo, hi]`` (default: the data's min and max, or ``[0, 1]`` for
    probabilities passed with ``lo=0, hi=1``) onto 0..255. Non-finite values are stored as
    ``lo`` in uint8; use float16/float32 to keep them visible.

    Examples
    --------
    >>> enc = encode(np.array([[0.0, 0.5], [1.0, 0.25]]), lo=0, hi=1)
    >>> enc["dtype"], enc["shape"], len(enc["data"])
    ('uint8', [2, 2], 4)
    >>> np.allclose(decode(enc), [[0, 0.5], [1, 0.25]], atol=1 / 255)
    True
    """
    arr = to_numpy(x)
    shape = [int(s) for s in arr.shape]
    if dtype == "uint8":
        finite = arr[np.isfinite(arr)]
        lo_ = float(finite.min()) if lo is None and finite.size else float(lo or 0.0)
        hi_ = float(finite.max()) if hi is None and finite.size else float(1.0 if hi is None else hi)
        scale = (hi_ - lo_) / 255.0 if hi_ > lo_ else 1.0
        q = np.nan_to_num((arr - lo_) / scale, nan=0.0, posinf=255.0, neginf=0.0)
        data = np.clip(np.rint(q), 0, 255).astype(np.uint8).tobytes()
        return Encoded(dtype="uint8", shape=shape, lo=lo_, scale=scale, data=data)
    if dtype in ("float16", "float32"):
        out = arr.astype("<f2" if dtype == "float16" else "<f4")
        return Encoded(dtype=dtype, shape=shape, lo=0.0, scale=1.0, data=out.tobytes())
    raise ValueError(f"dtype must be 'uint8', 'float16' or 'float32'; got {dtype!r}.")


def decode(enc: Encoded) -> np.ndarray:
    """Inverse of :func:`encode` (float32 result); the Python twin of ``codec.ts``."""
    raw = bytes(enc["data"])
    if enc["dtype"] == "uint8":
        q = np.frombuffer(raw, dtype=np.uint8).astype(np.float32)
        arr = enc["lo"] + q * enc["scale"]
    elif enc["dtype"] == "float16":
        arr = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    elif enc["dtype"] == "float32":
        arr = np.frombuffer(raw, dtype="<f4").copy()
    else:
        raise ValueError(f"unknown encoded dtype {enc['dtype']!r}")
    return arr.reshape(enc["shape"]).astype(np.float32, copy=False)


def nbytes(enc: Encoded) -> int:
    return len(enc["data"])


