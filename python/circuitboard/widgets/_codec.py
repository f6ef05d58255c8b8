"""Tensor codec: arrays → ``{dtype, shape, lo, scale, data}`` binary dicts for the browser.

Probabilities travel as uint8 (``value = lo + q * scale``, error ≤ scale / 2), activations
as float16 or uint8, never as JSON lists. ``js/src/codec.ts`` is the only decoder.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

import numpy as np

Dtype = Literal["uint8", "float16", "float32"]


class _EncodedFields(TypedDict):
    dtype: Dtype
    shape: list[int]
    lo: float
    scale: float
    data: bytes


class Encoded(_EncodedFields, total=False):
    tril: bool  # only the lower triangle (incl. diagonal) of each matrix is stored
    nonfinite: int  # uint8 only: this code marks NaN / ±inf (values then use codes 0..254)


NONFINITE_CODE = 255


def to_numpy(x: Any) -> np.ndarray:
    """Convert a numpy array, torch tensor or nested list to float32 numpy (never imports torch)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    arr = np.asarray(x)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise TypeError(
            f"expected a numeric array or tensor; got {type(x).__name__} of {arr.dtype}."
        )
    with np.errstate(over="ignore", invalid="ignore"):  # huge float64 → ±inf, shown as such
        return arr.astype(np.float32, copy=False)


def tril_pack(arr: np.ndarray) -> np.ndarray:
    """The lower triangles (diagonal included) of ``[..., n, n]`` matrices, row by row, flattened.

    >>> tril_pack(np.arange(9).reshape(3, 3)).tolist()
    [0, 3, 4, 6, 7, 8]
    """
    if arr.ndim < 2 or arr.shape[-1] != arr.shape[-2]:
        raise ValueError(
            "tril packing needs square matrices in the last two dims; got shape "
            f"{tuple(arr.shape)}. Pass tril=False for non-square data."
        )
    n = arr.shape[-1]
    flat = arr.reshape(-1, n * n)
    rows, cols = np.tril_indices(n)
    return np.ascontiguousarray(flat[:, rows * n + cols]).reshape(-1)


def tril_unpack(packed: np.ndarray, shape: list[int], fill: float = 0.0) -> np.ndarray:
    """Inverse of :func:`tril_pack`; entries above the diagonal become ``fill``."""
    n = shape[-1]
    m = int(np.prod(shape[:-2], dtype=np.int64)) if len(shape) > 2 else 1
    out = np.full((m, n * n), fill, dtype=packed.dtype)
    rows, cols = np.tril_indices(n)
    out[:, rows * n + cols] = packed.reshape(m, -1)
    return out.reshape(shape)


def is_causal(arr: np.ndarray) -> bool:
    """Whether every ``[..., n, n]`` matrix is zero above its diagonal (a causal pattern).

    >>> is_causal(np.tril(np.ones((2, 3, 3)))), is_causal(np.ones((3, 3)))
    (True, False)
    """
    if arr.ndim < 2 or arr.shape[-1] != arr.shape[-2]:
        return False
    n = arr.shape[-1]
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    flat = arr.reshape(-1, n, n)
    for i in range(0, flat.shape[0], 8):  # bounded temporaries for big captures
        if np.any(flat[i : i + 8][:, upper] != 0):
            return False
    return True


def encode(
    x: Any,
    dtype: Dtype = "uint8",
    *,
    lo: float | None = None,
    hi: float | None = None,
    tril: bool = False,
) -> Encoded:
    """Encode an array for the browser.

    ``uint8`` maps ``[lo, hi]`` (default: the data's min and max, or ``[0, 1]`` for
    probabilities passed with ``lo=0, hi=1``) onto 0..255. When the array holds NaN or ±inf,
    it maps ``[lo, hi]`` onto 0..254 instead and stores every non-finite value as code 255
    (flagged by ``nonfinite: 255``), so views can draw them distinctly.

    ``tril=True`` stores only the lower triangle (diagonal included) of each matrix in the
    last two dims, about half the bytes for causal attention; decoders fill the rest with 0.
    Check :func:`is_causal` first: values above the diagonal are dropped.

    Examples
    --------
    >>> enc = encode(np.array([[0.0, 0.5], [1.0, 0.25]]), lo=0, hi=1)
    >>> enc["dtype"], enc["shape"], len(enc["data"])
    ('uint8', [2, 2], 4)
    >>> np.allclose(decode(enc), [[0, 0.5], [1, 0.25]], atol=1 / 255)
    True
    >>> len(encode(np.tril(np.ones((4, 4))), lo=0, hi=1, tril=True)["data"])
    10
    """
    arr = to_numpy(x)
    shape = [int(s) for s in arr.shape]
    if tril:
        enc = encode(tril_pack(arr), dtype, lo=lo, hi=hi)
        return Encoded(**{**enc, "shape": shape, "tril": True})
    if dtype == "uint8":
        finite = arr[np.isfinite(arr)]
        lo_ = float(finite.min()) if lo is None and finite.size else float(lo or 0.0)
        hi_ = (
            float(finite.max()) if hi is None and finite.size else float(1.0 if hi is None else hi)
        )
        bad = ~np.isfinite(arr)
        top = 254 if bad.any() else 255  # code 255 is reserved for non-finite values
        scale = (hi_ - lo_) / top if hi_ > lo_ else 1.0
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            q = np.clip(np.rint(np.nan_to_num((arr - lo_) / scale)), 0, top).astype(np.uint8)
        if top == 254:
            q[bad] = NONFINITE_CODE
            return Encoded(
                dtype="uint8",
                shape=shape,
                lo=lo_,
                scale=scale,
                data=q.tobytes(),
                nonfinite=NONFINITE_CODE,
            )
        return Encoded(dtype="uint8", shape=shape, lo=lo_, scale=scale, data=q.tobytes())
    if dtype in ("float16", "float32"):
        with np.errstate(over="ignore", invalid="ignore"):  # overflow to ±inf is intended
            out = arr.astype("<f2" if dtype == "float16" else "<f4")
        return Encoded(dtype=dtype, shape=shape, lo=0.0, scale=1.0, data=out.tobytes())
    raise ValueError(f"dtype must be 'uint8', 'float16' or 'float32'; got {dtype!r}.")


def decode(enc: Encoded) -> np.ndarray:
    """Inverse of :func:`encode` (float32 result); the Python twin of ``codec.ts``."""
    if enc.get("tril"):
        flat = decode(Encoded(**{**enc, "shape": [-1], "tril": False}))
        return tril_unpack(flat, list(enc["shape"]))
    raw = bytes(enc["data"])
    if enc["dtype"] == "uint8":
        codes = np.frombuffer(raw, dtype=np.uint8)
        with np.errstate(over="ignore"):  # ranges near float32's limit round to ±inf
            arr = enc["lo"] + codes.astype(np.float32) * enc["scale"]
        if enc.get("nonfinite") is not None:
            arr[codes == enc["nonfinite"]] = np.nan
    elif enc["dtype"] == "float16":
        arr = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    elif enc["dtype"] == "float32":
        arr = np.frombuffer(raw, dtype="<f4").copy()
    else:
        raise ValueError(f"unknown encoded dtype {enc['dtype']!r}")
    return arr.reshape(enc["shape"]).astype(np.float32, copy=False)


def nbytes(enc: Encoded) -> int:
    """Bytes of tensor data in an encoded dict."""
    return len(enc["data"])
