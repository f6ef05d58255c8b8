"""Circuit identities (INTERVENTIONS.md 7, 8, 10) on tiny models of every causal adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.intervene import Edit, Runner, Site, evaluate
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


def _site(node: str) -> Site:
    layer = int(node[1:].split("H")[0].split(".")[0])
    if node.endswith(".mlp"):
        return Site("mlp_out", layer)
    return Site("z", layer, head=int(node.split("H")[1]))


def _patch_node(model, tok, node, metric):
    """Metric of the clean run with one node's output replaced by its corrupted value, through
    the shared runner (z for heads, the MLP's output), independently of the circuit code."""
    runner = Runner(model)
    clean, corrupted = (torch.tensor(tok(p)["input_ids"]) for p in (CLEAN, CORRUPTED))
    site = _site(node)
    acts, _ = runner.read(corrupted, [site])
    return float(runner.patched(clean, [[Edit(site, "replace", acts[site][None])]], metric)[0])


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
    """Σ_v EAP(u → v) = attribution patching of writer u (gradient at u's own output, z)."""
    name, model, tok, c = tiny
    if name == "gemma2":
        pytest.skip("Gemma 2 normalizes the heads' sum: a head's node is its normed write, not z")
    live = c._live
    p = live.pairs[0]
    runner = Runner(model)
    L, H = c.graph.n_layers, c.graph.n_heads
    sites = [Site("z", layer) for layer in range(L)]
    grads = [Edit(s, op="grad") for s in sites]
    logits = runner.logits(p.clean, grads)
    m = evaluate(p.metric, logits).sum()
    gz = torch.autograd.grad(m, [e.delta for e in grads])
    corr, _ = runner.read(p.corrupted, sites)
    gap = live.m_clean - live.m_corr
    nodes = c.node_scores()
    for layer, (e, g) in enumerate(zip(grads, gz, strict=True)):
        dz = e.activation[0] - corr[sites[layer]]  # [P, H, dh]
        atp = (dz * g[0]).sum((0, 2)) / gap
        for h in range(H):
            assert nodes[f"L{layer}H{h}"] == pytest.approx(float(atp[h]), rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("which", ["head", "mlp"])
def test_removing_out_edges_equals_patching_node(tiny, which):
    name, model, tok, c = tiny
    if which == "head" and name == "gemma2":
        pytest.skip("Gemma 2 normalizes the heads' sum: z patching rescales every head")
    node = "L0H1" if which == "head" else "L0.mlp"
    live = c._live
    p = live.pairs[0]
    patched = _patch_node(model, tok, node, p.metric)
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


def _n_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_when_metric_raises():
    model, tok = tm.tiny_llama()
    before = _n_hooks(model)

    def bad(logits):
        raise RuntimeError("metric failed")

    for method in ("eap", "eap-ig"):
        with pytest.raises(RuntimeError, match="metric failed"):
            cb.circuit(model, tok, CLEAN, CORRUPTED, metric=bad, method=method)
        assert _n_hooks(model) == before
    c = cb.circuit(model, tok, CLEAN, CORRUPTED, method="eap")
    c._live.pairs[0].metric = bad
    with pytest.raises(RuntimeError, match="metric failed"):
        c.evaluate(3)
    assert _n_hooks(model) == before


def test_bad_inputs():
    model, tok = tm.tiny_llama()
    with pytest.raises(ValueError, match="same length"):
        cb.circuit(model, tok, "1 2 3", "1 2 3 4 5")
    with pytest.raises(ValueError, match="method must be one of"):
        cb.circuit(model, tok, CLEAN, CORRUPTED, method="acdc")
    with pytest.raises(ValueError, match="cannot normalize"):
        cb.circuit(model, tok, CLEAN, CLEAN, answer=" 8", wrong=" 9", method="eap")
    with pytest.raises(ValueError, match="nodes must be"):
        cb.circuit(model, tok, CLEAN, CORRUPTED, nodes="neurons")
    bert, btok = tm.tiny_bert()
    with pytest.raises(ValueError, match="causal language model"):
        cb.circuit(bert, btok, CLEAN, CORRUPTED)
    c = cb.circuit(model, tok, CLEAN, CORRUPTED, method="eap")
    with pytest.raises(ValueError, match="outside 0.."):
        c.evaluate(c.n_edges + 1)
    with pytest.raises(KeyError, match="no edge"):
        c.evaluate([("L9H0", "logits")])
    with pytest.raises(ValueError, match="does not write before"):
        c.evaluate([("L1H0", "L0.mlp")])
    with pytest.raises(KeyError, match="unknown node"):
        c.evaluate(without=["L0H9"])


def test_layers_nodes_and_pairs():
    model, tok = tm.tiny_gpt2()
    c = cb.circuit(
        model,
        tok,
        [CLEAN, "2 3 4 5 6 7 8 9"],
        [CORRUPTED, "8 7 6 5 4 3 2 1"],
        nodes="layers",
        steps=8,
    )
    assert c.n_pairs == 2
    assert [n["name"] for n in c.nodes][:3] == ["embed", "L0.attn", "L0.mlp"]
    assert c.evaluate(c.n_edges) == pytest.approx(1.0, abs=1e-5)
    assert c.evaluate(0) == pytest.approx(0.0, abs=1e-5)
    assert abs(c.completeness - 1) < 0.02
    d = c.to_dict()
    assert d["direction"] == "noising" and len(d["edges"]) == c.n_edges
    nx = pytest.importorskip("networkx")
    G = c.to_networkx(k=5)
    assert isinstance(G, nx.DiGraph) and G.number_of_edges() <= 5
