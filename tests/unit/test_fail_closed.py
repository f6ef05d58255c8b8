"""Fail closed: a damaged report never verifies, and no loader unpickles or passes on numpy's
advice to do so."""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.cli import main as cli
from tests.unit.tiny_models import tiny_llama

# -- reports ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def attention_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report of one attention view (no checks apply to it) and some prose."""
    view = cb.AttentionView(np.full((1, 3, 3), 1 / 3), ["When", " Mary", " and"])
    out = tmp_path_factory.mktemp("r") / "attention.html"
    return cb.report("## Heads\nWhere each token looks.", view, path=out, title="My heads")


@pytest.fixture(scope="module")
def checked_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, tok = tiny_llama()
    cap = cb.capture(model, tok, "When Mary and John went", dtype=torch.float32)
    ids = cap.token_ids.tolist()
    out = tmp_path_factory.mktemp("r") / "checked.html"
    return cb.report(cb.logit_attribution(cap, target=ids[1], baseline=ids[3]), path=out)


def _damaged(src: Path, tmp_path: Path, edit: Callable[[bytes], bytes]) -> Path:
    out = tmp_path / f"damaged-{src.name}"
    out.write_bytes(edit(src.read_bytes()))
    return out


def test_an_untouched_report_verifies(checked_report: Path) -> None:
    result = cb.verify_report(checked_report)
    assert result.ok and result.rows and not result.no_checks
    assert "all passed" in result.summary()


def test_views_without_checks_say_so_and_fail_strict(
    attention_report: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = cb.verify_report(attention_report)
    assert result.ok and result.no_checks
    assert "no checks apply to its views (Attention)" in result.summary()
    assert "all passed" not in result.summary()
    assert cli(["verify", str(attention_report)]) == 0
    assert cli(["verify", "--strict", str(attention_report)]) == 1
    assert "FAIL (--strict)" in capsys.readouterr().out


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.6, 0.9, 0.999])
def test_a_truncated_report_fails_naming_what_is_missing(
    attention_report: Path, tmp_path: Path, fraction: float
) -> None:
    cut = _damaged(attention_report, tmp_path, lambda b: b[: int(len(b) * fraction)])
    result = cb.verify_report(cut)
    assert not result.ok
    assert re.search(r"the page is incomplete: it lacks .*the seal", result.problems[0])
    assert cli(["verify", str(cut)]) == 1


def test_a_report_without_its_bundle_fails(attention_report: Path, tmp_path: Path) -> None:
    def drop_bundle(b: bytes) -> bytes:
        bundle = rb'<script id="cb-bundle" type="text/plain">.*?</script>\n'
        return re.sub(bundle, b"", b, flags=re.S)

    result = cb.verify_report(_damaged(attention_report, tmp_path, drop_bundle))
    assert not result.ok and "it lacks the widget bundle" in result.problems[0]


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda b: b.replace(b"<title>My heads", b"<title>Your heads"), id="title"),
        pytest.param(lambda b: b.replace(b"<h1>My heads", b"<h1>Our heads"), id="heading"),
        pytest.param(lambda b: b.replace(b"Where each token", b"Where no token"), id="prose"),
        pytest.param(lambda b: b.replace(b"works offline", b"works online"), id="footer"),
    ],
)
def test_edited_visible_text_fails(
    attention_report: Path, tmp_path: Path, edit: Callable[[bytes], bytes]
) -> None:
    edited = _damaged(attention_report, tmp_path, edit)
    assert edited.read_bytes() != attention_report.read_bytes()
    result = cb.verify_report(edited)
    assert not result.ok and "content hash mismatch" in result.problems[0]


def test_a_flipped_byte_in_the_bundle_fails(attention_report: Path, tmp_path: Path) -> None:
    def flip(b: bytes) -> bytes:
        at = b.index(b'<script id="cb-bundle" type="text/plain">') + 200
        new = b"A" if b[at : at + 1] != b"A" else b"B"
        return b[:at] + new + b[at + 1 :]

    result = cb.verify_report(_damaged(attention_report, tmp_path, flip))
    assert not result.ok and "content hash mismatch" in result.problems[0]


def test_a_flipped_byte_in_the_host_fails(checked_report: Path, tmp_path: Path) -> None:
    def flip(b: bytes) -> bytes:
        at = b.index(b'<script id="cb-host">') + 40
        return b[:at] + (b"x" if b[at : at + 1] != b"x" else b"y") + b[at + 1 :]

    result = cb.verify_report(_damaged(checked_report, tmp_path, flip))
    assert not result.ok and "content hash mismatch" in result.problems[0]


# -- loaders ---------------------------------------------------------------------------------


class _Marker:
    """Unpickling this writes a file: proof that a loader executed the file it was given."""

    path = ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (Path(self.path), "executed"))


def _tiny_results(tmp: Path) -> dict[str, Path]:
    """One valid file of each kind, written by its own save."""
    model, tok = tiny_llama()
    cap = cb.capture(model, tok, "When Mary and John went", dtype=torch.float32)
    files = {"capture": tmp / "cap.safetensors"}
    cap.save(files["capture"])
    clean, corrupted = "When Mary and John went", "When John and Mary went"
    patching = cb.patch(model, tok, clean, corrupted, answer=" Mary", wrong=" John", site="heads")
    files["patching"] = patching.save(tmp / "patching.npz")
    circuit = cb.circuit(model, tok, clean, corrupted, answer=" Mary", wrong=" John")
    files["circuit"] = circuit.save(tmp / "circuit.npz")
    comparison = cb.compare(model, tok, {"a": ["When Mary"], "b": ["When John"]})
    files["comparison"] = comparison.save(tmp / "comparison.npz")
    top = cb.top_activations(model, tok, ["When Mary and John went"], neurons=[(0, 1)])
    top.save(tmp / "top.npz")
    files["top activations"] = tmp / "top.npz"
    # everyday experiments (issue 29)
    comp = cb.composition_scores(model, baseline_samples=2)
    files["composition scores"] = comp.save(tmp / "composition.npz")
    path = cb.path_patch(
        model, tok, clean, corrupted, senders=[(0, 1)], answer=" Mary", wrong=" John"
    )
    files["path patching"] = path.save(tmp / "path.npz")
    files["ablation"] = cb.ablate(model, tok, [clean], ["L0H1"]).save(tmp / "ablation.npz")
    trace = cb.causal_trace(model, tok, clean, subject=" Mary", samples=1, kinds=("mlp",))
    files["causal trace"] = trace.save(tmp / "trace.npz")
    graph = cb.attribution_graph(model, tok, clean, basis="neurons", progress=False)
    graph.save(tmp / "graph.npz")
    files["attribution graph"] = tmp / "graph.npz"
    # dictionary features (issue 26)
    fa = cb.FeatureAttribution(
        "blocks.0.hook_resid_post", np.array([0.5, 0.0]), bias=0.1, error=0.05, rest=1.0,
        model_value=0.65, names={},
    )  # fmt: skip
    fa.save(tmp / "fa.npz")
    files["feature attribution"] = tmp / "fa.npz"
    fp = cb.FeaturePatching(
        "blocks.0.hook_resid_post", np.array([3]), np.array([0.7]), np.array([1.2]), "exact",
        "denoise", "logit diff", 1.5, 0.1, 0.02, 1.0, 1.0, {},
    )  # fmt: skip
    fp.save(tmp / "fp.npz")
    files["feature patching"] = tmp / "fp.npz"
    # training dynamics (issue 28)
    from tests.unit.training_helpers import tiny_toy, train_toy

    rec = cb.TrainingRecorder(tiny_toy(), modules=[], every=1, path=tmp / "run.sqlite")
    train_toy(rec.model, 2, rec)
    run = rec.close()
    files["training run"] = tmp / "run.sqlite"
    run.correlate("loss", max_lag=0).save(tmp / "corr.npz")
    files["KPI correlation"] = tmp / "corr.npz"
    return files


LOADERS: dict[str, Callable[[Path], Any]] = {
    "capture": cb.load_capture,
    "patching": cb.load_patching,
    "circuit": cb.load_circuit,
    "comparison": cb.load_comparison,
    "top activations": cb.load_top_activations,
    "composition scores": cb.load_composition_scores,  # issue 29
    "path patching": cb.load_path_patching,
    "ablation": cb.load_ablation,
    "causal trace": cb.load_causal_trace,
    "training run": cb.load_training_run,
    "KPI correlation": cb.load_kpi_correlation,
    "attribution graph": cb.load_graph,
    "feature attribution": cb.load_feature_attribution,
    "feature patching": cb.load_feature_patching,
}


@pytest.fixture(scope="module")
def good_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _tiny_results(tmp_path_factory.mktemp("kinds"))


def test_every_kind_round_trips(good_files: dict[str, Path]) -> None:
    assert set(good_files) == set(LOADERS)
    for kind, path in good_files.items():
        assert LOADERS[kind](path) is not None, kind


def _pickle_zip(path: Path, marker: Path) -> None:
    evil = _Marker()
    evil.path = str(marker)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([evil], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__meta__.npy", buf.getvalue())
        zf.writestr("values.npy", buf.getvalue())


def _bad_files(good: dict[str, Path], kind: str, tmp: Path, marker: Path) -> dict[str, Path]:
    src = good[kind].read_bytes()
    bad = {"empty": tmp / "empty", "random": tmp / "random", "pickle": tmp / "pickle"}
    bad["empty"].write_bytes(b"")
    bad["random"].write_bytes(np.random.default_rng(0).bytes(4096))
    bad["pickle"].write_bytes(pickle.dumps({"x": 1}))
    _pickle_zip(tmp / "evil.zip", marker)
    bad["zip with a pickled object"] = tmp / "evil.zip"
    for cut in (0.05, 0.3, 0.6, 0.95):
        p = tmp / f"cut{cut}"
        p.write_bytes(src[: max(1, int(len(src) * cut))])
        bad[f"truncated at {cut:.0%}"] = p
    other = next(k for k in good if k != kind)
    bad[f"a {other} file"] = good[other]
    return bad


@pytest.mark.parametrize("kind", list(LOADERS))
def test_every_loader_fails_closed(kind: str, good_files: dict[str, Path], tmp_path: Path) -> None:
    load, marker = LOADERS[kind], tmp_path / "marker"
    with pytest.raises(FileNotFoundError, match=f"no {kind} file at .*write a circuitboard"):
        load(tmp_path / "missing.npz")
    for what, path in _bad_files(good_files, kind, tmp_path, marker).items():
        with pytest.raises(cb.CircuitboardFileError) as err:
            load(path)
        message = str(err.value)
        assert f"is not a circuitboard {kind} file" in message, (what, message)
        assert re.search(r"write one with \S+(\.save\(path\)|\(model, path=path\))", message), (
            what,
            message,
        )
        assert "allow_pickle" not in message and "pickle.load" not in message, (what, message)
        assert err.value.__cause__ is None or isinstance(
            err.value.__cause__, cb.CircuitboardFileError
        ), what
    assert not marker.exists(), "a loader executed a pickled object"


def test_dictionary_loading_fails_closed(tmp_path: Path) -> None:
    """SAE.load reads other tools' folders: damaged ones are refused the same way, and a
    pickle dressed as safetensors is never executed."""
    sae = cb.SAE(8, 16, kind="topk", k=2, hook="blocks.0.hook_resid_post")
    good = Path(sae.save(tmp_path / "good"))
    weights = next(good.glob("*.safetensors"))
    marker = tmp_path / "marker"
    with pytest.raises(FileNotFoundError, match="no dictionary at that path"):
        cb.SAE.load(tmp_path / "missing")
    bad = tmp_path / "random.bin"
    bad.write_bytes(np.random.default_rng(0).bytes(64))
    with pytest.raises(cb.CircuitboardFileError, match="not a dictionary circuitboard reads"):
        cb.SAE.load(bad)
    for cut in (0.0, 0.3, 0.9):
        folder = tmp_path / f"cut{cut}"
        folder.mkdir()
        for f in good.iterdir():
            data = f.read_bytes()
            (folder / f.name).write_bytes(data[: int(len(data) * cut)] if f == weights else data)
        with pytest.raises(cb.CircuitboardFileError, match="not a dictionary circuitboard reads"):
            cb.SAE.load(folder)
    evil = tmp_path / "evil"
    evil.mkdir()
    for f in good.iterdir():
        (evil / f.name).write_bytes(f.read_bytes())
    _pickle_zip(evil / weights.name, marker)
    with pytest.raises(cb.CircuitboardFileError, match="not a dictionary circuitboard reads"):
        cb.SAE.load(evil)
    assert not marker.exists()
