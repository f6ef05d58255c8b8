"""cb.patch on tiny models of every adapter: the identities of activation / attribution patching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.intervene import Edit, Runner, Site, evaluate, logit_diff, normalize
from tests.unit.tiny_models import FACTORIES, unit_gain

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def _n_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _ids(tok, text):
    return torch.tensor(tok(text)["input_ids"])


def _model(name):
    """A tiny model whose matrices are re-drawn at unit gain, so that the two prompts give
    clearly different answers (default init leaves ~1e-3 logit differences, below which float32
    rounding dominates normalized units)."""
    model, tok = FACTORIES[name]()
    return unit_gain(model), tok


def _tokens_with_range(model, tok):
    """answer / wrong ids whose logit difference moves most between the runs, so normalized
    units are well conditioned on a random model."""
    r = Runner(model)
    d = r.logits(_ids(tok, CLEAN))[0] - r.logits(_ids(tok, CORRUPT))[0]
    return int(d.argmax()), int(d.argmin())


@pytest.fixture(scope="module", params=list(FACTORIES))
def tiny(request):
    model, tok = _model(request.param)
    answer, wrong = _tokens_with_range(model, tok)
    return request.param, model, tok, answer, wrong


def _patch(tiny, **kw):
    _, model, tok, answer, wrong = tiny
    return cb.patch(model, tok, CLEAN, CORRUPT, answer=answer, wrong=wrong, **kw)


@pytest.mark.parametrize("kind", ["resid_pre", "resid_mid", "resid_post"])
def test_whole_residual_is_one_denoising_zero_noising(tiny, kind):
    """Identity 1: a layer's residual stream patched at every position gives 1 (noising: 0)."""
    name, model, tok, answer, wrong = tiny
    if name == "neox" and kind == "resid_mid":
        pytest.skip("parallel blocks: the MLP reads resid_pre, so resid_mid is not a cut")
    r = Runner(model)
    clean, corrupt = _ids(tok, CLEAN), _ids(tok, CORRUPT)
    metric = logit_diff(answer, wrong)
    sites = [Site(kind, layer) for layer in range(r.n_layers)]
    ca, cl = r.read(clean, sites)
    xa, xl = r.read(corrupt, sites)
    m_clean, m_corr = float(metric(cl)), float(metric(xl))
    den = r.patched(corrupt, [[Edit(s, "replace", ca[s])] for s in sites], metric)
    noi = r.patched(clean, [[Edit(s, "replace", xa[s])] for s in sites], metric)
    np.testing.assert_allclose(normalize(den.double().numpy(), m_clean, m_corr), 1, atol=1e-5)
    np.testing.assert_allclose(normalize(noi.double().numpy(), m_clean, m_corr), 0, atol=1e-5)
    assert _n_hooks(model) == 0


def test_last_layer_last_position_is_one(tiny):
    """Identity 2: resid_post of the last layer at the last position carries the answer."""
    res = _patch(tiny, site="resid_post", layers=[-1], positions=[-1])
    assert res.values.shape == (1, 1)
    assert abs(res.values[0, 0] - 1) < 1e-5


@pytest.mark.parametrize("method", ["exact", "attribution", "ig"])
def test_prefix_is_exactly_zero(tiny, method):
    """Identity 3: sites before the first differing token are exactly 0 and say so."""
    name = tiny[0]
    res = _patch(tiny, site="resid_pre", method=method, steps=2)
    if name == "bert":  # bidirectional: every position can matter
        assert res.first_diff > 0 and not any("first differing" in n for n in res.notes)
        return
    assert res.first_diff > 0
    assert np.all(res.values[:, : res.first_diff] == 0)
    assert any("first differing token" in n for n in res.notes)
    heads = _patch(tiny, site="heads_pos", method=method, steps=2)
    assert np.all(heads.values[:, : heads.first_diff] == 0)


def test_one_token_swap_at_layer_zero_is_one(tiny):
    """A one-token swap, patched at the embedding layer at the swapped position, gives 1."""
    res = _patch(tiny, site="resid_pre", layers=[0])
    assert abs(res.values[0, res.first_diff] - 1) < 1e-5
    others = np.delete(res.values[0], res.first_diff)
    assert np.abs(others).max() < 1e-5  # nothing else differs at layer 0


def test_attribution_equals_exact_where_linear(tiny):
    """Identity 6: at the unembedding's input, the logit difference is linear in the site."""
    _, model, tok, answer, wrong = tiny
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma 2 soft-caps the logits (tanh): affine only without it
        model.config.final_logit_softcapping = None
    try:
        _check_linear_site(model, tok, answer, wrong)
    finally:
        if cap:
            model.config.final_logit_softcapping = cap


def _check_linear_site(model, tok, answer, wrong):
    r = Runner(model)
    metric = logit_diff(answer, wrong)
    clean, corrupt = _ids(tok, CLEAN), _ids(tok, CORRUPT)
    site = Site("unembed_in", pos=-1)
    src, _ = r.read(clean, [site])
    g = Edit(Site("unembed_in"), "grad")
    m = evaluate(metric, r.logits(corrupt, [g]))[0]
    (grad,) = torch.autograd.grad(m, g.delta)
    m = m.detach()
    attribution = float(((src[site] - g.activation[0, -1:]) * grad[0, -1:]).sum())
    exact = float(r.patched(corrupt, [[Edit(site, "replace", src[site])]], metric)[0]) - float(m)
    assert abs(attribution - exact) < 1e-5 * max(1.0, abs(exact))


def test_batched_equals_one_at_a_time(tiny):
    """Identity 5 through cb.patch: batch_size=1 gives the same values."""
    a = _patch(tiny, site="heads_pos", layers=[1], positions=[-2, -1])
    b = _patch(tiny, site="heads_pos", layers=[1], positions=[-2, -1], batch_size=1)
    np.testing.assert_allclose(a.values, b.values, atol=1e-5)


def test_noise_direction_is_normalized_the_same_way(tiny):
    name = tiny[0]
    res = _patch(tiny, site="resid_pre", direction="noise")
    assert res.direction == "noise" and any(n.startswith("noise:") for n in res.notes)
    if name != "bert":
        assert np.all(res.values[:, : res.first_diff] == 1)  # unpatched = clean = 1
    assert abs(res.values[0, res.first_diff]) < 1e-5  # the swapped token alone: corrupted = 0


@pytest.mark.parametrize("name", ["gpt2", "llama", "neox", "gemma2"])
def test_attribution_tracks_exact_on_heads(name):
    """At default init (activations change little) first order is close to exact."""
    model, tok = FACTORIES[name]()
    res = cb.patch(
        model,
        tok,
        CLEAN,
        CORRUPT,
        answer=" Mary",
        wrong=" John",
        site="heads",
        method="attribution",
        compare_exact=True,
    )
    assert res.reference is not None and res.reference.shape == res.values.shape
    assert res.correlation > 0.99, res.correlation
    assert "r(exact)" in repr(res)


def test_gradient_check_shrinks_quadratically():
    """Identity 9: exact(ε) − ε·attribution shrinks about 4× when ε halves."""
    model, tok = _model("llama")
    answer, wrong = _tokens_with_range(model, tok)
    r = Runner(model)
    metric = logit_diff(answer, wrong)
    clean, corrupt = _ids(tok, CLEAN), _ids(tok, CORRUPT)
    site = Site("resid_pre", 1)
    src, _ = r.read(clean, [site])
    g = Edit(site, "grad")
    m = evaluate(metric, r.logits(corrupt, [g]))[0]
    (grad,) = torch.autograd.grad(m, g.delta)
    m = m.detach()
    delta = src[site] - g.activation[0]
    lin = float((delta * grad[0]).sum())
    errs = []
    for eps in (0.04, 0.02, 0.01):
        val = g.activation[0] + eps * delta
        ex = float(r.patched(corrupt, [[Edit(site, "replace", val)]], metric)[0]) - float(m)
        errs.append(abs(ex - eps * lin))
    assert 3.0 < errs[0] / errs[1] < 5.0 and 3.0 < errs[1] / errs[2] < 5.0, errs


def test_ig_completeness_error_shrinks_with_steps():
    """Identity 10: each layer's IG sum converges to patching the whole layer (midpoint: 1/m²)."""
    model, tok = _model("llama")
    answer, wrong = _tokens_with_range(model, tok)
    errs = [
        cb.patch(model, tok, CLEAN, CORRUPT, answer=answer, wrong=wrong, method="ig", steps=s)
        for s in (2, 4, 8)
    ]
    e = [p.completeness_error for p in errs]
    assert e[0] > e[1] > e[2] and e[0] / e[2] > 8, e
    assert errs[2].completeness.shape == (2,)
    assert "completeness error" in repr(errs[2])


def test_pairs_are_averaged_and_kept():
    model, tok = _model("llama")
    a, w = _tokens_with_range(model, tok)
    c2 = "When John and Mary went to the store, Mary gave a drink to"
    x2 = "When John and Mary went to the store, John gave a drink to"
    both = cb.patch(
        model, tok, [CLEAN, c2], [CORRUPT, x2], answer=[a, w], wrong=[w, a], site="heads"
    )
    one = cb.patch(model, tok, CLEAN, CORRUPT, answer=a, wrong=w, site="heads")
    assert both.pair_values.shape == (2, 2, 4)
    np.testing.assert_allclose(both.pair_values[0], one.values, atol=1e-6)
    np.testing.assert_allclose(both.values, both.pair_values.mean(0))
    assert both.pair_clean.shape == (2,)


def test_result_labels_save_and_load(tmp_path):
    model, tok = FACTORIES["smollm"]()
    res = cb.patch(model, tok, CLEAN, CORRUPT, answer=" Mary", wrong=" John", site="resid_pre")
    top = res.top(3)
    assert list(top[0])[0] == "label"
    assert all(d["label"].startswith(f"L{d['layer']} pos {d['position']} ") for d in top)
    swapped = [d for d in res.top(100) if d["position"] == res.first_diff][0]
    assert "→" in swapped["label"]
    heads = cb.patch(model, tok, CLEAN, CORRUPT, answer=" Mary", wrong=" John", site="heads")
    assert heads.top(1)[0]["label"].startswith("L") and "H" in heads.top(1)[0]["label"]
    back = cb.load_patching(res.save(tmp_path / "p.npz"))
    np.testing.assert_array_equal(back.values, res.values)
    np.testing.assert_array_equal(back.raw, res.raw)
    assert (back.site, back.method, back.direction, back.tokens) == (
        res.site,
        res.method,
        res.direction,
        res.tokens,
    )
    assert back.top(3) == top
    assert "denoise" in repr(res) and "clean=" in repr(res)


@pytest.mark.parametrize("site", ["q", "k", "v", "pattern"])
def test_attention_sites(site):
    model, tok = FACTORIES["smollm"]()  # GQA: 6 query heads, 2 KV heads
    res = cb.patch(
        model,
        tok,
        CLEAN,
        CORRUPT,
        answer=" Mary",
        wrong=" John",
        site=site,
        method="attribution",
        compare_exact=True,
    )
    n = 2 if site in ("k", "v") else 6
    assert res.values.shape == (2, n) and res.axes == ("layer", "head")
    assert res.correlation > 0.99
    if site in ("k", "v"):
        assert res.kv_groups == {0: [0, 1, 2], 1: [3, 4, 5]}
        assert any("grouped-query" in note for note in res.notes)
    ig = cb.patch(
        model, tok, CLEAN, CORRUPT, answer=" Mary", wrong=" John", site=site, method="ig", steps=4
    )
    assert ig.completeness_error < 1e-3


def test_neurons_site():
    model, tok = _model("gpt2")
    a, w = _tokens_with_range(model, tok)
    at = cb.patch(
        model,
        tok,
        CLEAN,
        CORRUPT,
        answer=a,
        wrong=w,
        site="neurons",
        method="attribution",
        positions=-1,
    )
    assert at.values.shape == (2, 128) and at.axes == ("layer", "neuron")
    ex = cb.patch(
        model, tok, CLEAN, CORRUPT, answer=a, wrong=w, site="neurons", positions=-1, layers=[1]
    )
    # the last layer's neurons at the last position: the metric is nearly linear there
    assert np.corrcoef(ex.values[0], at.values[1])[0, 1] > 0.95


# -- bad input ---------------------------------------------------------------------------------
def test_bad_inputs_are_clear_and_leave_nothing_hooked():
    model, tok = FACTORIES["llama"]()

    def call(**kw):
        args = dict(clean=CLEAN, corrupted=CORRUPT, answer=" Mary", wrong=" John")
        args.update(kw)
        return cb.patch(model, tok, **args)

    with pytest.raises(ValueError, match=r"clean has \d+ tokens and corrupted has \d+.*position"):
        call(corrupted="When Mary and John went to the store, Johnny gave a drink to")
    with pytest.raises(ValueError, match="unknown site 'resid'; use one of"):
        call(site="resid")
    with pytest.raises(ValueError, match="unknown method"):
        call(method="fast")
    with pytest.raises(ValueError, match="unknown direction"):
        call(direction="forward")
    with pytest.raises(ValueError, match=r"answer=' Maryland' is \d+ tokens"):
        call(answer=" Maryland")
    with pytest.raises(ValueError, match="give answer="):
        call(answer=None)

    def vector_metric(logits):
        return logits[:2]

    for method in ("exact", "attribution"):
        with pytest.raises(ValueError, match="one number"):
            call(answer=None, metric=vector_metric, method=method)
        assert _n_hooks(model) == 0

    def raising_metric(logits):
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        call(answer=None, metric=raising_metric, method="attribution")
    with pytest.raises(ValueError, match="cannot normalize"):
        call(corrupted=CLEAN)
    with pytest.raises(ValueError, match="layers= got 9"):
        call(layers=[9])
    with pytest.raises(ValueError, match="positions= got 40"):
        call(positions=[40])
    with pytest.raises(ValueError, match="different lengths"):
        call(clean=[CLEAN, CLEAN + " the"], corrupted=[CORRUPT, CORRUPT + " the"])
    assert _n_hooks(model) == 0
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_noise_top_ranks_by_distance_from_clean():
    model, tok = _model("llama")
    a, w = _tokens_with_range(model, tok)
    res = cb.patch(model, tok, CLEAN, CORRUPT, answer=a, wrong=w, direction="noise")
    top = res.top(3)
    drops = sorted(np.abs(res.values - 1).ravel())[::-1][:3]
    np.testing.assert_allclose([abs(d["value"] - 1) for d in top], drops)


def test_prefix_cache_gives_the_same_values(monkeypatch):
    """Running the tokens before the first difference once (KV cache) changes nothing."""
    from circuitboard.intervene import _runner

    model, tok = _model("llama")
    a, w = _tokens_with_range(model, tok)
    kw = dict(answer=a, wrong=w)
    fast = [cb.patch(model, tok, CLEAN, CORRUPT, site=s, **kw) for s in ("heads", "resid_mid")]
    monkeypatch.setattr(_runner.Runner, "prefix_cache", lambda self, ids, n: None)
    slow = [cb.patch(model, tok, CLEAN, CORRUPT, site=s, **kw) for s in ("heads", "resid_mid")]
    for f, s in zip(fast, slow, strict=True):
        np.testing.assert_allclose(f.values, s.values, atol=1e-5)


def test_progress_bar_and_cost(capsys):
    model, tok = FACTORIES["llama"]()
    quiet = cb.patch(model, tok, CLEAN, CORRUPT, answer=" Mary", wrong=" John", site="heads_pos")
    shown = cb.patch(
        model, tok, CLEAN, CORRUPT, answer=" Mary", wrong=" John", site="heads_pos", progress=True
    )
    np.testing.assert_array_equal(quiet.values, shown.values)
    assert "circuitboard patch" in capsys.readouterr().err
    assert shown.cost["forwards"] >= 2 and shown.cost["seconds"] > 0
