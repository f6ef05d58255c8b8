"""The embedded default model (SmolLM2-135M-Instruct), loaded offline from a PyPI package."""

from ._default import default_cache_dir, gguf_path, load_default_model

__all__ = ["default_cache_dir", "gguf_path", "load_default_model"]
