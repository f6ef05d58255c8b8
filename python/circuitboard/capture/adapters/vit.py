"""Vision transformers (``ViTForImageClassification``): image patches plus a CLS token.

Pre-LayerNorm blocks like GPT-2, bidirectional attention, no masking. The embedding module's
output (patch projection, CLS token and learned positions together) is ``hook_embed``. The
classifier reads the final LayerNorm at the CLS position; a capture applies the same classifier
at every position, so ``cap.logits[0]`` is the model's output and the other rows say what each
patch's residual stream would predict (the logit lens over patches).
"""

from __future__ import annotations

from typing import Any

from ._base import Adapter, bias, linear_weights


def vit_dims(config: Any) -> dict[str, Any]:
    H = config.num_attention_heads
    return {
        "n_layers": config.num_hidden_layers,
        "n_heads": H,
        "n_kv_heads": H,
        "d_model": config.hidden_size,
        "d_head": config.hidden_size // H,
        "d_mlp": config.intermediate_size,
        "d_vocab": config.num_labels,
    }


def vit_weights(model: Any, adapter: Adapter, info: Any) -> dict[str, Any]:
    out = linear_weights(
        model,
        adapter,
        info,
        q="attention.q_proj",
        k="attention.k_proj",
        v="attention.v_proj",
        o="attention.o_proj",
        down="mlp.fc2",
    )
    proj = model.vit.embeddings.patch_embeddings.projection  # Conv2d, stride = patch size
    norm, head = model.vit.layernorm, model.classifier
    out.update(
        {
            # [channels * patch * patch, d_model]: the patch embedding as a matrix
            "embed.W_E": proj.weight.flatten(1).T,
            "ln_final.w": norm.weight,
            "ln_final.b": bias(norm, info.d_model),
            "unembed.W_U": head.weight.T,
            "unembed.b_U": bias(head, head.weight.shape[0]),
        }
    )
    return out


ADAPTER = Adapter(
    name="vit",
    model_types=("vit",),
    blocks="vit.layers",
    block_attn="attention",
    block_o_proj="attention.o_proj",
    block_mlp_down="mlp.fc2",
    block_mid="layernorm_after",
    block_attn_out=("attention", 0),
    block_mlp_out=("mlp", None),
    embed="vit.embeddings",
    final_norm="vit.layernorm",
    unembed="classifier",
    norm="layernorm",
    weights=vit_weights,
    dims=vit_dims,
    causal=False,
    modality="image",
)
