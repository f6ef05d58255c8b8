"""Llama family: Llama, SmolLM2, Mistral, Qwen2, Qwen3 (RMSNorm, RoPE, gated MLP, GQA)."""

from __future__ import annotations

from typing import Any

from ._base import Adapter, cfg_get, common_weights, linear_weights, qk_norm_weights


def llama_dims(config: Any) -> dict[str, Any]:
    """Shapes from a Llama-style config (``head_dim`` may differ from ``hidden / heads``)."""
    n_heads = config.num_attention_heads
    return {
        "n_layers": config.num_hidden_layers,
        "n_heads": n_heads,
        "n_kv_heads": cfg_get(config, "num_key_value_heads", default=n_heads),
        "d_model": config.hidden_size,
        "d_head": cfg_get(config, "head_dim", default=config.hidden_size // n_heads),
        "d_mlp": config.intermediate_size,
        "d_vocab": config.vocab_size,
        "final_logit_softcap": cfg_get(config, "final_logit_softcapping"),
    }


def llama_weights(model: Any, adapter: Adapter, info: Any) -> dict[str, Any]:
    out = linear_weights(
        model,
        adapter,
        info,
        q="self_attn.q_proj",
        k="self_attn.k_proj",
        v="self_attn.v_proj",
        o="self_attn.o_proj",
        down="mlp.down_proj",
    )
    out.update(common_weights(model, adapter, info))
    out.update(qk_norm_weights(model, adapter, info))  # Qwen3
    return out


ADAPTER = Adapter(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
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
    norm="rmsnorm",
    weights=llama_weights,
    dims=llama_dims,
    block_norms=(("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")),
    rotary="apply_rotary_pos_emb",
)
