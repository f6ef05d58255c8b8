"""What `compare` measures per prompt: the statistics it knows, which apply, and one prompt's
samples read from its capture."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..capture._prompts import as_ids

HEAD_STATS: dict[str, str] = {
    "head_write": "‖z·W_O‖: norm of what the head writes to the residual",
    "attn_first": "attention to the first token",
    "attn_prev": "attention to the previous token",
    "attn_entropy": "attention entropy (nats)",
}
"""Per-head statistics ``[layers, heads]``, name → description."""
LAYER_STATS: dict[str, str] = {
    "attn_out": "‖attention output‖",
    "mlp_out": "‖MLP output‖",
}
"""Per-layer statistics ``[layers]``."""
NEURON_STATS: dict[str, str] = {"neurons": "MLP neuron activation (mlp.hook_post)"}
"""Per-neuron statistics ``[layers, d_mlp]``."""
RESID_STATS: dict[str, str] = {"resid": "residual stream entering the layer (hook_resid_pre)"}
"""Per-layer residual-stream vectors ``[layers, d_model]``: their mean difference between two
categories is a steering direction (:meth:`Comparison.direction`)."""
IMAGE_STATS: dict[str, str] = {
    "attn_patches": "attention from the sample position to each key: CLS and every patch",
    "pixels": "the input image's pixels (one sample per image)",
}
"""Image captures only (a fixed patch grid): ``attn_patches`` ``[layers, heads, tokens]``,
``pixels`` ``[channels, height, width]`` (its mean is the category's mean image)."""
STATS: dict[str, str] = {
    **HEAD_STATS,
    **LAYER_STATS,
    **NEURON_STATS,
    **RESID_STATS,
    **IMAGE_STATS,
}
_NEEDS = {  # stat → capture kinds
    "head_write": ("z",),
    "attn_first": ("pattern",),
    "attn_prev": ("pattern",),
    "attn_entropy": ("pattern",),
    "attn_out": ("attn_out",),
    "mlp_out": ("mlp_out",),
    "neurons": ("mlp_post",),
    "resid": ("resid_pre",),
    "attn_patches": ("pattern",),
    "pixels": (),
}
FEATURES = "features"
"""``stats=`` name of dictionary features (``compare(..., saes=[...])``): one statistic per
dictionary, held as ``"features:<hook>"`` with shape ``[d_sae]``."""
_TEXT_DEFAULT = [s for s in STATS if s not in IMAGE_STATS]
_IMAGE_DEFAULT = [s for s in STATS if s != "attn_prev"]  # patches have no "previous token"


# -- per-prompt samples --------------------------------------------------------------------
def _positions(pos: int | str, n_tokens: int, prompt: str | None) -> Any:
    if isinstance(pos, str):
        return slice(None)
    if not -n_tokens <= pos < n_tokens:
        raise ValueError(
            f"pos={pos} is outside a prompt of {n_tokens} tokens ({prompt!r}); use a position "
            f"in [-{n_tokens}, {n_tokens - 1}], or pos='all' / 'mean'."
        )
    return [pos % n_tokens]


def samples_from_capture(
    cap: Any, stats: Sequence[str], layers: Sequence[int], pos: int | str = -1
) -> dict[str, np.ndarray]:
    """One prompt's samples of each statistic: ``{stat: [n, *shape]}`` (float64).

    ``n`` is 1 for an int ``pos`` or ``"mean"`` (the mean over the prompt's tokens) and the
    number of tokens for ``"all"``. Head statistics are ``[n, layers, heads]``, layer
    statistics ``[n, layers]``, neurons ``[n, layers, d_mlp]``; for image captures
    ``attn_patches`` is ``[n, layers, heads, tokens]`` and ``pixels`` ``[1, C, H, W]``.
    """
    import torch

    T = cap.n_tokens
    idx = _positions(pos, T, cap.prompt)
    q = torch.arange(T)[idx]  # query positions, [n]
    out: dict[str, list[np.ndarray]] = {s: [] for s in stats}
    with torch.no_grad():
        for layer in layers:
            if "head_write" in out:
                z = cap[f"blocks.{layer}.attn.hook_z"][q].float()  # [n, H, d_head]
                w_o = _w_o(cap, layer, z.device)
                w = torch.einsum("nhd,hdm->nhm", z, w_o)  # what each head writes
                out["head_write"].append(w.norm(dim=-1).double().numpy())
            if any(s in out for s in ("attn_first", "attn_prev", "attn_entropy", "attn_patches")):
                for s, v in _pattern_samples(cap, layer, idx, out).items():
                    out[s].append(v)
            for s, hook in (("attn_out", "hook_attn_out"), ("mlp_out", "hook_mlp_out")):
                if s in out:
                    x = cap[f"blocks.{layer}.{hook}"][q].float()  # [n, d_model]
                    out[s].append(x.norm(dim=-1).double().numpy())
            if "neurons" in out:
                out["neurons"].append(cap[f"blocks.{layer}.mlp.hook_post"][q].double().numpy())
            if "resid" in out:
                out["resid"].append(cap[f"blocks.{layer}.hook_resid_pre"][q].double().numpy())
    pixels = out.pop("pixels", None)
    hooks = [s for s in out if is_feature_stat(s)]
    for s in hooks:
        del out[s]
    res = {s: np.stack(v, axis=1) for s, v in out.items()}  # layer axis after samples
    if hooks:
        from ._features import feature_acts

        rows = q.tolist()
        for s in hooks:  # [n, d_sae]; the stored tensor stays sparse, only these rows densify
            res[s] = feature_acts(cap, feature_hook(s), rows).double().numpy()
    if pos == "mean":
        res = {s: v.mean(0, keepdims=True) for s, v in res.items()}
    if pixels is not None:
        res["pixels"] = cap.image["pixels"].double().numpy()[None]
    return res


def feature_stat(hook: str) -> str:
    """The statistic name of the features of the dictionary reading ``hook``."""
    return f"{FEATURES}:{hook}"


def is_feature_stat(stat: str) -> bool:
    return stat.startswith(FEATURES + ":")


def feature_hook(stat: str) -> str:
    return stat[len(FEATURES) + 1 :]


def feature_info(saes: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """``{hook: {"layer", "d_sae", "labels"}}`` of the dictionaries compared (what a
    :class:`Comparison` keeps of them: enough to name and show their features)."""
    from ..capture._saes import sae_hook
    from ._features import feature_labels

    out: dict[str, dict[str, Any]] = {}
    for sae in saes:
        hook = sae_hook(sae)
        if hook in out:
            raise ValueError(
                f"two dictionaries read {hook!r}; compare one dictionary per hook (run compare "
                "twice to compare two of them)."
            )
        d_sae = getattr(sae, "d_sae", None) or getattr(getattr(sae, "cfg", None), "d_sae", None)
        out[hook] = {
            "layer": int(hook.split(".")[1]),
            "d_sae": int(d_sae) if d_sae is not None else None,
            "labels": {str(k): v for k, v in feature_labels(sae).items()},
        }
    return out


def _pattern_samples(cap: Any, layer: int, idx: Any, wanted: Any) -> dict[str, np.ndarray]:
    """``attn_first`` / ``attn_prev`` / ``attn_entropy`` ``[n, heads]`` of the queries ``idx``,
    read from the pattern in chunks of query rows (never the whole ``[H, T, T]`` at once)."""
    import torch

    queries = slice(None) if isinstance(idx, slice) else int(idx[0])
    parts: dict[str, list[np.ndarray]] = {
        s: [] for s in ("attn_first", "attn_prev", "attn_entropy", "attn_patches") if s in wanted
    }
    for a, p in cap.pattern_rows(layer, queries=queries):  # p: [H, rows, keys] float32
        q = torch.arange(a, a + p.shape[1])
        if "attn_first" in parts:
            parts["attn_first"].append(p[..., 0].T.double().numpy())
        if "attn_prev" in parts:
            prev = torch.gather(p, 2, (q - 1).clamp(min=0).view(1, -1, 1).expand(p.shape[0], -1, 1))
            prev = prev[..., 0] * (q > 0).to(prev.dtype)
            parts["attn_prev"].append(prev.T.double().numpy())
        if "attn_patches" in parts:  # [rows, heads, keys]
            parts["attn_patches"].append(p.transpose(0, 1).double().numpy())
        if "attn_entropy" in parts:
            pl = p.double()
            ent = -(torch.where(pl > 0, pl * pl.log(), torch.zeros_like(pl))).sum(-1)
            parts["attn_entropy"].append(ent.T.numpy())
    return {s: np.concatenate(v, axis=0) for s, v in parts.items()}


def _w_o(cap: Any, layer: int, device: Any) -> Any:
    import torch

    key = f"blocks.{layer}.attn.W_O"
    if key not in cap.weights:
        raise KeyError(
            f"{key!r} is not in cap.weights; head_write needs the output projection. Use "
            "captures from cb.capture(), or leave 'head_write' out of stats=."
        )
    return cap.weights[key].detach().to(device=device, dtype=torch.float32)


def _image_of(categories: Mapping[str, Sequence[Any]]) -> dict[str, Any] | None:
    """``{"grid", "patch"}`` when every capture is of an image (one grid), None when none is;
    a clear error for a mix of text and image captures, or of patch grids."""
    grids = {
        None if getattr(c, "image", None) is None else (*c.image["grid"], c.image["patch"])
        for caps in categories.values()
        for c in caps
    }
    if len(grids) > 1:
        kinds = "text and image captures" if None in grids else "images of different patch grids"
        raise ValueError(
            f"the categories mix {kinds}; compare captures of one model and one input kind."
        )
    g = next(iter(grids))
    return None if g is None else {"grid": [int(g[0]), int(g[1])], "patch": int(g[2])}


def _available_layers(cap: Any, stats: list[str]) -> list[int]:
    hooks = {
        "attn_patches": "attn.hook_pattern",
        "head_write": "attn.hook_z",
        "attn_first": "attn.hook_pattern",
        "attn_prev": "attn.hook_pattern",
        "attn_entropy": "attn.hook_pattern",
        "attn_out": "hook_attn_out",
        "mlp_out": "hook_mlp_out",
        "neurons": "mlp.hook_post",
        "resid": "hook_resid_pre",
    }
    sets = [set(cap.layers(hooks[s])) for s in stats if s in hooks]  # pixels: no layer
    layers = sorted(set.intersection(*sets)) if sets else []
    if not layers:
        raise ValueError(
            f"the captures hold no layer with every tensor that stats={stats} need; capture "
            "with what=('z', 'pattern', 'attn_out', 'mlp_out', 'mlp_post') or pass fewer stats=."
        )
    return layers


def _check_categories(categories: Any, what: str = "prompts") -> None:
    if not isinstance(categories, Mapping):
        raise TypeError(
            f"categories must be a dict {{name: [{what}...]}}; got {type(categories).__name__}. "
            'Example: {"IOI": [...], "other": [...]}.'
        )
    if len(categories) < 2:
        raise ValueError(
            f"compare needs at least 2 categories; got {len(categories)} "
            f"({list(categories)}). Add another category of {what} to compare against."
        )
    for name, items in categories.items():
        if not isinstance(name, str):
            raise TypeError(
                f"category names must be strings; got {name!r} ({type(name).__name__})."
            )
        if isinstance(items, (str, bytes)):
            raise TypeError(
                f"category {name!r} is a single string; pass a list of {what}: [{items!r}]."
            )
        if hasattr(items, "shape"):
            if what == "prompts" and as_ids(items[0] if len(items) else None) is not None:
                continue  # a 2-D integer tensor: one prompt of token ids per row
            dtype = str(getattr(items, "dtype", ""))
            looks_like_images = what == "prompts" and "float" in dtype and len(items.shape) >= 3
            raise TypeError(
                f"category {name!r} is a {dtype} array of shape {tuple(items.shape)}; this model "
                f"takes a list of {what}"
                + (
                    " or token ids (a 2-D integer tensor [prompts, tokens])."
                    if what == "prompts"
                    else "."
                )
                + (
                    " A float array of this shape looks like images: images go to an image "
                    "model (ViTForImageClassification), not a language model."
                    if looks_like_images
                    else ""
                )
            )
        if not isinstance(items, Sequence) or len(items) == 0:
            raise ValueError(
                f"category {name!r} has no {what} (got {items!r}); every category needs at "
                f"least one (two or more for effect sizes)."
            )


def _parse_stats(stats: Sequence[str] | None, image: bool = False) -> list[str]:
    """The statistics to compute, in :data:`STATS` order; ``image``: of image captures."""
    default = _IMAGE_DEFAULT if image else _TEXT_DEFAULT
    if stats is None:
        return list(default)
    items = [stats] if isinstance(stats, str) else list(stats)
    bad = [s for s in items if s not in STATS]
    if bad or not items:
        raise ValueError(f"stats= got {items!r}; choose from {list(default)}.")
    unfit = [s for s in items if s not in default]
    if unfit:
        why = (
            "image patches have no previous token"
            if image
            else "they need image captures (a fixed patch grid)"
        )
        raise ValueError(f"stats= {unfit} do not apply here: {why}; choose from {default}.")
    return [s for s in STATS if s in items]


def _parse_pos(pos: Any) -> None:
    ok = (isinstance(pos, int) and not isinstance(pos, bool)) or pos in ("all", "mean")
    if not ok:
        raise ValueError(
            f"pos= got {pos!r}; use a token index (-1: the last token), 'all' (every token is a "
            "sample) or 'mean' (each prompt's mean over its tokens)."
        )
