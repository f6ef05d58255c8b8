"""Attribution graphs: exact edges, identities, pruning, files and bad input on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.capture.adapters import get_adapter
from circuitboard.capture.adapters._base import get_module
from circuitboard.intervene._graph_frozen import freeze
from circuitboard.intervene._graph_rows import NeuronBasis, compute_rows
from tests.unit.tiny_models import tiny_gemma, tiny_gpt2, tiny_llama, tiny_neox, tiny_qwen2

PROMPT = "When Mary and John went to the store, John gave"


def _norm_hook(kind: str, gemma: bool):
    """Replace a norm's output by itself with the scale frozen (value unchanged)."""

    def hook(mod, args, out):
        x = args[0]
        eps = getattr(mod, "variance_epsilon", None) or getattr(mod, "eps", 1e-6)
        xd = x.detach()
        if kind == "layernorm":
            s = torch.rsqrt(xd.var(-1, unbiased=False, keepdim=True) + eps)
            d = x - xd
            d = d - d.mean(-1, keepdim=True)
        else:
            s = torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps)
            d = x - xd
        w = (1 + mod.weight) if gemma else mod.weight
        return out.detach() + d * s * w.detach()

    return hook


def brute_force_rows(model, tok, prompt, target):
    """Edges into ``target`` by autograd through the model's own modules with attention
    queries/keys, norm scales and MLP multipliers frozen and every other MLP cut.

    ``target``: ("logit", vocab_id) or ("neuron", layer, pos, n). Returns (neuron edges
    [layers, pos, d_mlp], token edges [pos])."""
    ad = get_adapter(model)
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    L = ad.n_blocks(model)
    handles = []
    gated = ad.name in ("llama", "gemma")
    gemma = ad.norm == "gemma_rmsnorm"
    deltas = {}
    tgt_layer = target[1] if target[0] == "neuron" else None
    grabbed = {}
    try:
        for mod in model.modules():
            if type(mod).__name__.endswith(("RMSNorm", "LayerNorm")):
                handles.append(mod.register_forward_hook(_norm_hook(ad.norm, gemma)))
        for layer in range(L):
            blk = ad.block(model, layer)
            if ad.name == "gpt2":

                def qkv(mod, args, out):
                    q, k, v = out.split(out.shape[-1] // 3, -1)
                    return torch.cat([q.detach(), k.detach(), v], -1)

                handles.append(blk.attn.c_attn.register_forward_hook(qkv))
            else:
                for name in ("q_proj", "k_proj"):
                    m = getattr(blk.self_attn, name)
                    handles.append(m.register_forward_hook(lambda mod, a, o: o.detach()))
            mlp = get_module(blk, "mlp")
            if layer != tgt_layer:
                handles.append(mlp.register_forward_pre_hook(lambda mod, a: (a[0].detach(),)))
            else:
                act = get_module(blk, "mlp.act_fn" if gated else "mlp.act")
                if gated:
                    handles.append(act.register_forward_hook(lambda mod, a, o: o.detach()))
                else:

                    def lin(mod, a, o):
                        z = a[0]
                        return o.detach() + (o / z).detach() * (z - z.detach())

                    handles.append(act.register_forward_hook(lin))
            down = get_module(blk, ad.block_mlp_down)

            def scale(mod, args, layer=layer):
                x = args[0]
                d = torch.zeros(x.shape[1:], requires_grad=True)
                deltas[layer] = d
                if layer == tgt_layer:
                    grabbed["value"] = x[0, target[2], target[3]]
                return (x * (1 + d),)

            handles.append(down.register_forward_pre_hook(scale))

        def scale_embed(mod, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            d = torch.zeros(x.shape[1], 1, requires_grad=True)
            deltas["embed"] = d
            x = x * (1 + d)
            if args:
                return (x, *args[1:]), kwargs
            kwargs["hidden_states"] = x
            return args, kwargs

        handles.append(ad.block(model, 0).register_forward_pre_hook(scale_embed, with_kwargs=True))
        out = model(ids).logits
        value = out[0, -1, target[1]] if target[0] == "logit" else grabbed["value"]
        keys = list(range(L)) + ["embed"]
        grads = torch.autograd.grad(value, [deltas[k] for k in keys], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    neurons = torch.stack([g if g is not None else torch.zeros_like(deltas[0]) for g in grads[:L]])
    return neurons.detach(), grads[L][:, 0].detach()


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2, tiny_qwen2])
def test_edges_equal_brute_force_jacobian(factory):
    model, tok = factory()
    fr = freeze(model, tok, PROMPT)
    b = NeuronBasis(fr)
    V = fr.W_U.shape[1]
    tgt_v = 7
    cand = torch.tensor([b.per_layer + 9 * fr.d_mlp + 5])  # layer 1, pos 9, neuron 5
    # the neuron row alone carries only positions up to its own (causal truncation)
    rows = torch.cat([compute_rows(b, torch.eye(V)[[tgt_v]])[0], compute_rows(b, cand=cand)[0]])
    for row, target in zip(rows, [("logit", tgt_v), ("neuron", 1, 9, 5)], strict=True):
        neurons, tokens = brute_force_rows(model, tok, PROMPT, target)
        ours_n = row[: b.n_basis].view(fr.n_layers, fr.n_pos, fr.d_mlp)
        ours_t = row[b.token_offset :]
        scale = max(neurons.abs().max().item(), tokens.abs().max().item())
        assert scale > 0
        torch.testing.assert_close(ours_n, neurons, atol=1e-5 * scale, rtol=1e-4)
        torch.testing.assert_close(ours_t, tokens, atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2, tiny_neox, tiny_gemma, tiny_qwen2])
def test_edges_plus_bias_sum_to_activation_and_logits(factory):
    model, tok = factory()
    fr = freeze(model, tok, PROMPT)
    b = NeuronBasis(fr)
    V = fr.W_U.shape[1]
    with torch.no_grad():
        logits = model(tok(PROMPT, return_tensors="pt")["input_ids"]).logits[0, -1].float()
    cand = torch.tensor([3 * fr.d_mlp + 1, b.per_layer + 12 * fr.d_mlp + 4, b.per_layer + 2])
    dirs = torch.eye(V)[[1, 50, 200]]
    rows, bias = compute_rows(b, dirs, cand)
    total = rows.double().sum(1) + bias.double()
    want = torch.cat([logits[[1, 50, 200]], b.activation(cand)]).double()
    torch.testing.assert_close(total, want, atol=1e-5 * want.abs().max().item(), rtol=0)


@pytest.fixture(scope="module")
def llama_graph():
    model, tok = tiny_llama()
    g = cb.attribution_graph(
        model, tok, PROMPT, basis="neurons", max_nodes=300, batch_size=64, progress=False
    )
    return model, tok, g


def test_stored_edges_are_the_rows(llama_graph):
    model, tok = tiny_llama()
    g = cb.attribution_graph(
        model, tok, PROMPT, basis="neurons", max_nodes=40, min_edge_share=0.0, progress=False
    )
    fr = freeze(model, tok, PROMPT)
    b = NeuronBasis(fr)
    basis_nodes = np.flatnonzero(g.node_kind == 1)
    layer, pos, idx = g.node_layer[basis_nodes], g.node_pos[basis_nodes], g.node_index[basis_nodes]
    cand = torch.as_tensor((layer * fr.n_pos + pos) * fr.d_mlp + idx)
    rows, bias = compute_rows(b, cand=cand[:5])
    col_of_node = {int(n): int(c) for n, c in zip(basis_nodes, cand, strict=True)}
    tok0 = int(np.flatnonzero(g.node_kind == 0)[0])
    for r in range(5):
        sel = g.edge_dst == basis_nodes[r]
        for s, w in zip(g.edge_src[sel], g.edge_weight[sel], strict=True):
            c = col_of_node.get(int(s), b.token_offset + int(s) - tok0)
            assert w == pytest.approx(rows[r, c].item(), rel=1e-6, abs=1e-12)
        assert g.node_bias[basis_nodes[r]] == pytest.approx(bias[r].item(), rel=1e-5, abs=1e-9)
        assert g.node_activation[basis_nodes[r]] == pytest.approx(
            rows[r].sum().item() + bias[r].item(), rel=1e-4, abs=1e-7
        )


def test_pruning_keeps_tokens_and_logits_and_is_monotone(llama_graph):
    _, _, g = llama_graph
    assert g.node_mask[(g.node_kind == 0) | (g.node_kind == 3)].all()
    prev = None
    for nt, et in [(0.5, 0.9), (0.8, 0.98), (0.9, 0.99), (0.99, 0.999), (1.0, 1.0)]:
        p = g.prune(nt, et)
        assert p.node_mask[(p.node_kind == 0) | (p.node_kind == 3)].all()
        assert not (p.edge_mask & ~(p.node_mask[p.edge_src] & p.node_mask[p.edge_dst])).any()
        if prev is not None:
            assert not (prev & ~p.node_mask).any(), "a higher threshold dropped a node"
        prev = p.node_mask
    assert g.prune(0.99, 0.999).n_nodes > g.n_nodes
    assert g.replacement_score == pytest.approx(1.0)  # no error nodes in the neuron basis


def test_token_id_prompt_gives_the_text_prompts_graph(llama_graph):
    model, tok, g = llama_graph
    ids = tok(PROMPT)["input_ids"]
    kw = dict(basis="neurons", max_nodes=300, batch_size=64, progress=False)
    for prompt in (ids, torch.tensor([ids])):
        h = cb.attribution_graph(model, tok, prompt, **kw)
        assert h.prompt == "".join(g.tokens) and h.tokens == g.tokens
        np.testing.assert_array_equal(h.token_ids, g.token_ids)
        np.testing.assert_array_equal(h.edge_src, g.edge_src)
        np.testing.assert_array_equal(h.edge_weight, g.edge_weight)
    with pytest.raises(ValueError, match="non-empty string or a list of token ids"):
        cb.attribution_graph(model, tok, [], **kw)
    with pytest.raises(ValueError, match=r"one sequence of token ids \(shape \[pos\]"):
        cb.attribution_graph(model, tok, torch.zeros(2, 3, dtype=torch.long), **kw)


def test_save_load_and_circuit_tracer_round_trip(llama_graph, tmp_path):
    _, _, g = llama_graph
    g.save(tmp_path / "g.npz")
    h = cb.load_graph(tmp_path / "g.npz")
    for k in ("node_kind", "node_mask", "edge_src", "edge_dst", "edge_weight", "edge_mask"):
        np.testing.assert_array_equal(getattr(h, k), getattr(g, k))
    assert h.tokens == g.tokens and h.logit_labels == g.logit_labels
    data = g.to_circuit_tracer_json(tmp_path / "g.json")
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    assert json.loads((tmp_path / "g.json").read_text())["metadata"]["prompt"] == PROMPT
    c = cb.load_graph(tmp_path / "g.json")
    assert c.n_nodes == g.n_nodes and c.n_edges == g.n_edges
    kept = np.flatnonzero(g.node_mask)
    np.testing.assert_array_equal(c.node_kind, g.node_kind[kept])
    np.testing.assert_array_equal(c.node_layer, g.node_layer[kept])
    np.testing.assert_array_equal(c.node_pos, g.node_pos[kept])
    remap = {int(n): i for i, n in enumerate(kept)}
    e = np.flatnonzero(g.edge_mask)
    pairs = {(remap[int(g.edge_src[j])], remap[int(g.edge_dst[j])]): g.edge_weight[j] for j in e}
    got = {
        (int(s), int(d)): w for s, d, w in zip(c.edge_src, c.edge_dst, c.edge_weight, strict=True)
    }
    assert got.keys() == pairs.keys()
    for k, w in pairs.items():
        assert got[k] == pytest.approx(float(w), rel=1e-6)


def test_target_baseline_graph_explains_the_difference():
    model, tok = tiny_llama()
    g = cb.attribution_graph(
        model,
        tok,
        PROMPT,
        basis="neurons",
        target=" Mary",
        baseline=" John",
        max_nodes=16,
        progress=False,
    )
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    m, j = (tok(t, add_special_tokens=False)["input_ids"][0] for t in (" Mary", " John"))
    assert (g.node_kind == 3).sum() == 1
    assert g.node_activation[g.node_kind == 3][0] == pytest.approx(
        float(logits[m] - logits[j]), abs=1e-5
    )


def test_bad_inputs():
    model, tok = tiny_llama()
    with pytest.raises(ValueError, match="basis is required: basis='neurons'"):
        cb.attribution_graph(model, tok, PROMPT)
    with pytest.raises(ValueError, match="basis must be 'neurons' or transcoders"):
        cb.attribution_graph(model, tok, PROMPT, basis="features")
    with pytest.raises(ValueError, match=r"target=.* is \d+ tokens.*a logit node is one token"):
        cb.attribution_graph(model, tok, PROMPT, basis="neurons", target=" Maryland zz")
    with pytest.raises(ValueError, match="past max_memory=.*Shorten the prompt"):
        cb.attribution_graph(model, tok, PROMPT * 40, basis="neurons", max_memory="1MiB")
    with pytest.raises(ValueError, match="node_threshold must be in"):
        cb.attribution_graph(
            model, tok, PROMPT, basis="neurons", node_threshold=1.5, max_nodes=4, progress=False
        )
    with pytest.raises(FileNotFoundError, match="no attribution graph file at .*save"):
        cb.load_graph("/nonexistent/g.npz")


def test_unsupported_family_is_refused():
    from tests.unit.tiny_models import tiny_olmo2

    model, tok = tiny_olmo2()
    with pytest.raises(ValueError, match="support the families.*olmo2.*Use a Llama"):
        cb.attribution_graph(model, tok, PROMPT, basis="neurons", max_nodes=4, progress=False)


def test_estimate_returns_cost_without_running(capsys):
    model, tok = tiny_llama()
    cost = cb.attribution_graph(model, tok, PROMPT, basis="neurons", estimate=True)
    assert cost["flops"] > 0 and cost["seconds"] > 0 and cost["peak_bytes"] > 0
    assert "TFLOP" in capsys.readouterr().err


@pytest.mark.parametrize("factory", [tiny_llama, tiny_neox])
def test_head_loadings_sum_to_their_edge(factory):
    model, tok = factory()
    g = cb.attribution_graph(
        model,
        tok,
        PROMPT,
        basis="neurons",
        max_nodes=64,
        node_threshold=0.95,
        edge_threshold=0.99,
        head_loadings=4,
        progress=False,
    )
    loaded = np.unique(g.hl_edge)
    assert len(loaded) > 0
    for e in loaded:
        assert g.node_pos[g.edge_src[e]] != g.node_pos[g.edge_dst[e]]
        parts = g.head_loadings(int(e))
        assert all(p["layer"] < g.n_layers for p in parts)
        total = sum(p["value"] for p in parts)
        assert total == pytest.approx(float(g.edge_weight[e]), rel=1e-4, abs=1e-7)


def test_graph_view_interventions_in_the_kernel():
    model, tok = tiny_llama()
    g = cb.attribution_graph(
        model,
        tok,
        PROMPT,
        basis="neurons",
        target=" Mary",
        max_nodes=64,
        node_threshold=0.95,
        progress=False,
    )
    view = cb.graph_view(g, model=model, tokenizer=tok)
    assert view._edges["shape"] == [g.n_edges, 3] and isinstance(view._edges["data"], bytes)
    basis = [i for i, n in enumerate(np.flatnonzero(g.node_mask)) if g.node_kind[n] == 1]
    assert basis
    view.group("grp", basis[:3])
    same = view.intervene("grp", 1.0)  # scaling by 1 changes nothing
    assert same["metric_after"] == pytest.approx(same["metric_before"], abs=1e-6)
    m = tok(" Mary", add_special_tokens=False)["input_ids"][0]
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert same["metric_before"] == pytest.approx(float(model(ids).logits[0, -1, m]), abs=1e-5)
    # ablating one neuron equals zeroing its down-projection input by hand
    node = int(np.flatnonzero(g.node_mask)[basis[0]])
    layer, pos, n = (int(a[node]) for a in (g.node_layer, g.node_pos, g.node_index))
    view.group("one", [basis[0]])
    out = view.intervene("one", 0.0)
    down = model.model.layers[layer].mlp.down_proj

    def zero(mod, args):
        x = args[0].clone()
        x[:, pos, n] = 0
        return (x,)

    h = down.register_forward_pre_hook(zero)
    try:
        with torch.no_grad():
            want = float(model(ids).logits[0, -1, m])
    finally:
        h.remove()
    assert out["metric_after"] == pytest.approx(want, abs=1e-6)
    assert len(view.interventions) == 2
    with pytest.raises(ValueError, match="no supernode 'nope'"):
        view.intervene("nope")
    with pytest.raises(ValueError, match="no model attached.*cb.graph_view\\(graph, model="):
        cb.graph_view(g).intervene("grp")


def _transcoders(model, layers, d_sae=64, kind="relu"):
    """Tiny transcoders (random, seeded): the identities hold for any weights."""
    from circuitboard.dictionaries import SAE

    D = model.config.hidden_size
    return [
        SAE(
            D,
            d_sae,
            d_out=D,
            kind=kind,
            k=8 if kind == "topk" else None,
            hook=f"blocks.{layer}.mlp.hook_in",
            hook_out=f"blocks.{layer}.hook_mlp_out",
            seed=layer,
        )
        for layer in layers
    ]


@pytest.mark.parametrize(
    ("factory", "kind"), [(tiny_llama, "relu"), (tiny_gpt2, "topk"), (tiny_neox, "relu")]
)
def test_transcoder_edges_sum_to_pre_activation_and_errors_make_logits_exact(factory, kind):
    from circuitboard.intervene._graph_transcoders import TranscoderBasis

    model, tok = factory()
    fr = freeze(model, tok, PROMPT, keep_mlp_out=True)
    b = TranscoderBasis(fr, _transcoders(model, [1], kind=kind))  # layer 0: one error node/pos
    assert b.n_basis > 0 and b.n_error == fr.n_layers * fr.n_pos
    V = fr.W_U.shape[1]
    with torch.no_grad():
        logits = model(tok(PROMPT, return_tensors="pt")["input_ids"]).logits[0, -1].float()
    cand = torch.arange(0, b.n_basis, max(1, b.n_basis // 6))
    rows, bias = compute_rows(b, torch.eye(V)[[2, 40]], cand)
    total = rows.double().sum(1) + bias.double()
    want = torch.cat([logits[[2, 40]], b.pre[cand]]).double()
    torch.testing.assert_close(total, want, atol=1e-5 * want.abs().max().item(), rtol=0)
    # the feature rows hold their activation too where the feature is on (pre == act)
    torch.testing.assert_close(b.pre[cand], b.act[cand])


def test_transcoder_graph_and_bad_transcoders():
    model, tok = tiny_llama()
    ts = cb.TranscoderSet(_transcoders(model, [0, 1]))
    g = cb.attribution_graph(model, tok, PROMPT, basis=ts, max_nodes=40, progress=False)
    assert g.basis == "transcoders" and (g.node_kind == 2).sum() == 2 * len(g.tokens)
    assert 0 < g.replacement_score <= 1 and 0 < g.completeness_score <= 1
    for e in np.unique(g.hl_edge):  # head loadings (features, errors, tokens) sum to the edge
        total = sum(p["value"] for p in g.head_loadings(int(e)))
        assert total == pytest.approx(float(g.edge_weight[e]), rel=1e-4, abs=1e-7)
    assert len(np.unique(g.hl_edge)) > 0
    assert g.node_mask[(g.node_kind == 0) | (g.node_kind == 3)].all()
    from circuitboard.dictionaries import SAE

    D = model.config.hidden_size
    wrong_width = SAE(
        D + 2, 16, d_out=D, hook="blocks.1.mlp.hook_in", hook_out="blocks.1.hook_mlp_out"
    )
    with pytest.raises(ValueError, match="does not fit this model.*widths"):
        cb.attribution_graph(model, tok, PROMPT, basis=wrong_width, progress=False)
    wrong_layer = SAE(D, 16, d_out=D, hook="blocks.7.mlp.hook_in", hook_out="blocks.7.hook_mlp_out")
    with pytest.raises(ValueError, match="layer 7 of 2"):
        cb.attribution_graph(model, tok, PROMPT, basis=[wrong_layer], progress=False)
    sae = SAE(D, 16, hook="blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match="need MLP transcoders"):
        cb.attribution_graph(model, tok, PROMPT, basis=sae, progress=False)


def test_graph_view_explains_a_head_loading_in_the_kernel():
    """A head loading's (layer, head, target position, source position) is explained by
    cb.explain_attention on the graph's prompt; a report embeds the largest ones."""
    model, tok = tiny_llama()
    g = cb.attribution_graph(
        model,
        tok,
        PROMPT,
        basis="neurons",
        max_nodes=64,
        node_threshold=0.95,
        edge_threshold=0.99,
        head_loadings=4,
        progress=False,
    )
    view = cb.graph_view(g, model=model, tokenizer=tok)
    assert view.explainable and not cb.graph_view(g).explainable
    cells = view._loading_cells()
    assert cells and len(set(cells)) == len(cells)
    layer, head, query, key = cells[0]
    e = int(g.hl_edge[np.argmax(np.abs(g.hl_value) * g.edge_mask[g.hl_edge])])
    assert (query, key) == (int(g.node_pos[g.edge_dst[e]]), int(g.node_pos[g.edge_src[e]]))
    reply, buffers = view.answer(
        {"kind": "fetch-explain", "layer": layer, "head": head, "query": query, "key": key}
    )
    cap = cb.capture(model, tok, PROMPT, dtype=torch.float32)
    want = cb.explain_attention(cap, layer=layer, head=head, query=query, key=key)
    assert reply["score"] == pytest.approx(want.score, abs=1e-6)
    assert reply["total"] == pytest.approx(reply["score"], abs=1e-4)
    assert (reply["layer"], reply["head"], reply["query"], reply["key"]) == cells[0]
    reqs = view.export_requests(10 * 2**20)
    assert reqs and reqs[0] == {
        "kind": "fetch-explain",
        "layer": layer,
        "head": head,
        "query": query,
        "key": key,
    }
    assert any("explanations of" in n for n in view.export_notes(10 * 2**20))
    assert cb.graph_view(g).export_requests(10 * 2**20) == []
    with pytest.raises(ValueError, match="no model attached.*cb.graph_view\\(graph, model="):
        cb.graph_view(g).explain_head(layer, head, query, key)
    with pytest.raises(ValueError, match=f"query must be an int in 0..{len(g.tokens) - 1}"):
        view.explain_head(layer, head, 99, key)
    with pytest.raises(ValueError, match="layer must be an int in 0..1"):
        view.explain_head(7, head, query, key)
    with pytest.raises(ValueError, match="key <= query"):
        view.explain_head(layer, head, 2, 5)
