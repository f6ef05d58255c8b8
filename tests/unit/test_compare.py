"""cb.compare: mergeable statistics, effect sizes, the per-prompt samples, the view and errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import circuitboard as cb
from circuitboard.analysis._compare import (
    Comparison,
    RunningStats,
    compare,
    effect_size,
    samples_from_capture,
)
from circuitboard.widgets import decode

A = ["When Mary and John went to the store", "the quick brown fox", "1 2 3 4"]
B = ["Hello world", "def f(x): return x", "the the the and", "naïve café"]


@pytest.fixture(scope="module")
def tiny():
    from tests.unit.tiny_models import tiny_llama

    return tiny_llama()


@pytest.fixture(scope="module")
def cmp(tiny):
    model, tok = tiny
    return compare(model, tok, {"A": A, "B": B}, batch_size=2)


# -- running statistics ------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_streamed_and_merged_stats_equal_numpy(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, size=(57, 3, 4)) * rng.uniform(0.1, 10, size=(1, 3, 4))
    cuts = np.sort(rng.choice(np.arange(1, 57), size=6, replace=False))
    shards = [RunningStats.of(s) for s in np.split(x, cuts)]
    want_mean, want_var = x.mean(0), x.var(0, ddof=1)
    for order in itertools.islice(itertools.permutations(range(len(shards))), 0, 5040, 97):
        acc = RunningStats.empty((3, 4))
        for i in order:
            acc = acc.merge(shards[i])
        assert acc.count == 57
        np.testing.assert_allclose(acc.mean, want_mean, rtol=1e-12)
        np.testing.assert_allclose(acc.var(), want_var, rtol=1e-10)
    # a tree of merges equals a left fold, and update() streams one batch at a time
    tree = (
        (shards[0].merge(shards[1]))
        .merge(shards[2].merge(shards[3]))
        .merge(shards[4].merge(shards[5].merge(shards[6])))
    )
    np.testing.assert_allclose(tree.var(), want_var, rtol=1e-10)
    stream = RunningStats.empty((3, 4))
    for row in x:
        stream.update(row[None])
    np.testing.assert_allclose(stream.mean, want_mean, rtol=1e-12)
    np.testing.assert_allclose(stream.std(), x.std(0, ddof=1), rtol=1e-10)


def test_large_offset_is_stable():
    x = 1e8 + np.random.default_rng(0).normal(size=(1000, 2))
    acc = RunningStats.empty((2,))
    for chunk in np.array_split(x, 37):
        acc.update(chunk)
    np.testing.assert_allclose(acc.var(), x.var(0, ddof=1), rtol=1e-6)


def test_effect_sizes_known_answer():
    # Two groups with known means and stds: d = (ma - mb) / pooled sd, Welch t.
    rng = np.random.default_rng(1)
    a = rng.normal(size=(40, 5))
    b = rng.normal(size=(25, 5))
    a = (a - a.mean(0)) / a.std(0, ddof=1) * 2.0 + 1.0  # exactly mean 1, sd 2
    b = (b - b.mean(0)) / b.std(0, ddof=1) * 1.0 + 0.0  # exactly mean 0, sd 1
    diff, d, t = effect_size(RunningStats.of(a), RunningStats.of(b))
    pooled = np.sqrt((39 * 4 + 24 * 1) / 63)
    np.testing.assert_allclose(diff, 1.0, atol=1e-12)
    np.testing.assert_allclose(d, 1.0 / pooled, rtol=1e-12)
    np.testing.assert_allclose(t, 1.0 / np.sqrt(4 / 40 + 1 / 25), rtol=1e-12)
    # constant categories: 0 when equal, ±inf when not
    same = RunningStats.of(np.ones((3, 2)))
    other = RunningStats.of(np.array([[1.0, 2.0]] * 3))
    _, d, t = effect_size(same, other)
    assert d.tolist() == [0.0, -np.inf] and t.tolist() == [0.0, -np.inf]


def test_effect_needs_two_samples():
    one = RunningStats.of(np.ones((1, 2)))
    with pytest.raises(ValueError, match="at least 2 samples per category; got 1 and 3"):
        effect_size(one, RunningStats.of(np.ones((3, 2))))


def test_merge_shape_mismatch():
    with pytest.raises(ValueError, match=r"shape \(2,\) with \(3,\)"):
        RunningStats.empty((2,)).merge(RunningStats.empty((3,)))


# -- statistics from a tiny model -----------------------------------------------------------
def test_stats_equal_direct_computation(tiny, cmp):
    import torch

    model, tok = tiny
    caps = cb.capture(model, tok, A, dtype=torch.float32, what="all")
    L = caps[0].info.n_layers
    for stat, expect in {
        "head_write": lambda c, li: c.per_head_writes(li, pos=-1).norm(dim=-1),
        "attn_first": lambda c, li: c[f"blocks.{li}.attn.hook_pattern"][:, -1, 0],
        "attn_prev": lambda c, li: c[f"blocks.{li}.attn.hook_pattern"][:, -1, -2],
        "attn_entropy": lambda c, li: (
            -(
                c[f"blocks.{li}.attn.hook_pattern"][:, -1].clamp_min(1e-30).log()
                * c[f"blocks.{li}.attn.hook_pattern"][:, -1]
            ).sum(-1)
        ),
        "mlp_out": lambda c, li: c[f"blocks.{li}.hook_mlp_out"][-1].norm(),
        "attn_out": lambda c, li: c[f"blocks.{li}.hook_attn_out"][-1].norm(),
        "neurons": lambda c, li: c[f"blocks.{li}.mlp.hook_post"][-1],
    }.items():
        x = np.stack([np.stack([expect(c, li).double().numpy() for li in range(L)]) for c in caps])
        st = cmp.stats["A"][stat]
        assert st.count == len(A)
        np.testing.assert_allclose(st.mean, x.mean(0), rtol=1e-5, atol=1e-6, err_msg=stat)
        np.testing.assert_allclose(st.var(), x.var(0, ddof=1), rtol=1e-4, atol=1e-8, err_msg=stat)


def test_from_captures_equals_compare_and_shards_merge(tiny, cmp):
    import torch

    model, tok = tiny
    caps = {
        k: cb.capture(
            model,
            tok,
            v,
            dtype=torch.float32,
            what=("z", "pattern", "attn_out", "mlp_out", "mlp_post", "resid_pre"),
        )
        for k, v in {"A": A, "B": B}.items()
    }
    direct = Comparison.from_captures(caps)
    shard1 = compare(model, tok, {"B": B[:1], "A": A[:2]})
    shard2 = compare(model, tok, {"A": A[2:], "B": B[1:]}, batch_size=3)
    for merged in (shard1.merge(shard2), shard2.merge(shard1)):
        assert merged.n_prompts == {"A": 3, "B": 4}
        for c in ("A", "B"):
            for s in cmp.stat_names:
                for other in (merged, direct):
                    np.testing.assert_allclose(
                        other.stats[c][s].mean, cmp.stats[c][s].mean, rtol=1e-5, atol=1e-6
                    )
                    np.testing.assert_allclose(
                        other.stats[c][s].m2, cmp.stats[c][s].m2, rtol=1e-4, atol=1e-7
                    )
    e1 = cmp.effect("A", "B", "attn_prev")
    e2 = shard2.merge(shard1).effect("A", "B", "attn_prev")
    np.testing.assert_allclose(e1.d, e2.d, rtol=1e-4, atol=1e-6)


def test_pos_all_and_mean(tiny):
    import torch

    model, tok = tiny
    caps = cb.capture(model, tok, A, dtype=torch.float32)
    n_tok = sum(c.n_tokens for c in caps)
    allc = compare(model, tok, {"A": A, "B": B}, pos="all", stats=["neurons", "attn_prev"])
    assert allc.count("A") == n_tok and allc.stat_names == ["attn_prev", "neurons"]
    x = np.concatenate([c.stack("mlp.hook_post").double().numpy().transpose(1, 0, 2) for c in caps])
    np.testing.assert_allclose(allc.stats["A"]["neurons"].mean, x.mean(0), rtol=1e-5, atol=1e-6)
    meanc = compare(model, tok, {"A": A, "B": B}, pos="mean", stats=["neurons"])
    per = np.stack([c.stack("mlp.hook_post").double().numpy().mean(1) for c in caps])
    np.testing.assert_allclose(meanc.stats["A"]["neurons"].mean, per.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        meanc.stats["A"]["neurons"].var(), per.var(0, ddof=1), rtol=1e-4, atol=1e-9
    )
    # attention to the previous token of position 0 is 0, of position t is pattern[t, t-1]
    s = samples_from_capture(caps[0], ["attn_prev"], [0], pos="all")["attn_prev"]
    p = caps[0]["blocks.0.attn.hook_pattern"].double().numpy()
    assert (s[0] == 0).all()
    np.testing.assert_allclose(s[3, 0], p[:, 3, 2], rtol=1e-6)


def test_top_and_save_load(cmp, tmp_path):
    top = cmp.top("A", "B", "neurons", k=5)
    e = cmp.effect("A", "B", "neurons")
    best = np.sort(np.abs(e.d).ravel())[::-1][:5]
    np.testing.assert_allclose([abs(t["d"]) for t in top], best)
    assert top[0]["label"] == f"L{top[0]['layer']} N{top[0]['neuron']}"
    heads = cmp.top("A", "B", "head_write", k=3, by="t", layer=1)
    assert all(h["layer"] == 1 for h in heads) and heads[0]["label"].startswith("L1H")
    path = cmp.save(tmp_path / "cmp.npz")
    back = Comparison.load(path)
    assert back.categories == cmp.categories and back.n_prompts == cmp.n_prompts
    np.testing.assert_array_equal(back.stats["B"]["neurons"].m2, cmp.stats["B"]["neurons"].m2)
    assert "Comparison({'A': 3, 'B': 4} prompts" in repr(back)


# -- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("categories", "kwargs", "err", "match"),
    [
        ({"A": A}, {}, ValueError, "at least 2 categories; got 1"),
        ({"A": A, "B": []}, {}, ValueError, "category 'B' has no prompts"),
        ({"A": A, "B": "one prompt"}, {}, TypeError, r"single string; pass a list"),
        ([A, B], {}, TypeError, "must be a dict"),
        ({"A": A, "B": ["ok", ""]}, {}, ValueError, r"prompts\[1\] must be a non-empty string"),
        ({"A": A, "B": B}, {"pos": "last"}, ValueError, "pos= got 'last'"),
        ({"A": A, "B": B}, {"stats": ["heads"]}, ValueError, r"stats= got \['heads'\]"),
        ({"A": A, "B": B}, {"batch_size": 0}, ValueError, "batch_size must be a positive int"),
        ({"A": A, "B": B}, {"pos": 40}, ValueError, "pos=40 is outside a prompt"),
    ],
)
def test_compare_errors(tiny, categories, kwargs, err, match):
    model, tok = tiny
    with pytest.raises(err, match=match):
        compare(model, tok, categories, **kwargs)


def test_comparison_errors(cmp):
    with pytest.raises(KeyError, match="no category 'C'"):
        cmp.effect("A", "C")
    with pytest.raises(ValueError, match="stat='x' is not in this comparison"):
        cmp.effect("A", "B", "x")
    with pytest.raises(ValueError, match="by='z' is not a measure"):
        cmp.top("A", "B", by="z")
    with pytest.raises(IndexError, match="layer=7 was not compared"):
        cmp.top("A", "B", layer=7)
    other = Comparison(["A"], {"A": {}}, [0], cmp.n_heads, cmp.d_mlp)
    with pytest.raises(ValueError, match="cannot merge comparisons made differently"):
        cmp.merge(other)


# -- the view ------------------------------------------------------------------------------
def test_view_traits_fetch_and_export(cmp):
    view = cb.compare_view(cmp, measure="t")
    assert (view.a, view.b, view.stat, view.measure) == ("A", "B", "head_write", "t")
    assert view.counts == [3, 4] and view.layers == [0, 1] and view.has_neurons
    heads = decode(view._heads)
    assert heads.shape == (4, 2, 2, 2, cmp.n_heads)
    np.testing.assert_allclose(heads[2, 1, 1], cmp.stats["B"]["attn_prev"].std(), rtol=1e-6)
    layers = decode(view._layer_vals)
    assert layers.shape == (2, 2, 2, 2)
    fields, buffers = view.answer(
        {"kind": "fetch-neurons", "a": 1, "b": 0, "by": "d", "layer": None}
    )
    rows = decode({**fields["rows"], "data": buffers[0]})
    top = cmp.top("B", "A", "neurons", k=view.k)
    assert rows.shape == (view.k, 9)
    np.testing.assert_allclose(rows[:, 2], [t["d"] for t in top], rtol=1e-6)
    assert rows[0, :2].tolist() == [top[0]["layer"], top[0]["neuron"]]
    reqs = view.export_requests(10**7)
    assert reqs[0] == {"kind": "fetch-neurons", "a": 0, "b": 1, "by": "d", "layer": None}
    assert len(reqs) == 2 * 3 * 3  # pairs × measures × (all layers, layer 0, layer 1)
    np.testing.assert_allclose(view.effect().t, cmp.effect("A", "B").t)


def test_view_errors(cmp):
    with pytest.raises(
        ValueError, match=r"a='nope' is not a category; categories are \['A', 'B'\]"
    ):
        cb.CompareView(cmp, a="nope")
    with pytest.raises(ValueError, match="a and b are both 'A'"):
        cb.CompareView(cmp, a="A", b="A")
    with pytest.raises(ValueError, match="stat='neurons' is not a head statistic"):
        cb.CompareView(cmp, stat="neurons")
    with pytest.raises(ValueError, match="measure='z'"):
        cb.CompareView(cmp, measure="z")
    with pytest.raises(TypeError, match="needs a Comparison"):
        cb.CompareView(object())
    view = cb.CompareView(cmp)
    import traitlets

    with pytest.raises(traitlets.TraitError, match="b='C' is not a category"):
        view.b = "C"
    with pytest.raises(IndexError, match="a=5 is not a category index"):
        view.answer({"kind": "fetch-neurons", "a": 5, "b": 0, "by": "d", "layer": None})


@pytest.mark.parametrize("factory", ["tiny_gpt2", "tiny_gemma2", "tiny_neox"])
def test_other_architectures_and_layer_subset(factory):
    from tests.unit import tiny_models

    model, tok = getattr(tiny_models, factory)()
    cmp = compare(model, tok, {"A": A, "B": B}, layers=[-1], pos="mean")
    n_layers = model.config.num_hidden_layers
    assert cmp.layers == [n_layers - 1]
    e = cmp.effect("A", "B", "head_write")
    assert e.d.shape == (1, cmp.n_heads) and np.isfinite(e.d).all()
    assert cmp.stats["B"]["neurons"].shape == (1, cmp.d_mlp)
    top = cmp.top("A", "B", "head_write", k=2)
    assert top[0]["layer"] == n_layers - 1
    view = cb.compare_view(cmp)
    assert view.layers == [n_layers - 1] and view.pos == "mean"
