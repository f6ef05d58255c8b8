"""Models at the shapes researchers study (Qwen2.5-1.5B, Llama-3.2-1B, Gemma-2-2B,
Llama-3.1-8B), with random weights, built offline from their published configurations.

They measure what circuitboard costs at real sizes (time, memory, device, dtype) without a
download; their outputs mean nothing.
"""

from __future__ import annotations

from typing import Any

# The architecture-defining fields of each model's published config.json.
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-1.5b": {
        "model_type": "qwen2",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
    },
    "llama-3.2-1b": {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
    },
    "gemma-2-2b": {
        "model_type": "gemma2",
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "vocab_size": 256000,
        "max_position_embeddings": 8192,
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "rms_norm_eps": 1e-6,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True,
    },
    "llama-3.1-8b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    },
}


def random_model(
    name: str,
    *,
    dtype: Any = None,
    device: Any = "cpu",
    seed: int = 0,
    layers: int | None = None,
    **overrides: Any,
) -> Any:
    """A causal LM at the shapes of ``name`` (see :data:`SHAPES`) with seeded random weights,
    created directly in ``dtype`` (default bfloat16) on ``device``: nothing is downloaded and
    no float32 copy of the whole model is ever made.

    ``layers`` keeps only the first layers (same widths), and ``overrides`` change any config
    field, for a cheaper model of the same width.

    Examples
    --------
    >>> from circuitboard.testing import random_model
    >>> m = random_model("qwen2.5-1.5b", layers=1, vocab_size=512)
    >>> m.config.hidden_size, m.config.num_key_value_heads, str(m.dtype)
    (1536, 2, 'torch.bfloat16')
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; choose one of {sorted(SHAPES)}.")
    fields = {**SHAPES[name], **overrides}
    if layers is not None:
        fields["num_hidden_layers"] = layers
    model_type = fields.pop("model_type")
    config = AutoConfig.for_model(model_type, **fields)
    dtype = torch.bfloat16 if dtype is None else dtype
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in dtype, never upcast
    try:
        # transformers' own initialization takes minutes at these sizes on a CPU: skip it and
        # draw every weight once, below (buffers such as rotary frequencies are still built).
        with _no_init(), torch.device(device):
            model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02, generator=gen)
            elif pname.endswith("bias"):
                p.zero_()
            else:  # norm weights (Gemma's norms add 1 to theirs: 0 means unit scale there)
                p.fill_(0.0 if config.model_type.startswith("gemma") else 1.0)
    if config.tie_word_embeddings:
        model.tie_weights()  # skipped with the initialization
    model.config.name_or_path = f"random {name}"
    return model.eval()


def _no_init() -> Any:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialize normally (slower, same shapes)
        import contextlib

        return contextlib.nullcontext()
    return no_init_weights()
