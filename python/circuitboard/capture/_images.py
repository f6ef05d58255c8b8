"""Capture image models (ViT): pixels in, patches (plus CLS) as tokens, class logits out.

Images are arrays in ``[0, 1]`` (floats) or ``0..255`` (uint8), shaped ``[H, W]``,
``[C, H, W]`` or batched ``[N, H, W]`` / ``[N, C, H, W]``, already at the model's
``image_size``. They are normalized with the mean / std of the processor passed in, or of the
model's own ``config.circuitboard_pixel_norm`` (set by ``cb.load_default_vision_model``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import _memory
from ._capture import Capture
from ._patterns import Patterns
from ._run import _parse_layers, model_info, record
from .adapters._base import gather_weights, get_module


class ClassLabels:
    """A tokenizer-shaped view of a classifier's labels, so targets can be named (``"3"``).

    ``encode(label)`` gives ``[class id]``, ``decode([id])`` the label: the analyses that take
    ``target=" Mary"`` for a language model take ``target="3"`` for a digit classifier.

    Examples
    --------
    >>> labels = ClassLabels({0: "zero", 1: "one"})
    >>> labels.encode("one"), labels.decode([0])
    ([1], 'zero')
    """

    def __init__(self, id2label: dict[int, str]) -> None:
        self.id2label = {int(k): str(v) for k, v in id2label.items()}
        self.label2id = {v: k for k, v in self.id2label.items()}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if text not in self.label2id:
            raise ValueError(
                f"{text!r} is not a class of this image model; its classes are "
                f"{list(self.label2id)[:12]}{' ...' if len(self.label2id) > 12 else ''} (or pass "
                "a class id)."
            )
        return [self.label2id[text]]

    def decode(self, ids: Any, **_: Any) -> str:
        return "".join(self.id2label.get(int(i), f"#{int(i)}") for i in ids)


def _pixel_norm(model: Any, processor: Any) -> tuple[np.ndarray, np.ndarray]:
    cfg = model.config
    C = int(cfg.num_channels)
    if processor is not None:
        mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
        size = getattr(processor, "size", None) or {}
        side = size.get("height", size.get("shortest_edge")) if isinstance(size, dict) else size
        if mean is None or std is None:
            raise ValueError(
                f"{type(processor).__name__} has no image_mean / image_std, so it is not an image "
                "processor for this model; pass the model's ViTImageProcessor or None."
            )
        if len(mean) != C or (side is not None and int(side) != int(cfg.image_size)):
            raise ValueError(
                f"the processor does not match the model: it makes {side}×{side} images with "
                f"{len(mean)} channels, the model takes {cfg.image_size}×{cfg.image_size} with "
                f"{C}. "
                "Pass the processor saved with this model (or None for the default vision model)."
            )
    else:
        stored = getattr(cfg, "circuitboard_pixel_norm", None)
        if stored is None:
            raise ValueError(
                "this image model's pixel normalization is unknown; pass its image processor as "
                "the second argument: cb.capture(model, processor, images)."
            )
        mean, std = stored["mean"], stored["std"]
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def as_images(model: Any, images: Any) -> np.ndarray:
    """``[N, C, H, W]`` float32 in ``[0, 1]``, validated against the model's config."""
    if isinstance(images, str) or (
        isinstance(images, (list, tuple)) and images and isinstance(images[0], str)
    ):
        raise ValueError(
            f"{type(model).__name__} is an image model: pass images (arrays [N, H, W] or "
            "[N, C, H, W] with values in [0, 1]), not text."
        )
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    arr = np.asarray(images)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"images must be numeric arrays; got dtype {arr.dtype}.")
    arr = arr.astype(np.float32)
    cfg = model.config
    C, S = int(cfg.num_channels), int(cfg.image_size)
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[0] == C and C != 1 and arr.shape[1] == S):
        arr = arr[None]
    if arr.ndim == 3:  # [N, H, W] grayscale
        arr = arr[:, None]
    if arr.ndim != 4:
        raise ValueError(
            f"images must be [H, W], [C, H, W], [N, H, W] or [N, C, H, W]; got shape {arr.shape}."
        )
    if arr.shape[1] != C:
        raise ValueError(
            f"images have {arr.shape[1]} channels, the model takes {C} "
            f"(shape {tuple(arr.shape)}); convert them (e.g. grayscale ↔ RGB) first."
        )
    if arr.shape[2:] != (S, S):
        raise ValueError(
            f"images are {arr.shape[2]}×{arr.shape[3]}, the model takes {S}×{S}; resize them "
            "first (e.g. torch.nn.functional.interpolate)."
        )
    if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(
            f"pixel values must be in [0, 1] (floats) or 0..255 (uint8); got {arr.min():.3g} to "
            f"{arr.max():.3g}. Pass the raw image, not one already normalized: circuitboard "
            "normalizes with the model's mean / std."
        )
    return arr


def patch_tokens(grid: tuple[int, int]) -> list[str]:
    """Token texts of a ViT input: ``CLS`` then each patch as ``row,col``."""
    return ["CLS"] + [f"{r},{c}" for r in range(grid[0]) for c in range(grid[1])]


def pixel_batch(model: Any, processor: Any, arr: np.ndarray) -> torch.Tensor:
    """Normalized pixel values for the model, on its device and in its dtype."""
    mean, std = _pixel_norm(model, processor)
    x = (arr - mean[None, :, None, None]) / std[None, :, None, None]
    p = next(model.parameters())
    return torch.from_numpy(x).to(device=p.device, dtype=p.dtype)


def capture_images(
    model: Any,
    processor: Any,
    images: Any,
    *,
    adapter: Any,
    layers: Any = None,
    what: Any = None,
    dtype: torch.dtype = torch.float16,
    max_memory: Any = None,
    batch_size: int = 8,
) -> Any:
    """:func:`circuitboard.capture` for an image model; see there. One Capture per image."""
    single = isinstance(images, (np.ndarray, torch.Tensor)) and np.ndim(images) in (2, 3)
    if single and np.ndim(images) == 3 and np.shape(images)[0] != model.config.num_channels:
        single = False  # [N, H, W] grayscale batch
    arr = as_images(model, images)
    info = model_info(model, adapter)
    layer_list = _parse_layers(layers, adapter.n_blocks(model))
    kinds = _memory.parse_what(what)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
    S, p = int(model.config.image_size), int(model.config.patch_size)
    grid = (S // p, S // p)
    n_tokens = 1 + grid[0] * grid[1]
    est = _memory.estimate(info, [n_tokens] * len(arr), len(layer_list), kinds, dtype)
    _memory.check(est, max_memory, len(arr), len(layer_list))
    labels = ClassLabels(getattr(model.config, "id2label", None) or {})
    head = get_module(model, adapter.unembed)
    logits_out: list[torch.Tensor] = [torch.empty(0)] * len(arr)
    normed: list[torch.Tensor] = []

    def forward(rec: Any, batch: list[int]) -> None:
        rec.rows = [(i, n_tokens) for i in batch]
        normed.clear()
        out = model(pixel_values=pixel_batch(model, processor, arr[batch]))
        # The classifier at every position; row 0 (CLS) is the model's own output.
        every = head(normed[-1]).float()
        every[:, 0] = out.logits.float()
        for r, i in enumerate(batch):
            logits_out[i] = every[r].detach().cpu()

    grab = get_module(model, adapter.final_norm).register_forward_hook(
        lambda mod, args, out: normed.append(out)
    )
    try:
        batches = [
            list(range(s, min(s + batch_size, len(arr)))) for s in range(0, len(arr), batch_size)
        ]
        rec, info = record(
            model, adapter, info, layer_list, kinds, dtype, len(arr), batches, forward
        )
    finally:
        grab.remove()
    weights = gather_weights(model, adapter, info)
    caps = [
        Capture(
            tokens=patch_tokens(grid),
            token_ids=torch.full((n_tokens,), -1, dtype=torch.long),  # patches have no ids
            tensors=rec.store[i],
            logits=logits_out[i],
            info=info,
            weights=weights,
            prompt=f"image {i}",
            tokenizer=labels,
            n_prompt_tokens=n_tokens,
            image={"grid": list(grid), "patch": p, "pixels": torch.from_numpy(arr[i].copy())},
            patterns=Patterns(rec.store[i], rec.specs[i]) if rec.qk else None,
        )
        for i in range(len(arr))
    ]
    return caps[0] if single else caps
