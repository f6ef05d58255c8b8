"""Models dispatched by accelerate with layers offloaded to disk give the same captures,
attributions, patching, circuits and generations as the same model in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import circuitboard as cb
from tests.unit.tiny_models import tiny_llama

pytest.importorskip("accelerate")

CLEAN = "When Mary and John went to the store"
CORRUPTED = "When John and Mary went to the store"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Any]:
    """(in memory, offloaded, tokenizer): layer 1, the final norm and the unembedding live on
    disk and are loaded for each forward."""
    from transformers import AutoModelForCausalLM

    model, tok = tiny_llama()
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone() * 300.0)  # resolvable gaps
    folder = tmp_path_factory.mktemp("offload")
    model.save_pretrained(folder / "weights")
    device_map = {
        "model.embed_tokens": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.norm": "disk",
        "model.rotary_emb": "cpu",
        "lm_head": "disk",
    }
    offloaded = AutoModelForCausalLM.from_pretrained(
        folder / "weights",
        device_map=device_map,
        offload_folder=str(folder / "disk"),
        dtype=torch.float32,
    )
    reloaded = AutoModelForCausalLM.from_pretrained(folder / "weights", dtype=torch.float32)
    on_meta = [n for n, p in offloaded.named_parameters() if p.device.type == "meta"]
    assert any("layers.1" in n for n in on_meta) and any("lm_head" in n for n in on_meta)
    return reloaded.eval(), offloaded.eval(), tok


def _contrast(model: Any, tok: Any) -> dict[str, int]:
    ids = [tok(t, return_tensors="pt").input_ids for t in (CLEAN, CORRUPTED)]
    with torch.no_grad():
        diff = model(ids[0]).logits[0, -1] - model(ids[1]).logits[0, -1]
    return {"answer": int(diff.argmax()), "wrong": int(diff.argmin())}


def test_capture_and_dla_match(pair: Any) -> None:
    memory, offloaded, tok = pair
    a = cb.capture(memory, tok, CLEAN, dtype=torch.float32)
    b = cb.capture(offloaded, tok, CLEAN, dtype=torch.float32)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert set(a.names()) == set(b.names())
    for name in a.names():
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-5), name
    for name, w in a.weights.items():  # read through accelerate, never the meta placeholders
        assert b.weights[name].device.type == "cpu", name
        assert torch.equal(w, b.weights[name]), name
    ids = a.token_ids.tolist()
    da = cb.direct_logit_attribution(a, ids[1], ids[3])
    db = cb.direct_logit_attribution(b, ids[1], ids[3])
    assert np.allclose(da.values.numpy(), db.values.numpy(), atol=1e-5)
    assert abs(float(db.values.double().sum()) - db.model_value) <= 1e-4 * abs(db.model_value)


def test_patching_and_circuits_match(pair: Any) -> None:
    memory, offloaded, tok = pair
    kw = _contrast(memory, tok)
    for site in ("heads", "resid_pre"):
        a = cb.patch(memory, tok, CLEAN, CORRUPTED, site=site, **kw)
        b = cb.patch(offloaded, tok, CLEAN, CORRUPTED, site=site, **kw)
        assert np.allclose(a.values, b.values, atol=1e-4), site
    ca = cb.circuit(memory, tok, CLEAN, CORRUPTED, **kw)
    cb_ = cb.circuit(offloaded, tok, CLEAN, CORRUPTED, **kw)
    assert np.allclose(ca.scores, cb_.scores, atol=1e-4, equal_nan=True)


def test_generation_matches(pair: Any) -> None:
    memory, offloaded, tok = pair
    a = cb.generate(memory, tok, "When Mary", max_new_tokens=4, stop_at_eos=False)
    b = cb.generate(offloaded, tok, "When Mary", max_new_tokens=4, stop_at_eos=False)
    assert a.token_ids == b.token_ids
    assert torch.allclose(a.capture.logits, b.capture.logits, atol=1e-5)


def test_offloaded_weights_stay_on_disk(pair: Any, tmp_path: Path) -> None:
    """Reading weights for analyses must not leave the offloaded layers loaded in memory."""
    _, offloaded, tok = pair
    cb.capture(offloaded, tok, CLEAN, dtype=torch.float32)
    still = [n for n, p in offloaded.named_parameters() if p.device.type == "meta"]
    assert any("layers.1" in n for n in still)


def test_a_model_split_without_dispatch_is_refused_with_the_fix() -> None:
    """Parameters on two devices with nothing to move activations between them (here: one
    layer left on the meta device, as a failed manual split leaves it)."""
    model, tok = tiny_llama()
    model.model.layers[1].to_empty(device="meta")
    for call in (
        lambda: cb.capture(model, tok, CLEAN),
        lambda: cb.patch(model, tok, CLEAN, CORRUPTED, answer=" Mary", wrong=" John"),
    ):
        with pytest.raises(ValueError, match=r"sit on cpu and meta .*device_map='auto'"):
            call()
