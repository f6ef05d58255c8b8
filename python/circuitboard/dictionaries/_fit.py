"""Whether a dictionary fits a model: widths and layers read from the model's config."""

from __future__ import annotations

from typing import Any

from ._hooknames import hook_layer

_WIDTH = ("hidden_size", "n_embd", "d_model", "dim")
_LAYERS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
_MLP = ("intermediate_size", "n_inner", "d_mlp", "ffn_dim")


def _cfg(config: Any, names: tuple[str, ...]) -> int | None:
    for n in names:
        v = getattr(config, n, None)
        if isinstance(v, int):
            return v
    return None


def _site_width(config: Any, hook: str) -> int | None:
    if hook.endswith("mlp.hook_post"):
        return _cfg(config, _MLP)
    if hook.endswith("attn.hook_z"):
        return None  # per-head; the caller flattens it
    return _cfg(config, _WIDTH)


def check_fits(sae: Any, model: Any) -> None:
    """Raise a ValueError naming what does not fit between ``sae`` and ``model``."""
    config = getattr(model, "config", None)
    if config is None:
        cfg = getattr(model, "cfg", None)  # TransformerLens
        if cfg is None:
            raise TypeError(
                f"expected a Hugging Face or TransformerLens model (with .config or .cfg); got "
                f"{type(model).__name__}."
            )
        config = cfg
    n_layers = _cfg(config, _LAYERS)
    name = getattr(config, "_name_or_path", None) or getattr(config, "model_name", None) or "model"
    for what, hook, width in (("d_in", sae.hook, sae.d_in), ("d_out", sae.hook_out, sae.d_out)):
        if hook is None:
            continue
        layer = hook_layer(hook)
        if n_layers is not None and layer is not None and layer >= n_layers:
            raise ValueError(
                f"dictionary hook {hook!r} is at layer {layer}, but {name} has {n_layers} layers "
                f"(0..{n_layers - 1}). It was trained for a deeper model: load the one for this "
                "model, or check the hook name."
            )
        expected = _site_width(config, hook)
        if expected is not None and expected != width:
            raise ValueError(
                f"dictionary {what}={width} does not fit {name}: {hook} has width {expected}. "
                "It was trained on another model (see sae.metadata); load one trained on this "
                "model."
            )
