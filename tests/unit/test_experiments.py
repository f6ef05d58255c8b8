"""The experiment log: versions, diffs, reloaded results, killed runs, concurrent writers."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import circuitboard as cb
from circuitboard.experiments import Store
from circuitboard.intervene import CausalTrace, Patching

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'python'}{os.pathsep}{ROOT}"}


def _load_module(path: Path, body: str):
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _patching() -> Patching:
    v = np.array([[0.1, 0.9], [0.0, 1.0]])
    return Patching(
        v,
        2 * v,
        "heads",
        "exact",
        "denoise",
        "logit diff",
        ("layer", "head"),
        [0, 1],
        None,
        [0, 1],
        {"clean": ["a"], "corrupted": ["b"]},
        2.0,
        0.0,
        0,
    )


def test_two_versions_give_two_hashes_and_a_diff(tmp_path) -> None:
    project = tmp_path / "log"
    body = """
        import circuitboard as cb

        @cb.experiment(project={project!r})
        def scan(x, k=2):
            return x + {n}
    """
    v1 = _load_module(tmp_path / "v1.py", body.format(project=str(project), n=1))
    assert v1.scan(1) == 2 and v1.scan(5, k=3) == 6
    v2 = _load_module(tmp_path / "v2.py", body.format(project=str(project), n=2))
    assert v2.scan(1) == 3
    store = Store(project)
    versions = store.versions("scan")
    assert [v["version"] for v in versions] == [1, 2] and [v["runs"] for v in versions] == [2, 1]
    assert versions[0]["source_hash"] != versions[1]["source_hash"]
    assert v1.scan.source_hash == versions[0]["source_hash"]
    diff = store.diff("scan", 1, 2)
    assert "-    return x + 1" in diff and "+    return x + 2" in diff
    first = cb.load_experiment("scan", 1, run=0, project=project)
    assert first.arguments == {"x": 1, "k": 2} and first.result == 2
    assert cb.load_experiment("scan", project=project).result == 3  # latest version
    assert cb.load_experiment("scan", versions[1]["source_hash"][:8], project=project).version == 2
    assert "return x + 2" in cb.load_experiment("scan", 2, project=project).source
    run = cb.load_experiment("scan", project=project)
    assert run.wall_time_s >= 0 and run.started.endswith("+00:00")
    assert run.provenance["versions"]["numpy"] == np.__version__
    with pytest.raises(ValueError, match=r"has versions \[1, 2\]; got 3"):
        store.diff("scan", 1, 3)


def test_results_reload_equal_without_pickle(tmp_path) -> None:
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    trace = CausalTrace(
        values[None],
        values[None],
        values[None, None],
        ("mlp",),
        ["a", "b", "c", "d"],
        [1],
        " x",
        5,
        0.5,
        0.1,
        np.array([0.1]),
        3.0,
        0.3,
        1,
        0,
        (1, 10),
    )

    @cb.experiment(project=tmp_path)
    def many(scale: float):
        return {
            "patching": _patching(),
            "trace": trace,
            "scores": values * scale,
            "best": {"layer": 3, "score": 0.5},
            "n": 7,
        }

    many(2.0)
    run = cb.load_experiment("many", project=tmp_path)
    res = run.results
    got = res["patching"]
    assert isinstance(got, Patching) and got.site == "heads"
    np.testing.assert_array_equal(got.values, _patching().values)
    np.testing.assert_array_equal(res["trace"].values, trace.values)
    assert res["trace"].kinds == ("mlp",)
    np.testing.assert_array_equal(res["scores"], values * 2.0)
    assert res["best"] == {"layer": 3, "score": 0.5} and res["n"] == 7
    kinds = {e["key"]: e["kind"] for e in run.entries}
    assert kinds == {
        "patching": "result",
        "trace": "result",
        "scores": "array",
        "best": "json",
        "n": "json",
    }
    assert "Patching(heads" in next(e["repr"] for e in run.entries if e["key"] == "patching")
    assert run.arguments == {"scale": 2.0}
    # A file rewritten as a pickle is refused, not executed.
    f = run.folder / next(e["file"] for e in run.entries if e["key"] == "scores")
    np.save(f.with_suffix(".npy"), np.array([object()], dtype=object), allow_pickle=True)
    os.replace(f.with_suffix(".npy"), f)
    with pytest.raises(ValueError, match="pickle"):
        cb.load_experiment("many", project=tmp_path).results  # noqa: B018


def test_model_arguments_are_recorded_with_a_weights_hash(tmp_path) -> None:
    from .tiny_models import tiny_llama

    model, tok = tiny_llama()

    @cb.experiment(project=tmp_path)
    def measure(model, tok, prompt="the store"):
        return {"n": len(tok(prompt)["input_ids"])}

    measure(model, tok)
    run = cb.load_experiment("measure", project=tmp_path)
    (m,) = run.provenance["models"]
    assert m["class"] == "LlamaForCausalLM" and len(m["weights_sha256"]) == 64
    assert run.arguments["model"]["class"] == "LlamaForCausalLM"
    assert run.arguments["prompt"] == "the store"
    with cb.surgery(model) as s:  # an edited model has other weights: another hash
        s.delete_layers([0])
        measure(model, tok)
    again = cb.load_experiment("measure", project=tmp_path)
    assert again.provenance["models"][0]["weights_sha256"] != m["weights_sha256"]


def test_a_failing_run_is_logged_failed_and_reraised(tmp_path) -> None:
    @cb.experiment(project=tmp_path)
    def broken(x):
        raise KeyError("no such head")

    with pytest.raises(KeyError):
        broken(1)
    (run,) = Store(tmp_path).runs("broken")
    assert run.status == "failed" and "no such head" in run.error
    with pytest.raises(ValueError, match="no complete runs.*complete=False"):
        cb.load_experiment("broken", project=tmp_path)
    assert cb.load_experiment("broken", project=tmp_path, complete=False).status == "failed"


SLOW_RUN = """
import os, signal, sys, time
import numpy as np
import circuitboard as cb
from circuitboard.experiments import _values

project, mode = sys.argv[1], sys.argv[2]
cb.log("scan", {"ok": 1}, project=project)  # one complete run first

if mode == "during-write":
    real = _values.save_npz
    def torn(path, arrays):  # half a file, then the process dies mid-write
        with open(path, "wb") as f:
            f.write(b"PK\\x03\\x04 half a zip")
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    _values.save_npz = torn
    cb.log("scan", {"big": np.zeros(1000)}, project=project)
else:
    @cb.experiment(name="scan", project=project)
    def slow():
        print("started", flush=True)
        time.sleep(60)
        return 1
    slow()
"""


@pytest.mark.parametrize("mode", ["during-run", "during-write"])
def test_a_run_killed_mid_write_leaves_the_store_readable(tmp_path, mode) -> None:
    script = tmp_path / "slow.py"
    script.write_text(SLOW_RUN, encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "log"), mode],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    if mode == "during-run":
        assert proc.stdout.readline().strip() == "started"
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    runs = Store(tmp_path / "log").runs("scan")
    assert [r.status for r in runs] == ["complete", "incomplete"]
    assert runs[1].entries == [] and runs[1].results == {}
    json.loads((runs[1].folder / "record.json").read_text())  # not torn
    assert cb.load_experiment("scan", project=tmp_path / "log").results == {"ok": 1}
    assert "incomplete" in repr(
        cb.load_experiment("scan", project=tmp_path / "log", complete=False)
    )


WRITER = """
import sys
import numpy as np
import circuitboard as cb

project, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    cb.log("race", {"who": who, "i": i, "arr": np.full(3, i)}, params={"who": who}, project=project)
"""


def test_two_processes_logging_at_once_keep_every_record(tmp_path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER, encoding="utf-8")
    n = 25
    procs = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path / "log"), who, str(n)], env=ENV)
        for who in ("a", "b")
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0
    runs = Store(tmp_path / "log").runs("race")
    assert len(runs) == 2 * n and {r.status for r in runs} == {"complete"}
    seen = sorted((r.results["who"], r.results["i"]) for r in runs)
    assert seen == sorted((w, i) for w in ("a", "b") for i in range(n))
    assert all((r.results["arr"] == r.results["i"]).all() for r in runs)


def test_bad_inputs_name_the_fix(tmp_path) -> None:
    with pytest.raises(ValueError, match="no experiment 'nope'.*experiments there: none yet"):
        cb.load_experiment("nope", project=tmp_path)
    cb.log("one", 1, project=tmp_path)
    with pytest.raises(ValueError, match=r"no complete runs of version 4; versions: v1"):
        cb.load_experiment("one", 4, project=tmp_path)
    with pytest.raises(ValueError, match="run=5 is out of range"):
        cb.load_experiment("one", run=5, project=tmp_path)
    with pytest.raises(ValueError, match="without path separators"):
        cb.log("../escape", 1, project=tmp_path)
    with pytest.raises(TypeError, match="cannot store without pickling"):
        cb.log("obj", {"x": object()}, project=tmp_path)
    assert Store(tmp_path).runs("obj")[0].status == "failed"
    with pytest.raises(TypeError, match="object array"):
        cb.log("objarr", np.array([object()], dtype=object), project=tmp_path)
    with pytest.raises(TypeError, match="decorates a function"):
        cb.experiment(3)
    with pytest.raises(ValueError, match="stored 2 results"):
        cb.log("two", {"a": 1, "b": 2}, project=tmp_path).result  # noqa: B018


def test_widget_lists_refreshes_and_shows_result_views(tmp_path) -> None:
    trace = CausalTrace(
        np.zeros((1, 2, 3)),
        np.zeros((1, 2, 3)),
        np.zeros((1, 1, 2, 3)),
        ("mlp",),
        ["a", "b", "c"],
        [1],
        " x",
        5,
        0.5,
        0.1,
        np.array([0.1]),
        3.0,
        0.3,
        1,
        0,
        (1, 10),
    )
    first = cb.log("trace", {"trace": trace, "n": 1}, project=tmp_path)
    browser = cb.experiments(tmp_path)
    view = browser.view
    assert [e["name"] for e in view.experiments] == ["trace"]
    (entry,) = view.experiments[0]["runs"]
    assert entry["status"] == "complete" and [r["key"] for r in entry["results"]] == ["trace", "n"]
    view.selected_run = first.run_id
    assert [type(v).__name__ for v in browser.results.children] == ["CausalTraceView"]
    cb.log("trace", {"n": 2}, source="v2", project=tmp_path)
    view.refresh()
    assert len(view.experiments[0]["runs"]) == 2 and len(view.experiments[0]["versions"]) == 2
    assert view.experiments[0]["versions"][1]["diff"].startswith("--- trace v1")
    with pytest.raises(ValueError, match="no run 'nope'.*click a run"):
        view.run("nope")
