"""Feature dashboards: ``top_activations(features=(sae, ids))`` is the neuron scan over a
dictionary's features: an identity dictionary over neurons reproduces the neuron result
exactly, and shards (1, 3, 7) on every engine equal one pass."""

from __future__ import annotations

import numpy as np
import pytest

import circuitboard as cb
from circuitboard.analysis._neurons import top_activations
from circuitboard.scale import last_run, shutdown
from tests.unit.scale_helpers import SHARDS, TEXTS, assert_same_top, pin_one_thread, save_tiny

from .sae_helpers import IdentityDictionary

KW = dict(k=4, batch_size=3, progress=False)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from pin_one_thread()


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    spec = save_tiny(tmp_path_factory.mktemp("tiny"))
    yield spec
    shutdown()


@pytest.fixture(scope="module")
def sae():
    return cb.SAE(32, 64, kind="topk", k=4, hook="blocks.0.hook_resid_post", seed=0)


@pytest.fixture(scope="module")
def reference(spec, sae):
    model, tok = spec.load()
    return top_activations(model, tok, TEXTS, features=(sae, None), **KW)


def test_identity_dictionary_reproduces_the_neuron_dashboard(spec):
    model, tok = spec.load()
    ident = IdentityDictionary(48, "blocks.1.mlp.hook_post")
    neurons = top_activations(model, tok, TEXTS, layers=[1], **KW)
    feats = top_activations(model, tok, TEXTS, features=(ident, None), **KW)
    assert_same_top(feats, neurons)
    np.testing.assert_array_equal(feats.mean, neurons.mean)
    np.testing.assert_allclose(feats.promoted, neurons.promoted, rtol=1e-6, atol=1e-6)
    view = feats.dashboard((1, 7))
    assert view is not None


def test_feature_statistics_are_the_dictionary_encoding(spec, sae, reference):
    model, tok = spec.load()
    cap = cb.capture(model, tok, TEXTS[reference.text_index[5, 0]], saes=sae)
    acts = cap[f"{sae.hook}.sae.hook_sae_acts_post"].to_dense()
    # the top example of feature 5 is its maximum over that text, at the stored position
    p = int(reference.position[5, 0])
    assert abs(float(acts[p, 5]) - float(reference.values[5, 0])) < 1e-3 * max(1, float(acts[p, 5]))
    assert reference.neurons[:3] == [(0, 0), (0, 1), (0, 2)]


@pytest.mark.parametrize("shards", SHARDS)
def test_feature_shards_equal_one_pass(spec, sae, reference, shards):
    got = top_activations(spec, None, TEXTS, features=(sae, None), shards=shards, **KW)
    assert last_run().shards == shards
    assert got.cofire is not None and got.cofire.shape == (64, 64)
    assert_same_top(got, reference)  # co-firing counts included, exactly


@pytest.mark.slow
def test_feature_shards_on_processes(spec, sae, reference):
    got = top_activations(spec, None, TEXTS, features=(sae, None), engine="processes",
                          workers=2, shards=7, **KW)  # fmt: skip
    assert_same_top(got, reference)


def test_bad_feature_selection(spec, sae):
    model, tok = spec.load()
    with pytest.raises(IndexError, match=r"feature index 64 is out of range.*d_sae=64"):
        top_activations(model, tok, TEXTS, features=(sae, [64]), **KW)
    with pytest.raises(ValueError, match="not both"):
        top_activations(model, tok, TEXTS, features=(sae, [1]), layers=[0], **KW)
    with pytest.raises(TypeError, match=r"features= takes \(sae, ids\)"):
        top_activations(model, tok, TEXTS, features=sae, **KW)


def test_cofiring_counts_equal_brute_force(spec, sae, reference):
    """Every pair's co-firing count equals one read from per-text captures (the tokens the
    scan counts: special tokens left out), and the ranking follows the counts."""
    import torch

    model, tok = spec.load()
    one = top_activations(model, tok, TEXTS, features=(sae, None), k=4, batch_size=1,
                          progress=False)  # fmt: skip
    special = set(tok.all_special_ids)
    want = np.zeros((64, 64), dtype=np.int64)
    for text in TEXTS:
        ids = tok(text, truncation=True, max_length=128)["input_ids"]
        cap = cb.capture(model, tok, [ids], saes=sae, dtype=torch.float32)[0]
        fire = (cap[f"{sae.hook}.sae.hook_sae_acts_post"].to_dense() > 0).numpy()
        fire = fire[[t not in special for t in ids]].astype(np.int64)
        want += fire.T @ fire
    np.testing.assert_array_equal(one.cofire, want)
    np.testing.assert_array_equal(np.diag(want), one.positive)  # a feature with itself: fires
    # padded batches (the reference) count the same tokens the same way
    np.testing.assert_array_equal(reference.cofire, want)
    f = int(np.argmax(np.diag(want)))
    top = one.cofiring(0, f, k=5)
    row = want[f].copy()
    row[f] = 0
    assert [t["count"] for t in top] == sorted(row, reverse=True)[: len(top)]
    assert all(t["feature"] != f and t["count"] == row[t["feature"]] for t in top)
    assert top[0]["fraction"] == top[0]["count"] / want[f, f]


def test_cofiring_saves_with_labels_and_says_when_missing(spec, tmp_path):
    model, tok = spec.load()
    named = cb.SAE(32, 64, kind="topk", k=4, hook="blocks.0.hook_resid_post", seed=0)
    names = [f"f{i}" for i in range(64)]
    names[3] = "<script>three</script>"
    named.labels = names
    top = top_activations(model, tok, TEXTS[:6], features=(named, [1, 3]), **KW)
    assert top.dictionary == {
        "hook": "blocks.0.hook_resid_post", "d_sae": 64, "labels": {"3": "<script>three</script>"}
    }  # fmt: skip
    top.save(tmp_path / "t.npz")
    back = cb.load_top_activations(tmp_path / "t.npz")
    np.testing.assert_array_equal(back.cofire, top.cofire)
    assert back.dictionary == top.dictionary
    assert any(t["label"] == "<script>three</script>" for t in top.cofiring(0, 1, k=64)) or (
        top.cofire[0, 3] == 0
    )
    off = top_activations(model, tok, TEXTS[:6], features=(named, [1]), cofiring=False, **KW)
    with pytest.raises(ValueError, match="no co-firing counts.*cofiring=False"):
        off.cofiring(0, 1)
    neurons = top_activations(model, tok, TEXTS[:6], layers=[0], **KW)
    assert neurons.cofire is None
    from circuitboard.analysis import _feature_scan

    with pytest.raises(ValueError, match=r"select fewer features.*or pass cofiring=False"):
        _feature_scan.check_cofiring(300_000, 1_000)
