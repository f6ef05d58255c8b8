"""Sharded runs (serial and process-pool engines) equal one pass; retries, checkpoints, errors."""

from __future__ import annotations

import multiprocessing
import pickle

import numpy as np
import pytest

import circuitboard as cb
from circuitboard.analysis._compare import compare
from circuitboard.analysis._neurons import TopActivations, top_activations
from circuitboard.scale import cut, last_run, shutdown
from tests.unit.scale_helpers import (
    BATCH,
    CATEGORIES,
    SHARDS,
    TEXTS,
    assert_same_comparison,
    assert_same_top,
    digest,
    interrupt_fourth_call,
    pin_one_thread,
    run_and_kill,
    save_tiny,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from pin_one_thread()


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    spec = save_tiny(tmp_path_factory.mktemp("tiny"))
    yield spec
    shutdown()  # the warm process pool of this module


@pytest.fixture(scope="module")
def loaded(spec):
    return spec.load()


@pytest.fixture(scope="module")
def reference(loaded):
    """One pass in this process, today's path: the numbers every engine must give."""
    model, tok = loaded
    cmp = compare(model, tok, CATEGORIES, batch_size=BATCH)
    top = top_activations(model, tok, TEXTS, layers=[0, 1], k=4, batch_size=3, progress=False)
    return cmp, top


@pytest.fixture(scope="module")
def serial_runs(spec):
    """Serial engine, every shard count: the reference other engines match byte for byte."""
    return {
        n: compare(spec, None, CATEGORIES, batch_size=BATCH, shards=n, progress=False)
        for n in SHARDS
    }


def test_model_spec_pickles_and_explains_bad_input(spec):
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert repr(cb.ModelSpec("x", dtype="bfloat16", device_map="auto", gpus=2)) == (
        "ModelSpec('x', dtype='bfloat16', device_map='auto', gpus=2)"
    )
    assert cb.ModelSpec("x", dtype=__import__("torch").float16).dtype == "float16"
    with pytest.raises(TypeError, match="model name or path"):
        cb.ModelSpec("")
    with pytest.raises(ValueError, match="gpus must be"):
        cb.ModelSpec("x", gpus=-1)
    with pytest.raises(ValueError, match="not a torch dtype"):
        cb.ModelSpec("x", dtype="float7").load()


def test_cut_keeps_order_and_never_makes_empty_shards():
    for sizes in ([4] * 8, [4, 4, 4, 2, 4, 4, 4, 2], [1], [9, 1, 1, 1]):
        for n in (1, 2, 3, 7, 20):
            groups = cut(sizes, n)
            assert [i for g in groups for i in g] == list(range(len(sizes)))
            assert all(groups) and len(groups) == min(n, len(sizes))


@pytest.mark.parametrize("shards", SHARDS)
def test_serial_shards_equal_one_pass(reference, serial_runs, shards):
    assert_same_comparison(serial_runs[shards], reference[0])


def test_one_shard_is_todays_path_byte_for_byte(reference, serial_runs, tmp_path):
    assert digest(serial_runs[1], tmp_path) == digest(reference[0], tmp_path)


@pytest.mark.slow
def test_process_engine_equals_serial_byte_for_byte(spec, serial_runs, reference, tmp_path):
    for n in SHARDS:
        got = compare(
            spec,
            None,
            CATEGORIES,
            batch_size=BATCH,
            engine="processes",
            workers=2,
            shards=n,
            progress=False,
        )
        assert last_run().engine == "processes" and last_run().shards == n
        assert_same_comparison(got, reference[0])
        assert digest(got, tmp_path) == digest(serial_runs[n], tmp_path)
    again = compare(
        spec,
        None,
        CATEGORIES,
        batch_size=BATCH,
        engine="processes",
        workers=2,
        shards=3,
        progress=False,
    )
    assert digest(again, tmp_path) == digest(serial_runs[3], tmp_path)  # repeated: same bytes


@pytest.mark.parametrize("shards", SHARDS)
def test_top_activations_merged_from_shards_equal_one_pass(spec, reference, shards):
    top = top_activations(
        spec, None, TEXTS, layers=[0, 1], k=4, batch_size=3, shards=shards, progress=False
    )
    assert last_run().shards == shards
    assert_same_top(top, reference[1])


@pytest.mark.slow
def test_top_activations_on_processes(spec, reference, tmp_path):
    top = top_activations(
        spec,
        None,
        TEXTS,
        layers=[0, 1],
        k=4,
        batch_size=3,
        engine="processes",
        workers=2,
        shards=7,
        progress=False,
    )
    assert_same_top(top, reference[1])
    one = top_activations(
        spec, None, TEXTS, layers=[0, 1], k=4, batch_size=3, shards=7, progress=False
    )
    assert digest(top, tmp_path) == digest(one, tmp_path)


def test_top_activations_merge_of_two_datasets(loaded):
    """Results over different text lists merge: texts appended, indices shifted, ties ordered."""
    model, tok = loaded
    kw = dict(layers=[1], k=5, batch_size=1, hist_range=(-2.0, 2.0), progress=False)
    a = top_activations(model, tok, TEXTS[:12], **kw)
    b = top_activations(model, tok, TEXTS[12:], **kw)
    both = top_activations(model, tok, TEXTS, **kw)
    assert_same_top(a.merge(b), both)
    dup = top_activations(model, tok, ["a b c", "a b c"], **kw)  # equal maxima: lower index first
    assert (dup.text_index[:, :2] == [0, 1]).all()
    # Bins that follow the data (the default) merge exactly too, though each part's differ.
    kw.pop("hist_range")
    a, b = (
        top_activations(model, tok, TEXTS[:12], **kw),
        top_activations(model, tok, TEXTS[12:], **kw),
    )
    assert not np.array_equal(a.hist_edges, b.hist_edges)
    assert_same_top(a.merge(b), top_activations(model, tok, TEXTS, **kw))
    a = top_activations(model, tok, TEXTS[:12], hist_range=(-2.0, 2.0), **kw)
    with pytest.raises(ValueError, match="different fixed bin edges"):
        a.merge(top_activations(model, tok, TEXTS[:3], layers=[1], k=5, progress=False))
    with pytest.raises(ValueError, match="made differently"):
        a.merge(top_activations(model, tok, TEXTS[:3], layers=[0], k=5, hist_range=(-2, 2)))


def test_saved_top_activations_keep_moments(loaded, tmp_path):
    model, tok = loaded
    top = top_activations(model, tok, TEXTS, [(1, 3), (0, 5)], k=3, progress=False)
    top.save(tmp_path / "t")  # ".npz" appended, as numpy does
    back = TopActivations.load(tmp_path / "t.npz")
    np.testing.assert_array_equal(back.m2, top.m2)
    np.testing.assert_array_equal(back.positive, top.positive)
    top.save(tmp_path / "u.npz")
    assert (tmp_path / "t.npz").read_bytes() == (tmp_path / "u.npz").read_bytes()


def test_interrupted_run_resumes_from_checkpoint(spec, serial_runs, tmp_path, monkeypatch):
    import circuitboard.analysis._compare_jobs as jobs

    real = interrupt_fourth_call(monkeypatch, jobs, "compare_shard")
    folder = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        compare(spec, None, CATEGORIES, batch_size=BATCH, shards=7, checkpoint=folder)
    assert len(list(folder.glob("shard-*.npz"))) == 3
    monkeypatch.setattr(jobs, "compare_shard", real)
    got = compare(spec, None, CATEGORIES, batch_size=BATCH, shards=7, checkpoint=folder)
    assert last_run().resumed == 3
    assert digest(got, tmp_path) == digest(serial_runs[7], tmp_path)
    # the folder belongs to that run: other inputs are refused, not mixed in
    with pytest.raises(ValueError, match="holds another run"):
        compare(spec, None, CATEGORIES, batch_size=BATCH, shards=3, checkpoint=folder)


@pytest.mark.slow
def test_killed_process_worker_is_replaced_and_nothing_counted_twice(spec, serial_runs, tmp_path):
    folder = tmp_path / "ckpt"

    def run():
        return compare(
            spec,
            None,
            CATEGORIES,
            batch_size=BATCH,
            engine="processes",
            workers=2,
            shards=7,
            checkpoint=folder,
            progress=False,
        )

    with pytest.warns(cb.CircuitboardWarning, match="worker died"):
        got, killed = run_and_kill(
            run, folder, lambda: [p.pid for p in multiprocessing.active_children()]
        )
    assert killed and last_run().retried >= 1
    assert digest(got, tmp_path) == digest(serial_runs[7], tmp_path)


def test_bad_engine_arguments(spec, loaded):
    model, tok = loaded
    with pytest.raises(ValueError, match="is not an engine"):
        compare(spec, None, CATEGORIES, engine="dask")
    with pytest.raises(ValueError, match="tokenizer=None"):
        compare(spec, tok, CATEGORIES, shards=2)
    with pytest.raises(ValueError, match="tokenizer is None"):
        compare(model, None, CATEGORIES)
    with pytest.raises(TypeError, match="ModelSpec"):
        compare("default", None, CATEGORIES, shards=2)
    with pytest.raises(ValueError, match="shards must be"):
        compare(spec, None, CATEGORIES, shards=0)
    with pytest.raises(ValueError, match='engine="processes"'):
        compare(spec, None, CATEGORIES, workers=2)
    with pytest.raises(ValueError, match="hist_range"):
        top_activations(model, tok, TEXTS, layers=[0], hist_range=(1, 1))


def test_missing_ray_names_the_extra(spec, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ImportError, match=r"circuitboard\[ray\]"):
        compare(spec, None, CATEGORIES, engine="ray")
