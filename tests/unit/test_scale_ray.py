"""The Ray engine on a real one-node cluster (2 CPUs, usage stats off) equals the serial engine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import circuitboard as cb
from circuitboard.analysis._compare import compare
from circuitboard.analysis._neurons import top_activations
from circuitboard.scale import last_run, run_plan, shutdown
from tests.unit.plan_toy import order_plan, squares_plan, want
from tests.unit.scale_helpers import (
    BATCH,
    CATEGORIES,
    SHARDS,
    TEXTS,
    assert_same_circuit,
    assert_same_comparison,
    assert_same_patching,
    assert_same_top,
    circuit_pairs,
    digest,
    patch_pairs,
    pin_one_thread,
    run_and_kill,
    save_tiny,
)

ray = pytest.importorskip("ray", reason='Ray is absent; `pip install "circuitboard[ray]"`')
pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from pin_one_thread()


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module (start-up costs seconds), shut down afterwards."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # On a saturated machine Ray's raylet gives up when its dashboard agent is slow to import
    # (ray-project/ray#65983, a fixed port-file timeout); a second try usually wins the race.
    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception as err:  # "The current node timed out during startup"
            ray.shutdown()
            if attempt == 2:
                pytest.fail(f"a local Ray cluster did not start three times: {err}")
    try:
        yield ray
    finally:
        shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def serial(spec):
    model, tok = spec.load()
    return {
        "top": top_activations(model, tok, TEXTS, layers=[0, 1], k=4, batch_size=3, progress=False),
        **{
            n: compare(spec, None, CATEGORIES, batch_size=BATCH, shards=n, progress=False)
            for n in SHARDS
        },
    }


def test_ray_compare_equals_serial_for_every_shard_count(cluster, spec, serial, tmp_path):
    for n in SHARDS:
        got = compare(
            spec,
            None,
            CATEGORIES,
            batch_size=BATCH,
            engine="ray",
            workers=2,
            shards=n,
            progress=False,
        )
        assert last_run().engine == "ray" and last_run().workers == 2
        assert_same_comparison(got, serial[1])
        assert digest(got, tmp_path) == digest(serial[n], tmp_path)
    again = compare(
        spec,
        None,
        CATEGORIES,
        batch_size=BATCH,
        engine="ray",
        workers=2,
        shards=7,
        progress=False,
    )
    assert digest(again, tmp_path) == digest(serial[7], tmp_path)


def test_ray_top_activations_equal_one_pass(cluster, spec, serial):
    got = top_activations(
        spec,
        None,
        TEXTS,
        layers=[0, 1],
        k=4,
        batch_size=3,
        engine="ray",
        workers=2,
        shards=3,
        progress=False,
    )
    assert_same_top(got, serial["top"])


def test_ray_with_a_loaded_model_ships_it_to_the_actors(cluster, spec, serial, tmp_path):
    model, tok = spec.load()
    got = compare(
        model,
        tok,
        CATEGORIES,
        batch_size=BATCH,
        engine="ray",
        workers=1,
        shards=3,
        progress=False,
    )
    assert digest(got, tmp_path) == digest(serial[3], tmp_path)


def _actor_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if proc.name.isdigit() and cmd.startswith(b"ray::_RayWorker"):
            pids.append(int(proc.name))
    return sorted(pids)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds actor processes through /proc")
def test_killed_actor_is_replaced_and_the_result_is_the_same(cluster, spec, serial, tmp_path):
    folder = tmp_path / "ckpt"

    def run():
        return compare(
            spec,
            None,
            CATEGORIES,
            batch_size=BATCH,
            engine="ray",
            workers=2,
            shards=7,
            checkpoint=folder,
            progress=False,
        )

    with pytest.warns(cb.CircuitboardWarning, match="worker died"):
        got, killed = run_and_kill(run, folder, _actor_pids)
    assert killed and last_run().retried >= 1
    assert digest(got, tmp_path) == digest(serial[7], tmp_path)


@pytest.fixture(scope="module")
def pairs_spec(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-redrawn"), redrawn=True)


def test_ray_patch_and_circuit_equal_serial_for_every_shard_count(cluster, pairs_spec, tmp_path):
    model, tok = pairs_spec.load()
    one_pass = patch_pairs(model, tok), circuit_pairs(model, tok)
    for n in SHARDS:
        want = patch_pairs(pairs_spec, None, shards=n), circuit_pairs(pairs_spec, None, shards=n)
        kw = dict(engine="ray", workers=2, shards=n)
        got = patch_pairs(pairs_spec, None, **kw), circuit_pairs(pairs_spec, None, **kw)
        assert last_run().engine == "ray" and last_run().shards == n
        assert_same_patching(got[0], one_pass[0])
        assert_same_circuit(got[1], one_pass[1])
        assert digest(got[0], tmp_path) == digest(want[0], tmp_path)
        assert digest(got[1], tmp_path) == digest(want[1], tmp_path)
    # a loaded model shipped to the actors, with a custom metric pickled by value
    a, b = (tok(t, add_special_tokens=False)["input_ids"][0] for t in (" Mary", " John"))
    custom = dict(metric=lambda logits: logits[a] - logits[b], answer=None, wrong=None, shards=3)
    got = patch_pairs(model, tok, engine="ray", workers=1, **custom)
    assert_same_patching(got, patch_pairs(model, tok, **custom))


def test_toy_plan_on_ray_retries_and_resumes(cluster, tmp_path):
    """The plan protocol needs nothing of the MI code: a sum of squares, no model."""
    plan = squares_plan(misbehave={2: {"die_once": str(tmp_path / "died")}})
    with pytest.warns(cb.CircuitboardWarning, match="worker died"):
        assert run_plan(plan, engine="ray", workers=2, progress=False) == want()
    assert last_run().engine == "ray" and last_run().retried >= 1
    assert run_plan(order_plan(), engine="ray", workers=2, progress=False) == list(range(12))
    folder = tmp_path / "ckpt"
    with pytest.raises(ValueError, match="failed on purpose"):
        run_plan(
            squares_plan(misbehave={4: {"fail": True}}),
            engine="ray",
            workers=2,
            checkpoint=folder,
            progress=False,
        )
    done = len(list(folder.glob("shard-*.npz")))
    # Two workers hold at most two jobs: when job 4 starts, jobs 0-2 are done (3 may still run).
    assert done >= 3
    got = run_plan(squares_plan(), engine="ray", workers=2, checkpoint=folder, progress=False)
    assert got == want() and last_run().resumed == done


def test_ray_feature_dashboard_equals_one_pass(cluster, spec):
    """Dictionary features (issue 26) run the same plan: Ray shards equal one serial pass."""
    sae = cb.SAE(32, 64, kind="topk", k=4, hook="blocks.0.hook_resid_post", seed=0)
    model, tok = spec.load()
    kw = dict(features=(sae, None), k=4, batch_size=3, progress=False)
    want_top = top_activations(model, tok, TEXTS, **kw)
    got = top_activations(spec, None, TEXTS, engine="ray", workers=2, shards=3, **kw)
    assert last_run().engine == "ray"
    assert_same_top(got, want_top)
