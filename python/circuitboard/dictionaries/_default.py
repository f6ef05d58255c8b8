"""The dictionaries shipped for the default model (SmolLM2-135M-Instruct), trained by
``scripts/train_default_saes.py`` and stored in float16 next to this file."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ._formats import load_sae
from ._sae import SAE


def _folder() -> Path:
    return Path(str(resources.files(__package__).joinpath("default")))


def _load(name: str, dtype: torch.dtype, device: Any) -> SAE:
    folder = _folder() / name
    if not folder.is_dir():
        raise FileNotFoundError(
            f"the shipped dictionary {name!r} is missing from {folder.parent}; the package "
            "install is incomplete. Reinstall circuitboard, or retrain them with "
            "scripts/train_default_saes.py."
        )
    return load_sae(folder, dtype=dtype, device=device)


def default_metrics() -> dict[str, Any]:
    """The held-out metrics of the shipped dictionaries, as measured by the script that
    trained them (``default/metrics.json``).

    Examples
    --------
    >>> from circuitboard.dictionaries import default_metrics
    >>> rows = default_metrics()["dictionaries"]
    >>> [r["name"] for r in rows][:2]
    ['resid_post_3', 'resid_post_9']
    """
    return json.loads((_folder() / "metrics.json").read_text(encoding="utf-8"))


def load_default_saes(dtype: torch.dtype = torch.float32, device: Any = None) -> list[SAE]:
    """Residual-stream TopK SAEs for the default model at layers 3, 9, 15 and 21
    (``blocks.L.hook_resid_post``; 576 → 2,304 features, k = 32), in layer order.

    They ship with the package in float16 (SAELens layout) and load offline; ``dtype`` is what
    they compute in. Their held-out metrics are in ``sae.metadata["metrics"]`` and
    :func:`default_metrics`.

    Examples
    --------
    >>> import circuitboard as cb
    >>> saes = cb.load_default_saes()
    >>> [s.layer for s in saes], saes[0].hook
    ([3, 9, 15, 21], 'blocks.3.hook_resid_post')
    >>> saes[0].d_in, saes[0].d_sae, saes[0].k
    (576, 2304, 32)
    """
    rows = {r["name"]: r for r in default_metrics()["dictionaries"]}
    out = []
    for name in sorted(
        (n for n in rows if n.startswith("resid_post_")), key=lambda n: int(n.split("_")[-1])
    ):
        sae = _load(name, dtype, device)
        sae.metadata["metrics"] = rows[name]["held_out"]
        out.append(sae)
    return out


def load_default_transcoder(dtype: torch.dtype = torch.float32, device: Any = None) -> SAE:
    """The skip transcoder shipped for the default model's layer 15 MLP
    (``blocks.15.mlp.hook_in`` → ``blocks.15.hook_mlp_out``; 576 → 2,304 features, k = 32,
    with a skip matrix).

    Examples
    --------
    >>> import circuitboard as cb
    >>> tc = cb.load_default_transcoder()
    >>> tc.hook, tc.hook_out, tc.W_skip is not None
    ('blocks.15.mlp.hook_in', 'blocks.15.hook_mlp_out', True)
    """
    rows = {r["name"]: r for r in default_metrics()["dictionaries"]}
    name = next(n for n in rows if n.startswith("transcoder_"))
    tc = _load(name, dtype, device)
    tc.metadata["metrics"] = rows[name]["held_out"]
    return tc
