"""Without scikit-learn, the default vision model names the extra to install (issue 24)."""

from __future__ import annotations

import sys

import pytest

import circuitboard as cb


def test_without_scikit_learn_the_vision_model_names_the_extra(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CIRCUITBOARD_CACHE", str(tmp_path))  # no cached model: it must train
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn` raise
    with pytest.raises(ModuleNotFoundError, match=r'pip install "circuitboard\[vision\]"'):
        cb.load_default_vision_model()
    with pytest.raises(ModuleNotFoundError, match=r'pip install "circuitboard\[vision\]"'):
        cb.models.digits()
    assert not list(tmp_path.iterdir()), "nothing is trained or cached without the data"
