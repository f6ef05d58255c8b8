"""Up-front estimate of what a capture will store, and the `max_memory` check."""

from __future__ import annotations

import re
from typing import Any

import torch

KINDS = (
    "embed",
    "resid_pre",
    "pattern",
    "z",
    "attn_out",
    "resid_mid",
    "mlp_post",
    "mlp_out",
    "resid_post",
    "scale",
    "logits",
    "norm_scales",
    "rotary",
)
"""Everything ``what=`` can name, in forward order."""

DEFAULT_WHAT = (
    "embed",
    "resid_pre",
    "pattern",
    "z",
    "resid_mid",
    "mlp_post",
    "resid_post",
    "scale",
    "logits",
    "norm_scales",
    "rotary",
)
"""Captured when ``what`` is not given (``attn_out`` / ``mlp_out`` are opt-in: they follow
from ``z`` / ``mlp_post`` and the weights)."""

ALIASES = {
    "hook_embed": "embed",
    "hook_pos_embed": "embed",
    "hook_pattern": "pattern",
    "attn.hook_pattern": "pattern",
    "attention": "pattern",
    "attn": "pattern",
    "hook_z": "z",
    "attn.hook_z": "z",
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "mlp.hook_post": "mlp_post",
    "hook_post": "mlp_post",
    "mlp": "mlp_post",
    "neurons": "mlp_post",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
    "ln_final.hook_scale": "scale",
    "hook_scale": "scale",
    "resid": ("resid_pre", "resid_mid", "resid_post"),
    "ln1.hook_scale": "norm_scales",
    "ln2.hook_scale": "norm_scales",
    "hook_rot_cos": "rotary",
    "hook_rot_sin": "rotary",
}

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "tb": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_what(what: Any) -> tuple[str, ...]:
    """Normalize ``what=`` (None, a kind, or an iterable of kinds / TransformerLens hook names)."""
    if what is None:
        return DEFAULT_WHAT
    if what == "all":
        return KINDS
    items = [what] if isinstance(what, str) else list(what)
    out: set[str] = set()
    for w in items:
        k = ALIASES.get(w, w) if isinstance(w, str) else w
        for kk in k if isinstance(k, tuple) else (k,):
            if kk not in KINDS:
                raise ValueError(
                    f"what= got {w!r}; expected some of {list(KINDS)} (or 'all'), or "
                    "TransformerLens hook names such as 'attn.hook_pattern' or 'mlp.hook_post'."
                )
            out.add(kk)
    if not out:
        raise ValueError("what= is empty; name at least one of " + ", ".join(KINDS) + ".")
    return tuple(k for k in KINDS if k in out)


def parse_bytes(value: Any) -> float | None:
    """``8e9``, ``"8GB"``, ``"8 GiB"``, ``"500MB"`` → bytes; ``None`` → no limit."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(
            f"max_memory={value!r} is not a size; use bytes (8e9) or a string like '8GiB', "
            "'500MB', or None for no limit."
        )
    return float(m.group(1)) * _UNITS[m.group(2).lower()]


def fmt_bytes(n: float) -> str:
    for unit, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= f:
            return f"{n / f:.2f} {unit}"
    return f"{int(n)} B"


def estimate(
    info: Any,
    lengths: list[int],
    n_layers: int,
    what: tuple[str, ...],
    dtype: torch.dtype,
    has_pos_embed: bool = False,
    qk_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Bytes each kind will occupy once stored (CPU), summed over prompts.

    ``"pattern"`` costs the queries and keys in ``qk_dtype`` (linear in tokens) when they are
    recorded through the attention interface, else the stored ``[heads, n, n]`` patterns.

    >>> from circuitboard.capture import ModelInfo
    >>> info = ModelInfo("llama", "m", 2, 4, 2, 32, 8, 64, 100, "rmsnorm")
    >>> estimate(info, [10], 2, ("pattern",), torch.float16)
    {'pattern': 1600.0}
    >>> estimate(info, [10], 2, ("pattern",), torch.float16, qk_dtype=torch.float32)
    {'pattern': 3920.0}
    """
    item = torch.empty((), dtype=dtype).element_size()
    H, D = info.n_heads, info.d_model
    per_token = {
        "embed": D * (2 if has_pos_embed else 1) * item,
        "resid_pre": n_layers * D * item,
        "z": n_layers * H * info.d_head * item,
        "attn_out": n_layers * D * item,
        "resid_mid": n_layers * D * item,
        "mlp_post": n_layers * _neurons_per_token(info) * item,
        "mlp_out": n_layers * D * item,
        "resid_post": n_layers * D * item,
        "scale": 4,
        "logits": info.d_vocab * 4,
        "norm_scales": n_layers * 4 * 4,  # at most four norms per block, float32
        "rotary": 2 * info.d_head * 4,  # cos and sin, float32, shared by the layers
    }
    out: dict[str, float] = {}
    if qk_dtype is not None:
        qk_item = torch.empty((), dtype=qk_dtype).element_size()
        per_token["pattern"] = n_layers * (H + info.n_kv_heads) * info.d_head * qk_item + 8
    for k in what:
        if k == "pattern" and qk_dtype is None:
            out[k] = float(sum(n_layers * H * n * n * item for n in lengths))
        else:
            out[k] = float(per_token[k] * sum(lengths))
    return out


def forward_bytes(info: Any, batch_tokens: int, model_dtype: torch.dtype) -> float:
    """Bytes a capture's forward holds for a moment beyond what it stores: the batch's logits
    in the model's dtype and their float32 copy on the way to storage (at 151,936 tokens of
    vocabulary the logits dwarf every per-layer activation).

    >>> from circuitboard.capture import ModelInfo
    >>> info = ModelInfo("llama", "m", 2, 4, 2, 32, 8, 64, 100, "rmsnorm")
    >>> forward_bytes(info, 10, torch.bfloat16)
    6000.0
    """
    item = torch.empty((), dtype=model_dtype).element_size()
    return float(batch_tokens * info.d_vocab * (item + 4))


def _neurons_per_token(info: Any) -> int:
    """MLP neurons stored per token and layer: every expert's (and the shared expert's) for
    mixture-of-experts models, which also store router logits, indices and weights."""
    n_experts = getattr(info, "n_experts", 0)
    if not n_experts:
        return info.d_mlp
    k = getattr(info, "n_experts_per_tok", 0)
    return n_experts * info.d_mlp + getattr(info, "d_shared_expert", 0) + n_experts + 2 * k + 1


def check(estimated: dict[str, float], max_memory: Any, n_prompts: int, n_layers: int) -> None:
    """Raise a ValueError naming the biggest parts and how to capture less when over the limit."""
    limit = parse_bytes(max_memory)
    total = sum(estimated.values())
    if limit is None or total <= limit:
        return
    parts = ", ".join(
        f"{k} {fmt_bytes(v)}" for k, v in sorted(estimated.items(), key=lambda kv: -kv[1]) if v
    )
    raise ValueError(
        f"This capture would store about {fmt_bytes(total)} ({parts}) for {n_prompts} prompt(s) "
        f"and {n_layers} layer(s), above max_memory={fmt_bytes(limit)}. Capture less: fewer "
        "layers (layers=[...]), fewer kinds (what=['pattern'] or what=['resid_post', 'logits']; "
        "the eager fallback's stored patterns grow with tokens squared), fewer or shorter "
        "prompts, or dtype=torch.float16 / bfloat16; or raise the limit (max_memory='32GiB', "
        "None for none)."
    )
