"""The data flow between recorded tensors, from autograd's graph of one forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import circuitboard as cb
from circuitboard.training import DataFlow, dataflow, record_dataflow

from .training_helpers import TokenMLP, tiny_toy, toy_batch


class Branchy(nn.Module):
    """Known data flow: two branches that merge, an identity tap on the merge (one value,
    two names), a skip connection from the input layer to the output, dropout and batch norm
    (which a trace must leave untouched)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.left = nn.Linear(8, 8)
        self.act = nn.ReLU()
        self.right = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.5)
        self.merge = nn.Linear(8, 8)
        self.tap = nn.Identity()
        self.norm = nn.BatchNorm1d(8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        a = self.act(self.left(h))
        b = self.drop(self.right(h))
        m = self.tap(self.merge(a * b))
        return self.out(self.norm(m) + h)


WANT = {
    ("inp", "left"),
    ("left", "act"),
    ("inp", "right"),
    ("right", "drop"),  # eval-mode dropout: one value, two names
    ("act", "merge"),
    ("drop", "merge"),
    ("merge", "tap"),  # the identity: one value, two names
    ("tap", "norm"),
    ("norm", "out"),
    ("inp", "out"),  # the skip connection
}


def test_edges_of_a_hand_built_module_with_branches_and_a_skip():
    torch.manual_seed(0)
    model = Branchy().train()
    x = torch.randn(5, 4)
    stats = model.norm.running_mean.clone()
    rng = torch.random.get_rng_state()
    flow = dataflow(model, x)
    assert flow.nodes == ["inp", "left", "act", "right", "drop", "merge", "tap", "norm", "out"]
    assert set(flow.edges) == WANT and len(flow.edges) == len(WANT)
    assert ("merge", "out") not in flow.edges  # through the tap, not around it
    assert set(flow.sources("out")) == {"norm", "inp"}
    # nothing the training depends on moved: mode, batch-norm statistics, RNG, gradients
    assert model.training and torch.equal(model.norm.running_mean, stats)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())


def test_a_residual_stream_model_and_an_mlp():
    flow = dataflow(tiny_toy(), toy_batch(0)[0])
    b = [f"blocks.{i}." for i in range(2)]
    assert set(flow.edges) == {
        (b[0] + "attn.hook_z", b[0] + "hook_attn_out"),
        (b[0] + "hook_attn_out", b[0] + "hook_resid_post"),
        (b[0] + "hook_resid_post", b[1] + "attn.hook_z"),  # through ln1, qkv and the pattern
        (b[0] + "hook_resid_post", b[1] + "hook_resid_post"),  # the residual stream
        (b[1] + "attn.hook_z", b[1] + "hook_attn_out"),
        (b[1] + "hook_attn_out", b[1] + "hook_resid_post"),
    }
    mlp = dataflow(TokenMLP(), toy_batch(0)[0])
    assert mlp.nodes == ["embed", "up", "act", "down", "unembed"]
    assert set(mlp.edges) == {
        ("embed", "up"),
        ("up", "act"),
        ("act", "down"),
        ("down", "unembed"),
        ("embed", "unembed"),
    }
    # a chosen subset: what lies between is skipped, the flow still follows the data
    sub = dataflow(TokenMLP(), toy_batch(0)[0], modules=["embed", "down", "unembed"])
    assert set(sub.edges) == {("embed", "down"), ("down", "unembed"), ("embed", "unembed")}


def test_recorded_once_in_the_run_file(tmp_path):
    model = TokenMLP()
    path = tmp_path / "r.sqlite"
    rec = cb.TrainingRecorder(model, every=1, path=path)
    ids = toy_batch(0)[0]
    flow = record_dataflow(rec, ids)
    with rec.step(0):
        model(ids).sum().backward()
        with pytest.raises(RuntimeError, match="before rec.attach"):
            record_dataflow(rec, ids)
    run = rec.close()
    assert run.dataflow == flow
    assert cb.load_training_run(path).dataflow == flow
    view = cb.training_view(run, navigator="graph")  # the view draws it
    names = view.names
    assert [names[i] for i in view.graph_nodes] == flow.nodes
    assert {(names[a], names[b]) for a, b in view.graph_edges} == set(flow.edges)
    with pytest.raises(TypeError, match="needs a TrainingRecorder.*dataflow\\(model, batch\\)"):
        record_dataflow(model, ids)
    with pytest.raises(ValueError, match="not nodes: \\['c'\\]"):
        DataFlow.from_json({"nodes": ["a", "b"], "edges": [["a", "c"]]})
    with pytest.raises(ValueError, match="a data flow is"):
        DataFlow.from_json([1, 2])


def test_the_view_needs_a_flow_for_the_graph(tmp_path):
    model = TokenMLP()
    rec = cb.TrainingRecorder(model, every=1, path=tmp_path / "r.sqlite")
    ids = toy_batch(0)[0]
    with rec.step(0):
        model(ids).sum().backward()
    run = rec.close()
    assert run.dataflow is None
    view = cb.training_view(run)
    assert view.navigator == "list" and view.graph_nodes == [] and view.graph_edges == []
    with pytest.raises(ValueError, match=r"navigator='graph' needs.*record_dataflow\(rec, batch\)"):
        cb.training_view(run, navigator="graph")
    with pytest.raises(ValueError, match=r"navigator='tree'; choose from \['list', 'graph'\]"):
        cb.training_view(run, navigator="tree")
    # a flow made apart from the recorder (e.g. for a run built from checkpoints)
    flow = dataflow(model, ids)
    view = cb.training_view(run, dataflow=flow, navigator="graph")
    assert len(view.graph_edges) == 5
    assert cb.training_view(run, dataflow=flow.to_json()).graph_edges == view.graph_edges
    with pytest.raises(TypeError, match="dataflow must be a circuitboard.training.DataFlow"):
        cb.training_view(run, dataflow=[("embed", "up")])


def test_an_adapter_backed_model_with_input_sites_and_aliases():
    # a Hugging Face Llama: capture-named sites, some the input of a module (attn.hook_z is
    # o_proj's input); block 0's output and block 1's input are one value under two names
    from .tiny_models import tiny_llama

    model, _ = tiny_llama()
    p = "blocks.0."
    names = [p + h for h in ("hook_resid_pre", "attn.hook_z", "hook_attn_out")]
    names += [p + h for h in ("mlp.hook_post", "hook_mlp_out", "hook_resid_post")]
    names.append("blocks.1.hook_resid_pre")
    flow = dataflow(model, torch.randint(0, 50, (2, 7)), modules=names)
    assert flow.nodes == names
    resid_pre, z, attn_out, post, mlp_out, resid_post, next_pre = names
    assert set(flow.edges) == {
        (resid_pre, z),
        (z, attn_out),
        (resid_pre, post),  # the MLP reads resid_pre + attn_out (pre-norm residual)
        (attn_out, post),
        (post, mlp_out),
        (resid_pre, resid_post),
        (attn_out, resid_post),
        (mlp_out, resid_post),
        (resid_post, next_pre),  # one value, two names
    }
