"""Build a training run after the fact, from saved checkpoints (e.g. Pythia-style revisions)."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ._recorder import TrainingRecorder
from ._stats import STATS


def _load_state(item: Any) -> dict[str, torch.Tensor]:
    if isinstance(item, dict):
        return item
    p = Path(item)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    if p.suffix in (".pt", ".pth", ".bin"):
        return torch.load(p, map_location="cpu", weights_only=True)  # never unpickles objects
    raise ValueError(
        f"checkpoint {str(item)!r} is not a state dict, a .safetensors / .pt / .pth / .bin file "
        "or a Hugging Face model folder; pass one of those."
    )


def _model_for(item: Any, template: Any) -> Any:
    if not isinstance(item, dict) and Path(item).is_dir():
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(item)
    if template is None:
        raise ValueError(
            "state-dict checkpoints need model=... (a module of the same architecture to load "
            "them into); only Hugging Face model folders load without one."
        )
    template.load_state_dict(_load_state(item))
    return template


def from_checkpoints(
    checkpoints: Sequence[str | os.PathLike[str] | dict[str, torch.Tensor]],
    tokenizer: Any = None,
    *,
    model: Any = None,
    steps: Sequence[int] | None = None,
    probes: Any = None,
    batch: Any = None,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    modules: Sequence[str] | None = None,
    params: Sequence[str] | str | None = None,
    categories: Callable[[Any], Any] | None = None,
    stats: Sequence[str] = STATS,
    samples: Sequence[int] = (0, 1, 2, 3),
    path: str | os.PathLike[str] | None = None,
    trial: str = "checkpoints",
) -> Any:
    """The :class:`TrainingRun` of saved checkpoints: what a recorder would have seen at them.

    Each checkpoint is loaded in turn, its parameters are recorded, the probe batch runs (head
    scores and attention patterns), and with ``batch`` the model runs forward on it (and
    backward on ``loss_fn(output, batch)`` when given, recording gradients) as one step.

    Parameters
    ----------
    checkpoints : list of state dicts, ``.safetensors`` / ``.pt`` files (read with
        ``weights_only=True``) or Hugging Face model folders, in training order
    tokenizer : tokenizes string probes
    model : a module of the checkpoints' architecture (needed for state dicts; not modified:
        a copy is loaded)
    steps : the training step of each checkpoint (default 0, 1, 2...)
    probes, modules, params, categories, stats, samples, path, trial :
        as for :class:`TrainingRecorder`
    batch : inputs to run at each checkpoint (the model's first argument)
    loss_fn : ``loss_fn(output, batch)`` → scalar or per-sample / per-token losses

    Examples
    --------
    >>> run = cb.from_checkpoints(["ckpt/step0.pt", "ckpt/step100.pt"], model=model,
    ...                           steps=[0, 100], probes=probe_ids)  # doctest: +SKIP
    """
    items = list(checkpoints)
    if not items:
        raise ValueError("checkpoints is empty; pass at least one path or state dict.")
    steps = list(range(len(items))) if steps is None else [int(s) for s in steps]
    if len(steps) != len(items):
        raise ValueError(
            f"got {len(items)} checkpoints but {len(steps)} steps; pass one step per checkpoint."
        )
    template = copy.deepcopy(model) if model is not None else None
    rec = None
    try:
        for step, item in zip(steps, items, strict=True):
            m = _model_for(item, template)
            if rec is None or rec.model is not m:
                if rec is not None:
                    rec.__exit__(None, None, None)
                rec = TrainingRecorder(
                    m,
                    modules=modules,
                    params=params,
                    every=1,
                    categories=categories,
                    stats=stats,
                    grads=loss_fn is not None,
                    probes=probes,
                    probe_every=1,
                    samples=samples,
                    path=path,
                    trial=trial,
                    tokenizer=tokenizer,
                )
                path = rec.path
            m.zero_grad(set_to_none=True)
            was = m.training
            m.train(loss_fn is not None and was)
            try:
                with torch.set_grad_enabled(loss_fn is not None), rec.step(step, batch=batch):
                    if batch is not None:
                        out = m(batch)
                        if loss_fn is not None:
                            loss = loss_fn(out, batch)
                            rec.loss(loss)
                            (loss.mean() if loss.ndim else loss).backward()
            finally:
                m.train(was)
        rec.store.set_meta(trial, {"source": "checkpoints"})
        return rec.close()
    finally:
        if rec is not None:
            rec.__exit__(None, None, None)
