"""Issue 24 item 10: a saved capture stores what analyses read, tied weights once, weights
de-quantized from GGUF blocks as those blocks (bit for bit), and its vocabulary's texts."""

from __future__ import annotations

import json

import pytest
import torch

import circuitboard as cb
from circuitboard.capture._packing import pack, unpack
from circuitboard.testing import tiny_model

PROMPT = "When Mary and John went to the store, John gave"


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _q4_1(shape: tuple[int, ...], axis: int, seed: int = 0) -> torch.Tensor:
    """float32 values as a Q4_1 loader writes them: q * d + m per block of 32 along ``axis``."""
    g = torch.Generator().manual_seed(seed)
    moved = [*shape[:axis], *shape[axis + 1 :], shape[axis]]
    q = torch.randint(0, 16, moved, generator=g).float().reshape(-1, 32)
    q[:, 0], q[:, 1] = 0, 15  # a Q4_1 block spans its own min and max
    d = (torch.rand(len(q), generator=g) * 0.1).half().float()[:, None]
    m = (-torch.rand(len(q), generator=g)).half().float()[:, None]
    return (q * d + m).reshape(moved).movedim(-1, axis).contiguous()


def test_block_packing_is_lossless_or_not_used():
    for shape, axis in (((4, 64, 8), 1), ((96, 5), 0), ((3, 7, 64), 2)):
        w = _q4_1(shape, axis)
        parts, meta = pack(w)
        assert meta["scheme"] == "q4_1" and meta["axis"] == axis
        assert torch.equal(_bits(unpack(parts, meta)), _bits(w))
    g = torch.Generator().manual_seed(1)
    q8 = torch.randint(-127, 128, (10, 64), generator=g).float().reshape(-1, 32)
    q8[:, 0] = 127  # a Q8_0 block's largest magnitude is 127 steps
    d8 = (torch.rand(len(q8), generator=g) * 0.01).half().float()[:, None]
    w8 = (q8 * d8).reshape(10, 64).T.contiguous()  # blocks run down axis 0
    parts, meta = pack(w8)
    assert meta["scheme"] == "q8_0" and torch.equal(_bits(unpack(parts, meta)), _bits(w8))
    assert pack(torch.randn(64, 64)) is None  # ordinary float weights stay as they are
    with pytest.raises(ValueError, match="packed part 'q' should be"):
        unpack({"q": parts["q"][:1], "d": parts["d"]}, meta)


@pytest.fixture(scope="module")
def quantized_llama():
    """The tiny Llama with tied embeddings and every matrix on a Q4_1 grid, as GGUF gives."""
    model, tok = tiny_model("llama")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and p.shape[-1] % 32 == 0:
                p.copy_(_q4_1(tuple(p.shape), 1, seed=len(name)))
        model.lm_head.weight = model.model.embed_tokens.weight
    return model, tok


def test_saved_capture_is_small_exact_and_names_tokens(quantized_llama, tmp_path):
    model, tok = quantized_llama
    cap = cb.capture(model, tok, PROMPT, dtype=torch.float32)
    sizes = {}
    for w in ("all", "needed", False):
        cap.save(tmp_path / f"{w}.safetensors", weights=w)
        sizes[w] = (tmp_path / f"{w}.safetensors").stat().st_size
    raw = sum(v.numel() * v.element_size() for v in cap.weights.values())
    assert sizes[False] < sizes["needed"] <= sizes["all"] < sizes[False] + raw / 3
    loaded = cb.load_capture(tmp_path / "needed.safetensors")
    assert "blocks.0.attn.W_V" not in loaded.weights  # no analysis of a capture reads it
    for k, v in loaded.weights.items():
        assert torch.equal(_bits(v.float()), _bits(cap.weights[k].float())), k
    assert torch.equal(loaded.weights["embed.W_E"], cap.weights["embed.W_E"])  # tied: once
    every = cb.load_capture(tmp_path / "all.safetensors")
    assert set(every.weights) == set(cap.weights)
    # Analyses on the loaded capture: the same numbers, tokens named as the tokenizer did.
    here = cb.direct_logit_attribution(cap, " Mary", baseline=" John")
    there = cb.direct_logit_attribution(loaded, " Mary", baseline=" John")
    assert torch.equal(here.values, there.values) and there.model_value == here.model_value
    assert there.description == here.description == "logit ' Mary' − ' John' at position 15"
    by_id = cb.direct_logit_attribution(loaded, here.target, baseline=here.baseline)
    assert by_id.target_text == " Mary"  # not '#295'


def test_save_refuses_an_unknown_weights_choice(quantized_llama, tmp_path):
    model, tok = quantized_llama
    cap = cb.capture(model, tok, "a b", what=["logits"])
    with pytest.raises(ValueError, match="weights='some'; use 'needed'"):
        cap.save(tmp_path / "x.safetensors", weights="some")


def test_a_tampered_packing_fails_closed(quantized_llama, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    model, tok = quantized_llama
    path = tmp_path / "cap.safetensors"
    cb.capture(model, tok, "a b").save(path)
    with safe_open(str(path), framework="pt") as f:
        data = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["circuitboard"])
    name = next(iter(meta["packed"]))
    meta["packed"][name]["axis"] = 7
    save_file(data, str(path), metadata={"circuitboard": json.dumps(meta)})
    with pytest.raises(ValueError, match="cannot be read: ValueError: packing axis 7"):
        cb.load_capture(path)
