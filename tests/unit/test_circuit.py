"""Circuit identities (INTERVENTIONS.md 7, 8, 10) on tiny models of every causal adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.capture.adapters import get_adapter
from circuitboard.capture.adapters._base import get_module
from circuitboard.intervene._graph import Graph
from tests.unit import tiny_models as tm

CLEAN, CORRUPTED = "1 2 3 4 5 6 7 8", "9 8 7 6 5 4 3 2"
FACTORIES = {
    "llama-gqa": tm.tiny_llama,
    "smollm-gqa": tm.tiny_smollm,
    "gpt2": tm.tiny_gpt2,
    "neox": tm.tiny_neox,
    "gemma": tm.tiny_gemma,
    "gemma2": tm.tiny_gemma2,
}


@pytest.fixture(scope="module", params=list(FACTORIES))
def tiny(request):
    model, tok = FACTORIES[request.param]()
    eap = cb.circuit(model, tok, CLEAN, CORRUPTED, method="eap")
    return request.param, model, tok, eap


def _ablate_node(model, tok, node, clean, corrupted, metric):
    """Metric of the clean run with one node's output replaced by its corrupted value, by
    hooks written independently of the circuit code (z for heads, the MLP's output)."""
    adapter = get_adapter(model)
    ids = [torch.tensor([tok(p)["input_ids"]]) for p in (clean, corrupted)]
    layer = int(node[1:].split("H")[0].split(".")[0])
    blk = adapter.block(model, layer)
    if node.endswith(".mlp"):
        path, idx = adapter.block_mlp_out
        mod = get_module(blk, path)
        saved = {}

        def rec(m, a, o):
            saved["v"] = (o[idx] if idx is not None else o).detach()

        def put(m, a, o):
            return saved["v"] if idx is None else (saved["v"], *o[1:])

        fn, pre = (rec, put), False
    else:
        h = int(node.split("H")[1])
        mod = get_module(blk, adapter.block_o_proj)
        dh = model.config.hidden_size // model.config.num_attention_heads
        dh = getattr(model.config, "head_dim", None) or dh
        saved = {}

        def rec(m, a):
            saved["v"] = a[0][..., h * dh : (h + 1) * dh].detach().clone()

        def put(m, a):
            z = a[0].clone()
            z[..., h * dh : (h + 1) * dh] = saved["v"]
            return (z, *a[1:])

        fn, pre = (rec, put), True
    reg = mod.register_forward_pre_hook if pre else mod.register_forward_hook
    with torch.no_grad():
        hd = reg(fn[0])
        try:
            model(input_ids=ids[1])
        finally:
            hd.remove()
        hd = reg(fn[1])
        try:
            out = model(input_ids=ids[0]).logits
        finally:
            hd.remove()
    return float(metric(out)[0])


def test_graph_counts_smollm2():
    g = Graph.build(30, 9, 3)
    assert g.n_edges == 70651
    assert g.n_edges_per_query_head == 123211
    kv = g.readers[g.reader_index["L17KV1.k"]]
    assert kv.serves == (3, 4, 5)
    # every edge points forward; the MLP of a layer reads its own layer's heads
    assert g.valid[g.writer_index["L3H0"], g.reader_index["L3.mlp"]]
    assert not g.valid[g.writer_index["L3H0"], g.reader_index["L3H1.q"]]
    par = Graph.build(2, 4, 4, parallel=True)
    assert not par.valid[par.writer_index["L0H0"], par.reader_index["L0.mlp"]]


def test_full_and_empty_circuit(tiny):
    name, _, _, c = tiny
    assert c.evaluate(c.n_edges) == pytest.approx(1.0, abs=1e-5)
    assert c.evaluate(0) == pytest.approx(0.0, abs=1e-5)


def test_batched_evaluations_equal_single(tiny):
    _, _, _, c = tiny
    ks = [0, 3, 10, c.n_edges // 2, c.n_edges]
    _, batched = c.faithfulness(ks)
    single = [c._live.evaluate(c._keep(k)[None])[0] for k in ks]
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_edge_scores_sum_to_node_attribution(tiny):
    """Σ_v EAP(u → v) = attribution patching of writer u (gradient at u's own output)."""
    name, model, tok, c = tiny
    live = c._live
    p = live.pairs[0]
    adapter = get_adapter(model)
    L = c.graph.n_layers
    grads, acts = {}, {}
    handles = []

    def o_pre(layer):
        def fn(m, a):
            d = torch.zeros_like(a[0], requires_grad=True)
            grads[("z", layer)] = d
            acts[("z", layer)] = a[0].detach()
            return (a[0] + d, *a[1:])

        return fn

    for layer in range(L):
        blk = adapter.block(model, layer)
        handles.append(
            get_module(blk, adapter.block_o_proj).register_forward_pre_hook(o_pre(layer))
        )
    try:
        out = model(input_ids=p.clean[None]).logits
        gap = live.m_clean - live.m_corr
        m = p.metric(out).sum()
        keys = sorted(grads)
        gs = dict(zip(keys, torch.autograd.grad(m, [grads[k] for k in keys]), strict=True))
    finally:
        for h in handles:
            h.remove()
    zc = {}
    hs = []
    for layer in range(L):
        blk = adapter.block(model, layer)
        hs.append(
            get_module(blk, adapter.block_o_proj).register_forward_pre_hook(
                lambda m, a, layer=layer: zc.__setitem__(layer, a[0].detach())
            )
        )
    try:
        with torch.no_grad():
            model(input_ids=p.corrupted[None])
    finally:
        for h in hs:
            h.remove()
    nodes = c.node_scores()
    H = c.graph.n_heads
    for layer in range(L):
        dz = (acts[("z", layer)] - zc[layer])[0]
        g = gs[("z", layer)][0]
        dh = dz.shape[-1] // H
        for h in range(H):
            sl = slice(h * dh, (h + 1) * dh)
            atp = float((dz[:, sl] * g[:, sl]).sum()) / gap
            if name == "gemma2":
                continue  # sandwich norm: a head's node is its normed write, not z (see docs)
            assert nodes[f"L{layer}H{h}"] == pytest.approx(atp, rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("which", ["head", "mlp"])
def test_removing_out_edges_equals_patching_node(tiny, which):
    name, model, tok, c = tiny
    if which == "head" and name == "gemma2":
        pytest.skip("Gemma 2 normalizes the heads' sum: z patching rescales every head")
    node = "L0H1" if which == "head" else "L0.mlp"
    live = c._live
    p = live.pairs[0]
    patched = _ablate_node(model, tok, node, CLEAN, CORRUPTED, p.metric)
    expected = (patched - live.m_corr) / (live.m_clean - live.m_corr)
    assert c.evaluate(without=[node]) == pytest.approx(expected, abs=1e-4)


def test_eap_ig_completeness_converges(tiny):
    name, model, tok, _ = tiny
    errs = [
        abs(cb.circuit(model, tok, CLEAN, CORRUPTED, steps=s).completeness - 1) for s in (1, 4, 16)
    ]
    assert errs[2] < errs[1] < errs[0] or errs[2] < 1e-3
    assert errs[2] < 5e-3, errs


def test_pruned_dangling_edges_do_not_matter(tiny):
    _, _, _, c = tiny
    k = max(4, c.n_edges // 8)
    pruned = c.prune(k=k)
    assert pruned.n_edges <= k
    assert pruned.evaluate(pruned.n_edges) == pytest.approx(c.evaluate(k), abs=1e-4)


def test_save_load_roundtrip(tiny, tmp_path):
    name, model, tok, c = tiny
    c.faithfulness([0, 5, c.n_edges])
    path = c.save(tmp_path / "c.npz")
    back = cb.load_circuit(path)
    assert back.edges[:5] == c.edges[:5]
    assert back.curve == c.curve
    assert back.evaluate(5) == pytest.approx(c.evaluate(5), abs=1e-5)  # precomputed
    with pytest.raises(RuntimeError, match="no model attached"):
        back.evaluate(7)
    live = cb.load_circuit(path, model, tok)
    assert live.evaluate(7) == pytest.approx(c.evaluate(7), abs=1e-5)
