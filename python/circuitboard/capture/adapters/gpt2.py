"""GPT-2: LayerNorm, learned positions, ``Conv1D`` projections (weights stored ``[in, out]``)."""

from __future__ import annotations

from typing import Any

from ._base import Adapter, common_weights, get_module


def gpt2_dims(config: Any) -> dict[str, Any]:
    return {
        "n_layers": config.n_layer,
        "n_heads": config.n_head,
        "n_kv_heads": config.n_head,
        "d_model": config.n_embd,
        "d_head": config.n_embd // config.n_head,
        "d_mlp": config.n_inner or 4 * config.n_embd,
        "d_vocab": config.vocab_size,
    }


def gpt2_weights(model: Any, adapter: Adapter, info: Any) -> dict[str, Any]:
    H, dh, D = info.n_heads, info.d_head, info.d_model
    out: dict[str, Any] = {}
    for layer in range(info.n_layers):
        blk = adapter.block(model, layer)
        p = f"blocks.{layer}."
        w, b = blk.attn.c_attn.weight, blk.attn.c_attn.bias  # [D, 3D], [3D]
        for i, name in enumerate("QKV"):
            out[p + f"attn.W_{name}"] = w[:, i * D : (i + 1) * D].view(D, H, dh).permute(1, 0, 2)
            out[p + f"attn.b_{name}"] = b[i * D : (i + 1) * D].view(H, dh)
        out[p + "attn.W_O"] = blk.attn.c_proj.weight.view(H, dh, D)
        out[p + "attn.b_O"] = blk.attn.c_proj.bias
        out[p + "mlp.W_out"] = blk.mlp.c_proj.weight
        out[p + "mlp.b_out"] = blk.mlp.c_proj.bias
    out.update(common_weights(model, adapter, info))
    out["unembed.W_U"] = get_module(model, adapter.unembed).weight.T
    return out


ADAPTER = Adapter(
    name="gpt2",
    model_types=("gpt2",),
    blocks="transformer.h",
    block_attn="attn",
    block_o_proj="attn.c_proj",
    block_mlp_down="mlp.c_proj",
    block_mid="ln_2",
    block_attn_out=("attn", 0),
    block_mlp_out=("mlp", None),
    embed="transformer.wte",
    pos_embed="transformer.wpe",
    final_norm="transformer.ln_f",
    unembed="lm_head",
    norm="layernorm",
    weights=gpt2_weights,
    dims=gpt2_dims,
    block_norms=(("ln1", "ln_1"), ("ln2", "ln_2")),
)
