"""one_thread: small torch work on one thread, the setting restored, also after errors."""

from __future__ import annotations

import pytest
import torch

from circuitboard import _threads
from circuitboard._threads import one_thread


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_one_thread_inside_and_restored_after_an_error(two_threads):
    with pytest.raises(RuntimeError), one_thread():
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2

    @one_thread()
    def inside() -> int:
        return torch.get_num_threads()

    assert inside() == 1 and inside() == 1 and torch.get_num_threads() == 2


def test_when_busy_follows_the_load_average(two_threads, monkeypatch):
    @one_thread(when_busy=True)
    def inside() -> int:
        return torch.get_num_threads()

    cores = 4
    monkeypatch.setattr(_threads, "_CORES", cores)
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (cores + 0.5, 0.0, 0.0))
    assert inside() == 1  # decided per call, not when decorated
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (cores - 0.5, 0.0, 0.0))
    assert inside() == 2
    assert torch.get_num_threads() == 2
