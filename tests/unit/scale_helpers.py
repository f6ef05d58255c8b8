"""Shared by the engine tests: a tiny model saved to disk, prompts, and the comparisons made."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

CATEGORIES = {
    "IOI": [f"When Mary and John went to the store, John gave a drink to {i}" for i in range(14)],
    "other": [("the quick brown fox jumps " * (1 + i % 3)) + str(i) for i in range(14)],
}
TEXTS = CATEGORIES["IOI"] + CATEGORIES["other"] + ["a b c", "Hello world!", "1 2 3 4 5 6"]
BATCH = 1  # blocks of 4 prompts: 8 blocks, so 7 shards are possible
SHARDS = (1, 3, 7)

# IOI-style prompt pairs for patch / circuit: the corrupted prompt swaps the second subject,
# the answer is the indirect object (8 pairs of one length, names alternating).
_NAMES = [(" Mary", " John"), (" John", " Mary")] * 4
CLEAN = [
    f"{i}: When{a} and{b} went to the store,{b} gave a drink to" for i, (a, b) in enumerate(_NAMES)
]
CORRUPTED = [
    f"{i}: When{a} and{b} went to the store,{a} gave a drink to" for i, (a, b) in enumerate(_NAMES)
]
ANSWERS = [a for a, _ in _NAMES]
WRONGS = [b for _, b in _NAMES]


def save_tiny(folder: Path, redrawn: bool = False) -> Any:
    """Save the tiny Llama and its tokenizer with save_pretrained; its ModelSpec.

    ``redrawn``: weights re-drawn at unit gain (test_patch's model), so that clean and
    corrupted prompts differ clearly and patching identities hold to float32 precision."""
    import circuitboard as cb
    from tests.unit.tiny_models import tiny_llama

    if redrawn:
        from tests.unit.test_patch import _model

        model, tok = _model("llama")
    else:
        model, tok = tiny_llama()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    # one thread in every worker, as in the driver (see one_thread): bitwise-equal sums
    return cb.ModelSpec(str(folder), threads=1)


def patch_pairs(model: Any, tok: Any, **kw: Any) -> Any:
    """``cb.patch`` of the IOI pairs (every position of every layer's resid_pre)."""
    import circuitboard as cb

    kw = {"answer": ANSWERS, "wrong": WRONGS, "progress": False, **kw}
    return cb.patch(model, tok, CLEAN, CORRUPTED, **kw)


def circuit_pairs(model: Any, tok: Any, **kw: Any) -> Any:
    """``cb.circuit`` (EAP-IG, 3 steps) of the IOI pairs."""
    import circuitboard as cb

    kw = {"answer": ANSWERS, "wrong": WRONGS, "steps": 3, "progress": False, **kw}
    return cb.circuit(model, tok, CLEAN, CORRUPTED, **kw)


def assert_same_patching(got: Any, want: Any) -> None:
    """Per-pair results, their means and every convention equal exactly (cost aside)."""
    for name in ("values", "raw", "pair_values", "pair_raw", "pair_clean", "pair_corrupted"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    for name in (
        "site",
        "method",
        "direction",
        "metric",
        "axes",
        "layers",
        "positions",
        "heads",
        "tokens",
        "clean_value",
        "corrupted_value",
        "first_diff",
        "notes",
        "model_name",
    ):
        assert getattr(got, name) == getattr(want, name), name
    assert got.cost["forwards"] == want.cost["forwards"]


def assert_same_circuit(got: Any, want: Any) -> None:
    """Scores within 1e-10 (float64 sums; in fact equal), endpoints and prompts equal."""
    np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-10, equal_nan=True)
    assert got.edges[:20] == want.edges[:20]
    for name in (
        "clean_value",
        "corrupted_value",
        "n_pairs",
        "metric",
        "method",
        "steps",
        "tokens",
        "corrupted_tokens",
        "model_name",
        "prompts",
    ):
        assert getattr(got, name) == getattr(want, name), name


def saved_bytes(result: Any) -> bytes:
    buf = io.BytesIO()
    result.save(buf) if hasattr(result, "effect") else result.save(buf)
    return buf.getvalue()


def digest(result: Any, tmp: Path) -> str:
    path = tmp / f"r-{time.monotonic_ns()}.npz"
    result.save(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_comparison(got: Any, want: Any) -> None:
    """Counts equal, means within 1e-10, M2 within 1e-9 relative, effects and top-k equal."""
    assert got.categories == want.categories and got.n_prompts == want.n_prompts
    for c in want.categories:
        for s in want.stat_names:
            g, w = got.stats[c][s], want.stats[c][s]
            assert g.count == w.count
            np.testing.assert_allclose(g.mean, w.mean, rtol=0, atol=1e-10)
            np.testing.assert_allclose(g.m2, w.m2, rtol=1e-9, atol=1e-300)
    for s in want.stat_names:
        eg, ew = got.effect("IOI", "other", s), want.effect("IOI", "other", s)
        for m in ("d", "t", "diff"):
            np.testing.assert_allclose(getattr(eg, m), getattr(ew, m), rtol=1e-8, atol=1e-12)
        top_g = [e["label"] for e in got.top("IOI", "other", s, k=10)]
        top_w = [e["label"] for e in want.top("IOI", "other", s, k=10)]
        assert top_g == top_w


def assert_same_top(got: Any, want: Any) -> None:
    """Merged top activations equal one pass: examples, values, histograms (moments close)."""
    assert got.neurons == want.neurons and got.texts == want.texts
    for name in (
        "values",
        "text_index",
        "position",
        "window_ids",
        "window_acts",
        "window_start",
        "hist_edges",
        "hist_counts",
        "hist_below",
        "hist_above",
        "count",
        "minimum",
        "maximum",
        "positive",
        "promoted_ids",
        "suppressed_ids",
    ):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    if getattr(want, "cofire", None) is not None:  # dictionary features: co-firing counts
        np.testing.assert_array_equal(got.cofire, want.cofire, err_msg="cofire")
        assert got.dictionary == want.dictionary
    np.testing.assert_allclose(got.mean, want.mean, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got.m2, want.m2, rtol=1e-9)
    np.testing.assert_allclose(got.std, want.std, rtol=1e-9)
    assert got.vocab == want.vocab
    for n in want.neurons[:5]:
        assert got.examples(*n) == want.examples(*n)


def run_and_kill(run: Any, wait_for: Path, pids: Any) -> tuple[Any, list[int]]:
    """Start ``run()`` in a thread; once a shard file is in ``wait_for``, SIGKILL a worker."""
    import os
    import signal

    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = run()
        except BaseException as e:  # re-raised in the test thread
            out["error"] = e

    th = threading.Thread(target=target)
    th.start()
    killed: list[int] = []
    deadline = time.monotonic() + 240
    while th.is_alive() and time.monotonic() < deadline:
        if any(wait_for.glob("shard-*.npz")):
            found = pids()
            if found:
                os.kill(found[0], signal.SIGKILL)
                killed.append(found[0])
                break
        time.sleep(0.005)
    th.join(300)
    if "error" in out:
        raise out["error"]
    return out["result"], killed


def pin_one_thread() -> Any:
    """Run the driver on one torch thread for a test module (a generator for a fixture).

    Engines give the same bytes only when every process sums in the same order, i.e. runs the
    same number of torch threads; the workers here run one (``ModelSpec(threads=1)``).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def interrupt_fourth_call(monkeypatch: Any, module: Any, name: str) -> Any:
    """Make ``module.name`` (a shard function) raise KeyboardInterrupt on its 4th call, as a
    user stopping the run during the 4th shard; returns the real function to put back."""
    real, calls = getattr(module, name), []

    def interrupted(model: Any, tok: Any, payload: Any) -> Any:
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(model, tok, payload)

    monkeypatch.setattr(module, name, interrupted)
    return real
