"""Phi (1, 1.5, 2): LayerNorm, partial rotary, attention and MLP in parallel off one norm.

As GPT-J: both sublayers read ``input_layernorm(resid_pre)``; ``hook_resid_mid`` is
``resid_pre + attn_out``. Optional query/key LayerNorms (``qk_layernorm``) act inside
attention, before the scores: capture and attribution are unaffected, and the queries/keys the
model really used are what any score decomposition must start from.
"""

from __future__ import annotations

from typing import Any

from ._base import Adapter, cfg_get, common_weights, linear_weights


def phi_dims(config: Any) -> dict[str, Any]:
    H = config.num_attention_heads
    return {
        "n_layers": config.num_hidden_layers,
        "n_heads": H,
        "n_kv_heads": cfg_get(config, "num_key_value_heads", default=H),
        "d_model": config.hidden_size,
        "d_head": config.hidden_size // H,
        "d_mlp": config.intermediate_size,
        "d_vocab": config.vocab_size,
        "parallel_attn_mlp": True,
    }


def phi_weights(model: Any, adapter: Adapter, info: Any) -> dict[str, Any]:
    out = linear_weights(
        model,
        adapter,
        info,
        q="self_attn.q_proj",
        k="self_attn.k_proj",
        v="self_attn.v_proj",
        o="self_attn.dense",
        down="mlp.fc2",
    )
    out.update(common_weights(model, adapter, info))
    return out


ADAPTER = Adapter(
    name="phi",
    model_types=("phi",),
    blocks="model.layers",
    block_attn="self_attn",
    block_o_proj="self_attn.dense",
    block_mlp_down="mlp.fc2",
    block_mid=None,
    block_attn_out=("self_attn", 0),
    block_mlp_out=("mlp", None),
    embed="model.embed_tokens",
    final_norm="model.final_layernorm",
    unembed="lm_head",
    norm="layernorm",
    weights=phi_weights,
    dims=phi_dims,
    notes="parallel attention + MLP; partial rotary",
)
