"""Issue 24 item 6: heavy calls on one thread when the machine is busy, and a progress bar
for Circuit.edges_for. (The thread policy has a benchmark, benchmarks/bench_threads.py, not a
timed test.)"""

from __future__ import annotations

import pytest
import torch

import circuitboard as cb
from circuitboard.testing import tiny_model

CLEAN = "When Mary and John went to the store, John gave"
CORRUPT = "When Mary and John went to the store, Mary gave"


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def test_edges_for_shows_its_rounds(llama, capsys):
    """A progress bar over the bisection; the count is the same with or without it."""
    model, tok = llama
    c = cb.circuit(model, tok, CLEAN, CORRUPT, answer=" Mary", wrong=" John")
    quiet = c.edges_for(0.8, progress=False)
    assert "circuitboard edges_for" not in capsys.readouterr().err
    c.evaluations.clear()
    assert c.edges_for(0.8, progress=True) == quiet
    assert "circuitboard edges_for" in capsys.readouterr().err


def test_heavy_calls_run_on_one_thread_when_busy(llama, monkeypatch):
    import circuitboard._threads as threads

    model, tok = llama
    seen = []
    metric = lambda logits: (seen.append(torch.get_num_threads()), logits[..., 3])[1]  # noqa: E731
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(threads, "busy", lambda: True)
        cb.patch(model, tok, CLEAN, CORRUPT, metric=metric, site="resid_pre", layers=[0])
        assert set(seen) == {1} and torch.get_num_threads() == 2  # restored after
        seen.clear()
        monkeypatch.setattr(threads, "busy", lambda: False)
        cb.patch(model, tok, CLEAN, CORRUPT, metric=metric, site="resid_pre", layers=[0])
        assert set(seen) == {2}
    finally:
        torch.set_num_threads(before)


def test_generate_and_compare_run_on_one_thread_when_busy(llama, monkeypatch):
    """The forwards of cb.generate and cb.compare (serial) see one torch thread while the
    machine is busy, the caller's threads otherwise; the setting is restored after."""
    import circuitboard._threads as threads

    model, tok = llama
    seen: list[int] = []
    embed = model.get_input_embeddings()
    handle = embed.register_forward_pre_hook(lambda mod, args: seen.append(torch.get_num_threads()))
    categories = {"a": ["the cat sat on the mat"], "b": ["a dog ran in the park"]}
    calls = {
        "generate": lambda: cb.generate(model, tok, "the cat", max_new_tokens=2),
        "compare": lambda: cb.compare(model, tok, categories, progress=False),
    }
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for name, call in calls.items():
            for is_busy, want in ((True, {1}), (False, {2})):
                monkeypatch.setattr(threads, "busy", lambda is_busy=is_busy: is_busy)
                seen.clear()
                call()
                assert seen and set(seen) == want, (name, is_busy, seen)
                assert torch.get_num_threads() == 2
    finally:
        handle.remove()
        torch.set_num_threads(before)
