"""The recorder's sums: the fast reductions equal a direct numpy computation, edge cases too."""

from __future__ import annotations

import numpy as np
import torch

from circuitboard.training._stats import brute_force, finish, many_sums, row_sums


def _with_zeros(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    x[x.abs() < 0.3] = 0.0
    x.view(-1)[1] = -0.0  # a negative zero is a zero
    return x


def test_row_sums_equal_brute_force_per_row():
    x = _with_zeros((5, 3, 7))
    got = finish(row_sums(x))
    for i in range(5):
        np.testing.assert_allclose(got[i], brute_force(x[i]), rtol=1e-6, atol=1e-12)


def test_row_sums_masked_count_only_kept_positions():
    x = _with_zeros((4, 6, 3), seed=1)
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(2)) > 0.4
    mask[0] = False  # an empty row: NaN KPIs, not zeros
    got = finish(row_sums(x, mask))
    assert np.isnan(got[0]).all()
    for i in range(1, 4):
        np.testing.assert_allclose(got[i], brute_force(x[i][mask[i]]), rtol=1e-6, atol=1e-12)


def test_half_precision_is_summed_in_float32():
    x = _with_zeros((2, 50), seed=3).half()
    got = finish(row_sums(x))
    np.testing.assert_allclose(got[1], brute_force(x[1].float()), rtol=1e-6, atol=1e-12)


def test_many_sums_equal_brute_force_per_tensor():
    ts = [
        _with_zeros((3, 4), 4),
        _with_zeros((17,), 5).double(),
        torch.zeros(0),
        _with_zeros((2, 2, 2), 6).half(),
        _with_zeros((3, 5), 9).bfloat16(),  # numpy cannot read it: converted first
        _with_zeros((4, 6), 10).t(),  # not contiguous
    ]
    got = finish(many_sums(ts))
    for t, g in zip(ts, got, strict=True):
        if t.numel():
            np.testing.assert_allclose(g, brute_force(t.float()), rtol=1e-6, atol=1e-12)
        else:
            assert np.isnan(g).all()
    assert many_sums([]).shape == (0, 6)


def test_many_sums_large_tensors_take_the_torch_path_and_agree():
    big = _with_zeros((257, 256), 7)  # above the numpy path's size: reduced by torch
    small = _with_zeros((9,), 8)
    got = finish(many_sums([big, small]))
    np.testing.assert_allclose(got[0], brute_force(big), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(got[1], brute_force(small), rtol=1e-6, atol=1e-12)


def test_packed_probe_arrays_read_back_exactly():
    from circuitboard.training._store import pack, unpack

    codes = np.arange(2 * 3 * 64, dtype=np.uint8).reshape(2, 3, 64)
    scores = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    back = unpack(pack({"codes": codes, "induction": scores}))
    np.testing.assert_array_equal(back["codes"], codes)
    np.testing.assert_array_equal(back["induction"], scores)
    assert back["codes"].dtype == np.uint8
