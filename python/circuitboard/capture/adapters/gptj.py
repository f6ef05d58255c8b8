"""GPT-J: LayerNorm, partial rotary (``rotary_dim``), attention and MLP in parallel off one norm.

Both sublayers read ``ln_1(resid_pre)`` and are added together, so ``hook_resid_mid`` is
recorded as ``resid_pre + attn_out`` (as for GPT-NeoX) and ``info.parallel_attn_mlp`` is set.
The unembedding has a bias (``unembed.b_U``).
"""

from __future__ import annotations

from typing import Any

from ._base import Adapter, common_weights, linear_weights


def gptj_dims(config: Any) -> dict[str, Any]:
    H = config.n_head
    return {
        "n_layers": config.n_layer,
        "n_heads": H,
        "n_kv_heads": H,
        "d_model": config.n_embd,
        "d_head": config.n_embd // H,
        "d_mlp": config.n_inner or 4 * config.n_embd,
        "d_vocab": config.vocab_size,
        "parallel_attn_mlp": True,
    }


def gptj_weights(model: Any, adapter: Adapter, info: Any) -> dict[str, Any]:
    out = linear_weights(
        model,
        adapter,
        info,
        q="attn.q_proj",
        k="attn.k_proj",
        v="attn.v_proj",
        o="attn.out_proj",
        down="mlp.fc_out",
    )
    out.update(common_weights(model, adapter, info))
    return out


ADAPTER = Adapter(
    name="gptj",
    model_types=("gptj",),
    blocks="transformer.h",
    block_attn="attn",
    block_o_proj="attn.out_proj",
    block_mlp_down="mlp.fc_out",
    block_mid=None,
    block_attn_out=("attn", 0),
    block_mlp_out=("mlp", None),
    embed="transformer.wte",
    final_norm="transformer.ln_f",
    unembed="lm_head",
    norm="layernorm",
    weights=gptj_weights,
    dims=gptj_dims,
    notes="parallel attention + MLP; partial rotary",
)
