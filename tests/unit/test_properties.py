"""Property-based tests (hypothesis): codec round trips over shapes and dtypes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from circuitboard.widgets import decode, encode

finite32 = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
shapes = array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=9)


@settings(max_examples=150, deadline=None)
@given(arrays(np.float32, shapes, elements=st.floats(0, 1, width=32)))
def test_uint8_probabilities_within_half_a_step(x):
    out = decode(encode(x, lo=0.0, hi=1.0))
    assert out.shape == x.shape
    assert np.abs(out - x).max() <= 0.5 / 255 + 1e-6


@settings(max_examples=150, deadline=None)
@given(arrays(np.float32, shapes, elements=finite32))
def test_uint8_auto_range_within_half_a_step(x):
    enc = encode(x)
    out = decode(enc)
    assert np.abs(out - x).max() <= enc["scale"] / 2 + 1e-3 * max(1.0, float(np.abs(x).max()))


@settings(max_examples=150, deadline=None)
@given(arrays(np.float32, shapes, elements=finite32), st.sampled_from(["float16", "float32"]))
def test_float_round_trip(x, dtype):
    out = decode(encode(x, dtype))
    if dtype == "float32":
        assert np.array_equal(out, x)
    else:
        assert np.allclose(out, x.astype(np.float16).astype(np.float32), equal_nan=True)


@settings(max_examples=100, deadline=None)
@given(arrays(np.float64, shapes, elements=st.floats(allow_nan=True, allow_infinity=True, width=64)))
def test_non_finite_values_never_crash(x):
    for dtype in ("uint8", "float16", "float32"):
        out = decode(encode(x, dtype))
        assert out.shape == x.shape
        if dtype != "uint8":
            assert (np.isnan(out) == np.isnan(x)).all()
