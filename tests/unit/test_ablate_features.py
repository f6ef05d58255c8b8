"""cb.ablate over dictionary features: (sae, i) / (sae, [i, j]) in the delta form (error kept)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import circuitboard as cb
from circuitboard.widgets import AblationView
from tests.unit.tiny_models import tiny_llama, unit_gain

PROMPT = "When Mary and John went to the store, John gave a drink to"
REFERENCE = [
    "When Mary and John went to the store, Mary gave a drink to",
    "When John and Mary went to the store, John gave a drink to",
    "When John and Mary went to the store, Mary gave a drink to",
]
D_MLP = 48


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_llama()
    return unit_gain(model), tok  # unit gain, so ablations move the loss visibly


def _sae(**kw):
    return cb.SAE(32, 64, kind="topk", k=4, hook="blocks.0.hook_resid_post", seed=0, **kw)


class Identity(nn.Module):
    """A dictionary whose features are the hooked tensor's own coordinates (no nonlinearity)."""

    def __init__(self, hook: str, d: int) -> None:
        super().__init__()
        self.hook, self.d_in, self.d_sae = hook, d, d
        self.scale = nn.Parameter(torch.ones(()))  # gives the dictionary a dtype and device

    def encode(self, x):
        return x * self.scale

    def decode(self, a):
        return a * self.scale


def _acts(model, tok, sae, text):
    """``encode`` of what the dictionary reads on ``text`` ``[T, d_sae]``."""
    cap = cb.capture(model, tok, text, saes=[sae])
    return cap[f"{sae.hook}.sae.hook_sae_acts_post"].to_dense()


def test_zero_ablating_an_inactive_feature_changes_nothing_exactly(tiny):
    model, tok = tiny
    sae = _sae()
    acts = _acts(model, tok, sae, PROMPT)
    off = (acts == 0).all(0).nonzero()[:, 0].tolist()
    on = int(acts.abs().sum(0).argmax())
    assert len(off) > 5
    res = cb.ablate(model, tok, PROMPT, [(sae, off[0]), (sae, off), (sae, np.int64(on))])
    assert (res.effects[:2] == 0).all()  # bit for bit: the delta is exactly zero
    assert abs(res.effects[2, 0]) > 1e-4  # a feature that fires moves the loss


def test_mean_and_resample_of_the_prompt_itself_change_nothing(tiny):
    model, tok = tiny
    sae = _sae()
    comps = [(sae, 3), (sae, list(range(64))), ["L0H1", (sae, [1, 2])]]
    for how in ("mean", "resample"):
        res = cb.ablate(model, tok, PROMPT, comps[:2], how=how, reference=[PROMPT])
        assert np.abs(res.effects).max() < 1e-5, (how, res.effects)
    both = cb.ablate(model, tok, PROMPT, comps[2:], how="mean", reference=[PROMPT])
    assert np.abs(both.effects).max() < 1e-5


@pytest.mark.parametrize("how", ["zero", "mean", "resample"])
def test_identity_dictionary_over_neurons_equals_ablating_the_neurons(tiny, how):
    model, tok = tiny
    ident = Identity("blocks.1.mlp.hook_post", D_MLP)
    kw = {} if how == "zero" else {"reference": REFERENCE, "seed": 3}
    prompts = [PROMPT, REFERENCE[0]]
    feats = cb.ablate(
        model, tok, prompts, [(ident, [3, 7]), (ident, list(range(D_MLP)))], how=how, **kw
    )
    neurons = cb.ablate(
        model, tok, prompts, [["L1N3", "L1N7"], [f"L1N{i}" for i in range(D_MLP)]], how=how, **kw
    )
    assert np.abs(neurons.effects).max() > 1e-3  # the neurons matter
    np.testing.assert_allclose(feats.values, neurons.values, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(feats.baseline, neurons.baseline)


def test_mean_ablation_equals_a_hand_written_delta(tiny):
    """Feature 5's mean over the reference prompts, per position, written as
    ``x + decode(a with a[:, 5] = mean) − decode(a)`` by a plain forward hook."""
    model, tok = tiny
    sae = _sae()
    acts = _acts(model, tok, sae, PROMPT)
    f = int(acts.abs().sum(0).argmax())
    mean = torch.stack([_acts(model, tok, sae, r)[:, f] for r in REFERENCE]).mean(0)
    res = cb.ablate(model, tok, PROMPT, [(sae, f)], how="mean", reference=REFERENCE)

    def edit(mod, args, out):
        x = out[0] if isinstance(out, tuple) else out
        a = sae.encode(x)
        b = a.clone()
        b[..., f] = mean
        y = x + (sae.decode(b) - sae.decode(a))
        return (y, *out[1:]) if isinstance(out, tuple) else y

    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    handle = model.model.layers[0].register_forward_hook(edit)
    try:
        with torch.no_grad():
            lg = model(input_ids=ids).logits[0].float()
    finally:
        handle.remove()
    loss = torch.nn.functional.cross_entropy(lg[:-1], ids[0, 1:])
    assert abs(res.values[0, 0] - float(loss)) < 1e-5
    assert abs(res.effects[0, 0]) > 1e-4


def test_resample_is_seeded(tiny):
    model, tok = tiny
    sae = _sae()
    comps = [(sae, list(range(64)))]
    prompts = [PROMPT, REFERENCE[1]]
    a = cb.ablate(model, tok, prompts, comps, how="resample", reference=REFERENCE, seed=1)
    b = cb.ablate(model, tok, prompts, comps, how="resample", reference=REFERENCE, seed=1)
    np.testing.assert_array_equal(a.values, b.values)
    others = [
        cb.ablate(model, tok, prompts, comps, how="resample", reference=REFERENCE, seed=s)
        for s in range(2, 8)
    ]
    assert any(not np.array_equal(o.values, a.values) for o in others)  # the draws matter


def test_labels_name_the_dictionary_and_the_feature(tiny):
    model, tok = tiny
    plain = _sae()
    named = _sae(labels=[f"f{i}" if i != 9 else "names of people" for i in range(64)],
                 metadata={"name": "res0-topk"})  # fmt: skip
    res = cb.ablate(model, tok, PROMPT, [(plain, 3), (named, [9, 4]), ["L1H2", (plain, 1)]])
    assert res.labels == [
        "blocks.0.hook_resid_post#3",
        "res0-topk#9 names of people,4",
        "L1H2+blocks.0.hook_resid_post#1",
    ]
    view = AblationView(res)
    assert view.labels == res.labels
    assert view.selections == [{"layer": 0}, {}, {"layer": 1, "head": 2}]


def test_bad_feature_components_name_the_fix(tiny):
    model, tok = tiny
    sae = _sae()
    with pytest.raises(IndexError, match=r"feature 64 .* out of range; it has d_sae=64"):
        cb.ablate(model, tok, PROMPT, [(sae, 64)])
    with pytest.raises(IndexError, match="out of range"):
        cb.ablate(model, tok, PROMPT, [(sae, [1, -1])])
    far = cb.SAE(32, 64, hook="blocks.7.hook_resid_post", seed=0)
    with pytest.raises(ValueError, match=r"capture does not have \(it has 2 layers"):
        cb.ablate(model, tok, PROMPT, [(far, 1)])
    wide = cb.SAE(40, 64, hook="blocks.0.hook_resid_post", seed=0)
    with pytest.raises(ValueError, match="expects inputs of width d_in=40"):
        cb.ablate(model, tok, PROMPT, [(wide, 1)])
    tc = cb.SAE(32, 64, hook="blocks.0.mlp.hook_in", hook_out="blocks.0.hook_mlp_out", seed=0)
    with pytest.raises(ValueError, match="transcoder.*Ablate the component it replaces"):
        cb.ablate(model, tok, PROMPT, [(tc, 1)])
    shapes = [((sae,), "tuple of 1 items"), ((sae, 1, 2), "tuple of 3 items"), ((3, sae), "first")]
    for spec, why in shapes:
        with pytest.raises(ValueError, match=r"\(sae, i\) or \(sae, \[i, j, \.\.\.\]\).*" + why):
            cb.ablate(model, tok, PROMPT, [spec])
    with pytest.raises(TypeError, match=r"feature indices are ints, got '3'"):
        cb.ablate(model, tok, PROMPT, [(sae, "3")])
    with pytest.raises(ValueError, match="list of features .* is empty"):
        cb.ablate(model, tok, PROMPT, [(sae, [])])
    with pytest.raises(ValueError, match=r"\(sae, 301\) or \(sae, \[3, 7\]\) for dictionary"):
        cb.ablate(model, tok, PROMPT, ["L0F3"])
