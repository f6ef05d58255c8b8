"""The features view's data: columns and per-token lists equal the capture's features; an
identity dictionary over neurons shows what the neurons view shows; bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb

from .sae_helpers import IdentityDictionary, ReluSAE
from .tiny_models import tiny_llama

PROMPT = "When Mary and John went to the store, John gave a drink to"


def test_identity_dictionary_view_equals_neurons_view():
    model, tok = tiny_llama()
    ident = IdentityDictionary(48, "blocks.1.mlp.hook_post")
    cap = cb.capture(model, tok, PROMPT, saes=ident, dtype=torch.float32)
    view, neurons = cb.features(cap), cb.neurons(cap)
    for n in (0, 7, 47):
        col = view.column(ident.hook, n)
        assert np.array_equal(col, neurons.column(1, n))
    feats, vals = view.top_features(ident.hook, token=4, n=5)
    idx, nvals = neurons.top_neurons(1, token=4, n=5)
    assert feats == [int(i) for i in idx] and np.allclose(vals, nvals, rtol=0, atol=0)


def test_view_data_and_selection():
    model, tok = tiny_llama()
    sae = ReluSAE(32, 512, "blocks.0.hook_resid_post", seed=2)
    sae.metadata["labels"] = {3: "three"}
    cap = cb.capture(model, tok, PROMPT, saes=sae, dtype=torch.float32)
    acts = cap[f"{sae.hook}.sae.hook_sae_acts_post"].to_dense().numpy()
    view = cb.features(cap, feature=3)
    assert view.selection["feature"] == 3 and view.selection["layer"] == 0
    assert view.dictionaries[0]["labels"] == {"3": "three"}
    assert np.array_equal(view.column(sae.hook, 3), acts[:, 3])
    reply, buffers = view._fetch_dictionary({"dictionary": sae.hook})
    assert len(buffers) == 3 and sum(map(len, buffers)) == 12 * int((acts != 0).sum())
    assert cb.features(cap).selection["feature"] == int(np.argmax(acts[1:].max(0)))


def test_bad_input():
    model, tok = tiny_llama()
    plain = cb.capture(model, tok, PROMPT)
    with pytest.raises(ValueError, match=r"capture with dictionary features.*saes=\[sae\]"):
        cb.features(plain)
    sae = ReluSAE(32, 64, "blocks.0.hook_resid_post")
    cap = cb.capture(model, tok, PROMPT, saes=sae)
    with pytest.raises(IndexError, match="feature"):
        cb.features(cap, feature=64)
    with pytest.raises(KeyError, match=r"no dictionary reading 'blocks.1.hook_resid_post'"):
        cb.features(cap).column("blocks.1.hook_resid_post", 0)


def test_feature_badge_verifies_and_catches_tampering(tmp_path):
    from circuitboard.export._verify import verify_report
    from circuitboard.widgets._checks import view_checks
    from circuitboard.widgets._codec import decode, encode

    model, tok = tiny_llama()
    sae = cb.SAE(32, 64, kind="topk", k=4, hook="blocks.1.hook_resid_post", seed=0,
                 metadata={"sha256": "f" * 64})  # fmt: skip
    cap = cb.capture(model, tok, PROMPT, saes=sae, dtype=torch.float32)
    view = cb.features(cap)
    prov = view.provenance["dictionaries"][sae.hook]
    assert prov["file_sha256"] == "f" * 64 and len(prov["parameters_sha256"]) == 64
    path = tmp_path / "features.html"
    cb.report(view, path=path)
    result = verify_report(path)
    assert result.ok and "features + error rebuild" in result.summary()
    proof = dict(view._proof[sae.hook])
    err = decode(proof["error"]).copy()
    err[0, 0] += 0.1  # a report whose error term does not match its features
    proof["error"] = encode(err, "float32")
    (bad,) = view_checks({"_view": "features", "_proof": {sae.hook: proof}})
    assert not bad["ok"] and bad["error"] > 1e-3


def test_a_report_with_several_dictionaries_verifies(tmp_path):
    """The page's JSON sorts its keys: badges must not depend on the dictionaries' order."""
    model, tok = tiny_llama()
    saes = [
        cb.SAE(32, 64, kind="topk", k=4, hook=f"blocks.{layer}.hook_resid_post", seed=layer)
        for layer in (1, 0)  # inserted out of the order JSON gives back
    ]
    cap = cb.capture(model, tok, PROMPT, saes=saes, dtype=torch.float32)
    result = cb.verify_report(cb.report(cb.features(cap), path=tmp_path / "f.html"))
    assert result.ok, result.summary()
    assert [c["name"] for _, c in result.rows] == [
        "features + error rebuild blocks.0.hook_resid_post",
        "features + error rebuild blocks.1.hook_resid_post",
    ]


def test_kernel_link_fallback_carries_the_feature():
    """Hosts that isolate cells (Colab) link through the kernel: a feature click arrives in
    the view's ``_sel`` and must reach the shared link, hook name included."""
    model, tok = tiny_llama()
    sae = ReluSAE(32, 64, "blocks.0.hook_resid_post")
    view = cb.features(cb.capture(model, tok, PROMPT, saes=sae))
    view._sel = {**view.link.selection, "dictionary": sae.hook, "feature": 9, "layer": 0}
    assert view.link.feature == 9 and view.link.dictionary == sae.hook
