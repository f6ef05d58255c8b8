"""Property-based tests (hypothesis): codec round trips; hook cleanup when a capture fails."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from circuitboard.widgets import decode, encode

finite32 = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
shapes = array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=9)
any64 = st.floats(allow_nan=True, allow_infinity=True, width=64)


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
@given(arrays(np.float64, shapes, elements=any64))
def test_non_finite_values_never_crash(x):
    for dtype in ("uint8", "float16", "float32"):
        out = decode(encode(x, dtype))
        assert out.shape == x.shape
        if dtype != "uint8":
            assert (np.isnan(out) == np.isnan(x)).all()
        else:  # every NaN / ±inf (in float32, where views work) comes back as NaN
            with np.errstate(over="ignore"):
                assert (np.isnan(out) == ~np.isfinite(x.astype(np.float32))).all()


@settings(max_examples=150, deadline=None)
@given(arrays(np.float32, shapes, elements=st.floats(0, 1, width=32) | st.just(float("nan"))))
def test_uint8_with_nan_keeps_finite_values_within_half_a_step(x):
    enc = encode(x, lo=0.0, hi=1.0)
    out = decode(enc)
    finite = np.isfinite(x)
    assert (np.isnan(out) == ~finite).all()
    assert np.abs(out[finite] - x[finite]).max(initial=0) <= enc["scale"] / 2 + 1e-6
    assert ("nonfinite" in enc) == (not finite.all())  # finite data keeps the plain encoding


@st.composite
def square_stacks(draw):
    n = draw(st.integers(1, 9))
    lead = draw(st.lists(st.integers(1, 3), max_size=2))
    return draw(arrays(np.float32, (*lead, n, n), elements=st.floats(0, 1, width=32)))


@settings(max_examples=60, deadline=None)
@given(square_stacks())
def test_tril_round_trip_keeps_the_lower_triangle(x):
    low = np.tril(x)
    out = decode(encode(low, lo=0.0, hi=1.0, tril=True))
    assert out.shape == low.shape
    assert np.abs(out - low).max() <= 0.5 / 255 + 1e-6


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, shapes, elements=any64))
def test_encode_never_warns(x):
    """Overflow to ±inf (float16/32) and NaN are intended; the codec stays silent."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for dtype in ("uint8", "float16", "float32"):
            encode(x, dtype)


# -- hook cleanup: a forward that raises at a random layer leaves the model as it was ---------

_MODELS: dict[str, tuple] = {}


def _tiny(name: str) -> tuple:
    if name not in _MODELS:
        from tests.unit.tiny_models import FACTORIES

        _MODELS[name] = FACTORIES[name]()
    return _MODELS[name]


class Boom(RuntimeError):
    pass


def _hooks(model) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(["gpt2", "llama", "neox", "gemma2", "qwen2", "bert"]),
    layer_frac=st.floats(0, 1, exclude_max=True),
    part=st.sampled_from(["block", "attn", "mlp_down"]),
    training=st.booleans(),
    what=st.sampled_from([None, "all", ("pattern",), ("mlp_post", "z")]),
)
def test_failed_capture_leaves_no_hooks_and_restores_the_model(
    name, layer_frac, part, training, what
):
    import pytest
    import torch

    import circuitboard as cb
    from circuitboard.capture.adapters import get_adapter
    from circuitboard.capture.adapters._base import get_module

    model, tok = _tiny(name)
    model.train(training)
    adapter = get_adapter(model)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        model.eval()
        before = model(input_ids=ids).logits.clone()
        model.train(training)
    attn_impl = model.config._attn_implementation
    hooks = _hooks(model)
    layer = int(layer_frac * adapter.n_blocks(model))
    block = adapter.block(model, layer)
    path = {"block": None, "attn": adapter.block_attn, "mlp_down": adapter.block_mlp_down}[part]
    target = block if path is None else get_module(block, path)

    def explode(*args, **kwargs):
        raise Boom(f"forward failed at layer {layer} ({part})")

    target.forward = explode  # instance attribute: nn.Module.__call__ picks it up
    try:
        with pytest.raises(Boom, match=f"layer {layer}"):
            cb.capture(model, tok, "When Mary and John went to the store", what=what)
    finally:
        del target.forward
    assert _hooks(model) == hooks, "capture left hooks behind"
    assert model.config._attn_implementation == attn_impl
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    with torch.no_grad():
        model.eval()
        after = model(input_ids=ids).logits
        model.train(training)
    assert torch.equal(before, after)
    model.eval()
