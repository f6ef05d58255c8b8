"""The embedded default models: SmolLM2-135M-Instruct (from a PyPI package) and a small ViT
trained locally on scikit-learn's digits."""

from ._default import default_cache_dir, gguf_path, load_default_model
from ._vision import digits, load_default_vision_model

__all__ = [
    "default_cache_dir",
    "digits",
    "gguf_path",
    "load_default_model",
    "load_default_vision_model",
]
