"""A 1.5B-parameter model at Qwen2.5-1.5B's shapes (random bf16 weights, built offline from the
config): capture at 1,024 tokens, head patching and EAP on a pair, and a generation, each far
inside 16 GiB, with capture's up-front memory estimate within 25% of what it really adds.

The largest test of the suite (minutes): marked ``big`` so it can be run, or left out, alone
(``pytest -m big``)."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import circuitboard as cb
from circuitboard.capture import _memory

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.bench_big_model import PeakRSS  # noqa: E402

pytestmark = [pytest.mark.big, pytest.mark.slow]
GIB = 1024**3
CLEAN = "When Mary and John went to the store"
CORRUPTED = "When John and Mary went to the store"


@pytest.fixture(scope="module")
def big() -> Any:
    from circuitboard.testing import random_model, tiny_tokenizer

    model = random_model("qwen2.5-1.5b")
    yield model, tiny_tokenizer("plain")
    del model
    gc.collect()


def _contrast(model: Any, tok: Any) -> dict[str, int]:
    with torch.no_grad():
        a, b = (
            model(tok(s, return_tensors="pt").input_ids).logits[0, -1] for s in (CLEAN, CORRUPTED)
        )
    diff = (a - b).float()[: len(tok)]
    return {"answer": int(diff.argmax()), "wrong": int(diff.argmin())}


def test_a_1_5b_model_in_bf16_captures_patches_and_generates_within_16_gib(big: Any) -> None:
    model, tok = big
    assert sum(p.numel() for p in model.parameters()) > 1.5e9
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    words = "the cat sat on a mat and then it ran to the door of the house ".split()
    ids = tok(" ".join(words * 80))["input_ids"][:1024]
    prompt = tok.decode(ids)
    with PeakRSS() as mem:
        cap = cb.capture(model, tok, prompt, what="all", dtype=torch.bfloat16, max_memory=None)
    info = cap.info
    kinds = _memory.parse_what("all")
    estimate = sum(
        _memory.estimate(
            info, [cap.n_tokens], info.n_layers, kinds, torch.bfloat16, qk_dtype=torch.bfloat16
        ).values()
    ) + _memory.forward_bytes(info, cap.n_tokens, torch.bfloat16)
    assert cap.n_tokens >= 1000
    assert mem.peak < 16 * GIB
    assert abs(estimate - mem.added) <= 0.25 * mem.added, (estimate / GIB, mem.added / GIB)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}, "no silent upcast"
    del cap
    kw = _contrast(model, tok)
    with PeakRSS() as mem:
        heads = cb.patch(model, tok, CLEAN, CORRUPTED, site="heads", layers=[0, 27], **kw)
        circuit = cb.circuit(model, tok, CLEAN, CORRUPTED, **kw)
        gen = cb.generate(model, tok, CLEAN, max_new_tokens=32, stop_at_eos=False)
    assert mem.peak < 16 * GIB
    assert heads.values.shape == (2, 12)
    assert circuit.evaluate(circuit.n_edges) == pytest.approx(1.0, abs=1e-4)
    assert len(gen.tokens) == 32 and gen.capture.n_tokens == gen.capture.n_prompt_tokens + 32
