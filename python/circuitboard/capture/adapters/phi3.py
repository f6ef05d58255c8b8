"""Phi-3 / Phi-4-mini: Llama-like, with fused ``qkv_proj`` and ``gate_up_proj`` projections.

``qkv_proj.weight`` is ``[(H + 2 * KV) * d_head, d_model]`` (queries, then keys, then values)
and ``gate_up_proj.weight`` is ``[2 * d_mlp, d_model]`` (gate, then up): both are split into
per-head / per-neuron *views* (row slices of the parameter), never copies.
"""

from __future__ import annotations

from typing import Any

from ._base import Adapter, bias, common_weights
from .llama import llama_dims


def phi3_weights(model: Any, adapter: Adapter, info: Any) -> dict[str, Any]:
    H, KV, dh, D, M = info.n_heads, info.n_kv_heads, info.d_head, info.d_model, info.d_mlp
    out: dict[str, Any] = {}
    for layer in range(info.n_layers):
        blk = adapter.block(model, layer)
        p = f"blocks.{layer}."
        qkv = blk.self_attn.qkv_proj
        b = bias(qkv, qkv.weight.shape[0])
        starts = {"Q": (0, H), "K": (H * dh, KV), "V": ((H + KV) * dh, KV)}
        for name, (start, heads) in starts.items():
            rows = slice(start, start + heads * dh)
            out[p + f"attn.W_{name}"] = qkv.weight[rows].view(heads, dh, D).transpose(1, 2)
            out[p + f"attn.b_{name}"] = b[rows].view(heads, dh)
        o = blk.self_attn.o_proj
        out[p + "attn.W_O"] = o.weight.T.view(H, dh, D)
        out[p + "attn.b_O"] = bias(o, D)
        down = blk.mlp.down_proj
        out[p + "mlp.W_out"] = down.weight.T
        out[p + "mlp.b_out"] = bias(down, D)
        gu = blk.mlp.gate_up_proj.weight
        out[p + "mlp.W_gate"] = gu[:M].T
        out[p + "mlp.W_in"] = gu[M:].T
    out.update(common_weights(model, adapter, info))
    return out


ADAPTER = Adapter(
    name="phi3",
    model_types=("phi3",),
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
    weights=phi3_weights,
    dims=llama_dims,
    notes="fused qkv_proj / gate_up_proj split into views",
)
