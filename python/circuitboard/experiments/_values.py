"""Saving and loading what an experiment returns: circuitboard results, arrays, plain JSON.

Each value is written into the run's folder by its own kind, and described by a small JSON
entry that says how to read it back. Nothing is ever pickled:

- a circuitboard result (anything with ``save(path)`` whose class has a ``cb.load_<name>``,
  e.g. ``Patching`` → ``cb.load_patching``) goes through its own ``save`` and loader;
- numpy arrays and torch tensors → one ``.npz`` (``np.load(allow_pickle=False)``);
- numbers, strings, booleans, None, and lists / dicts of them → JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from .._npz import save_npz

_JSON_SCALARS = (str, int, float, bool, type(None))


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def loader_for(type_name: str) -> Any:
    """``cb.load_<snake_case(type_name)>`` (``CausalTrace`` → ``cb.load_causal_trace``), or None."""
    import circuitboard as cb

    return getattr(cb, f"load_{_snake(type_name)}", None)


def _is_json(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, _JSON_SCALARS):
        return True
    if isinstance(value, list | tuple):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


def _as_array(value: Any) -> np.ndarray | None:
    if isinstance(value, np.ndarray | np.generic):
        return np.asarray(value)
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return None


def save_value(folder: Path, key: str, value: Any) -> dict[str, Any]:
    """Write ``value`` under ``folder`` as item ``key``; the JSON entry that reads it back."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:80] or "value"
    arr = _as_array(value)
    if arr is not None:
        if arr.dtype == object:
            raise TypeError(
                f"result {key!r} is an object array; the log stores numeric / string arrays "
                "only (no pickle). Convert it, e.g. np.asarray(x, dtype=float)."
            )
        path = folder / f"{safe}.npz"
        save_npz(path, {"value": arr})
        return {"key": key, "kind": "array", "file": path.name, "shape": list(arr.shape)}
    if _is_json(value):
        if isinstance(value, str | int | float | bool) or value is None:
            return {"key": key, "kind": "json", "value": value}
        path = folder / f"{safe}.json"
        path.write_text(json.dumps(value), encoding="utf-8")
        return {"key": key, "kind": "json", "file": path.name}
    type_name = type(value).__name__
    if callable(getattr(value, "save", None)) and loader_for(type_name) is not None:
        path = folder / f"{safe}.{type_name}"
        written = value.save(path)
        name = Path(written).name if written is not None else path.name
        return {"key": key, "kind": "result", "type": type_name, "file": name, "repr": repr(value)}
    raise TypeError(
        f"result {key!r} is a {type_name}, which the experiment log cannot store without "
        "pickling. Return a circuitboard result (anything with save() and a cb.load_*), a "
        "numpy array or tensor, or numbers / strings / lists / dicts of them."
    )


def load_value(folder: Path, entry: dict[str, Any]) -> Any:
    """Read back one value described by ``entry`` (from :func:`save_value`)."""
    kind = entry["kind"]
    if kind == "json":
        if "file" not in entry:
            return entry["value"]
        return json.loads((folder / entry["file"]).read_text(encoding="utf-8"))
    if kind == "array":
        with np.load(folder / entry["file"], allow_pickle=False) as z:
            return z["value"]
    if kind == "result":
        load = loader_for(entry["type"])
        if load is None:
            raise ValueError(
                f"result {entry['key']!r} is a {entry['type']}, and this circuitboard has no "
                f"cb.load_{_snake(entry['type'])}; upgrade circuitboard to read it."
            )
        return load(folder / entry["file"])
    raise ValueError(f"unknown stored kind {kind!r} for {entry.get('key')!r}.")


def describe_argument(value: Any) -> Any:
    """A JSON-ready description of one argument: itself when it is plain JSON; models,
    tokenizers, arrays and other objects by name, shape and a content hash."""
    if _is_json(value):
        return value
    cfg = getattr(value, "config", None)
    if cfg is not None and hasattr(value, "parameters"):
        name = getattr(cfg, "_name_or_path", "") or getattr(cfg, "model_type", "")
        return {"model": str(name), "class": type(value).__name__}
    if hasattr(value, "name_or_path") and hasattr(value, "encode"):
        return {"tokenizer": str(value.name_or_path), "class": type(value).__name__}
    arr = _as_array(value)
    if arr is not None and arr.dtype != object:
        digest = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]
        return {"array": list(arr.shape), "dtype": str(arr.dtype), "sha256": digest}
    if isinstance(value, list | tuple):
        return [describe_argument(v) for v in value]
    if isinstance(value, dict):
        return {str(k): describe_argument(v) for k, v in value.items()}
    text = repr(value)
    return {"repr": text[:200] + ("…" if len(text) > 200 else ""), "class": type(value).__name__}


__all__ = ["describe_argument", "load_value", "loader_for", "save_value"]
