"""The default vision model: a small ViT trained here on scikit-learn's handwritten digits.

No weights are downloaded: the first call trains the model from scikit-learn's bundled 8×8
digits (1,797 images, upsampled to 16×16, 4×4-pixel patches: 16 patches plus CLS), with a fixed
seed and one thread so the result is the same on every machine, then caches it next to the
default language model. Later calls load the cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ._default import default_cache_dir

# Everything the result depends on; a change here trains (and caches) a new model.
RECIPE = {
    "data": "sklearn.datasets.load_digits, 8x8 upsampled x2 (nearest) to 16x16, /16 -> [0, 1]",
    "split": "last 20% (360 images) held out, after a seeded shuffle",
    "model": {
        "image_size": 16,
        "patch_size": 4,
        "hidden_size": 64,
        "layers": 4,
        "heads": 4,
        "intermediate_size": 128,
    },
    "train": {
        "seed": 0,
        "epochs": 20,
        "batch_size": 32,
        "lr": 2e-3,
        "weight_decay": 0.01,
        "schedule": "one-cycle",
        "optimizer": "AdamW",
        "threads": 1,
    },
    "version": 1,
}
CACHE_NAME = f"vit-digits-v{RECIPE['version']}"
PIXEL_NORM = {"mean": [0.5], "std": [0.5]}


def _load_digits() -> Any:
    """scikit-learn's bundled 8×8 digits; without scikit-learn, an error naming the extra."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # ModuleNotFoundError, or a broken install
        raise ModuleNotFoundError(
            "the default vision model is trained on scikit-learn's bundled digits, and "
            f"scikit-learn could not be imported ({err}). Install the vision extra: "
            'pip install "circuitboard[vision]"',
            name="sklearn",
        ) from err
    return load_digits()


def digits() -> tuple[Any, Any, Any, Any]:
    """``(train_images, train_labels, test_images, test_labels)``: float32 ``[N, 1, 16, 16]`` in
    ``[0, 1]`` and int64 labels, split as the default vision model was trained."""
    import numpy as np

    d = _load_digits()
    x = (d.images.astype(np.float32) / 16.0).repeat(2, axis=1).repeat(2, axis=2)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    n_test = len(y) // 5
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def _config() -> Any:
    from transformers import ViTConfig

    m = RECIPE["model"]
    return ViTConfig(
        image_size=m["image_size"],
        patch_size=m["patch_size"],
        num_channels=1,
        hidden_size=m["hidden_size"],
        num_hidden_layers=m["layers"],
        num_attention_heads=m["heads"],
        intermediate_size=m["intermediate_size"],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=10,
        id2label={i: str(i) for i in range(10)},
        label2id={str(i): i for i in range(10)},
    )


def train_vision_model(log: Any = None, epochs: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Train the digits ViT from scratch (deterministic); returns ``(model, metrics)``.

    ``epochs`` overrides the recipe's (for quick checks); the cached default uses the recipe.
    """
    import numpy as np
    import torch
    from transformers import ViTForImageClassification

    t = {**RECIPE["train"], **({"epochs": epochs} if epochs is not None else {})}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same floating-point sums on every machine
    try:
        torch.manual_seed(t["seed"])
        gen = torch.Generator().manual_seed(t["seed"])
        model = ViTForImageClassification(_config())
        x_tr, y_tr, x_te, y_te = (torch.from_numpy(a) for a in digits())
        norm = lambda x: (x - 0.5) / 0.5  # noqa: E731 - PIXEL_NORM
        opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
        steps = t["epochs"] * -(-len(y_tr) // t["batch_size"])
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=t["lr"], total_steps=steps)
        t0 = time.perf_counter()
        model.train()
        for epoch in range(t["epochs"]):
            order = torch.randperm(len(y_tr), generator=gen)
            for s in range(0, len(y_tr), t["batch_size"]):
                idx = order[s : s + t["batch_size"]]
                logits = model(pixel_values=norm(x_tr[idx])).logits
                loss = torch.nn.functional.cross_entropy(logits, y_tr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            if log is not None and (epoch + 1) % 10 == 0:
                print(f"epoch {epoch + 1}: loss {loss.item():.3f}", file=log)
        model.eval()
        with torch.no_grad():
            pred = model(pixel_values=norm(x_te)).logits.argmax(-1)
        accuracy = float((pred == y_te).float().mean())
    finally:
        torch.set_num_threads(threads)
    metrics = {
        "test_accuracy": accuracy,
        "n_train": int(len(y_tr)),
        "n_test": int(len(y_te)),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "recipe": RECIPE,
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "test_errors": int(np.sum(pred.numpy() != y_te.numpy())),
    }
    return model, metrics


def load_default_vision_model() -> tuple[Any, None]:
    """The default vision model, a small ViT trained locally on handwritten digits.

    Returns ``(model, None)``: ``cb.capture(model, None, images)`` needs no processor (the
    model's config carries its pixel normalization). The first call trains it (about a
    minute on two CPU cores; scikit-learn's bundled digits, no download) and caches it under
    :func:`circuitboard.models.default_cache_dir`; ``model.circuitboard_metrics`` holds the held-out
    accuracy and the recipe. :func:`circuitboard.models.digits` gives the same images.

    Examples
    --------
    >>> model, _ = cb.load_default_vision_model()  # doctest: +SKIP
    >>> model.circuitboard_metrics["test_accuracy"] >= 0.95  # doctest: +SKIP
    True
    >>> train_x, train_y, test_x, test_y = cb.models.digits()  # doctest: +SKIP
    >>> cap = cb.capture(model, None, test_x[:4])  # doctest: +SKIP
    """
    from transformers import ViTForImageClassification

    cached = default_cache_dir() / CACHE_NAME
    if not (cached / "metrics.json").is_file():
        _load_digits()  # says which extra to install before any training starts
        model, metrics = train_vision_model()
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".tmp-"))
        try:
            model.save_pretrained(tmp)
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
            os.replace(tmp, cached) if not cached.exists() else shutil.rmtree(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    model = ViTForImageClassification.from_pretrained(str(cached))
    model.config._name_or_path = "circuitboard ViT (digits, trained locally)"
    model.config.circuitboard_pixel_norm = PIXEL_NORM
    model.circuitboard_metrics = json.loads((cached / "metrics.json").read_text())
    model.eval()
    return model, None
