"""Registry of architecture adapters: ``config.model_type`` → :class:`Adapter`.

Adding an architecture is one small file: copy ``llama.py``, change the module paths (and the
``weights`` / ``dims`` functions if its projections are laid out differently), then::

    from circuitboard.capture.adapters import register
    register(MY_ADAPTER)

Built-in adapters live next to this file, one per family.
"""

from __future__ import annotations

from typing import Any

from . import (
    bert,
    gemma,
    gpt2,
    gpt_neo,
    gptj,
    llama,
    moe,
    neox,
    olmo2,
    phi,
    phi3,
    stablelm,
    vit,
)
from ._base import Adapter, MoE, get_module
from ._fallback import LayoutError, infer_adapter

_REGISTRY: dict[str, Adapter] = {}


def register(adapter: Adapter, *, replace: bool = False) -> Adapter:
    """Make ``adapter`` serve every ``config.model_type`` in ``adapter.model_types``.

    Examples
    --------
    >>> import dataclasses
    >>> from circuitboard.capture.adapters import llama, register
    >>> _ = register(dataclasses.replace(llama.ADAPTER, name="olmo", model_types=("olmo",)))
    """
    for mt in adapter.model_types:
        if mt in _REGISTRY and not replace and _REGISTRY[mt] is not adapter:
            raise ValueError(
                f"model_type {mt!r} already has adapter {_REGISTRY[mt].name!r}; "
                "pass replace=True to override it."
            )
        _REGISTRY[mt] = adapter
    return adapter


for _a in (
    gpt2.ADAPTER,
    llama.ADAPTER,
    neox.ADAPTER,
    gemma.ADAPTER,
    gemma.ADAPTER2,
    bert.ADAPTER,
    vit.ADAPTER,
    gpt_neo.ADAPTER,
    gptj.ADAPTER,
    phi.ADAPTER,
    phi3.ADAPTER,
    stablelm.ADAPTER,
    olmo2.ADAPTER,
    moe.ADAPTER,
    moe.ADAPTER_SHARED,
):
    register(_a)


def supported() -> list[str]:
    """The ``config.model_type`` values with an adapter, sorted."""
    return sorted(_REGISTRY)


def _qk_norm(which: str) -> str:
    return f"yes; q/k norm scales recorded for an exact QK split ({which})"


_DEFAULT_SUPPORTS: dict[str, dict[str, Any]] = {
    "bert": {
        "dla": "no: post-norm encoder; logits are not a sum of component writes",
        "patching": "no: bidirectional encoder (patching is defined for causal LMs)",
        "notes": "bidirectional; MLM head",
    },
    "gemma": {"notes": "(1 + w) RMSNorm; scaled embeddings"},
    "gemma2": {
        "dla": "exact before the final soft-cap (softcap='pre')",
        "explanation": _qk_norm("Gemma 3"),
        "notes": "sandwich norms frozen for exact DLA; attention soft-cap; sliding window",
    },
    "gpt2": {"notes": "Conv1D projections; learned positions"},
    "gpt_neox": {"notes": "fused per-head qkv; parallel attention + MLP; partial rotary"},
    "llama": {"explanation": _qk_norm("Qwen3"), "notes": "GQA; RoPE; Qwen2 q/k/v biases"},
    "moe": {"explanation": _qk_norm("OLMoE, Qwen3-MoE")},
    "vit": {
        "dla": "exact, at CLS (class logits)",
        "patching": "yes: between two images; layer × patch (CLS + patches), heads, q/k/v, neurons",
        "explanation": "not tested on images",
        "notes": "image patches + CLS; pixel inputs; classifier reads CLS",
    },
    "olmo2": {"explanation": _qk_norm("all layers")},
    "phi": {"explanation": "yes; with qk_layernorm=True the QK split is approximate"},
    "stablelm": {"explanation": "yes; with qk_layernorm=True the QK split is approximate"},
}


def supported_architectures() -> list[dict[str, Any]]:
    """Every registered adapter and what works with it, one dict per adapter.

    Keys: ``name``, ``model_types``, ``capture``, ``dla`` (exact direct logit attribution),
    ``patching``, ``explanation`` (QK/OV explanation of attention) — each ``True`` or a string
    saying what holds instead — and ``notes``. A model type without an adapter goes through the
    proven fallback (:func:`circuitboard.capture.adapters._fallback.infer_adapter`).

    Examples
    --------
    >>> rows = supported_architectures()
    >>> row = next(r for r in rows if r["name"] == "phi3")
    >>> row["model_types"], row["capture"], row["dla"]
    (['phi3'], True, True)
    """
    seen: dict[str, Adapter] = {}
    for adapter in _REGISTRY.values():
        seen.setdefault(adapter.name, adapter)
    rows = []
    for name, adapter in sorted(seen.items()):
        row: dict[str, Any] = {
            "name": name,
            "model_types": sorted(mt for mt, a in _REGISTRY.items() if a is adapter),
            "capture": True,
            "dla": True,
            "patching": True,
            "explanation": True,
        }
        row["notes"] = adapter.notes
        row.update(_DEFAULT_SUPPORTS.get(name, {}))
        row.update(adapter.supports)
        rows.append(row)
    return rows


def get_adapter(model: Any) -> Adapter:
    """The adapter for ``model`` (a Hugging Face ``PreTrainedModel``), or a ValueError saying
    which architectures are supported and how to add one."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise ValueError(
            f"capture() needs a Hugging Face transformers model (with .config.model_type); got "
            f"{type(model).__name__}. For a TransformerLens model use "
            "cb.from_transformer_lens(cache, model, tokens)."
        )
    adapter = _REGISTRY.get(model_type)
    if adapter is None:
        try:
            return infer_adapter(model)
        except LayoutError as err:
            raise ValueError(
                f"No circuitboard adapter for model_type {model_type!r} ({type(model).__name__}), "
                f"and the fallback could not infer or prove its layout: {err}. "
                f"Supported: {', '.join(supported())}. To add one, write a small Adapter naming "
                "its module paths (copy python/circuitboard/capture/adapters/llama.py) and call "
                "circuitboard.capture.adapters.register(adapter); or capture it through "
                "TransformerLens and use cb.from_transformer_lens."
            ) from None
    if adapter.for_config is not None:
        adapter = adapter.for_config(adapter, config)
    for path in (adapter.blocks, adapter.final_norm, adapter.unembed):
        try:
            get_module(model, path)
        except (AttributeError, IndexError):
            raise ValueError(
                f"{type(model).__name__} has no module {path!r}, which the {adapter.name!r} "
                "adapter reads. capture() needs the model with its head: load it with "
                "AutoModelForCausalLM (AutoModelForMaskedLM for BERT, "
                "ViTForImageClassification for ViT)."
            ) from None
    return adapter


__all__ = [
    "Adapter",
    "LayoutError",
    "MoE",
    "get_adapter",
    "infer_adapter",
    "register",
    "supported",
    "supported_architectures",
]
