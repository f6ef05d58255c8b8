"""The proven fallback for models without an adapter, and the table of supported architectures."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import circuitboard as cb
from circuitboard.analysis import direct_logit_attribution
from circuitboard.capture.adapters import _REGISTRY, get_adapter, supported_architectures

from .tiny_models import VOCAB, tiny_tokenizer

PROMPT = "When Mary and John went to the store, John gave a drink to"
SMALL = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def _model(model_type: str, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, **SMALL, **extra)
    return AutoModelForCausalLM.from_config(cfg).eval()


def _hooks(model):
    return [
        (n, list(m._forward_hooks), list(m._forward_pre_hooks)) for n, m in model.named_modules()
    ]


# starcoder2: LayerNorm with biases, GQA, c_fc/c_proj MLP; olmo: parameter-free LayerNorm whose
# epsilon lives in code; persimmon: fused query_key_value with per-head q/k LayerNorms.
ACCEPTED = {
    "starcoder2": ("self_attn.o_proj", "mlp.c_proj", "model.norm", "layernorm"),
    "olmo": ("self_attn.o_proj", "mlp.down_proj", "model.norm", "layernorm"),
    "persimmon": ("self_attn.dense", "mlp.dense_4h_to_h", "model.final_layernorm", "layernorm"),
}


@pytest.mark.parametrize("model_type", list(ACCEPTED))
def test_fallback_accepts_a_model_without_adapter(model_type):
    assert model_type not in _REGISTRY
    model = _model(model_type)
    tok = tiny_tokenizer("plain")
    with pytest.warns(cb.CircuitboardWarning, match="inferred this layout and proved it") as rec:
        cap = cb.capture(model, tok, PROMPT, dtype=torch.float32)
    message = str(rec[0].message)
    o_proj, down, norm, kind = ACCEPTED[model_type]
    for piece in (f"block_o_proj={o_proj!r}", f"block_mlp_down={down!r}",
                  f"final_norm={norm!r}", f"norm={kind!r}", "register(Adapter("):  # fmt: skip
        assert piece in message
    with torch.no_grad():
        ref = model(cap.token_ids[None]).logits[0]
    torch.testing.assert_close(cap.logits, ref, atol=1e-5, rtol=1e-5)
    info = cap.info
    assert info.architecture == f"inferred:{model_type}"
    for layer in range(info.n_layers):
        p = f"blocks.{layer}."
        assert cap[p + "attn.hook_pattern"].shape == (info.n_heads, cap.n_tokens, cap.n_tokens)
    attr = direct_logit_attribution(cap, 5, baseline=7)
    expected = float(cap.logits[-1, 5] - cap.logits[-1, 7])
    assert abs(attr.total - expected) <= 1e-5 * max(abs(expected), float(attr.values.abs().max()))
    # inferred once per model: a second capture does not warn again
    cb.capture(model, tok, "a b")


def test_pattern_of_the_fallback_equals_output_attentions():
    model = _model("starcoder2")
    tok = tiny_tokenizer("plain")
    with pytest.warns(cb.CircuitboardWarning):
        cap = cb.capture(model, tok, PROMPT, dtype=torch.float32)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(cap.token_ids[None], output_attentions=True)
    for layer, ref in enumerate(out.attentions):
        torch.testing.assert_close(cap[f"blocks.{layer}.attn.hook_pattern"], ref[0])


def test_printed_layout_registers_as_an_adapter():
    model = _model("olmo")
    tok = tiny_tokenizer("plain")
    with pytest.warns(cb.CircuitboardWarning) as rec:
        inferred = get_adapter(model)
    code = re.search(r"(from circuitboard.*\n\)\))", str(rec[0].message), re.S).group(1)
    try:
        exec(code, {})  # what a user pastes
        registered = _REGISTRY["olmo"]
        assert registered.name == "olmo" and registered.blocks == inferred.blocks
        fresh = _model("olmo")
        cap = cb.capture(fresh, tok, PROMPT, dtype=torch.float32)  # no warning now
        with torch.no_grad():
            torch.testing.assert_close(cap.logits, fresh(cap.token_ids[None]).logits[0])
        attr = direct_logit_attribution(cap, 5)
        assert abs(attr.total - attr.model_value) <= 1e-5 * max(1.0, abs(attr.model_value))
    finally:
        _REGISTRY.pop("olmo", None)


REFUSED = [
    # Cohere multiplies the logits by logit_scale after the unembedding.
    ("cohere", {}, r"the proof: the last residual through model\.norm and lm_head does not "
     r"reproduce the logits"),
    # Granite scales each sublayer's output before adding it (residual_multiplier).
    ("granite", {"residual_multiplier": 0.5}, r"the residual additions: block 0's output is not "
     r"its input plus the outputs of self_attn and mlp"),
    # OPT's blocks hold fc1 / fc2 directly: no MLP module whose output is the MLP's write.
    ("opt", {"ffn_dim": 48, "word_embed_proj_dim": 32}, r"the MLP: no child of the block is "
     r"named like an MLP / feed-forward module \(children: self_attn, activation_fn"),
]  # fmt: skip


@pytest.mark.parametrize(("model_type", "extra", "match"), REFUSED)
def test_fallback_refuses_a_layout_it_cannot_prove(model_type, extra, match):
    model = _model(model_type, **extra)
    before = _hooks(model)
    with pytest.raises(ValueError, match=f"No circuitboard adapter for model_type '{model_type}'"
                       f".*could not infer or prove its layout: {match}") as err:  # fmt: skip
        cb.capture(model, tiny_tokenizer("plain"), "a b c")
    assert "register(adapter)" in str(err.value)
    assert _hooks(model) == before
    assert model.config._attn_implementation == "sdpa"


def test_supported_architectures_lists_every_adapter():
    rows = supported_architectures()
    assert rows == cb.supported_architectures()
    names = {r["name"] for r in rows}
    assert {"gpt_neo", "gptj", "phi", "phi3", "stablelm", "olmo2", "moe", "qwen2_moe"} <= names
    types = {mt for r in rows for mt in r["model_types"]}
    assert {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "olmo3", "gemma3_text"} <= types
    for r in rows:
        assert set(r) == {"name", "model_types", "capture", "dla", "patching", "explanation",
                          "notes"}  # fmt: skip
        assert all(r[k] is True or isinstance(r[k], str) for k in ("dla", "patching"))
    bert = next(r for r in rows if r["name"] == "bert")
    assert bert["dla"].startswith("no:")


def _table() -> str:
    def cell(v):
        return "yes" if v is True else v

    lines = [
        "| adapter | model_type | capture | DLA | patching | QK/OV explanation | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in supported_architectures():
        vals = [r["name"], ", ".join(r["model_types"])] + [
            cell(r[k]) for k in ("capture", "dla", "patching", "explanation")
        ]
        lines.append("| " + " | ".join([*vals, r["notes"]]) + " |")
    return "\n".join(lines)


def test_readme_table_is_supported_architectures():
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    assert _table() in readme, "README's architecture table is stale; paste _table() output"
