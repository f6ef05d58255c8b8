"""Categories of a batch: one mask per category, by sample ``[batch]`` or token ``[batch, pos]``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

Masks = list[tuple[str, "torch.Tensor | None"]]  # None: the whole batch


def category_masks(fn: Callable[[Any], Any], batch: Any, n: int | None) -> Masks:
    """Call the categories function and check what it returned.

    Accepts a dict ``{name: bool mask}`` or an array of labels; masks are ``[batch]`` or
    ``[batch, pos]``. Raises a ValueError naming what came back and what is expected.
    """
    out = fn(batch)
    shape = tuple(batch.shape[:2]) if isinstance(batch, torch.Tensor) else None
    expect = (
        f"a dict {{name: bool mask}} or an array of labels, shaped [batch] or [batch, pos] "
        f"(here {list(shape) if shape else '[batch]'})"
    )
    if isinstance(out, dict):
        items = list(out.items())
    elif isinstance(out, np.ndarray | torch.Tensor | list | tuple):
        labels = np.asarray(out.cpu() if isinstance(out, torch.Tensor) else out)
        if labels.ndim not in (1, 2) or labels.dtype.kind not in "iuUSb":
            raise ValueError(
                f"the categories function returned labels of dtype {labels.dtype} and shape "
                f"{labels.shape}; expected {expect}. Return ints or strings per sample or token."
            )
        items = [(str(v), labels == v) for v in np.unique(labels)]
    else:
        raise ValueError(
            f"the categories function returned {type(out).__name__}; expected {expect}."
        )
    masks: Masks = []
    for name, mask in items:
        # a copy: the sums by category are taken after the step, on another thread, and the
        # caller may reuse its mask's memory for the next batch
        m = torch.as_tensor(np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask))
        m = m.clone()
        ok_shape = m.ndim in (1, 2) and (n is None or m.shape[0] == n)
        if shape is not None and m.ndim == 2 and len(shape) == 2:
            ok_shape = ok_shape and tuple(m.shape) == shape
        if m.dtype != torch.bool or not ok_shape:
            raise ValueError(
                f"the categories function returned mask {name!r} of dtype {m.dtype} and shape "
                f"{tuple(m.shape)}; expected {expect} with bool masks. Build masks with a "
                "comparison, e.g. {'second half': positions >= pos // 2}."
            )
        if str(name) == "all":
            raise ValueError(
                "the categories function returned a category named 'all'; that name is "
                "reserved for the whole batch. Rename it."
            )
        masks.append((str(name), m))
    return masks


def select(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The elements of ``x`` in the mask's samples or tokens; None when the mask does not line
    up with ``x``'s leading dimensions (the tensor is then not split by this category)."""
    if mask is None:
        return x
    k = mask.ndim
    if x.ndim < k or tuple(x.shape[:k]) != tuple(mask.shape):
        return None
    return x[mask.to(x.device)]
