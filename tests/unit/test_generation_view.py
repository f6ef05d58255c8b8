"""GenerationView on a tiny model: rows, per-step fetches (exact numbers), forks added live."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.widgets import decode
from tests.unit.tiny_models import tiny_llama

PROMPT = "When Mary and John went to the store"


@pytest.fixture(scope="module")
def gens():
    model, tok = tiny_llama()
    gen = cb.generate(model, tok, PROMPT, max_new_tokens=5, stop_at_eos=False)
    v = torch.zeros(model.config.hidden_size)
    v[:4] = 30.0
    fork = gen.fork(2, steer=v, layer=1)
    return gen, fork


def test_rows_and_step_fetch(gens):
    gen, fork = gens
    view = cb.generation_view(gen, fork, k=4)
    assert isinstance(view, cb.GenerationView) and len(view._rows) == 2
    base, row = view._rows
    assert base["tokens"] == gen.tokens and base["_kl"] is None
    assert row["fork_step"] == 2 and row["label"].startswith("fork @2 · L1 ×1 all")
    assert row["diff"] == [a != b for a, b in zip(fork.token_ids, gen.token_ids, strict=True)]
    assert not any(row["diff"][:2])
    kl = decode(row["_kl"])
    assert kl.shape == (5,) and np.allclose(kl, gen.kl(fork).numpy(), atol=1e-6)
    top = decode(base["_top_prob"]).reshape(5, 4)
    assert np.allclose(top[:, 0], [gen.top(1, s)[0]["prob"] for s in range(5)], atol=1e-6)

    L, H = gen.capture.info.n_layers, gen.capture.info.n_heads
    for r, g in ((0, gen), (1, fork)):
        for s in (0, 3):
            fields, buffers = view.answer({"kind": "fetch-step", "row": r, "step": s})
            q = g.position(s)
            assert fields["query"] == q and len(fields["lens_tokens"]) == L
            att = fields["attention"]
            w = decode({**att, "data": buffers[att["data"]]})
            assert w.shape == (L, H, q + 1)
            assert np.allclose(w.sum(-1), 1.0, atol=4e-2)  # uint8, error <= 1/510 per key
            want = g.capture["blocks.1.attn.hook_pattern"][:, q, : q + 1].numpy()
            assert np.abs(w[1] - want).max() <= 1 / 255
            dla = decode({**fields["dla"], "data": buffers[fields["dla"]["data"]]})
            assert abs(float(dla.astype(np.float64).sum()) - fields["dla_model"]) < 1e-4
            assert ("steer" in fields["dla_labels"]) == (r == 1)
            chosen = decode(
                {**fields["lens_chosen"], "data": buffers[fields["lens_chosen"]["data"]]}
            )
            p_model = float(g.logits(s).softmax(-1)[g.token_ids[s]])
            assert abs(float(chosen[-1]) - p_model) < 1e-5  # the lens' last layer is the model
    with pytest.raises(IndexError, match="step=9 is out of range"):
        view.answer({"kind": "fetch-step", "row": 0, "step": 9})


def test_forks_added_live_and_bad_input(gens):
    gen, fork = gens
    view = cb.generation_view(gen)
    new = view.fork(1, text=" the")
    assert len(view._rows) == 2 and view.generations[1] is new
    assert view._rows[1]["forced"] == list(new.forced)
    view.add(fork)
    assert len(view._rows) == 3
    assert len(view.export_requests(10**9)) == sum(g.n_steps for g in view.generations)
    assert view.export_notes(10**9) == []
    total = sum(g.n_steps for g in view.generations)
    assert len(view.export_requests(3_000)) < total and view.export_notes(3_000)
    with pytest.raises(TypeError, match="add\\(\\) takes Generations"):
        view.add("not a generation")
    model, tok = tiny_llama()
    other = cb.generate(model, tok, "Another prompt", max_new_tokens=2)
    with pytest.raises(ValueError, match="same prompt as the base"):
        view.add(other)
    with pytest.raises(TypeError, match="needs a Generation"):
        cb.GenerationView(gen.capture)
    with pytest.raises(ValueError, match="k must be a positive int"):
        cb.generation_view(gen, k=0)
