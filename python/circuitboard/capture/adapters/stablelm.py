"""StableLM (2): LayerNorm, partial rotary, gated MLP; optionally parallel attention + MLP.

``use_parallel_residual`` models (StableLM 2 12B) have no post-attention norm: both sublayers
read ``input_layernorm(resid_pre)``, served by the parallel variant of this adapter. Optional
per-head query/key LayerNorms (``qk_layernorm``) act inside attention before the scores.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ._base import Adapter
from .llama import llama_dims, llama_weights


def stablelm_dims(config: Any) -> dict[str, Any]:
    dims = llama_dims(config)
    dims["parallel_attn_mlp"] = bool(getattr(config, "use_parallel_residual", False))
    return dims


def _variant(adapter: Adapter, config: Any) -> Adapter:
    if getattr(config, "use_parallel_residual", False):
        return replace(adapter, block_mid=None, for_config=None)
    return adapter


ADAPTER = Adapter(
    name="stablelm",
    model_types=("stablelm",),
    blocks="model.layers",
    block_attn="self_attn",
    block_o_proj="self_attn.o_proj",
    block_mlp_down="mlp.down_proj",
    block_mid="post_attention_layernorm",
    block_attn_out=("self_attn", 0),
    block_mlp_out=("mlp", None),
    embed="model.embed_tokens",
    final_norm="model.norm",
    unembed="lm_head",
    norm="layernorm",
    weights=llama_weights,  # same module paths as Llama
    dims=stablelm_dims,
    for_config=_variant,
    notes="partial rotary; LayerNorm; parallel residual variant",
)
