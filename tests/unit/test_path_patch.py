"""cb.path_patch: identities against a hook-by-hook freezing reference and against cb.patch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.intervene import Edit, Runner, Site, evaluate, logit_diff
from circuitboard.testing._models import _build
from tests.unit.tiny_models import tiny_tokenizer, unit_gain

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture(scope="module")
def tiny():
    """A 3-layer grouped-query Llama (6 heads, 2 KV heads) re-drawn at unit gain, so the two
    prompts give clearly different answers; answer / wrong chosen where the runs differ most."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=384,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    model = unit_gain(_build(cfg, LlamaForCausalLM, 0))
    tok = tiny_tokenizer("bos")
    r = Runner(model)
    ids = [torch.tensor(tok(t)["input_ids"]) for t in (CLEAN, CORRUPT)]
    d = r.logits(ids[0])[0] - r.logits(ids[1])[0]
    return model, tok, int(d.argmax()), int(d.argmin())


def reference(model, tok, answer, wrong, senders, receivers):
    """Wang et al.'s recipe, one run at a time: freeze every head's z and every MLP's output at
    their clean values except the senders' z (corrupted); read the receivers' q / k / v there
    (or the logits); then run clean with only those receiver inputs replaced."""
    r = Runner(model)
    L = r.n_layers
    clean, corrupt = (torch.tensor(tok(t)["input_ids"]) for t in (CLEAN, CORRUPT))
    sites = [Site("z", li) for li in range(L)] + [Site("mlp_out", li) for li in range(L)]
    act_clean, _ = r.read(clean, sites)
    act_corr, _ = r.read(corrupt, sites)
    frozen = []
    for li in range(L):
        z = act_clean[Site("z", li)].clone()
        for sl, h in senders:
            if sl == li:
                z[:, h] = act_corr[Site("z", li)][:, h]
        frozen.append(Edit(Site("z", li), "replace", z))
        frozen.append(Edit(Site("mlp_out", li), "replace", act_clean[Site("mlp_out", li)]))
    metric = logit_diff(answer, wrong)
    if receivers == "logits":
        return float(evaluate(metric, r.logits(clean, frozen))[0])
    got, _ = r.read(clean, [Site(k, li, head=h) for li, h, k in receivers], edits=frozen)
    edits = [Edit(s, "replace", v) for s, v in got.items()]
    return float(evaluate(metric, r.logits(clean, edits))[0])


def _pp(tiny, **kw):
    model, tok, a, w = tiny
    return cb.path_patch(model, tok, CLEAN, CORRUPT, answer=a, wrong=w, **kw)


RECEIVERS = [(2, 0, "q"), (2, 1, "k"), (2, 0, "v")]


@pytest.mark.parametrize("receivers", ["logits", RECEIVERS, [(1, 4, "q")]])
def test_each_head_equals_the_hook_by_hook_reference(tiny, receivers):
    res = _pp(tiny, senders="heads", receivers=receivers)
    model, tok, a, w = tiny
    assert len(res.sets) == (18 if receivers == "logits" else 12 if receivers == RECEIVERS else 6)
    ref = np.array([reference(model, tok, a, w, s, receivers) for s in res.sets])
    np.testing.assert_allclose(res.raw, ref, atol=1e-5 * max(1.0, np.abs(ref).max()))
    assert np.abs(res.effects).max() > 1e-3  # something moved: not a silent no-op


def test_sets_of_heads_and_the_empty_set(tiny):
    model, tok, a, w = tiny
    sets = [[], [(0, 1), (1, 3)], [(0, 0), (0, 5), (1, 2)]]
    res = _pp(tiny, senders=sets, receivers=RECEIVERS)
    assert res.raw[0] == pytest.approx(res.clean_value, abs=1e-6)
    assert res.effects[0] == pytest.approx(0.0, abs=1e-6)
    for i in (1, 2):
        assert res.raw[i] == pytest.approx(
            reference(model, tok, a, w, sets[i], RECEIVERS), abs=1e-5
        )
    assert res.labels == ["∅", "L0H1+L1H3", "L0H0+L0H5+L1H2"]


def test_all_heads_into_logits_is_their_direct_effect(tiny):
    model, tok, a, w = tiny
    every = [(li, h) for li in range(3) for h in range(6)]
    res = _pp(tiny, senders=every, receivers="logits")
    assert res.raw[0] == pytest.approx(reference(model, tok, a, w, every, "logits"), abs=1e-5)
    # without the last MLP, the last layer's heads reach the logits only directly: path
    # patching them into the logits is patching them
    import copy

    bare = copy.deepcopy(model)
    with torch.no_grad():
        bare.model.layers[2].mlp.down_proj.weight.zero_()
    last = cb.path_patch(
        bare, tok, CLEAN, CORRUPT, answer=a, wrong=w, senders=[[(2, h)] for h in range(6)]
    )
    heads = cb.patch(bare, tok, CLEAN, CORRUPT, answer=a, wrong=w, site="heads", direction="noise")
    np.testing.assert_allclose(last.raw, heads.raw[2], atol=1e-5)
    assert np.abs(last.effects).max() > 1e-3


def test_batched_equals_one_set_per_forward(tiny):
    a = _pp(tiny, senders="heads", receivers=RECEIVERS)
    b = _pp(tiny, senders="heads", receivers=RECEIVERS, batch_size=1)
    np.testing.assert_allclose(a.raw, b.raw, atol=1e-5)


def test_denoising_swaps_the_prompts(tiny):
    res = _pp(tiny, senders=[[], [(0, 2)]], receivers="logits", direction="denoise")
    assert res.raw[0] == pytest.approx(res.corrupted_value, abs=1e-6)
    assert res.values[0] == pytest.approx(0.0, abs=1e-6)


def test_heatmap_save_and_load(tiny, tmp_path):
    res = _pp(tiny, senders="heads", receivers=[(2, 0, "q")])
    hm = res.heatmap()
    assert hm.values.shape == (3, 6) and (hm.values[2] == 1.0).all()  # can't reach: no effect
    assert (hm.raw[2] == res.clean_value).all()
    np.testing.assert_array_equal(hm.values[:2].ravel(), res.values)
    assert "path patching into L2H0.q" in hm.notes[0]
    view = cb.patching_view(res)  # the patching view shows a PathPatching through its heatmap
    assert view.site == "path" and view.axes == ["layer", "head"]
    back = cb.load_path_patching(res.save(tmp_path / "pp.npz"))
    np.testing.assert_array_equal(back.raw, res.raw)
    assert back.sets == res.sets and back.receivers == res.receivers
    assert back.top(1)[0]["label"] == res.top(1)[0]["label"]
    assert "sender sets" in repr(back)


def test_bad_inputs(tiny):
    with pytest.raises(ValueError, match="sender L2H0 is not before its receiver at layer 2"):
        _pp(tiny, senders=[(2, 0)], receivers=[(2, 1, "q")])
    with pytest.raises(ValueError, match=r"head 6 out of range; layer 0 has 6 heads \(0..5\)"):
        _pp(tiny, senders=[(0, 6)], receivers="logits")
    with pytest.raises(ValueError, match=r"head 2 out of range; layer 2 has 2 heads"):
        _pp(tiny, senders=[(0, 1)], receivers=[(2, 2, "k")])  # k: a key-value head
    with pytest.raises(ValueError, match=r"layer 5 out of range; the model has 3 layers"):
        _pp(tiny, senders=[(5, 0)], receivers="logits")
    with pytest.raises(
        ValueError, match="each receiver must be \\(layer, head, 'q' | 'k' | 'v'\\)"
    ):
        _pp(tiny, senders=[(0, 1)], receivers=[(2, 1, "z")])
    with pytest.raises(ValueError, match="no sender can reach the receivers"):
        _pp(tiny, senders="heads", receivers=[(0, 1, "q")])
    with pytest.raises(ValueError, match="unknown direction"):
        _pp(tiny, direction="sideways")
