"""Tiny randomly initialized models, one per supported architecture, built offline from configs.

Each factory returns ``(model, tokenizer)``: a model in eval mode with a few layers and small
dims (seeded, so two calls give the same weights) and a byte-level BPE tokenizer trained in code
on a small corpus (so multibyte characters can be split across tokens, as in GPT-2/Llama-3
tokenizers). Models that support SDPA are loaded with ``attn_implementation="sdpa"`` so the
capture's switch to eager attention is exercised.

>>> from circuitboard.testing import tiny_model
>>> model, tok = tiny_model("llama")
>>> model.config.num_hidden_layers
2
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

CORPUS = [
    "When Mary and John went to the store, John gave a drink to Mary.",
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! Héllo wörld, naïve café, 日本語のテキスト, emoji 🙂 too.",
    "def f(x):\n    return x + 1  # code\n\ttabs and  double  spaces",
    "1 2 3 4 5 6 7 8 9 10 11 12 the the the and and of of to to in in",
]
VOCAB = 384
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@functools.cache
def _tokenizer_json(kind: str) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = BERT_SPECIALS if kind == "bert" else SPECIALS
    tok = Tokenizer(models.BPE(unk_token=None if kind != "bert" else "[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if kind == "bos":  # Llama-style: prepend <s>
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    elif kind == "bert":  # [CLS] ... [SEP]
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[
                ("[CLS]", tok.token_to_id("[CLS]")),
                ("[SEP]", tok.token_to_id("[SEP]")),
            ],
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    return tok.to_str()


def tiny_tokenizer(kind: str = "plain") -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with 384 tokens.

    ``kind``: ``"plain"`` (GPT-2-like, no BOS), ``"bos"`` (prepends ``<s>``, Llama-like) or
    ``"bert"`` (``[CLS] ... [SEP]``, with a ``[MASK]`` token).
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer.from_str(_tokenizer_json(kind))
    if kind == "bert":
        return PreTrainedTokenizerFast(
            tokenizer_object=raw,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def _build(config: Any, cls: Any, seed: int = 0) -> Any:
    import torch

    torch.manual_seed(seed)
    model = cls(config)
    model.eval()
    return model


def tiny_gpt2(seed: int = 0) -> tuple[Any, Any]:
    """GPT-2: LayerNorm, learned positions, Conv1D projections, fused qkv, tied unembedding."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=4,
        attn_implementation="sdpa",
        bos_token_id=1,
        eos_token_id=2,
    )
    return _build(cfg, GPT2LMHeadModel, seed), tiny_tokenizer("plain")


def tiny_llama(seed: int = 0) -> tuple[Any, Any]:
    """Llama: RMSNorm, RoPE, gated MLP, grouped-query attention (4 heads, 2 kv heads), BOS."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return _build(cfg, LlamaForCausalLM, seed), tiny_tokenizer("bos")


def tiny_smollm(seed: int = 0) -> tuple[Any, Any]:
    """SmolLM2-like Llama: tied embeddings, GQA 6 heads / 2 kv heads, no BOS."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return _build(cfg, LlamaForCausalLM, seed), tiny_tokenizer("plain")


def tiny_mistral(seed: int = 0) -> tuple[Any, Any]:
    """Mistral: Llama-like with GQA."""
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=128,
        head_dim=8,
        sliding_window=None,
        attn_implementation="sdpa",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return _build(cfg, MistralForCausalLM, seed), tiny_tokenizer("bos")


def tiny_qwen2(seed: int = 0) -> tuple[Any, Any]:
    """Qwen2: Llama-like with q/k/v biases and GQA."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return _build(cfg, Qwen2ForCausalLM, seed), tiny_tokenizer("plain")


def tiny_neox(seed: int = 0) -> tuple[Any, Any]:
    """GPT-NeoX (Pythia): LayerNorm, partial rotary, parallel attention + MLP, fused qkv."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        rotary_pct=0.25,
        use_parallel_residual=True,
        attn_implementation="sdpa",
        bos_token_id=1,
        eos_token_id=2,
    )
    return _build(cfg, GPTNeoXForCausalLM, seed), tiny_tokenizer("plain")


def _randomize_norms(model: Any) -> Any:
    """Random init leaves Gemma's (1 + w) norm weights at zero: make them non-trivial."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    return model


def tiny_gemma2(seed: int = 0) -> tuple[Any, Any]:
    """Gemma 2: (1 + w) RMSNorm, sandwich norms, embedding scaling, attention and final logit
    soft-capping, GQA, a sliding-window layer; eager attention only (no SDPA)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        sliding_window=4,
        final_logit_softcapping=5.0,
        attn_logit_softcapping=20.0,
        query_pre_attn_scalar=8,
        attn_implementation="eager",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return _randomize_norms(_build(cfg, Gemma2ForCausalLM, seed)), tiny_tokenizer("bos")


def tiny_gemma(seed: int = 0) -> tuple[Any, Any]:
    """Gemma (1): (1 + w) RMSNorm, embedding scaling, GELU-gated MLP, multi-query attention."""
    from transformers import GemmaConfig, GemmaForCausalLM

    cfg = GemmaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=128,
        attn_implementation="sdpa",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return _randomize_norms(_build(cfg, GemmaForCausalLM, seed)), tiny_tokenizer("bos")


def tiny_bert(seed: int = 0) -> tuple[Any, Any]:
    """BERT (masked LM): bidirectional attention, post-LayerNorm blocks, MLM head."""
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        attn_implementation="sdpa",
        pad_token_id=0,
    )
    return _build(cfg, BertForMaskedLM, seed), tiny_tokenizer("bert")


FACTORIES: dict[str, Callable[..., tuple[Any, Any]]] = {
    "gpt2": tiny_gpt2,
    "llama": tiny_llama,
    "smollm": tiny_smollm,
    "mistral": tiny_mistral,
    "qwen2": tiny_qwen2,
    "neox": tiny_neox,
    "gemma": tiny_gemma,
    "gemma2": tiny_gemma2,
    "bert": tiny_bert,
}
"""Every tiny model by name; ``pytest.mark.parametrize("name", FACTORIES)`` covers all adapters."""

CAUSAL = [n for n in FACTORIES if n != "bert"]
"""The causal language models among :data:`FACTORIES` (BERT is bidirectional)."""


def tiny_vit(seed: int = 0, channels: int = 3) -> tuple[Any, None]:
    """ViT image classifier: 8×8 images, 4×4 patches (4 patches + CLS), 5 classes, random."""
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=channels,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=5,
        id2label={i: f"class {i}" for i in range(5)},
        label2id={f"class {i}": i for i in range(5)},
        attn_implementation="sdpa",
    )
    model = _build(cfg, ViTForImageClassification, seed)
    model.config.circuitboard_pixel_norm = {"mean": [0.5] * channels, "std": [0.25] * channels}
    return model, None


# -- architectures added with their adapters (issue 17); kept out of FACTORIES so the suites
# parametrized over FACTORIES keep their cost; tests/unit/test_adapters_*.py cover these.

_SMALL = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 128,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def _noisy(model: Any, *needles: str, std: float = 0.3) -> Any:
    """Perturb parameters whose name contains a needle (norm weights initialized to 1, routers
    to ~0), so the tests see non-trivial norms and decisive routing."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(n in name for n in needles):
                p.add_(torch.randn_like(p) * std)
    return model


def tiny_gpt_neo(seed: int = 0) -> tuple[Any, Any]:
    """GPT-Neo: a global then a local layer (window 4), no score scaling, learned positions."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    cfg = GPTNeoConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        attention_types=[[["global", "local"], 1]],
        window_size=4,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    return _build(cfg, GPTNeoForCausalLM, seed), tiny_tokenizer("plain")


def tiny_gptj(seed: int = 0) -> tuple[Any, Any]:
    """GPT-J: parallel attention + MLP, partial rotary (rotary_dim 4 of 8), lm_head bias."""
    from transformers import GPTJConfig, GPTJForCausalLM

    cfg = GPTJConfig(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        rotary_dim=4,
        n_positions=128,
        attn_implementation="sdpa",
        bos_token_id=1,
        eos_token_id=2,
    )
    model = _noisy(_build(cfg, GPTJForCausalLM, seed), "lm_head.bias", std=1.0)
    return model, tiny_tokenizer("plain")


def tiny_phi(seed: int = 0) -> tuple[Any, Any]:
    """Phi-2-like: parallel attention + MLP, partial rotary (0.5), q/k/v and lm_head biases."""
    from transformers import PhiConfig, PhiForCausalLM

    cfg = PhiConfig(**_SMALL, partial_rotary_factor=0.5, attn_implementation="sdpa")
    return _build(cfg, PhiForCausalLM, seed), tiny_tokenizer("plain")


def tiny_phi3(seed: int = 0) -> tuple[Any, Any]:
    """Phi-3: fused qkv_proj and gate_up_proj, GQA (4 heads, 2 kv heads), RMSNorm."""
    from transformers import Phi3Config, Phi3ForCausalLM

    cfg = Phi3Config(**_SMALL, num_key_value_heads=2, attn_implementation="sdpa")
    return _noisy(_build(cfg, Phi3ForCausalLM, seed), "norm"), tiny_tokenizer("bos")


def tiny_stablelm(seed: int = 0, parallel: bool = False) -> tuple[Any, Any]:
    """StableLM 2: LayerNorm, partial rotary (0.25), GQA; ``parallel=True``: parallel residual
    with per-head q/k LayerNorms (StableLM 2 12B)."""
    from transformers import StableLmConfig, StableLmForCausalLM

    cfg = StableLmConfig(
        **_SMALL,
        num_key_value_heads=2,
        partial_rotary_factor=0.25,
        use_parallel_residual=parallel,
        qk_layernorm=parallel,
        attn_implementation="sdpa",
    )
    return _noisy(_build(cfg, StableLmForCausalLM, seed), "norm"), tiny_tokenizer("plain")


def tiny_olmo2(seed: int = 0) -> tuple[Any, Any]:
    """OLMo 2: RMSNorms after the attention / MLP outputs, q/k RMSNorms, no pre-norms, GQA."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    cfg = Olmo2Config(**_SMALL, num_key_value_heads=2, attn_implementation="sdpa")
    return _noisy(_build(cfg, Olmo2ForCausalLM, seed), "norm"), tiny_tokenizer("bos")


def tiny_mixtral(seed: int = 0) -> tuple[Any, Any]:
    """Mixtral: 4 experts, top-2 routing (fused 3-D expert parameters), GQA."""
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(
        **_SMALL,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        attn_implementation="sdpa",
    )
    return _noisy(_build(cfg, MixtralForCausalLM, seed), "mlp.gate", std=1.0), tiny_tokenizer("bos")


def tiny_qwen2_moe(seed: int = 0) -> tuple[Any, Any]:
    """Qwen2-MoE (Qwen1.5-MoE): 4 experts of width 16, top-2, a gated shared expert, q/k/v bias."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    cfg = Qwen2MoeConfig(
        **_SMALL,
        num_key_value_heads=2,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=24,
        num_experts=4,
        num_experts_per_tok=2,
        attn_implementation="sdpa",
    )
    model = _build(cfg, Qwen2MoeForCausalLM, seed)
    model = _noisy(model, "mlp.gate", "shared_expert_gate", std=1.0)
    return model, tiny_tokenizer("plain")


ARCH_FACTORIES: dict[str, Callable[..., tuple[Any, Any]]] = {
    "gpt_neo": tiny_gpt_neo,
    "gptj": tiny_gptj,
    "phi": tiny_phi,
    "phi3": tiny_phi3,
    "stablelm": tiny_stablelm,
    "stablelm_parallel": functools.partial(tiny_stablelm, parallel=True),
    "olmo2": tiny_olmo2,
    "mixtral": tiny_mixtral,
    "qwen2_moe": tiny_qwen2_moe,
}
"""Tiny models of the architectures added by the adapters of issue 17, by name."""


def tiny_mistral_sliding(seed: int = 0) -> tuple[Any, Any]:
    """Mistral with a 3-token sliding window on every layer (SDPA)."""
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        head_dim=8,
        sliding_window=3,
        attn_implementation="sdpa",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return _build(cfg, MistralForCausalLM, seed), tiny_tokenizer("bos")


def tiny_qwen3(seed: int = 0) -> tuple[Any, Any]:
    """Qwen3: Llama-like with per-head query/key RMSNorms before rotary, GQA (SDPA)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return _randomize_norms(_build(cfg, Qwen3ForCausalLM, seed)), tiny_tokenizer("plain")


def tiny_gemma3(seed: int = 0) -> tuple[Any, Any]:
    """Gemma 3 text: query/key norms, a sliding (local) layer then a global one, GQA (SDPA)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        sliding_window=3,
        layer_types=["sliding_attention", "full_attention"],
        query_pre_attn_scalar=8,
        attn_implementation="sdpa",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return _randomize_norms(_build(cfg, Gemma3ForCausalLM, seed)), tiny_tokenizer("bos")


ATTENTION_VARIANTS: dict[str, Callable[..., tuple[Any, Any]]] = {
    "mistral_sliding": tiny_mistral_sliding,
    "qwen3": tiny_qwen3,
    "gemma3": tiny_gemma3,
}
"""Attention variants beyond :data:`FACTORIES` (sliding windows on SDPA, query/key norms)."""


def tiny_qwen3_moe(seed: int = 0) -> tuple[Any, Any]:
    """Qwen3-MoE: q/k RMSNorms per head, 4 experts top-2, layer 0 a dense MLP (mlp_only_layers)."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = Qwen3MoeConfig(
        **_SMALL,
        num_key_value_heads=2,
        head_dim=8,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        mlp_only_layers=[0],
        attn_implementation="sdpa",
    )
    model = _noisy(_build(cfg, Qwen3MoeForCausalLM, seed), "norm", "mlp.gate")
    return model, tiny_tokenizer("plain")


def tiny_olmoe(seed: int = 0) -> tuple[Any, Any]:
    """OLMoE: q/k RMSNorms over all heads, 4 experts top-2."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    cfg = OlmoeConfig(
        **_SMALL,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        attn_implementation="sdpa",
    )
    return _noisy(_build(cfg, OlmoeForCausalLM, seed), "norm", "mlp.gate"), tiny_tokenizer("plain")


def tiny_olmo3(seed: int = 0) -> tuple[Any, Any]:
    """OLMo 3: OLMo 2's post-norms and q/k norms, a sliding-window layer (window 4)."""
    from transformers import Olmo3Config, Olmo3ForCausalLM

    cfg = Olmo3Config(
        **_SMALL,
        num_key_value_heads=2,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        attn_implementation="sdpa",
    )
    return _noisy(_build(cfg, Olmo3ForCausalLM, seed), "norm"), tiny_tokenizer("plain")


MORE_TYPES: dict[str, Callable[..., tuple[Any, Any]]] = {
    "qwen3_moe": tiny_qwen3_moe,
    "olmoe": tiny_olmoe,
    "olmo3": tiny_olmo3,
}
"""Further model types the issue-17 adapters serve (checked by one exactness test each)."""
