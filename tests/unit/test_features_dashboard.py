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
    assert_same_top(got, reference)


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
