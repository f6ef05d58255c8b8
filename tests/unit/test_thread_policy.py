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
