"""Input checks shared by the views: shapes, token lists, indices (errors say the fix)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._codec import to_numpy


def attention_array(attention: Any) -> np.ndarray:
    """``[layers, heads, query, key]`` float32 from a 4-D or 3-D array/tensor."""
    try:
        arr = to_numpy(attention)
    except TypeError as err:
        raise TypeError(
            f"attention must be a numpy array or torch tensor of numbers; {err}"
        ) from None
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ValueError(
            f"attention has {arr.ndim} dims (shape {tuple(arr.shape)}), expected "
            "[layers, heads, query, key] or [heads, query, key]. For a single head pass "
            "attention[None] (adds the heads dim)."
        )
    if 0 in arr.shape:
        raise ValueError(
            f"attention is empty (shape {tuple(arr.shape)}); capture a non-empty prompt."
        )
    return arr


def token_list(tokens: Any, n: int, what: str) -> list[str]:
    """Check that ``tokens`` is a list of ``n`` strings (``what`` names the tensor dim)."""
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(
            f"tokens must be a list of strings, one per position; got {type(tokens).__name__}. "
            "Use tokenizer.convert_ids_to_tokens(ids) or cap.tokens."
        )
    bad = [i for i, t in enumerate(tokens) if not isinstance(t, str)]
    if bad:
        raise TypeError(
            f"tokens must all be strings; tokens[{bad[0]}] is {type(tokens[bad[0]]).__name__}."
        )
    if len(tokens) != n:
        raise ValueError(
            f"got {len(tokens)} tokens but {what} has {n} positions; pass exactly one token "
            "string per position."
        )
    return [displayable(t) for t in tokens]


def displayable(text: str) -> str:
    """``text`` with lone UTF-16 surrogates replaced by U+FFFD (pairs are joined).

    No page can show a lone surrogate, and Jupyter cannot even send one (UTF-8 has no encoding
    for it), so it becomes the replacement character; every other character is kept as is.

    >>> displayable("a\\ud800b") == "a\\ufffdb", displayable("\\ud83d\\ude00") == "\\U0001f600"
    (True, True)
    """
    if not any("\ud800" <= c <= "\udfff" for c in text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def index_in(name: str, value: int, size: int) -> int:
    """Check ``0 <= value < size`` (negative indices count from the end)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}.")
    v = int(value) + (size if value < 0 else 0)
    if not 0 <= v < size:
        raise IndexError(f"{name}={value} is out of range: there are {size} (0..{size - 1}).")
    return v
