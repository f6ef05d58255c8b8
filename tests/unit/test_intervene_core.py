"""The shared write-hook machinery of circuitboard.intervene on tiny models of every adapter."""

from __future__ import annotations

import pytest
import torch

from circuitboard.capture import capture
from circuitboard.intervene import Edit, Runner, Site, evaluate, logit_diff, normalize, write_hooks
from tests.unit.tiny_models import CAUSAL, FACTORIES

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
KINDS = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "mlp_post"]
TL = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "z": "attn.hook_z",
    "mlp_post": "mlp.hook_post",
}


@pytest.fixture(scope="module", params=list(FACTORIES))
def tiny(request):
    model, tok = FACTORIES[request.param]()
    return request.param, model, tok


def _ids(tok, text):
    return torch.tensor(tok(text)["input_ids"])


def _n_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_reads_equal_capture(tiny):
    name, model, tok = tiny
    r = Runner(model)
    sites = [Site(k, layer) for k in KINDS for layer in (0, 1)]
    acts, logits = r.read(_ids(tok, CLEAN), sites)
    cap = capture(model, tok, CLEAN, dtype=torch.float32, what="all")
    for s in sites:
        torch.testing.assert_close(
            acts[s], cap[f"blocks.{s.layer}.{TL[s.kind]}"], atol=1e-5, rtol=0
        )
    torch.testing.assert_close(logits, cap.logits[-1], atol=1e-5, rtol=0)
    assert _n_hooks(model) == 0


def test_self_patch_changes_nothing(tiny):
    """Identity 4: writing a site's own value back leaves the logits unchanged."""
    _, model, tok = tiny
    r = Runner(model)
    ids = _ids(tok, CLEAN)
    sites = [Site(k, 1) for k in KINDS] + [Site("embed")]
    acts, base = r.read(ids, sites)
    for s in sites:
        out = r.logits(ids, [Edit(s, "replace", acts[s])])[0]
        torch.testing.assert_close(out, base, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["resid_pre", "resid_mid", "resid_post"])
def test_whole_residual_patch_gives_clean_logits(tiny, kind):
    """Identity 1 at the logit level: every position of a residual site carries everything."""
    name, model, tok = tiny
    if name == "neox" and kind == "resid_mid":
        pytest.skip("parallel blocks: the MLP reads resid_pre, so resid_mid is not a cut")
    r = Runner(model)
    clean, corrupt = _ids(tok, CLEAN), _ids(tok, CORRUPT)
    assert len(clean) == len(corrupt)
    for layer in (0, 1):
        acts, clean_logits = r.read(clean, [Site(kind, layer)])
        out = r.logits(corrupt, [Edit(Site(kind, layer), "replace", acts[Site(kind, layer)])])[0]
        torch.testing.assert_close(out, clean_logits, atol=1e-5, rtol=0)


def test_batched_equals_one_at_a_time(tiny):
    """Identity 5: runs batched into one forward (prefix shared) equal separate forwards."""
    name, model, tok = tiny
    r = Runner(model)
    clean, corrupt = _ids(tok, CLEAN), _ids(tok, CORRUPT)
    sites = [Site("z", layer, pos=p, head=h) for layer in (0, 1) for h in (0, 3) for p in (2, -1)]
    sites += [Site("resid_mid", 1, pos=-3), Site("mlp_post", 0, pos=-1, neuron=5)]
    acts, _ = r.read(clean, [Site(s.kind, s.layer) for s in sites])
    runs = []
    for s in sites:
        full = acts[Site(s.kind, s.layer)]
        val = full[s.positions(len(clean))]
        val = val[:, s.head] if s.head is not None else val
        val = val[:, s.neuron] if s.neuron is not None else val
        runs.append([Edit(s, "replace", val)])
    metric = logit_diff(5, 7)
    batched = r.patched(corrupt, runs, metric, batch_size=5)
    no_share = r.patched(corrupt, runs, metric, share_prefix=False)
    single = torch.stack([evaluate(metric, r.logits(corrupt, run))[0] for run in runs])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    torch.testing.assert_close(no_share, single, atol=1e-5, rtol=0)
    assert _n_hooks(model) == 0


@pytest.mark.parametrize("name", CAUSAL[:3])
def test_grad_delta_is_the_gradient_of_the_used_tensor(name):
    model, tok = FACTORIES[name]()
    r = Runner(model)
    ids = _ids(tok, CLEAN)
    metric = logit_diff(5, 7)
    for kind in ("z", "resid_mid", "mlp_post", "resid_pre"):
        e = Edit(Site(kind, 1), "grad")
        m = evaluate(metric, r.logits(ids, [e]))[0]
        (g,) = torch.autograd.grad(m, e.delta)
        # directional finite difference along a random direction
        d = torch.randn_like(e.activation) * 1e-3
        plus = evaluate(metric, r.logits(ids, [Edit(Site(kind, 1), "add", d)]))[0]
        minus = evaluate(metric, r.logits(ids, [Edit(Site(kind, 1), "add", -d)]))[0]
        fd = (plus - minus) / 2
        assert abs(float((g * d).sum()) - float(fd)) < 1e-4 * max(1.0, abs(float(fd)) * 1e3)
    assert all(p.grad is None for p in model.parameters())


def test_hooks_removed_on_errors():
    model, tok = FACTORIES["llama"]()
    r = Runner(model)
    ids = _ids(tok, CLEAN)
    bad = Edit(Site("resid_pre", 1), "replace", torch.zeros(3, 5))
    with pytest.raises(ValueError, match="must broadcast to"):
        r.logits(ids, [Edit(Site("z", 0), "read"), bad])
    assert _n_hooks(model) == 0

    def boom(*a, **k):
        raise RuntimeError("boom")

    handle = model.model.layers[1].mlp.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        r.logits(ids, [Edit(Site("z", 0), "read"), Edit(Site("resid_mid", 1), "grad")])
    handle.remove()
    assert _n_hooks(model) == 0

    def bad_metric(logits):
        return logits[:3]

    with pytest.raises(ValueError, match="one number"):
        r.patched(ids, [[Edit(Site("resid_pre", 1), "add", torch.zeros(32))]], bad_metric)
    assert _n_hooks(model) == 0
    with pytest.raises(ValueError, match="before block 1"):
        with write_hooks(model, [Edit(Site("z", 0), "read")], expand_at=1, batch=2):
            pass
    assert _n_hooks(model) == 0
    with pytest.raises(ValueError, match="unknown site kind"):
        Site("resid")
    with pytest.raises(ValueError, match="layer 7 out of range"):
        r.logits(ids, [Edit(Site("resid_pre", 7), "read")])


def test_normalize_refuses_tiny_range():
    assert normalize(2.0, 3.0, 1.0) == 0.5
    with pytest.raises(ValueError, match="cannot normalize"):
        normalize(1.0, 1.0, 1.0 + 1e-9)


def test_sublayer_inputs_reach_only_their_sublayer(tiny):
    """attn_in / mlp_in: a write changes only that sublayer's output, not the residual path."""
    name, model, tok = tiny
    r = Runner(model)
    ids = _ids(tok, CLEAN)
    sites = [Site(k, 1) for k in ("attn_out", "mlp_out", "resid_pre", "attn_in", "mlp_in")]
    base, _ = r.read(ids, sites)
    d = torch.randn(model.config.hidden_size) * 0.5
    after, _ = r.read(ids, sites[:3], edits=[Edit(Site("attn_in", 1), "add", d)])
    assert not torch.allclose(after[sites[0]], base[sites[0]], atol=1e-4)
    torch.testing.assert_close(after[sites[2]], base[sites[2]], atol=0, rtol=0)
    if name not in ("neox", "bert"):  # pre-norm: mlp_in is resid_mid in value
        acts, _ = r.read(ids, [Site("resid_mid", 1)])
        torch.testing.assert_close(base[sites[4]], acts[Site("resid_mid", 1)], atol=1e-6, rtol=0)
    after, _ = r.read(ids, sites[:2], edits=[Edit(Site("mlp_in", 1), "add", d)])
    torch.testing.assert_close(after[sites[0]], base[sites[0]], atol=0, rtol=0)
    assert not torch.allclose(after[sites[1]], base[sites[1]], atol=1e-4)


def test_attention_sites_read_and_write_through_the_attention_function(tiny):
    """q / k / v / pattern: reads equal capture's, self-patches change nothing, the model's
    attention implementation is restored, and a site the forward never reached is an error."""
    name, model, tok = tiny
    r = Runner(model)
    ids = _ids(tok, CLEAN)
    impl = model.config._attn_implementation
    sites = [Site(k, 1) for k in ("q", "k", "v", "pattern")]
    acts, base = r.read(ids, sites)
    cap = capture(model, tok, CLEAN, dtype=torch.float32, what="all")
    want = cap["blocks.1.attn.hook_pattern"].float()
    torch.testing.assert_close(acts[sites[3]].transpose(0, 1), want, atol=1e-6, rtol=0)
    assert acts[sites[1]].shape[1] == r.info.n_kv_heads
    for s in sites:
        out = r.logits(ids, [Edit(s, "replace", acts[s])])[0]
        torch.testing.assert_close(out, base, atol=1e-5, rtol=0)
    assert model.config._attn_implementation == impl and _n_hooks(model) == 0


def test_gqa_kv_head_changes_exactly_the_query_heads_it_serves():
    """Identity 11: patching KV head g changes the outputs of query heads gG..gG+G-1 only."""
    model, tok = FACTORIES["smollm"]()  # 6 query heads, 2 KV heads: G = 3
    r = Runner(model)
    clean, corrupt = _ids(tok, CLEAN), _ids(tok, CORRUPT)
    for kind in ("k", "v"):
        src, _ = r.read(clean, [Site(kind, 1)])
        base, _ = r.read(corrupt, [Site("z", 1)])
        for g in (0, 1):
            site = Site(kind, 1, head=g)
            after, _ = r.read(
                corrupt, [Site("z", 1)], edits=[Edit(site, "replace", src[Site(kind, 1)][:, g])]
            )
            changed = (after[Site("z", 1)] - base[Site("z", 1)]).abs().amax((0, 2)) > 1e-6
            assert changed.tolist() == [h // 3 == g for h in range(6)], (kind, g, changed)


def test_attention_hook_errors_restore_the_model():
    model, tok = FACTORIES["llama"]()
    r = Runner(model)
    ids = _ids(tok, CLEAN)
    with pytest.raises(ValueError, match="must broadcast"):
        r.logits(ids, [Edit(Site("pattern", 1, head=0), "replace", torch.zeros(3, 2))])
    assert model.config._attn_implementation == "sdpa" and _n_hooks(model) == 0
    wrapped = FACTORIES["llama"]()[0]
    wrapped.model.layers[1].self_attn.forward = lambda *a, **k: (a[0] * 0 if a else 0, None)
    with pytest.raises(RuntimeError, match="never reached site L1H0"):
        Runner(wrapped).logits(ids, [Edit(Site("q", 1, head=0), "read")])
