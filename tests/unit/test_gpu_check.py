"""The GPU check script runs end to end on the CPU with tiny models, so a lent GPU session
only has to run it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_with_tiny_models(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import gpu_check
    finally:
        sys.path.remove(str(ROOT))
    argv = ["--device", "cpu", "--tiny", "--no-tl", "--gen-tokens", "4", "--out", str(tmp_path)]
    result = gpu_check.main(argv)
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert [r["case"] for r in saved["rows"]] == [
        "default model, float32",
        "default model, bfloat16",
        "Gemma-2-2B shapes, random bfloat16",
        "Llama-3.1-8B shapes, random bfloat16",
    ]
    for row in saved["rows"]:
        steps = {k: v for k, v in row.items() if isinstance(v, dict) and k != "dla"}
        assert len(steps) == 5, row["case"]
        failed = {k: v["error"] for k, v in steps.items() if "error" in v}
        assert not failed, (row["case"], failed)
        assert row["dla"]["exact"], row
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("\n| ") == 5 and "✗" not in table


def test_random_models_have_the_published_shapes() -> None:
    from circuitboard.testing import SHAPES, random_model

    for name, shape in SHAPES.items():
        model = random_model(name, layers=1, vocab_size=256)
        cfg = model.config
        assert cfg.model_type == shape["model_type"]
        assert cfg.hidden_size == shape["hidden_size"], name
        assert cfg.num_key_value_heads == shape["num_key_value_heads"], name
        assert all(
            p.dtype.is_floating_point and str(p.dtype) == "torch.bfloat16"
            for p in model.parameters()
        ), name
    with pytest.raises(ValueError, match=r"unknown shape 'gpt5'; choose one of \["):
        random_model("gpt5")
