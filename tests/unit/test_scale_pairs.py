"""Sharded `cb.patch` and `cb.circuit` over lists of prompt pairs (serial and process engines)
equal one pass; identities on the merged result; retries, checkpoints and bad input."""

from __future__ import annotations

import multiprocessing
import threading
import time

import numpy as np
import pytest

import circuitboard as cb
from circuitboard.scale import last_run, shutdown
from tests.unit.scale_helpers import (
    ANSWERS,
    CLEAN,
    CORRUPTED,
    SHARDS,
    WRONGS,
    assert_same_circuit,
    assert_same_patching,
    circuit_pairs,
    digest,
    interrupt_fourth_call,
    patch_pairs,
    pin_one_thread,
    run_and_kill,
    save_tiny,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from pin_one_thread()


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    spec = save_tiny(tmp_path_factory.mktemp("tiny"), redrawn=True)
    yield spec
    shutdown()  # the warm process pool of this module


@pytest.fixture(scope="module")
def loaded(spec):
    return spec.load()


@pytest.fixture(scope="module")
def reference(loaded):
    """One pass in this process, today's path: the numbers every engine must give."""
    model, tok = loaded
    return patch_pairs(model, tok), circuit_pairs(model, tok)


@pytest.fixture(scope="module")
def serial_runs(spec):
    """Serial engine from the ModelSpec, every shard count: what other engines match."""
    return {
        n: (patch_pairs(spec, None, shards=n), circuit_pairs(spec, None, shards=n)) for n in SHARDS
    }


@pytest.mark.parametrize("shards", SHARDS)
def test_patch_shards_equal_one_pass(reference, serial_runs, shards, tmp_path):
    got = serial_runs[shards][0]
    assert last_run().job in ("patch", "circuit")
    assert_same_patching(got, reference[0])
    assert got.pair_values.shape[0] == len(CLEAN)
    np.testing.assert_array_equal(got.values, got.pair_values.mean(0))  # mean of pair effects
    # cost holds forwards only, so every shard count saves the same bytes
    assert digest(got, tmp_path) == digest(serial_runs[1][0], tmp_path)


@pytest.mark.parametrize("shards", SHARDS)
def test_circuit_shards_equal_one_pass(reference, serial_runs, shards):
    assert_same_circuit(serial_runs[shards][1], reference[1])


def test_one_shard_circuit_is_todays_path_byte_for_byte(reference, serial_runs, tmp_path):
    assert digest(serial_runs[1][1], tmp_path) == digest(reference[1], tmp_path)


def test_identities_hold_on_the_merged_patching(spec, serial_runs):
    """At layer 0 only the swapped token differs: patching it from clean gives exactly the clean
    metric (1), every other position 0; before the first difference nothing is run (exactly 0);
    the other direction gives 0 where denoising gives 1."""
    res = serial_runs[7][0]
    fd = res.first_diff
    assert fd > 0 and np.all(res.values[:, :fd] == 0)
    # float32 logits: 1e-5 in metric units, so 1e-5 / |clean − corrupted| normalized
    tol = 1e-5 / np.abs(res.pair_clean - res.pair_corrupted).min()
    np.testing.assert_allclose(res.pair_raw[:, 0, fd], res.pair_clean, rtol=0, atol=1e-5)
    np.testing.assert_allclose(res.pair_values[:, 0, fd], 1, atol=tol)
    np.testing.assert_allclose(np.delete(res.pair_values[:, 0], fd, axis=1), 0, atol=tol)
    noised = patch_pairs(spec, None, layers=[0], direction="noise", shards=3)
    np.testing.assert_allclose(noised.pair_values[:, 0, fd], 0, atol=tol)
    np.testing.assert_allclose(noised.pair_clean, res.pair_clean, rtol=0, atol=0)


def test_circuit_from_workers_evaluates_on_the_model_here(spec, loaded, reference):
    model, tok = loaded
    fresh = circuit_pairs(model, tok)  # evaluations are cached on the circuit: not the fixture's
    want = [fresh.evaluate(k) for k in (0, 10, fresh.n_edges)]
    from_spec = circuit_pairs(spec, None, shards=3)
    with pytest.raises(RuntimeError, match=r"circuit\.attach\(model, tokenizer\)"):
        from_spec.evaluate(10)
    assert [from_spec.attach(model, tok).evaluate(k) for k in (0, 10, from_spec.n_edges)] == want
    shipped = circuit_pairs(model, tok, shards=3)  # a loaded model: evaluates here, lazily
    assert_same_circuit(shipped, reference[1])
    assert [shipped.evaluate(k) for k in (0, 10, shipped.n_edges)] == want
    p, q = shipped.prune(20, dangling=False), fresh.prune(20, dangling=False)
    assert p.evaluate(p.n_edges) == q.evaluate(q.n_edges)  # pruned copies share the evaluator
    assert abs(want[0]) < 1e-5 and abs(want[2] - 1) < 1e-5  # ∅ = corrupted, all edges = clean


def test_estimates_and_their_references_merge_exactly(loaded, tmp_path):
    """IG with its completeness and the exact reference (and correlation) merge exactly too,
    also when every shard is read back from a checkpoint."""
    model, tok = loaded
    kw = dict(site="heads", method="ig", steps=3, compare_exact=True)
    one = patch_pairs(model, tok, **kw)
    for _ in range(2):  # computed, then resumed from the folder
        got = patch_pairs(model, tok, shards=3, checkpoint=tmp_path / "ig", **kw)
        for name in ("values", "pair_values", "reference", "completeness"):
            np.testing.assert_array_equal(getattr(got, name), getattr(one, name), err_msg=name)
        assert (got.correlation, got.completeness_error) == (
            one.correlation,
            one.completeness_error,
        )
    assert last_run().resumed == 3


@pytest.mark.slow
def test_process_engine_equals_serial_byte_for_byte(spec, serial_runs, reference, tmp_path):
    for n in SHARDS:
        kw = dict(engine="processes", workers=2, shards=n)
        p, c = patch_pairs(spec, None, **kw), circuit_pairs(spec, None, **kw)
        assert last_run().engine == "processes" and last_run().shards == n
        assert_same_patching(p, reference[0])
        assert_same_circuit(c, reference[1])
        assert digest(p, tmp_path) == digest(serial_runs[n][0], tmp_path)
        assert digest(c, tmp_path) == digest(serial_runs[n][1], tmp_path)


def _slow_logit_diff(a: int, b: int):
    """A custom (unbatched) metric that takes a while per row, built in a closure: it travels to
    the workers pickled by value, and gives a kill time to land mid-run."""

    def metric(logits):
        time.sleep(0.01)
        return logits[a] - logits[b]

    return metric


@pytest.mark.slow
def test_killed_worker_and_custom_metric(spec, loaded, tmp_path):
    _, tok = loaded
    a, b = (tok(t, add_special_tokens=False)["input_ids"][0] for t in (" Mary", " John"))
    kw = dict(metric=_slow_logit_diff(a, b), answer=None, wrong=None, layers=[1], shards=7)
    want = patch_pairs(spec, None, **kw)
    folder = tmp_path / "ckpt"

    def run():
        return patch_pairs(spec, None, engine="processes", workers=2, checkpoint=folder, **kw)

    with pytest.warns(cb.CircuitboardWarning, match="worker died"):
        got, killed = run_and_kill(
            run, folder, lambda: [p.pid for p in multiprocessing.active_children()]
        )
    assert killed and last_run().retried >= 1
    assert_same_patching(got, want)
    assert digest(got, tmp_path) == digest(want, tmp_path)


def test_interrupted_patch_resumes_from_checkpoint(spec, serial_runs, tmp_path, monkeypatch):
    import circuitboard.intervene._patch_jobs as pairs

    real = interrupt_fourth_call(monkeypatch, pairs, "patch_shard")
    folder = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        patch_pairs(spec, None, shards=7, checkpoint=folder)
    assert len(list(folder.glob("shard-*.npz"))) == 3
    monkeypatch.setattr(pairs, "patch_shard", real)
    got = patch_pairs(spec, None, shards=7, checkpoint=folder)
    assert last_run().resumed == 3
    assert digest(got, tmp_path) == digest(serial_runs[7][0], tmp_path)
    with pytest.raises(ValueError, match="holds another run"):  # other options: refused
        patch_pairs(spec, None, shards=7, checkpoint=folder, site="heads")
    circ = tmp_path / "circ"
    circuit_pairs(spec, None, shards=7, checkpoint=circ)
    again = circuit_pairs(spec, None, shards=7, checkpoint=circ)  # every shard from the folder
    assert last_run().resumed == 7
    assert digest(again, tmp_path) == digest(serial_runs[7][1], tmp_path)


def test_bad_input_is_refused_before_any_worker_starts(spec, loaded):
    model, tok = loaded
    lock = threading.Lock()

    def holds_a_lock(logits):
        with lock:
            return logits[0]

    with pytest.raises(ValueError, match="cannot be sent to the processes workers"):
        patch_pairs(spec, None, metric=holds_a_lock, engine="processes")
    with pytest.raises(ValueError, match="cannot be sent to the processes workers"):
        circuit_pairs(spec, None, metric=holds_a_lock, engine="processes")
    with pytest.raises(ValueError, match="clean has 8 prompts and corrupted 3"):
        cb.patch(spec, None, CLEAN, CORRUPTED[:3], answer=ANSWERS, wrong=WRONGS, shards=2)
    with pytest.raises(ValueError, match="8 clean prompts but 3 corrupted"):
        cb.circuit(spec, None, CLEAN, CORRUPTED[:3], shards=2)
    with pytest.raises(ValueError, match="answer has 3 entries for 8"):
        cb.patch(spec, None, CLEAN, CORRUPTED, answer=ANSWERS[:3], wrong=WRONGS, shards=2)
    with pytest.raises(ValueError, match="answer has 3 entries for 8"):
        cb.circuit(spec, None, CLEAN, CORRUPTED, answer=ANSWERS[:3], wrong=WRONGS, shards=2)
    with pytest.raises(ValueError, match="different lengths"):
        cb.patch(
            spec,
            None,
            [CLEAN[0], CLEAN[1][3:]],
            [CORRUPTED[0], CORRUPTED[1][3:]],
            answer=" Mary",
            wrong=" John",
            shards=2,
        )
    bad = CORRUPTED[:5] + [CORRUPTED[5] + " again"] + CORRUPTED[6:]
    with pytest.raises(ValueError, match="pair 5: the clean prompt has"):  # numbered globally
        cb.circuit(spec, None, CLEAN, bad, answer=ANSWERS, wrong=WRONGS, shards=3)
    with pytest.raises(ValueError, match="layers= got 5"):
        patch_pairs(spec, None, layers=[5], shards=2)
    with pytest.raises(TypeError, match="wrap it: cb.ModelSpec"):
        patch_pairs("default", None, shards=2)
    with pytest.raises(ValueError, match="tokenizer=None"):
        circuit_pairs(spec, tok, shards=2)
    with pytest.raises(ValueError, match="tokenizer is None"):
        patch_pairs(model, None, shards=2)
    with pytest.raises(ValueError, match="tokenizer is None"):
        circuit_pairs(model, None)
    with pytest.raises(ValueError, match="nodes must be"):
        circuit_pairs(spec, None, nodes="neurons", shards=2)
    with pytest.raises(ValueError, match="is not an engine"):
        circuit_pairs(spec, None, engine="dask")
    from tests.unit.tiny_models import tiny_vit

    vit, _ = tiny_vit(channels=1)
    a, b = np.random.default_rng(0).random((2, 8, 8))
    with pytest.raises(ValueError, match="image pairs run in this process"):
        cb.patch(vit, None, a, b, answer="class 1", wrong="class 2", shards=2)


def test_missing_ray_names_the_extra(spec, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ImportError, match=r"circuitboard\[ray\]"):
        patch_pairs(spec, None, engine="ray")
    with pytest.raises(ImportError, match=r"circuitboard\[ray\]"):
        circuit_pairs(spec, None, engine="ray")


def test_without_cloudpickle_a_lambda_metric_is_refused_with_the_fix(spec, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_cloudpickle(name, *args, **kwargs):
        if name == "cloudpickle":
            raise ImportError("No module named 'cloudpickle'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cloudpickle)
    with pytest.raises(ValueError, match=r"cannot be sent to the processes workers.*answer="):
        patch_pairs(spec, None, metric=lambda logits: logits[0], engine="processes")
