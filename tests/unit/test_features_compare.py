"""cb.compare(..., saes=[...]): feature statistics equal brute force from per-prompt captures,
shards (serial and processes) equal one pass, an identity dictionary over MLP neurons gives the
neuron comparison exactly, save/load keeps features and labels, bad input says the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.analysis._compare import Comparison, compare
from circuitboard.analysis._features import feature_acts
from circuitboard.widgets import decode
from tests.unit.sae_helpers import IdentityDictionary, ReluSAE
from tests.unit.scale_helpers import (
    BATCH,
    CATEGORIES,
    SHARDS,
    assert_same_comparison,
    pin_one_thread,
    save_tiny,
)
from tests.unit.tiny_models import tiny_llama

A = ["When Mary and John went to the store", "the quick brown fox", "1 2 3 4"]
B = ["Hello world", "def f(x): return x", "the the the and", "naïve café"]
RESID = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama()


@pytest.fixture(scope="module")
def saes():
    return [ReluSAE(32, 64, RESID, seed=1), ReluSAE(32, 40, "blocks.0.hook_resid_pre", seed=2)]


@pytest.mark.parametrize("pos", [-1, "all", "mean"])
def test_feature_statistics_equal_brute_force(tiny, saes, pos):
    model, tok = tiny
    # one prompt per forward on both sides, so the float32 activations are the same bits
    cmp = compare(model, tok, {"A": A, "B": B}, saes=saes, pos=pos, batch_size=1)
    assert cmp.stat_names[-2:] == [f"features:{RESID}", "features:blocks.0.hook_resid_pre"]
    for name, prompts in (("A", A), ("B", B)):
        caps = [cb.capture(model, tok, p, saes=saes, dtype=torch.float32) for p in prompts]
        for sae in saes:
            rows = []
            for c in caps:
                x = feature_acts(c, sae.hook).double().numpy()  # [T, d_sae]
                rows.append(
                    x[-1:] if pos == -1 else x if pos == "all" else x.mean(0, keepdims=True)
                )
            x = np.concatenate(rows)
            st = cmp.stats[name][f"features:{sae.hook}"]
            assert st.count == len(x) and st.shape == (sae.d_sae,)
            np.testing.assert_allclose(st.mean, x.mean(0), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(st.var(), x.var(0, ddof=1), rtol=1e-9, atol=1e-12)
    # the effect sizes are the neurons' formulas on these moments
    e = cmp.effect("A", "B", f"features:{RESID}")
    sa, sb = cmp.stats["A"][f"features:{RESID}"], cmp.stats["B"][f"features:{RESID}"]
    pooled = np.sqrt((sa.m2 + sb.m2) / (sa.count + sb.count - 2))
    live = pooled > 0
    want = (sa.mean - sb.mean)[live] / pooled[live]
    np.testing.assert_allclose(e.d[live], want, rtol=1e-12)


def test_top_features_rank_every_dictionary_and_name_labels(tiny, saes):
    model, tok = tiny
    labelled = ReluSAE(32, 64, RESID, seed=1)
    labelled.metadata = {"labels": {3: "<b>three</b>", 10: "ten"}}
    cmp = compare(model, tok, {"A": A, "B": B}, saes=[labelled, saes[1]], stats=["features"])
    assert cmp.stat_names == [f"features:{RESID}", "features:blocks.0.hook_resid_pre"]
    top = cmp.top("A", "B", "features", k=500, by="t")
    assert len(top) == 64 + 40
    scores = [abs(t["t"]) if np.isfinite(t["t"]) else np.inf for t in top]
    assert scores == sorted(scores, reverse=True)
    by_key = {(t["hook"], t["feature"]): t for t in top}
    assert by_key[(RESID, 3)]["name"] == "<b>three</b>" and by_key[(RESID, 4)]["name"] == ""
    assert by_key[(RESID, 3)]["label"] == "L1 F3"
    only0 = cmp.top("A", "B", "features", k=5, layer=0)
    assert {t["hook"] for t in only0} == {"blocks.0.hook_resid_pre"}
    # labels and statistics survive a save (the stat names hold dots)
    path = cmp.save(tempfile_path("cmp.npz"))
    back = cb.load_comparison(path)
    assert back.features == cmp.features and back.stat_names == cmp.stat_names
    assert_same_comparison_ab(back, cmp)


def tempfile_path(name):
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp()) / name


def assert_same_comparison_ab(got, want):
    for c in want.categories:
        for s in want.stat_names:
            np.testing.assert_array_equal(got.stats[c][s].mean, want.stats[c][s].mean)
            np.testing.assert_array_equal(got.stats[c][s].m2, want.stats[c][s].m2)


def test_identity_dictionary_over_neurons_gives_the_neuron_comparison(tiny):
    model, tok = tiny
    ident = IdentityDictionary(48, "blocks.1.mlp.hook_post")
    for pos in (-1, "all"):
        cmp = compare(model, tok, {"A": A, "B": B}, saes=[ident], layers=[1], pos=pos)
        for c in ("A", "B"):
            n, f = cmp.stats[c]["neurons"], cmp.stats[c]["features:blocks.1.mlp.hook_post"]
            assert n.count == f.count
            np.testing.assert_array_equal(f.mean, n.mean[0])
            np.testing.assert_array_equal(f.m2, n.m2[0])
        en, ef = cmp.effect("A", "B", "neurons"), cmp.effect("A", "B", "features")
        for m in ("d", "t", "diff"):
            np.testing.assert_array_equal(getattr(ef, m), getattr(en, m)[0])
        tn = cmp.top("A", "B", "neurons", k=10)
        tf = cmp.top("A", "B", "features", k=10)
        assert [t["neuron"] for t in tn] == [t["feature"] for t in tf]
        assert [t["d"] for t in tn] == [t["d"] for t in tf]


def test_from_captures_compares_the_dictionaries_the_captures_ran(tiny, saes):
    model, tok = tiny
    caps = {
        k: cb.capture(model, tok, v, saes=saes, dtype=torch.float32)
        for k, v in (("A", A), ("B", B))
    }
    direct = Comparison.from_captures(caps, stats=["features"])
    run = compare(model, tok, {"A": A, "B": B}, saes=saes, stats=["features"])
    assert direct.stat_names == run.stat_names
    assert_same_comparison_ab(direct, run)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from pin_one_thread()  # workers run one torch thread: the same sums as here


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    from circuitboard.scale import shutdown

    spec = save_tiny(tmp_path_factory.mktemp("tiny"))
    yield spec
    shutdown()


def test_shards_and_processes_equal_one_pass(spec, saes):
    model, tok = spec.load()
    one = compare(
        model, tok, CATEGORIES, batch_size=BATCH, saes=saes, stats=["features", "neurons"]
    )
    for n in SHARDS:
        got = compare(
            spec, None, CATEGORIES, batch_size=BATCH, saes=saes, stats=["features", "neurons"],
            shards=n, progress=False,
        )  # fmt: skip
        assert_same_comparison(got, one)
    got = compare(
        spec, None, CATEGORIES, batch_size=BATCH, saes=saes, stats=["features", "neurons"],
        engine="processes", workers=2, shards=3, progress=False,
    )  # fmt: skip
    assert_same_comparison(got, one)
    assert got.features == one.features


def test_checkpoint_key_names_the_dictionary_weights(spec, saes, tmp_path):
    kw = dict(batch_size=BATCH, stats=["features"], shards=3, checkpoint=tmp_path, progress=False)
    compare(spec, None, CATEGORIES, saes=saes, **kw)
    other = [ReluSAE(32, 64, RESID, seed=9), saes[1]]  # same shapes, other weights
    with pytest.raises(ValueError, match="another run|different|folder"):
        compare(spec, None, CATEGORIES, saes=other, **kw)


def test_bad_feature_requests_say_the_fix(tiny, saes):
    model, tok = tiny
    with pytest.raises(ValueError, match="no dictionaries were given; pass saes="):
        compare(model, tok, {"A": A, "B": B}, stats=["features"])
    with pytest.raises(ValueError, match="leaves out 'features'; add 'features'"):
        compare(model, tok, {"A": A, "B": B}, saes=saes, stats=["neurons"])
    cmp = compare(model, tok, {"A": A, "B": B}, saes=saes, stats=["features"])
    with pytest.raises(ValueError, match="holds 2 dictionaries; name one"):
        cmp.effect("A", "B", "features")
    with pytest.raises(IndexError, match="no dictionary at layer=5"):
        cmp.top("A", "B", "features", layer=5)
    plain = compare(model, tok, {"A": A, "B": B}, stats=["neurons"])
    with pytest.raises(ValueError, match="holds no dictionary features; compare with saes="):
        plain.top("A", "B", "features")
    with pytest.raises(ValueError, match="different dictionaries"):
        cmp.merge(compare(model, tok, {"A": A, "B": B}, saes=saes[:1], stats=["features"]))


def test_compare_view_lists_features_with_current_labels(tiny):
    model, tok = tiny
    sae = cb.SAE(32, 48, kind="topk", k=4, hook=RESID, seed=2)
    cmp = compare(model, tok, {"A": A, "B": B}, saes=[sae], stats=["head_write", "features"])
    view = cb.compare_view(cmp, k=48)
    reply, buffers = view._fetch_features({"a": 0, "b": 1, "by": "d", "layer": None})
    rows = decode({**reply["rows"], "data": buffers[reply["rows"]["data"]]})
    assert [int(f) for f in rows[:, 1]] == [
        t["feature"] for t in cmp.top("A", "B", "features", k=48)
    ]
    assert set(reply["names"]) == {""} and reply["hooks"][0] == RESID
    names = list(sae.labels)
    first = int(rows[0, 1])
    names[first] = "renamed \ud800"
    sae.labels = names
    relabelled = cb.compare_view(cmp, k=48, labels=[sae])
    reply, _ = relabelled._fetch_features({"a": 0, "b": 1, "by": "d", "layer": None})
    assert reply["names"][0] == "renamed \ufffd"  # text a page can show
    other = cb.SAE(32, 48, kind="topk", k=4, hook="blocks.0.hook_resid_post", seed=2)
    with pytest.raises(ValueError, match="did not compare.*saes="):
        cb.compare_view(cmp, labels=other)
    with pytest.raises(IndexError, match="not a category index"):
        view._fetch_features({"a": 5, "b": 1})
