"""OLMo 2: no pre-norms; RMSNorms *after* the attention and MLP outputs; query/key RMSNorms.

A block computes ``mid = pre + post_attention_layernorm(attn(pre))`` and
``post = mid + post_feedforward_layernorm(mlp(mid))``. Capture records each post-norm's
multiplier (``blocks.{l}.ln1_post.hook_scale`` / ``ln2_post.hook_scale``) and weight, so with
those scales frozen (as the final norm's is) every head's and neuron's write is linear and direct
logit attribution stays exact. ``hook_attn_out`` / ``hook_mlp_out`` are the normed writes.
The query/key norms run over all heads together inside attention, before the scores; the
patterns are the model's own.
"""

from __future__ import annotations

from typing import Any

from ._base import Adapter, post_norm_weights, qk_norm_weights
from .llama import llama_dims, llama_weights


def olmo2_weights(model: Any, adapter: Adapter, info: Any) -> dict[str, Any]:
    out = {**llama_weights(model, adapter, info), **post_norm_weights(model, adapter, info)}
    return {**out, **qk_norm_weights(model, adapter, info)}


ADAPTER = Adapter(
    name="olmo2",
    model_types=("olmo2", "olmo3"),
    blocks="model.layers",
    block_attn="self_attn",
    block_o_proj="self_attn.o_proj",
    block_mlp_down="mlp.down_proj",
    block_mid="mlp",  # no pre-MLP norm: the MLP reads resid_mid itself
    block_attn_out=("post_attention_layernorm", None),
    block_mlp_out=("post_feedforward_layernorm", None),
    embed="model.embed_tokens",
    final_norm="model.norm",
    unembed="lm_head",
    norm="rmsnorm",
    weights=olmo2_weights,
    dims=llama_dims,
    post_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
    notes="post-attention / post-MLP norms frozen for exact DLA; q/k norms",
)
