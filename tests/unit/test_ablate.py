"""cb.ablate: zero / mean / resample ablations of heads, neurons, MLPs and layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.intervene import Edit, Runner, Site
from tests.unit.tiny_models import tiny_llama, unit_gain

PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "When John and Mary went to the store, Mary gave a drink to",
]
REFERENCE = [
    "When Mary and John went to the store, Mary gave a drink to",
    "When John and Mary went to the store, John gave a drink to",
    "When Mary and John went to the store, John gave a drink to",
]
COMPONENTS = ["L0H1", (1, 3), "L1N7", "L0.mlp", "L1.attn", "L1", ["L0H0", "L1H2"]]


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_llama()
    return unit_gain(model), tok  # unit gain, so ablations move the loss visibly


def test_ablating_nothing_changes_nothing(tiny):
    model, tok = tiny
    res = cb.ablate(model, tok, PROMPTS, [[], "L0H1"])
    assert (res.effects[0] == 0).all()
    assert np.abs(res.effects[1]).max() > 1e-4  # a real head moves the loss


def test_mean_of_the_prompt_itself_changes_nothing(tiny):
    model, tok = tiny
    for p in PROMPTS:
        res = cb.ablate(model, tok, p, COMPONENTS, how="mean", reference=[p])
        assert np.abs(res.effects).max() < 1e-5, res.labels
        assert res.notes == ["mean over the reference prompts, per position"]


def test_zero_ablation_equals_a_hand_written_one(tiny):
    """Zeroing head L0H1's z and layer 1's writes, one forward each, through plain edits."""
    model, tok = tiny
    res = cb.ablate(model, tok, PROMPTS[0], ["L0H1", "L1"])
    ids = torch.tensor(tok(PROMPTS[0])["input_ids"])

    def loss(edits):
        from circuitboard.intervene import write_hooks

        with torch.no_grad(), write_hooks(model, edits):
            lg = model(input_ids=ids[None]).logits[0]
        return float(torch.nn.functional.cross_entropy(lg[:-1], ids[1:]))

    head = [Edit(Site("z", 0, head=1), "replace", torch.zeros(()))]
    layer = [Edit(Site(k, 1), "replace", torch.zeros(())) for k in ("attn_out", "mlp_out")]
    assert res.baseline[0] == pytest.approx(loss([]), abs=1e-5)
    assert res.values[0, 0] == pytest.approx(loss(head), abs=1e-5)
    assert res.values[1, 0] == pytest.approx(loss(layer), abs=1e-5)


def test_mean_is_the_reference_mean(tiny):
    """Mean-ablating with a reference equals patching in the hand-computed per-position mean."""
    model, tok = tiny
    res = cb.ablate(model, tok, PROMPTS[0], ["L1H2"], how="mean", reference=REFERENCE)
    r = Runner(model)
    zs = [
        r.read(torch.tensor(tok(p)["input_ids"]), [Site("z", 1)])[0][Site("z", 1)]
        for p in REFERENCE
    ]
    mean = torch.stack(zs).mean(0)[:, 2]
    ids = torch.tensor(tok(PROMPTS[0])["input_ids"])
    from circuitboard.intervene import write_hooks

    with torch.no_grad(), write_hooks(model, [Edit(Site("z", 1, head=2), "replace", mean)]):
        lg = model(input_ids=ids[None]).logits[0]
    want = float(torch.nn.functional.cross_entropy(lg[:-1], ids[1:]))
    assert res.values[0, 0] == pytest.approx(want, abs=1e-5)


def test_mean_over_positions_when_lengths_differ(tiny):
    model, tok = tiny
    res = cb.ablate(
        model, tok, PROMPTS[0], ["L0H1"], how="mean", reference=["the store", *REFERENCE]
    )
    assert res.notes[0].startswith("mean over the reference prompts and over positions")
    assert np.abs(res.effects).max() > 1e-4


def test_seeded_resample_is_reproducible(tiny):
    model, tok = tiny
    kw = dict(how="resample", reference=REFERENCE)
    a = cb.ablate(model, tok, PROMPTS * 3, COMPONENTS, seed=3, **kw)
    b = cb.ablate(model, tok, PROMPTS * 3, COMPONENTS, seed=3, **kw)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.notes == b.notes
    others = [cb.ablate(model, tok, PROMPTS * 3, COMPONENTS, seed=s, **kw).notes for s in range(4)]
    assert len({n[0] for n in others}) > 1  # the seed changes the draws


def test_resampling_the_prompt_itself_changes_nothing(tiny):
    model, tok = tiny
    res = cb.ablate(model, tok, PROMPTS[0], COMPONENTS, how="resample", reference=[PROMPTS[0]])
    assert np.abs(res.effects).max() < 1e-5


def test_answer_metric_top_and_save(tiny, tmp_path):
    model, tok = tiny
    res = cb.ablate(model, tok, PROMPTS[:1], COMPONENTS, answer=" Mary", wrong=" John")
    assert res.metric == "logit(' Mary') − logit(' John')"
    top = res.top(2)
    assert abs(top[0]["value"]) >= abs(top[1]["value"])
    back = cb.load_ablation(res.save(tmp_path / "a.npz"))
    np.testing.assert_array_equal(back.values, res.values)
    assert back.labels == ["L0H1", "L1H3", "L1N7", "L0.mlp", "L1.attn", "L1", "L0H0+L1H2"]
    assert "how=zero" in repr(back)


def test_bad_inputs(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="how='mean' needs reference= prompts"):
        cb.ablate(model, tok, PROMPTS, ["L0H1"], how="mean")
    with pytest.raises(ValueError, match="how='resample' needs reference= prompts"):
        cb.ablate(model, tok, PROMPTS, ["L0H1"], how="resample")
    with pytest.raises(ValueError, match="unknown how='median'"):
        cb.ablate(model, tok, PROMPTS, ["L0H1"], how="median")
    with pytest.raises(ValueError, match=r"head 4 out of range; layer 0 has 4 heads"):
        cb.ablate(model, tok, PROMPTS, ["L0H4"])
    with pytest.raises(ValueError, match=r"layer 2 out of range; the model has 2 layers"):
        cb.ablate(model, tok, PROMPTS, ["L2.mlp"])
    with pytest.raises(ValueError, match="unknown component 'head 3'"):
        cb.ablate(model, tok, PROMPTS, ["head 3"])
    with pytest.raises(ValueError, match="same token length"):
        cb.ablate(model, tok, PROMPTS, ["L0H1"], how="resample", reference=["short"])
