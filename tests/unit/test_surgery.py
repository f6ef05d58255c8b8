"""cb.surgery: identity edits change nothing; the model comes back exactly, also after errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.intervene._surgery import surgery

from .tiny_models import tiny_gemma2, tiny_gpt2, tiny_llama


def _state(model):
    """Everything surgery may touch: module tree (ids and names), parameters (ids and bytes),
    layer indices, the config's layer count and layer types."""
    return (
        [(n, id(m), type(m).__name__) for n, m in model.named_modules()],
        [(n, id(p), p.detach().clone()) for n, p in model.named_parameters()],
        [(n, m.layer_idx) for n, m in model.named_modules() if hasattr(m, "layer_idx")],
        model.config.num_hidden_layers,
        list(getattr(model.config, "layer_types", None) or []),
    )


def _same(a, b) -> None:
    assert a[0] == b[0]
    assert [(n, i) for n, i, _ in a[1]] == [(n, i) for n, i, _ in b[1]]
    assert all(torch.equal(x, y) for (_, _, x), (_, _, y) in zip(a[1], b[1], strict=True))
    assert a[2:] == b[2:]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2, tiny_gemma2])
def test_identity_edits_change_nothing(build) -> None:
    model, tok = build()
    ids = torch.tensor([tok("when the store opened the")["input_ids"]])
    before = _logits(model, ids)
    n = model.config.num_hidden_layers
    with surgery(model) as s:
        s.delete_layers([])
        assert torch.equal(_logits(model, ids), before)
        s.permute_layers(list(range(n)))
        assert torch.equal(_logits(model, ids), before)
    assert torch.equal(_logits(model, ids), before)


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2, tiny_gemma2])
def test_restored_exactly_after_edits_and_after_an_exception(build) -> None:
    model, tok = build()
    ids = torch.tensor([tok("when the store opened the")["input_ids"]])
    before, logits = _state(model), _logits(model, ids)
    twin = copy.deepcopy(get_block(model, 0))
    twin_idx = [m.layer_idx for m in twin.modules() if hasattr(m, "layer_idx")]
    with pytest.raises(RuntimeError, match="boom"):
        with surgery(model) as s:
            s.permute_layers([1, 0]).replace_layer(0, twin).delete_layers([1])
            assert s.layer_map == [None]
            assert model.config.num_hidden_layers == 1
            _logits(model, ids)
            raise RuntimeError("boom")
    _same(_state(model), before)
    assert torch.equal(_logits(model, ids), logits)
    assert [m.layer_idx for m in twin.modules() if hasattr(m, "layer_idx")] == twin_idx


def get_block(model, i):
    from circuitboard.capture.adapters import get_adapter

    return get_adapter(model).block(model, i)


def test_permuted_model_equals_a_hand_built_reordering() -> None:
    model, tok = tiny_llama()
    ids = torch.tensor([tok("when the store opened the")["input_ids"]])
    ref = copy.deepcopy(model)
    layers = ref.model.layers
    layers[0], layers[1] = layers[1], layers[0]
    for i, blk in enumerate(layers):
        blk.self_attn.layer_idx = i
    with surgery(model) as s:
        s.permute_layers([1, 0])
        assert torch.equal(_logits(model, ids), _logits(ref, ids))


def test_capture_and_cached_generation_inside_surgery_name_the_edited_layers() -> None:
    model, tok = tiny_llama()
    prompt = "when the store opened the"
    out = cb.capture(model, tok, prompt)
    with surgery(model) as s:
        s.delete_layers([0])
        cap = cb.capture(model, tok, prompt)
        assert cap.info.n_layers == 1
        # blocks.0 inside is the original layer 1; its input is still the embedding.
        assert torch.allclose(cap["blocks.0.hook_resid_pre"], out["blocks.0.hook_resid_pre"])
        ids = torch.tensor([tok(prompt)["input_ids"]])
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=3, do_sample=False, use_cache=True)
            nocache = model.generate(ids, max_new_tokens=3, do_sample=False, use_cache=False)
        assert torch.equal(gen, nocache)
    assert cb.capture(model, tok, prompt).info.n_layers == 2


def test_bad_surgery_inputs_name_the_fix() -> None:
    model, _ = tiny_llama()
    with surgery(model) as s:
        with pytest.raises(ValueError, match=r"has 2 layers now.*\[-2, 1\]"):
            s.delete_layers([5])
        with pytest.raises(ValueError, match="permutation of range\\(2\\).*delete_layers"):
            s.permute_layers([0, 0])
        with pytest.raises(ValueError, match="keep at least one"):
            s.delete_layers([0, 1])
        with pytest.raises(TypeError, match="torch.nn.Module"):
            s.replace_layer(0, lambda x: x)
    with pytest.raises(RuntimeError, match="after the `with cb.surgery"):
        s.delete_layers([0])
    with pytest.raises(ValueError, match="Hugging Face"):
        with surgery(torch.nn.Linear(2, 2)):
            pass


def test_patching_inside_surgery_equals_patching_a_rebuilt_model() -> None:
    """cb.patch sees the edited model: its heatmap equals the one of a model built with the
    layers already reordered (layer i = the i-th block that runs)."""
    from tests.unit.test_patch import CLEAN, CORRUPT, _model, _tokens_with_range

    model, tok = _model("llama")
    ref = copy.deepcopy(model)
    layers = ref.model.layers
    layers[0], layers[1] = layers[1], layers[0]
    for i, blk in enumerate(layers):
        blk.self_attn.layer_idx = i
    answer, wrong = _tokens_with_range(ref, tok)
    kw = dict(answer=answer, wrong=wrong, site="resid_pre")
    want = cb.patch(ref, tok, CLEAN, CORRUPT, **kw)
    with surgery(model) as s:
        s.permute_layers([1, 0])
        got = cb.patch(model, tok, CLEAN, CORRUPT, **kw)
    np.testing.assert_allclose(got.values, want.values, atol=1e-6)
    assert got.clean_value == pytest.approx(want.clean_value, abs=1e-6)
