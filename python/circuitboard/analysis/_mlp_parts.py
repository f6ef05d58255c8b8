"""Where a Hugging Face model keeps its decoder blocks, MLP output projections, final norm and
unembedding (module paths per architecture family)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# Module paths per architecture family: decoder blocks, the MLP output projection inside a
# block, the final norm and the unembedding. Tried in order; the first that resolves wins.
_BLOCKS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")


_OUT_PROJ = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "mlp.dense_out")


_FINAL_NORM = (
    "model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.final_layernorm",
)


_UNEMBED = ("lm_head", "embed_out")


def _attr(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _first(obj: Any, paths: Sequence[str]) -> tuple[str, Any] | None:
    for p in paths:
        try:
            return p, _attr(obj, p)
        except AttributeError:
            continue
    return None


def _blocks(model: Any) -> Any:
    found = _first(model, _BLOCKS)
    if found is None:
        raise TypeError(
            f"cannot find the decoder blocks of {type(model).__name__}; looked for "
            f"{', '.join(_BLOCKS)}. Pass a Hugging Face causal LM (Llama, GPT-2, NeoX, ... family)."
        )
    return found[1]


def mlp_out_proj(model: Any, layer: int) -> Any:
    """The module whose *input* holds layer ``layer``'s neuron activations.

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> model, _ = tiny_model("llama")
    >>> type(mlp_out_proj(model, 0)).__name__
    'Linear'
    """
    blocks = _blocks(model)
    n = len(blocks)
    if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool) or not 0 <= layer < n:
        raise IndexError(f"layer={layer!r} is out of range: the model has {n} layers (0..{n - 1}).")
    found = _first(blocks[int(layer)], _OUT_PROJ)
    if found is None:
        raise TypeError(
            f"cannot find the MLP output projection of {type(blocks[0]).__name__}; looked for "
            f"{', '.join(_OUT_PROJ)}. Add the path to circuitboard.analysis._mlp_parts._OUT_PROJ."
        )
    return found[1]


def _w_out(proj: Any) -> Any:
    """``[d_mlp, d_model]`` output weights (Linear stores the transpose, GPT-2's Conv1D not)."""
    w = proj.weight.detach()
    return w if type(proj).__name__ == "Conv1D" else w.T


def _d_mlp(model: Any, layer: int) -> int:
    return int(_w_out(mlp_out_proj(model, layer)).shape[0])


def _final_norm(model: Any) -> tuple[Any, str] | None:
    found = _first(model, _FINAL_NORM)
    if found is None:
        return None
    mod = found[1]
    name = type(mod).__name__.lower()
    kind = "layernorm" if "layernorm" in name and "rms" not in name else "rmsnorm"
    if "gemma" in name:
        kind = "gemma_rmsnorm"
    return mod, kind


def through_final_norm(model: Any, d: Any) -> Any:
    """Float64 directions ``d [n, d_model]`` as the unembedding sees them: times the final
    norm's weight (``1 + w`` for Gemma), centred first for LayerNorm (it removes the mean)."""
    import torch

    found = _final_norm(model)
    if found is None:
        return d
    mod, kind = found
    if kind == "layernorm":
        d = d - d.mean(-1, keepdim=True)
    w = getattr(mod, "weight", None)
    if w is not None:
        w = w.detach().to("cpu", torch.float64)
        d = d * (1.0 + w if kind == "gemma_rmsnorm" else w)
    return d


def top_logit_effects(
    model: Any, items: Sequence[Any], directions: Callable[[Sequence[Any]], Any], k: int
) -> dict[str, np.ndarray]:
    """The ``k`` tokens each item's direction promotes / suppresses most: ``directions(chunk)
    @ W_U`` over chunks of 256 items (``promoted_ids`` / ``promoted``, ``suppressed_ids`` /
    ``suppressed``, each ``[n, k]``)."""
    import torch

    W_U = _unembed(model)
    k = min(int(k), W_U.shape[0])
    out: dict[str, list] = {
        key: [] for key in ("promoted_ids", "promoted", "suppressed_ids", "suppressed")
    }
    for s in range(0, len(items), 256):
        eff = directions(items[s : s + 256]).float() @ W_U.T  # float32: ranking only
        pv, pi = eff.topk(k, dim=1)
        sv, si = (-eff).topk(k, dim=1)
        out["promoted_ids"].append(pi)
        out["promoted"].append(pv)
        out["suppressed_ids"].append(si)
        out["suppressed"].append(-sv)
    return {
        key: torch.cat(v).numpy().astype(np.int64 if key.endswith("ids") else np.float32)
        for key, v in out.items()
    }


def _unembed(model: Any) -> Any:
    import torch

    get = getattr(model, "get_output_embeddings", None)
    mod = get() if callable(get) else None
    if mod is None:
        found = _first(model, _UNEMBED)
        if found is None:
            raise TypeError(
                f"cannot find the unembedding of {type(model).__name__}; looked for "
                f"get_output_embeddings(), {', '.join(_UNEMBED)}."
            )
        mod = found[1]
    return mod.weight.detach().to("cpu", torch.float32)  # [vocab, d_model]
