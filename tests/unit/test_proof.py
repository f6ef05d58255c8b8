"""Reports prove themselves: provenance, check badges, and `circuitboard verify`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.cli import main as cli
from circuitboard.export._html import _state
from circuitboard.export._proof import SEAL_CLOSE, SEAL_OPEN, SEAL_PLACEHOLDER, seal
from circuitboard.widgets._checks import view_checks
from tests.unit.tiny_models import tiny_llama

PROVENANCE_KEYS = {
    "model",
    "architecture",
    "model_file",
    "weights_sha256",
    "dtype",
    "attention",
    "versions",
    "prompt",
    "n_tokens",
    "tensors_sha256",
}


@pytest.fixture(scope="module")
def tiny_cap() -> Any:
    model, tok = tiny_llama()
    return cb.capture(model, tok, "When Mary and John went to the store", dtype=torch.float32)


@pytest.fixture(scope="module")
def views(tiny_cap: Any) -> list[Any]:
    ids = tiny_cap.token_ids.tolist()
    return [
        cb.logit_attribution(tiny_cap, target=ids[2], baseline=ids[3]),
        cb.logit_lens_view(tiny_cap),
        cb.attention(tiny_cap),
    ]


def _proof(page: str) -> dict[str, Any]:
    found = re.search(r'<script id="cb-proof" type="application/json">(.*?)</script>', page, re.S)
    assert found, "the report embeds no proof block"
    return json.loads(found.group(1))


def test_badges_are_the_checks_recomputed_in_python(views: list[Any], tmp_path: Path) -> None:
    page = cb.report(*views, path=tmp_path / "r.html").read_text()
    proof = _proof(page)
    shown = list(proof["views"].values())
    for view, entry in zip(views, shown, strict=True):
        assert entry["checks"] == view_checks(_state(view))
    names = [c["name"] for v in shown for c in v["checks"]]
    assert "parts sum to the model's value" in names
    assert "last layer's top token is the model's" in names
    assert all(c["ok"] for v in shown for c in v["checks"])
    assert page.count('class="cb-badge ok"') == len(names)


def test_provenance_names_model_weights_versions_and_input(
    tiny_cap: Any, views: list[Any], tmp_path: Path
) -> None:
    page = cb.report(*views, path=tmp_path / "r.html").read_text()
    for entry in _proof(page)["views"].values():
        p = entry["provenance"]
        assert PROVENANCE_KEYS <= set(p)
        assert p["prompt"] == tiny_cap.prompt and p["n_tokens"] == tiny_cap.n_tokens
        assert p["dtype"] == "float32" and p["architecture"] == "llama"
        assert set(p["versions"]) == {"circuitboard", "torch", "transformers"}
        assert re.fullmatch(r"[0-9a-f]{64}", p["tensors_sha256"])
        assert re.fullmatch(r"[0-9a-f]{64}", p["weights_sha256"])
    assert "Provenance (model, weights, software, input)" in page


def test_tensor_hash_changes_with_the_data(tiny_cap: Any) -> None:
    from circuitboard.capture._provenance import provenance

    other = cb.capture(*tiny_llama(), "When Mary and John went to the shop", dtype=torch.float32)
    assert provenance(other)["tensors_sha256"] != provenance(tiny_cap)["tensors_sha256"]
    assert provenance(other)["weights_sha256"] == provenance(tiny_cap)["weights_sha256"]


def test_provenance_is_hashed_once_per_capture_and_forgotten_with_it() -> None:
    # Every view of a capture states its provenance; hashing the tensors once per view cost
    # 1.6 s each on a 527-token capture.
    import gc

    from circuitboard.capture import _provenance

    cap = cb.capture(*tiny_llama(), "When Mary and John went", dtype=torch.float32)
    assert _provenance.provenance(cap) is _provenance.provenance(cap)
    key = id(cap)
    assert key in _provenance._CACHE
    del cap
    gc.collect()
    assert key not in _provenance._CACHE


def test_verify_passes_on_a_fresh_report(views: list[Any], tmp_path: Path, capsys: Any) -> None:
    out = cb.report(*views, path=tmp_path / "r.html")
    assert cli(["verify", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "all passed" in printed and "parts sum to the model's value" in printed


def _edit_model_value(page: str, new: float) -> str:
    state = re.search(r'(<script id="cb-state" type="[^"]+">)(.*?)(</script>)', page, re.S)
    data = json.loads(state.group(2))
    attr = next(m for m in data["models"].values() if m["state"].get("_view") == "attribution")
    attr["state"]["model_value"] = new
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), sort_keys=True)
    return page[: state.start(2)] + text.replace("<", "\\u003c") + page[state.end(2) :]


def test_verify_fails_when_embedded_values_were_edited(
    views: list[Any], tmp_path: Path, capsys: Any
) -> None:
    out = cb.report(*views, path=tmp_path / "r.html")
    edited = tmp_path / "edited.html"
    edited.write_text(_edit_model_value(out.read_text(), 99.0))
    assert cli(["verify", str(edited)]) == 1
    assert "content hash mismatch" in capsys.readouterr().out


def test_verify_fails_an_edit_that_also_forged_the_hash(views: list[Any], tmp_path: Path) -> None:
    """Rewriting the hash too does not help: the checks are recomputed from the data."""
    from circuitboard.export._verify import verify_report

    page = _edit_model_value(cb.report(*views, path=tmp_path / "r.html").read_text(), 99.0)
    claimed = re.search(re.escape(SEAL_OPEN) + "([0-9a-f]{64})" + SEAL_CLOSE, page).group(1)
    page = seal(page.replace(SEAL_OPEN + claimed + SEAL_CLOSE, SEAL_PLACEHOLDER))
    forged = tmp_path / "forged.html"
    forged.write_text(page)
    result = verify_report(forged)
    assert not result.ok
    assert any("badges disagree" in p for p in result.problems)
    failed = [c["name"] for _, c in result.rows if not c["ok"]]
    assert failed == ["parts sum to the model's value"]


class _Inconsistent:
    """An attribution whose parts do not add up to its model value (a bug to surface)."""

    heads = np.array([[0.5, -0.2], [1.0, 0.1]])
    mlp = np.array([0.3, -0.4])
    labels = ["embed", "L0H0", "L0H1", "L0.mlp", "L1H0", "L1H1", "L1.mlp", "bias"]
    values = np.array([0.1, 0.5, -0.2, 0.3, 1.0, 0.1, -0.4, 0.0])
    model_value = 2.0  # the parts sum to 1.4
    description = "logit 'a'"

    def neurons(self, layer: int) -> np.ndarray:
        return np.array([0.3, 0.0]) if layer == 0 else np.array([-0.4, 0.0])


def test_a_failing_check_is_a_red_badge_and_fails_verify(tmp_path: Path) -> None:
    out = cb.report(cb.LogitAttributionView(_Inconsistent()), path=tmp_path / "bad.html")
    page = out.read_text()
    assert 'class="cb-badge fail"' in page
    assert cli(["verify", str(out)]) == 1


def test_verify_refuses_a_page_that_is_not_a_report(tmp_path: Path, capsys: Any) -> None:
    other = tmp_path / "other.html"
    other.write_text("<html><body>hello</body></html>")
    assert cli(["verify", str(other), str(tmp_path / "missing.html")]) == 1
    captured = capsys.readouterr()
    assert "not a circuitboard report" in captured.out and "no such file" in captured.err
