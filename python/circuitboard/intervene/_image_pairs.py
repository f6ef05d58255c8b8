"""Clean / corrupted image pairs for patching an image classifier (ViT).

Images are validated and normalized exactly as :func:`circuitboard.capture` does for image
models (:mod:`circuitboard.capture._images`), so bad input gets the same errors. The metric's
classes are named by class id (``3``) or by label (``"3"``, ``"cat"``); the default metric is
the logit difference ``logit(answer) − logit(wrong)`` of the model's output, which a ViT reads
at CLS.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..capture._images import ClassLabels, as_images, patch_tokens, pixel_batch
from ._metric import Metric, logit_diff
from ._patch_inputs import _as_list  # _patch_inputs imports this module inside a function


def _images(model: Any, images: Any, what: str) -> np.ndarray:
    """``[N, C, H, W]`` in [0, 1]: one image (``[H, W]``, ``[C, H, W]``) or a batch / list of
    them; ``clean[i]`` and ``corrupted[i]`` make one pair."""
    try:
        return as_images(model, images)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None


def class_id(labels: ClassLabels, n_classes: int, cls: Any, what: str) -> int:
    """A class id from an id (``3``) or a label (``"3"``); a clear error otherwise."""
    if isinstance(cls, bool) or not isinstance(cls, int | str | np.integer):
        raise ValueError(
            f"{what} must be a class id (int) or a class label (str); got {cls!r}. "
            f"This model's classes: {_classes(labels, n_classes)}."
        )
    if isinstance(cls, str):
        if cls in labels.label2id:
            return labels.label2id[cls]
        raise ValueError(
            f"{what}={cls!r} is not a class label of this model; its classes are "
            f"{_classes(labels, n_classes)} (or pass a class id 0..{n_classes - 1})."
        )
    if not 0 <= int(cls) < n_classes:
        raise ValueError(f"{what}={cls} is not a class id; the model has {n_classes} classes.")
    return int(cls)


def _classes(labels: ClassLabels, n: int) -> str:
    names = [labels.id2label.get(i, str(i)) for i in range(min(n, 12))]
    return str(names) + (" ..." if n > 12 else "")


def image_pairs(
    model: Any,
    processor: Any,
    clean: Any,
    corrupted: Any,
    answer: Any,
    wrong: Any,
    metric: Any,
) -> list[dict[str, Any]]:
    """Per pair: normalized pixels (``clean`` / ``corrupted``, ``[C, H, W]`` tensors on the
    model's device), the raw pixels ``[2, C, H, W]`` in [0, 1], the patch labels, the grid and
    the metric. Raises ValueError naming the fix for bad images, classes or metrics."""
    a = _images(model, clean, "clean")
    b = _images(model, corrupted, "corrupted")
    if len(a) != len(b):
        raise ValueError(
            f"clean has {len(a)} images and corrupted {len(b)}; give one corrupted image per "
            "clean image (pairs), or one of each."
        )
    if metric is None and answer is None:
        raise ValueError(
            "give answer= (and usually wrong=) as class ids or labels, e.g. answer='3', "
            "wrong='8', for the default logit-difference metric, or a metric= callable of the "
            "class logits."
        )
    if metric is not None and not callable(metric):
        raise ValueError(f"metric must be a callable of the logits; got {type(metric).__name__}.")
    n = len(a)
    answers = _as_list(answer, n, "answer", "image pairs")
    wrongs = _as_list(wrong, n, "wrong", "image pairs")
    cfg = model.config
    labels = ClassLabels(getattr(cfg, "id2label", None) or {})
    n_classes = int(cfg.num_labels)
    side = int(cfg.image_size) // int(cfg.patch_size)
    grid = (side, side)
    tokens = patch_tokens(grid)
    clean_px = pixel_batch(model, processor, a)  # also checks the processor against the model
    corrupt_px = pixel_batch(model, processor, b)
    out = []
    for i in range(n):
        if metric is not None:
            m: Metric = metric
        else:
            aid = class_id(labels, n_classes, answers[i], "answer")
            wid = None if wrongs[i] is None else class_id(labels, n_classes, wrongs[i], "wrong")
            m = logit_diff(aid, wid)
            at = labels.id2label.get(aid, str(aid))
            wt = None if wid is None else labels.id2label.get(wid, str(wid))
            m.description = f"logit({at!r}) − logit({wt!r})" if wt else f"logit({at!r})"
        out.append(
            {
                "clean": clean_px[i],
                "corrupted": corrupt_px[i],
                "pixels": np.stack([a[i], b[i]]),
                "tokens": tokens,
                "grid": grid,
                "patch": int(cfg.patch_size),
                "metric": m,
            }
        )
    return out


__all__ = ["class_id", "image_pairs"]
