"""Mixture-of-experts MLPs: Mixtral, Qwen2-MoE (with a shared expert), Qwen3-MoE, OLMoE.

transformers stores a layer's experts as two fused 3-D parameters (``gate_up_proj``
``[E, 2 * d_expert, d_model]``, ``down_proj`` ``[E, d_model, d_expert]``). Capture records, per
MoE layer: the router logits ``mlp.hook_router_logits`` ``[pos, E]``, the chosen experts
``mlp.hook_expert_indices`` ``[pos, k]`` and the routing weights ``mlp.hook_expert_weights``
``[pos, E]`` (as the model used them; zero for experts not chosen, TransformerLens' layout), and
each expert's neurons
``mlp.experts.{e}.hook_post`` ``[pos, d_expert]`` (zero at tokens not routed to ``e``).
Weights: ``mlp.W_gate`` (router, ``[d_model, E]``) and per expert ``mlp.experts.{e}.W_in`` /
``W_gate`` / ``W_out``, all views of the fused parameters. The MLP output is
``sum_e w_e * post_e @ W_out_e`` (+ Qwen2-MoE's ``sigmoid(gate) * shared_post @ W_out_shared``),
so direct logit attribution splits exactly per expert and per expert neuron. Qwen2-MoE adds
``mlp.shared_expert.hook_post`` and its sigmoid gate ``mlp.hook_shared_expert_gate`` ``[pos, 1]``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ._base import (
    Adapter,
    MoE,
    cfg_get,
    common_weights,
    get_module,
    linear_weights,
    qk_norm_weights,
)
from .llama import llama_dims


def moe_dims(config: Any) -> dict[str, Any]:
    dims = llama_dims(config)
    dims["n_experts"] = cfg_get(config, "num_local_experts", "num_experts")
    dims["n_experts_per_tok"] = config.num_experts_per_tok
    dims["d_mlp"] = cfg_get(config, "moe_intermediate_size", "intermediate_size")
    dims["d_shared_expert"] = cfg_get(config, "shared_expert_intermediate_size", default=0)
    return dims


def moe_layer(adapter: Adapter, block: Any) -> Any:
    """The block's fused experts module, or None for a dense-MLP layer of a mixed model."""
    try:
        return get_module(block, adapter.moe.experts)
    except AttributeError:
        return None


def expert_matrices(experts: Any, e: int) -> tuple[Any, Any]:
    """``(gate_up [2 * d_expert, d_model], down [d_model, d_expert])`` of expert ``e``, as
    ``nn.functional.linear`` weights (views; transposed storage is read through ``.T``)."""
    if getattr(experts, "has_bias", False) or not getattr(experts, "has_gate", True):
        raise ValueError(
            f"{type(experts).__name__} uses biases or ungated experts, which circuitboard's "
            "mixture-of-experts capture does not read yet; capture through TransformerLens "
            "and cb.from_transformer_lens, or file an issue with the model name."
        )
    if not getattr(experts, "is_concatenated", True):
        raise ValueError(
            f"{type(experts).__name__} interleaves gate and up rows; circuitboard reads the "
            "concatenated [gate; up] layout only. File an issue with the model name."
        )
    gu, down = experts.gate_up_proj[e], experts.down_proj[e]
    if getattr(experts, "is_transposed", False):
        gu, down = gu.T, down.T
    return gu, down


def moe_weights(model: Any, adapter: Adapter, info: Any) -> dict[str, Any]:
    out = linear_weights(
        model,
        adapter,
        info,
        q="self_attn.q_proj",
        k="self_attn.k_proj",
        v="self_attn.v_proj",
        o="self_attn.o_proj",
        down=None,
    )
    spec = adapter.moe
    for layer in range(info.n_layers):
        blk = adapter.block(model, layer)
        p = f"blocks.{layer}.mlp."
        experts = moe_layer(adapter, blk)
        if experts is None:  # dense layer (Qwen-MoE's mlp_only_layers)
            out[p + "W_out"] = blk.mlp.down_proj.weight.T
            out[p + "b_out"] = blk.mlp.down_proj.weight.new_zeros(info.d_model)
            continue
        out[p + "W_gate"] = get_module(blk, spec.router).weight.T
        for e in range(experts.gate_up_proj.shape[0]):
            gu, down = expert_matrices(experts, e)
            d = down.shape[1]
            out[p + f"experts.{e}.W_gate"] = gu[:d].T
            out[p + f"experts.{e}.W_in"] = gu[d:].T
            out[p + f"experts.{e}.W_out"] = down.T
        if spec.shared:
            shared = get_module(blk, spec.shared)
            out[p + "shared_expert.W_out"] = shared.down_proj.weight.T
            out[p + "shared_expert_gate.W"] = get_module(blk, spec.shared_gate).weight.T
    out.update(common_weights(model, adapter, info))
    out.update(qk_norm_weights(model, adapter, info))  # OLMoE, Qwen3-MoE
    return out


ADAPTER = Adapter(
    name="moe",
    model_types=("mixtral", "qwen3_moe", "olmoe"),
    blocks="model.layers",
    block_attn="self_attn",
    block_o_proj="self_attn.o_proj",
    block_mlp_down="mlp.experts",
    block_mid="post_attention_layernorm",
    block_attn_out=("self_attn", 0),
    block_mlp_out=("mlp", None),
    embed="model.embed_tokens",
    final_norm="model.norm",
    unembed="lm_head",
    norm="rmsnorm",
    weights=moe_weights,
    dims=moe_dims,
    moe=MoE(),
    notes="router logits, chosen experts, per-expert neurons and DLA",
)

ADAPTER_SHARED = replace(
    ADAPTER,
    name="qwen2_moe",
    model_types=("qwen2_moe",),
    moe=MoE(shared="mlp.shared_expert", shared_gate="mlp.shared_expert_gate"),
    notes="as moe, plus the gated shared expert",
)
