"""Codec round trips and the shape/token validation of the first view."""

from __future__ import annotations

import numpy as np
import pytest

from circuitboard.widgets import AttentionView, decode, encode


@pytest.mark.parametrize("shape", [(1,), (3, 4), (2, 5, 7), (2, 3, 4, 4)])
def test_uint8_probabilities_round_trip_within_1_over_255(shape):
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    enc = encode(x, lo=0.0, hi=1.0)
    assert enc["dtype"] == "uint8" and len(enc["data"]) == x.size
    assert np.abs(decode(enc) - x).max() <= 1 / 255


def test_float16_round_trip():
    x = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    assert np.allclose(decode(encode(x, "float16")), x, rtol=1e-3, atol=1e-3)


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    x = torch.rand(3, 3, dtype=torch.bfloat16)
    assert np.abs(decode(encode(x, lo=0, hi=1)) - x.float().numpy()).max() <= 1 / 255


def test_encode_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="dtype must be"):
        encode(np.zeros(2), "int4")


@pytest.mark.parametrize(
    ("attention", "tokens", "error", "match"),
    [
        (np.zeros((2, 2)), ["a", "b"], ValueError, r"has 2 dims .* \[layers, heads, query, key\]"),
        (np.zeros((1, 1, 1, 2, 2)), ["a", "b"], ValueError, "has 5 dims"),
        (np.full((1, 2, 2), 0.5), ["a"], ValueError, "got 1 tokens but attention has 2 positions"),
        (np.full((1, 2, 2), 0.5), "ab", TypeError, "tokens must be a list of strings"),
        (np.full((1, 2, 2), 0.5), ["a", 2], TypeError, r"tokens\[1\] is int"),
        (np.full((1, 2, 3), 0.5), ["a", "b"], ValueError, "must be square"),
        (np.zeros((1, 0, 0)), [], ValueError, "is empty"),
        ("not an array", ["a"], TypeError, "numeric array"),
    ],
)
def test_attention_view_validation(attention, tokens, error, match):
    with pytest.raises(error, match=match):
        AttentionView(attention, tokens)


def test_attention_view_head_out_of_range():
    with pytest.raises(IndexError, match=r"head=5 is out of range: there are 2"):
        AttentionView(np.full((1, 2, 2, 2), 0.5), ["a", "b"], head=5)


def test_widgets_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, circuitboard, circuitboard.widgets, circuitboard.export; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
