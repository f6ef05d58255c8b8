"""BERT-style encoders (``BertForMaskedLM``): bidirectional attention, post-LayerNorm blocks.

BERT normalizes *after* each residual add, so the residual stream is not a plain sum of
component writes: ``hook_resid_mid`` is the attention sublayer's output after its LayerNorm,
``hook_resid_post`` the block output. The unembedding is the MLM head (dense, GELU, LayerNorm,
decoder): ``ln_final`` is that head's LayerNorm, so ``ln_final.hook_scale`` is measured on the
head's transformed input, not on ``resid_post``. Direct logit attribution is therefore not
exact for BERT; attention patterns, activations and logits are.
"""

from __future__ import annotations

from typing import Any

import torch

from ._base import Adapter, common_weights


def bert_dims(config: Any) -> dict[str, Any]:
    H = config.num_attention_heads
    return {
        "n_layers": config.num_hidden_layers,
        "n_heads": H,
        "n_kv_heads": H,
        "d_model": config.hidden_size,
        "d_head": config.hidden_size // H,
        "d_mlp": config.intermediate_size,
        "d_vocab": config.vocab_size,
    }


def bert_weights(model: Any, adapter: Adapter, info: Any) -> dict[str, Any]:
    H, dh, D = info.n_heads, info.d_head, info.d_model
    out: dict[str, Any] = {}
    for layer in range(info.n_layers):
        blk = adapter.block(model, layer)
        p = f"blocks.{layer}."
        sa = blk.attention.self
        for name, lin in (("Q", sa.query), ("K", sa.key), ("V", sa.value)):
            out[p + f"attn.W_{name}"] = lin.weight.view(H, dh, D).transpose(1, 2)
            out[p + f"attn.b_{name}"] = lin.bias.view(H, dh)
        out[p + "attn.W_O"] = blk.attention.output.dense.weight.T.view(H, dh, D)
        out[p + "attn.b_O"] = blk.attention.output.dense.bias
        out[p + "mlp.W_out"] = blk.output.dense.weight.T
        out[p + "mlp.b_out"] = blk.output.dense.bias
    out.update(common_weights(model, adapter, info))
    return out


def bert_head(model: Any, resid: torch.Tensor) -> torch.Tensor:
    return model.cls(resid)


ADAPTER = Adapter(
    name="bert",
    model_types=("bert",),
    blocks="bert.encoder.layer",
    block_attn="attention.self",
    block_o_proj="attention.output.dense",
    block_mlp_down="output.dense",
    block_mid="intermediate",
    block_attn_out=("attention.output.dense", None),
    block_mlp_out=("output.dense", None),
    embed="bert.embeddings.word_embeddings",
    pos_embed="bert.embeddings.position_embeddings",
    final_norm="cls.predictions.transform.LayerNorm",
    unembed="cls.predictions.decoder",
    norm="layernorm",
    weights=bert_weights,
    dims=bert_dims,
    causal=False,
    pre_norm=False,
    head=bert_head,
)
