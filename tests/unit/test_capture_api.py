"""Capture API: selection, memory limit, errors, save/load, device_map, TransformerLens."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch

import circuitboard as cb
from circuitboard.capture import FORMAT_VERSION
from circuitboard.capture._memory import parse_bytes

from .tiny_models import tiny_bert, tiny_gpt2, tiny_llama, tiny_smollm

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def test_single_prompt_returns_capture_list_returns_list(llama):
    model, tok = llama
    cap = cb.capture(model, tok, PROMPT)
    assert isinstance(cap, cb.Capture)
    caps = cb.capture(model, tok, [PROMPT, "a"])
    assert isinstance(caps, list) and len(caps) == 2 and caps[1].prompt == "a"


def test_default_storage_is_float16_on_cpu(llama):
    model, tok = llama
    cap = cb.capture(model, tok, PROMPT)
    # queries / keys (and the patterns computed from them) keep the model's own dtype, so
    # patterns are exact; everything else is stored in `dtype`
    exact = ("ln_final.hook_scale", "attn.hook_q", "attn.hook_k", "attn.hook_pattern")
    for name in cap.names():
        t = cap[name]
        assert t.device.type == "cpu"
        kept = name.endswith(exact) or name.endswith("hook_scale") or "hook_rot_" in name
        assert t.dtype == (torch.float32 if kept else torch.float16), name
    assert cap.logits.dtype == torch.float32
    n, info = cap.n_tokens, cap.info
    assert cap["blocks.1.attn.hook_pattern"].shape == (info.n_heads, n, n)
    assert cap["blocks.1.attn.hook_z"].shape == (n, info.n_heads, info.d_head)
    assert cap["blocks.1.hook_resid_post"].shape == (n, info.d_model)
    assert cap["blocks.1.mlp.hook_post"].shape == (n, info.d_mlp)
    assert cap["ln_final.hook_scale"].shape == (n, 1)
    assert info.n_kv_heads == 2 and info.norm == "rmsnorm"


def test_selective_capture(llama):
    model, tok = llama
    cap = cb.capture(model, tok, PROMPT, layers=[-1], what=["attn.hook_pattern", "resid_post"])
    qk = ["blocks.1.attn.hook_q", "blocks.1.attn.hook_k"]  # patterns are computed from these
    assert cap.names() == [*qk, "blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post"]
    assert cap.logits is None
    assert cap.layers() == [1]
    cap = cb.capture(model, tok, PROMPT, layers=0, what="mlp_post")
    assert cap.names() == ["blocks.0.mlp.hook_post"]


def test_selective_pattern_off_keeps_sdpa(llama):
    model, tok = llama
    seen = []
    h = model.model.layers[0].self_attn.register_forward_hook(
        lambda m, a, o: seen.append(model.config._attn_implementation)
    )
    try:
        cb.capture(model, tok, PROMPT, what=["resid_post"])
        cb.capture(model, tok, PROMPT, what=["pattern"])
    finally:
        h.remove()
    # patterns come through circuitboard's registered attention function (sdpa computes the
    # outputs), no longer from a switch to eager attention
    assert seen == ["sdpa", "circuitboard"]
    assert model.config._attn_implementation == "sdpa"


def test_memory_estimate_refuses_with_advice(llama):
    model, tok = llama
    with pytest.raises(ValueError, match=r"above max_memory=.*layers=\[\.\.\.\].*what="):
        cb.capture(model, tok, [PROMPT] * 4, max_memory="10KB")
    cap = cb.capture(model, tok, PROMPT, what="pattern", layers=[0], max_memory="1MB")
    assert cap.names() == [
        "blocks.0.attn.hook_q",
        "blocks.0.attn.hook_k",
        "blocks.0.attn.hook_pattern",
    ]
    assert parse_bytes("1.5GiB") == 1.5 * 2**30 and parse_bytes(None) is None
    with pytest.raises(ValueError, match="is not a size"):
        cb.capture(model, tok, PROMPT, max_memory="lots")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layers": [5]}, r"layers= got 5; the model has 2 layers"),
        ({"layers": ["a"]}, r"layers= got 'a'"),
        ({"what": ["attention_pattern"]}, r"what= got 'attention_pattern'; expected some of"),
        ({"batch_size": 0}, r"batch_size must be a positive int"),
        ({"max_new_tokens": -1}, r"max_new_tokens must be an int >= 0"),
    ],
)
def test_argument_errors(llama, kwargs, match):
    model, tok = llama
    with pytest.raises(ValueError, match=match):
        cb.capture(model, tok, PROMPT, **kwargs)


def test_prompt_errors(llama):
    model, tok = llama
    with pytest.raises(ValueError, match=r"prompts\[1\] must be a non-empty string"):
        cb.capture(model, tok, ["a", ""])
    with pytest.raises(ValueError, match="empty list"):
        cb.capture(model, tok, [])
    with pytest.raises(ValueError, match="string or a list of strings"):
        cb.capture(model, tok, 3)


def test_unknown_architecture_lists_supported_and_how_to_add():
    from transformers import OPTConfig, OPTForCausalLM

    model = OPTForCausalLM(
        OPTConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=1,
            ffn_dim=32,
            num_attention_heads=2,
            word_embed_proj_dim=16,
            max_position_embeddings=32,
        )
    )
    with pytest.raises(
        ValueError,
        match=r"No circuitboard adapter for model_type 'opt'.*"
        r"Supported: .*gpt2.*llama.*register",
    ):
        cb.capture(model, None, "a")


def test_base_model_without_head_is_explained(llama):
    model, tok = llama
    with pytest.raises(ValueError, match="AutoModelForCausalLM"):
        cb.capture(model.model, tok, "a")


def test_bert_generation_refused():
    model, tok = tiny_bert()
    with pytest.raises(ValueError, match="needs a causal language model"):
        cb.capture(model, tok, "a b", max_new_tokens=2)


def test_register_adapter_for_new_model_type():
    import dataclasses

    from transformers import Qwen3Config, Qwen3ForCausalLM

    from circuitboard.capture.adapters import _REGISTRY, llama, register

    cfg = Qwen3Config(
        vocab_size=384,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
    )
    model = Qwen3ForCausalLM(cfg).eval()
    cfg.model_type = "my_qwen"  # pretend it is unknown
    _, tok = tiny_llama()
    # without an adapter the proven fallback serves it (with a warning naming the layout)
    with pytest.warns(cb.CircuitboardWarning, match="no adapter for model_type 'my_qwen'"):
        cb.capture(model, tok, "a")
    register(dataclasses.replace(llama.ADAPTER, name="my_qwen", model_types=("my_qwen",)))
    try:
        cap = cb.capture(model, tok, "a b", dtype=torch.float32)
        with torch.no_grad():
            ref = model(cap.token_ids[None]).logits[0]
        torch.testing.assert_close(cap.logits, ref)
    finally:
        _REGISTRY.pop("my_qwen")


def test_progress_bar(llama, capsys):
    model, tok = llama
    cb.capture(model, tok, ["a b"] * 3, progress=True, what="logits")
    assert "circuitboard capture" in capsys.readouterr().err


def test_save_load_roundtrip(llama, tmp_path):
    model, tok = llama
    cap = cb.capture(model, tok, PROMPT, max_new_tokens=2)
    path = tmp_path / "cap.safetensors"
    cap.save(path, weights="all")
    back = cb.load_capture(path)
    assert back.tokens == cap.tokens and back.prompt == cap.prompt
    assert back.names() == cap.names() and back.info == cap.info
    assert back.n_prompt_tokens == cap.n_prompt_tokens
    torch.testing.assert_close(back.token_ids, cap.token_ids)
    torch.testing.assert_close(back.logits, cap.logits)
    for k in cap:
        assert torch.equal(back[k], cap[k]), k
    for k in cap.weights:
        torch.testing.assert_close(back.weights[k], cap.weights[k].detach())
    torch.testing.assert_close(back.per_head_writes(1), cap.per_head_writes(1))
    cap.save(tmp_path / "small.safetensors", weights=False)
    assert cb.load_capture(tmp_path / "small.safetensors").weights == {}


def test_load_rejects_other_versions_and_files(tmp_path):
    from safetensors.torch import save_file

    cap = cb.Capture(["a"], torch.tensor([1]), {"hook_embed": torch.zeros(1, 2)})
    path = tmp_path / "future.safetensors"
    cap.save(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["circuitboard"])
        data = {k: f.get_tensor(k) for k in f.keys()}
    meta["format_version"] = FORMAT_VERSION + 1
    save_file(data, str(path), metadata={"circuitboard": json.dumps(meta)})
    with pytest.raises(ValueError, match="written by a newer circuitboard: upgrade"):
        cb.load_capture(path)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a circuitboard capture"):
        cb.load_capture(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a safetensors file"):
        cb.load_capture(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="cap.save"):
        cb.load_capture(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("offload", [False, True])
def test_device_map(tmp_path, offload):
    """device_map="auto" works; with a layer offloaded to disk (meta between forwards) too."""
    from transformers import AutoModelForCausalLM

    model, tok = tiny_gpt2()
    model.save_pretrained(tmp_path)
    if offload:
        dm = {
            n: "cpu"
            for n in (
                "transformer.wte",
                "transformer.wpe",
                "transformer.drop",
                "transformer.h.0",
                "transformer.ln_f",
                "lm_head",
            )
        }
        dm["transformer.h.1"] = "disk"
        loaded = AutoModelForCausalLM.from_pretrained(
            tmp_path, device_map=dm, offload_folder=tmp_path / "offload"
        )
        assert loaded.transformer.h[1].attn.c_proj.weight.is_meta
    else:
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="auto")
    a = cb.capture(loaded, tok, PROMPT, dtype=torch.float32)
    b = cb.capture(model, tok, PROMPT, dtype=torch.float32)
    torch.testing.assert_close(a.logits, b.logits)
    for k in b:
        torch.testing.assert_close(a[k], b[k])
    for k in b.weights:
        torch.testing.assert_close(a.weights[k], b.weights[k])


def test_cb_capture_is_callable_after_submodule_import(llama):
    import circuitboard.capture.adapters  # noqa: F401  (sets circuitboard.capture = package)

    model, tok = llama
    assert isinstance(cb.capture(model, tok, "a", what="logits"), cb.Capture)


def test_import_widgets_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, circuitboard.widgets; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    """A TransformerLens 4 TransformerBridge around a tiny SmolLM2-like model (offline)."""
    pytest.importorskip("transformer_lens")
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    model, tok = tiny_smollm()
    # TransformerLens re-creates the tokenizer from its name_or_path: give it a local folder.
    folder = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        br = TransformerBridge.boot_transformers("tiny-smollm", hf_model=model, tokenizer=tok)
    return br, model, tok


def test_transformer_lens_bridge_equals_native_capture(bridge):
    br, model, tok = bridge
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    logits, cache = br.run_with_cache(ids)
    tl = cb.from_transformer_lens(cache, br, ids, logits=logits, dtype=torch.float32)
    ours = cb.capture(model, tok, PROMPT, dtype=torch.float32)
    assert tl.tokens == ours.tokens
    # how the native capture ran its attention is provenance, not a model property
    assert tl.info == dataclasses.replace(ours.info, attn_implementation=None, attention_path=None)
    # TransformerLens' hook_q / hook_k are taken before rotary embeddings: compare the rest
    native = [k for k in ours.names() if not k.endswith(("attn.hook_q", "attn.hook_k"))]
    assert set(native) <= set(tl.names())
    for k in native:
        torch.testing.assert_close(tl[k], ours[k], atol=1e-5, rtol=1e-5, msg=k)
    torch.testing.assert_close(tl.logits, ours.logits, atol=1e-5, rtol=1e-5)
    assert tl.weights.keys() == ours.weights.keys()
    # without explicit logits, the cache's unembedding output is used
    tl2 = cb.from_transformer_lens(cache, br, ids[0])
    torch.testing.assert_close(tl2.logits, ours.logits, atol=1e-5, rtol=1e-5)
    assert tl2["blocks.0.attn.hook_pattern"].dtype == torch.float16


def test_transformer_lens_errors(bridge):
    br, model, tok = bridge
    with pytest.raises(ValueError, match="needs the TransformerLens model"):
        cb.from_transformer_lens({}, model, [1, 2])
    with pytest.raises(ValueError, match="none of the hook names"):
        cb.from_transformer_lens({"foo": torch.zeros(1)}, br, [1, 2])
