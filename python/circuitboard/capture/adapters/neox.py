"""GPT-NeoX / Pythia: LayerNorm, partial rotary, fused per-head qkv, parallel attention + MLP.

With ``use_parallel_residual`` (all Pythia models) the MLP reads ``resid_pre``, not
``resid_mid``; circuitboard still records ``hook_resid_mid = resid_pre + attn_out`` (the
residual after attention) so every architecture has the same names.
"""

from __future__ import annotations

from typing import Any

from ._base import Adapter, common_weights


def neox_dims(config: Any) -> dict[str, Any]:
    H = config.num_attention_heads
    return {
        "n_layers": config.num_hidden_layers,
        "n_heads": H,
        "n_kv_heads": H,
        "d_model": config.hidden_size,
        "d_head": config.hidden_size // H,
        "d_mlp": config.intermediate_size,
        "d_vocab": config.vocab_size,
        "parallel_attn_mlp": bool(config.use_parallel_residual),
    }


def neox_weights(model: Any, adapter: Adapter, info: Any) -> dict[str, Any]:
    H, dh, D = info.n_heads, info.d_head, info.d_model
    out: dict[str, Any] = {}
    for layer in range(info.n_layers):
        blk = adapter.block(model, layer)
        p = f"blocks.{layer}."
        qkv = blk.attention.query_key_value  # weight [H * 3 * dh, D], laid out per head
        w = qkv.weight.view(H, 3, dh, D)
        b = qkv.bias.view(H, 3, dh)
        for i, name in enumerate("QKV"):
            out[p + f"attn.W_{name}"] = w[:, i].transpose(1, 2)
            out[p + f"attn.b_{name}"] = b[:, i]
        out[p + "attn.W_O"] = blk.attention.dense.weight.T.view(H, dh, D)
        out[p + "attn.b_O"] = blk.attention.dense.bias
        out[p + "mlp.W_out"] = blk.mlp.dense_4h_to_h.weight.T
        out[p + "mlp.b_out"] = blk.mlp.dense_4h_to_h.bias
    out.update(common_weights(model, adapter, info))
    return out


ADAPTER = Adapter(
    name="gpt_neox",
    model_types=("gpt_neox",),
    blocks="gpt_neox.layers",
    block_attn="attention",
    block_o_proj="attention.dense",
    block_mlp_down="mlp.dense_4h_to_h",
    block_mid=None,
    block_attn_out=("attention", 0),
    block_mlp_out=("mlp", None),
    embed="gpt_neox.embed_in",
    final_norm="gpt_neox.final_layer_norm",
    unembed="lm_head",
    norm="layernorm",
    weights=neox_weights,
    dims=neox_dims,
    block_norms=(("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")),
    rotary="apply_rotary_pos_emb",
)
