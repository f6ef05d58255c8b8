"""GPT-Neo: LayerNorm, learned positions, alternating global / local (windowed) attention layers.

GPT-Neo does not scale its attention scores by ``1 / sqrt(d_head)``; its local layers mask keys
``window_size`` or more tokens back. Its attention is its own code, not transformers' attention
interface, and applies no rotary: capture records ``attn.hook_q`` / ``hook_k`` from the q/k
projections (split into heads) with scaling 1 and each layer's window, and patterns are
recomputed on demand from them (tested equal to ``output_attentions``). The unembedding is
tied to the token embedding.
"""

from __future__ import annotations

from typing import Any

from ._base import Adapter, ModuleQK, common_weights, linear_weights


def gpt_neo_dims(config: Any) -> dict[str, Any]:
    H = config.num_heads
    return {
        "n_layers": config.num_layers,
        "n_heads": H,
        "n_kv_heads": H,
        "d_model": config.hidden_size,
        "d_head": config.hidden_size // H,
        "d_mlp": config.intermediate_size or 4 * config.hidden_size,
        "d_vocab": config.vocab_size,
    }


def gpt_neo_weights(model: Any, adapter: Adapter, info: Any) -> dict[str, Any]:
    out = linear_weights(
        model,
        adapter,
        info,
        q="attn.attention.q_proj",
        k="attn.attention.k_proj",
        v="attn.attention.v_proj",
        o="attn.attention.out_proj",
        down="mlp.c_proj",
    )
    out.update(common_weights(model, adapter, info))
    return out


def gpt_neo_window(config: Any, layer: int) -> int | None:
    """Local layers see the last ``window_size`` keys (themselves included)."""
    return config.window_size if config.attention_layers[layer] == "local" else None


ADAPTER = Adapter(
    name="gpt_neo",
    model_types=("gpt_neo",),
    blocks="transformer.h",
    block_attn="attn.attention",
    block_o_proj="attn.attention.out_proj",
    block_mlp_down="mlp.c_proj",
    block_mid="ln_2",
    block_attn_out=("attn", 0),
    block_mlp_out=("mlp", None),
    embed="transformer.wte",
    pos_embed="transformer.wpe",
    final_norm="transformer.ln_f",
    unembed="lm_head",
    norm="layernorm",
    weights=gpt_neo_weights,
    dims=gpt_neo_dims,
    # GPT-Neo's attention is its own eager code (no attention interface) with no rotary and no
    # score scaling: q/k are the projections' outputs, split into heads.
    module_qk=ModuleQK(
        q="attn.attention.q_proj", k="attn.attention.k_proj", scaling=1.0, window=gpt_neo_window
    ),
    notes="local/global layers (window from config.window_size); no 1/sqrt(d_head) scaling",
)
