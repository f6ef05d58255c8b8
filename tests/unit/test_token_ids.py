"""Issue 24 item 8: token ids are a prompt wherever a prompt is taken; texts come from the
tokenizer when there is one, else read "#<id>"; a string without a tokenizer says the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.testing import tiny_model

CLEAN = "When Mary and John went to the store, John gave"
CORRUPT = "When Mary and John went to the store, Mary gave"


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def _encode(llama, text):
    model, tok = llama
    return cb.capture(model, tok, text, what=["logits"]).token_ids.tolist()


def test_ids_in_ids_out_same_capture_as_the_string(llama):
    model, tok = llama
    text = cb.capture(model, tok, CLEAN, dtype=torch.float32)
    ids = text.token_ids.tolist()
    for given in (ids, torch.tensor(ids), np.array(ids)):
        cap = cb.capture(model, tok, given, dtype=torch.float32)
        assert cap.token_ids.tolist() == ids
        assert cap.tokens == text.tokens  # decoded by the tokenizer
        assert torch.equal(cap.logits, text.logits)
        assert all(torch.equal(cap.tensors[k], text.tensors[k]) for k in text.tensors)
    rows = cb.capture(model, tok, torch.tensor([ids, ids]), what=["logits"])
    assert [r.token_ids.tolist() for r in rows] == [ids, ids]


def test_ids_without_a_tokenizer_show_ids(llama):
    model, tok = llama
    ids = _encode(llama, CLEAN)
    cap = cb.capture(model, None, ids, what=["logits"])
    assert cap.tokens == [f"#{i}" for i in ids]
    assert cap.prompt == " ".join(f"#{i}" for i in ids)
    gen = cb.generate(model, None, ids, max_new_tokens=2)
    ref = cb.generate(model, tok, CLEAN, max_new_tokens=2)
    assert gen.capture.token_ids.tolist() == ref.capture.token_ids.tolist()
    assert gen.tokens == [f"#{i}" for i in ref.capture.token_ids[len(ids) :].tolist()]


def test_patch_and_circuit_take_ids_and_match_the_strings(llama):
    model, tok = llama
    a, b = _encode(llama, CLEAN), _encode(llama, CORRUPT)
    mary = tok(" Mary", add_special_tokens=False)["input_ids"][0]
    john = tok(" John", add_special_tokens=False)["input_ids"][0]
    text = cb.patch(model, tok, CLEAN, CORRUPT, answer=" Mary", wrong=" John", site="heads")
    ids = cb.patch(model, None, a, torch.tensor(b), answer=mary, wrong=john, site="heads")
    assert np.array_equal(text.values, ids.values)
    assert ids.tokens["clean"] == [f"#{i}" for i in a]
    c_text = cb.circuit(model, tok, [CLEAN], [CORRUPT], answer=" Mary", wrong=" John")
    c_ids = cb.circuit(model, None, [a], [b], answer=mary, wrong=john)
    assert np.array_equal(c_text.scores, c_ids.scores, equal_nan=True)


def test_compare_and_top_activations_take_ids(llama):
    model, tok = llama
    a, b = _encode(llama, CLEAN), _encode(llama, CORRUPT)
    by_text = cb.compare(model, tok, {"x": [CLEAN, CORRUPT], "y": [CORRUPT, CLEAN]})
    by_ids = cb.compare(model, None, {"x": [a, b], "y": torch.tensor([b, a])})
    for cat in ("x", "y"):
        for stat, rs in by_text.stats[cat].items():
            assert np.array_equal(rs.mean, by_ids.stats[cat][stat].mean), stat
    top = cb.top_activations(model, None, [a, b], [(0, 3)], k=2, progress=False)
    ref = cb.top_activations(model, tok, [CLEAN, CORRUPT], [(0, 3)], k=2, progress=False)
    assert np.array_equal(top.values, ref.values, equal_nan=True)
    assert all(v == f"#{i}" for i, v in top.vocab.items())


def test_a_string_without_a_tokenizer_names_the_fix(llama):
    model, _ = llama
    with pytest.raises(ValueError, match="tokenizer is None: pass the model's tokenizer, or token"):
        cb.capture(model, None, CLEAN)
    with pytest.raises(ValueError, match="clean prompt 0 is a string .* tokenizer is None"):
        cb.patch(model, None, CLEAN, CORRUPT, answer=3)
    with pytest.raises(ValueError, match="answer=' Mary' is a string but tokenizer is None"):
        cb.patch(model, None, [1, 2, 3], [1, 2, 4], answer=" Mary")


def test_tensor_errors_speak_of_token_ids_not_images(llama):
    model, tok = llama
    with pytest.raises(ValueError, match=r"float32 array of shape \(3,\); token ids are integers"):
        cb.capture(model, tok, torch.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(1, 2, 3\); token ids are one prompt"):
        cb.capture(model, tok, torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="token id 100000; the model's vocabulary has 384"):
        cb.capture(model, tok, [1, 100000])
    with pytest.raises(ValueError, match="float32 array of shape"):
        cb.patch(model, tok, torch.zeros(4), torch.zeros(4), answer=" Mary")
    with pytest.raises(TypeError, match=r"token ids \(a 2-D integer tensor"):
        cb.compare(model, tok, {"x": torch.zeros(2, 3), "y": [CLEAN]})
