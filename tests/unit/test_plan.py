"""The plan protocol on a toy computation (sum of squares): no model, no MI code.

Serial and process engines here; the same plan on Ray is in test_scale_ray.py (one cluster).
"""

from __future__ import annotations

import pytest

import circuitboard as cb
from circuitboard.scale import Job, Plan, last_run, open_engine, run_plan
from tests.unit.plan_toy import numbers, order_plan, square_sum, squares_plan, want


def test_serial_sum_of_squares_equals_one_pass():
    assert run_plan(squares_plan(), progress=False) == want()
    info = last_run()
    assert (info.job, info.engine, info.shards, info.resumed) == ("sum of squares", "serial", 7, 0)


def test_public_names_are_the_protocol():
    assert cb.run_plan is run_plan and cb.Plan is Plan and cb.Job is Job
    assert cb.open_engine is open_engine


def test_parts_merge_in_plan_order_whatever_finished_first():
    assert run_plan(order_plan(), engine="serial", progress=False) == list(range(12))
    got = run_plan(order_plan(), engine="processes", workers=2, progress=False)
    assert got == list(range(12))
    assert last_run().engine == "processes" and last_run().workers == 2


@pytest.mark.slow
def test_processes_retry_a_killed_worker_and_resume_from_a_checkpoint(tmp_path):
    # A worker dies during job 2: the job runs again on a fresh worker, counted once.
    plan = squares_plan(misbehave={2: {"die_once": str(tmp_path / "died")}})
    with pytest.warns(cb.CircuitboardWarning, match="worker died"):
        got = run_plan(plan, engine="processes", workers=2, progress=False)
    assert got == want()
    assert last_run().retried >= 1 and (tmp_path / "died").exists()
    # A job that fails stops the run; the jobs finished before it are in the folder.
    folder = tmp_path / "ckpt"
    with pytest.raises(ValueError, match="failed on purpose"):
        run_plan(squares_plan(misbehave={4: {"fail": True}}), checkpoint=folder, progress=False)
    assert sorted(p.name for p in folder.glob("shard-*.npz")) == [
        f"shard-{i:05d}.npz" for i in range(4)
    ]
    # Resumed on another engine: only the 3 missing jobs run, and the sum is the same.
    got = run_plan(squares_plan(), engine="processes", workers=2, checkpoint=folder, progress=False)
    assert got == want() and last_run().resumed == 4 and last_run().shards == 7
    assert run_plan(squares_plan(), checkpoint=folder, progress=False) == want()
    assert last_run().resumed == 7  # nothing left to run: no engine started
    with pytest.raises(ValueError, match="holds another run"):
        run_plan(squares_plan(n=21), checkpoint=folder, progress=False)


@pytest.mark.slow
def test_a_worker_that_keeps_dying_fails_the_run_with_the_fix():
    plan = Plan("dies", [Job(square_sum, {"numbers": [1], "die": True})], merge=max)
    with pytest.warns(cb.CircuitboardWarning, match="worker died"):
        with pytest.raises(RuntimeError, match=r"lost its worker 2 times \(retries=1\)"):
            run_plan(plan, engine="processes", workers=1, retries=1, progress=False)


def test_a_job_defined_anywhere_travels_to_process_workers():
    # a lambda cannot be pickled by reference: it travels by value (cloudpickle)
    plan = Plan("lambdas", [Job(lambda m, t, p: p * p, i) for i in range(4)], merge=max)
    assert run_plan(plan, engine="processes", workers=2, progress=False) == 9


def test_one_engine_runs_several_plans():
    with open_engine(engine="processes", workers=2) as eng:
        a = run_plan(squares_plan(n=10, shards=3), engine=eng, progress=False)
        b = run_plan(order_plan(3), engine=eng, progress=False)
        pids = eng.impl.worker_pids()
    assert (a, b) == (want(10), list(range(6))) and len(pids) == 2
    assert eng.shards(None) == 8 and eng.shards(3) == 3


def test_job_keys_name_the_checkpoint_files(tmp_path):
    jobs = [Job(square_sum, {"numbers": [i]}, key=f"n{i}") for i in range(3)]
    plan = Plan("keyed", jobs, merge=lambda a, b: a + b, save=squares_plan().save,
                load=squares_plan().load)  # fmt: skip
    assert run_plan(plan, checkpoint=tmp_path, progress=False) == 5
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == [
        "shard-n0.npz", "shard-n1.npz", "shard-n2.npz"
    ]  # fmt: skip


def test_bad_plans_are_refused_with_the_fix(tmp_path):
    add = {"merge": lambda a, b: a + b}
    with pytest.raises(ValueError, match="has no jobs; give it at least one"):
        run_plan(Plan("empty", [], **add))
    with pytest.raises(ValueError, match="cannot be checkpointed; give the Plan save= and load="):
        run_plan(Plan("no save", [Job(numbers, {"numbers": [1]})], **add), checkpoint=tmp_path)
    twins = [Job(numbers, {"numbers": [i]}, key="same") for i in range(2)]
    with pytest.raises(ValueError, match=r"sharing checkpoint keys \['same'\]"):
        run_plan(Plan("twins", twins, **add, save=print, load=print), checkpoint=tmp_path)
    odd = [Job(numbers, {"numbers": [1]}, key="a/b")]
    with pytest.raises(ValueError, match="checkpoint key 'a/b'; use letters, digits"):
        run_plan(Plan("odd", odd, **add, save=print, load=print), checkpoint=tmp_path / "o")
    with pytest.raises(ValueError, match="is not an engine"):
        run_plan(order_plan(), engine="dask")
    with pytest.raises(ValueError, match="shards must be a positive int"):
        with open_engine() as eng:
            eng.shards(0)
    with pytest.raises(TypeError, match=r"wrap it: cb.ModelSpec\('gpt2'\)"):
        run_plan(order_plan(), "gpt2")
