"""Gemma family: Gemma, Gemma 2, Gemma 3 text ((1 + w) RMSNorm, scaled embeddings, soft-capping).

Gemma 2/3 put a norm on each sublayer's output before the residual add ("sandwich" norms), so
``hook_attn_out`` / ``hook_mlp_out`` are the *normed* writes, and per-head writes through ``W_O``
are the writes before that norm (they do not add up to ``hook_attn_out``).
The token embedding is scaled by ``sqrt(d_model)`` inside the embedding module: ``hook_embed``
includes that factor, ``embed.W_E`` does not.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ._base import Adapter, post_norm_weights, qk_norm_weights
from .llama import llama_dims, llama_weights


def gemma2_weights(model: Any, adapter: Adapter, info: Any) -> dict[str, Any]:
    out = {**llama_weights(model, adapter, info), **post_norm_weights(model, adapter, info)}
    return {**out, **qk_norm_weights(model, adapter, info)}  # Gemma 3: q/k norms


ADAPTER = Adapter(
    name="gemma",
    model_types=("gemma",),
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
    norm="gemma_rmsnorm",
    weights=llama_weights,  # same module paths as Llama
    dims=llama_dims,
    block_norms=(("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")),
    rotary="apply_rotary_pos_emb",
)

# Gemma 2 / 3 differ only in their sandwich norms around each sublayer.
ADAPTER2 = replace(
    ADAPTER,
    name="gemma2",
    model_types=("gemma2", "gemma3_text"),
    block_mid="pre_feedforward_layernorm",
    block_attn_out=("post_attention_layernorm", None),
    block_mlp_out=("post_feedforward_layernorm", None),
    # their frozen scales (blocks.{l}.ln1_post / ln2_post.hook_scale) keep attribution exact
    post_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
    weights=gemma2_weights,
    block_norms=(
        ("ln1", "input_layernorm"),
        ("ln1_post", "post_attention_layernorm"),
        ("ln2", "pre_feedforward_layernorm"),
        ("ln2_post", "post_feedforward_layernorm"),
    ),
)
