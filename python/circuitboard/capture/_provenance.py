"""Where a capture's numbers came from: model, weights, dtype, attention path, versions, input.

A report carries this next to every view built from a capture, so a reader can tell which
model file and which software produced the numbers, and whether two reports show the same data
(the tensor hash).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import weakref
from typing import Any

import torch

# By id, dropped when the capture is collected: a Capture is a Mapping, so it is unhashable
# (a WeakKeyDictionary cannot hold it) but weak-referenceable.
_CACHE: dict[int, dict[str, Any]] = {}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in sorted name order (device-independent)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.is_sparse:  # dictionary features: hash the stored entries, not a dense copy
            t = t.coalesce()
            h.update(f"{name}|sparse|{tuple(t.shape)}|".encode())
            h.update(t.indices().contiguous().numpy().tobytes())
            t = t.values()
        t = t.contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _attention(info: Any) -> str:
    """The kernel that computed attention, and how patterns were obtained."""
    kernel = getattr(info, "attn_implementation", None) or "unknown"
    path = getattr(info, "attention_path", None)
    return f"{kernel}; patterns: {path}" if path else kernel


def provenance(cap: Any) -> dict[str, Any]:
    """The provenance of a :class:`~circuitboard.Capture` as a JSON-ready dict (cached per capture).

    Keys: ``model``, ``architecture``, ``model_file`` (file name and sha256 of the weights file
    where the loader knows it, e.g. the default model's GGUF), ``weights_sha256`` (of the
    parameters the analyses read, ``cap.weights``), ``dtype`` (storage dtype of the captured
    tensors), ``attention`` (the attention implementation and how patterns were obtained),
    ``versions`` (circuitboard, torch, transformers), ``prompt``, ``n_tokens`` and
    ``tensors_sha256`` (token ids, logits and every captured tensor).

    Examples
    --------
    >>> from circuitboard.capture import Capture
    >>> cap = Capture(["a", "b"], torch.tensor([1, 2]), {"hook_embed": torch.zeros(2, 4)})
    >>> p = provenance(cap)
    >>> p["dtype"], p["n_tokens"], len(p["tensors_sha256"])
    ('float32', 2, 64)
    """
    hit = _CACHE.get(id(cap))
    if hit is not None:
        return hit
    info = cap.info
    tensors = dict(cap.tensors)
    tensors["token_ids"] = cap.token_ids
    if cap.logits is not None:
        tensors["logits"] = cap.logits
    stored = sorted({str(t.dtype).removeprefix("torch.") for t in cap.tensors.values()})
    source = json.loads(getattr(info, "source", "") or "{}") if info is not None else {}
    out = {
        "model": getattr(info, "model_name", "") or "unknown (capture built by hand)",
        "architecture": getattr(info, "architecture", "") or "unknown",
        "model_file": source or None,
        "weights_sha256": tensor_digest(cap.weights) if cap.weights else None,
        "dtype": ", ".join(stored) or "none",
        "attention": _attention(info),
        "versions": {
            "circuitboard": _version("circuitboard"),
            "torch": torch.__version__,
            "transformers": _version("transformers"),
        },
        "prompt": cap.prompt,
        "n_tokens": cap.n_tokens,
        "tensors_sha256": tensor_digest(tensors),
    }
    if getattr(cap, "saes", None):
        out["dictionaries"] = {hook: dictionary_provenance(sae) for hook, sae in cap.saes.items()}
    try:
        weakref.finalize(cap, _CACHE.pop, id(cap), None)
        _CACHE[id(cap)] = out
    except TypeError:  # not weak-referenceable: just not cached
        pass
    return out


def dictionary_provenance(sae: Any) -> dict[str, Any]:
    """What identifies a dictionary a capture ran: its kind, sizes, the sha256 of the file it
    was loaded from (``metadata["sha256"]`` where the loader recorded it) and of its
    parameters as they are."""
    meta = getattr(sae, "metadata", None) or {}
    params = {k: v for k, v in sae.state_dict().items()} if hasattr(sae, "state_dict") else {}
    return {
        "kind": str(getattr(sae, "kind", type(sae).__name__)),
        "d_in": getattr(sae, "d_in", None),
        "d_sae": getattr(sae, "d_sae", None),
        "file": meta.get("path") or meta.get("file"),
        "file_sha256": meta.get("sha256"),
        "parameters_sha256": tensor_digest(params) if params else None,
    }


def combined_provenance(caps: list[Any]) -> dict[str, Any]:
    """One capture's :func:`provenance`; for several, their prompts and one hash over all."""
    first = provenance(caps[0])
    if len(caps) == 1:
        return first
    each = [provenance(c) for c in caps]
    joined = hashlib.sha256("".join(p["tensors_sha256"] for p in each).encode()).hexdigest()
    return {
        **first,
        "prompt": [p["prompt"] for p in each],
        "n_tokens": [p["n_tokens"] for p in each],
        "tensors_sha256": joined,
    }
