"""Attribution graphs with a token-set or direction target: the logit node is the set's mean
logit (minus the baseline's) or ``logits · v``, and its edges plus its bias still sum to it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.intervene._graph_intervene import intervene_graph
from tests.unit.tiny_models import tiny_gpt2, tiny_llama

PROMPT = "When Mary and John went to the store, John gave"
EVERY = 10_000  # more basis nodes than the tiny models have: every edge is computed


def _logits(model, tok):
    with torch.no_grad():
        return model(tok(PROMPT, return_tensors="pt")["input_ids"]).logits[0, -1].double()


def _ids(tok, *words):
    return [tok(w, add_special_tokens=False)["input_ids"][0] for w in words]


def _check_logit_node(g, want):
    """The logit node's value, and its edges plus bias, equal ``want`` (float32)."""
    (node,) = np.flatnonzero(g.node_kind == 3)
    assert g.node_activation[node] == pytest.approx(want, abs=1e-5 * max(1.0, abs(want)))
    into = g.edge_weight[g.edge_dst == node].astype(np.float64).sum() + g.node_bias[node]
    assert into == pytest.approx(want, abs=1e-5 * max(1.0, abs(want)))
    return node


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2])  # gpt2: LayerNorm bias and b_U
def test_set_target_edges_sum_to_the_mean_logit(factory):
    model, tok = factory()
    g = cb.attribution_graph(
        model, tok, PROMPT, basis="neurons", target=[" Mary", " and"], baseline=[" John"],
        max_nodes=EVERY, min_edge_share=0.0, progress=False,
    )  # fmt: skip
    logits = _logits(model, tok)
    m, a, j = _ids(tok, " Mary", " and", " John")
    want = float((logits[m] + logits[a]) / 2 - logits[j])
    _check_logit_node(g, want)
    texts = sorted([(m, "' Mary'"), (a, "' and'")])  # a set is listed in token-id order
    assert g.logit_labels == ["{" + ", ".join(t for _, t in texts) + "} -  John"]
    assert g.stats["logit_direction"][0] == sorted([m, a, j])
    # the graph's interventions measure the same quantity
    r = intervene_graph(model, tok, g, [], 1.0)
    assert r["metric_before"] == pytest.approx(want, abs=1e-5)


def test_direction_target_and_errors():
    model, tok = tiny_llama()
    V = model.config.vocab_size
    m, j = _ids(tok, " Mary", " John")
    v = 0.05 * torch.randn(V, generator=torch.Generator().manual_seed(1))
    v[m] += 1.0
    v[j] -= 1.0
    g = cb.attribution_graph(
        model, tok, PROMPT, basis="neurons", target=cb.Direction(v, name="blurred"),
        max_nodes=EVERY, min_edge_share=0.0, progress=False,
    )  # fmt: skip
    _check_logit_node(g, float(_logits(model, tok) @ v.double()))
    assert g.logit_labels == ["blurred"]
    # one token minus one token is the graph it always was
    one = cb.attribution_graph(
        model, tok, PROMPT, basis="neurons", target=" Mary", baseline=" John", max_nodes=16,
        progress=False,
    )  # fmt: skip
    assert one.stats["logit_token_ids"] == [m] and one.stats["baseline_id"] == j
    assert one.stats["logit_direction"] is None
    kw = dict(basis="neurons", max_nodes=16, progress=False)
    with pytest.raises(ValueError, match="takes no baseline="):
        cb.attribution_graph(model, tok, PROMPT, target=cb.Direction(v), baseline=" John", **kw)
    with pytest.raises(ValueError, match=r"target=\[\] is an empty token set"):
        cb.attribution_graph(model, tok, PROMPT, target=[], **kw)


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2])
def test_residual_direction_target_is_the_unembedding_input_along_it(factory):
    """A d_model direction: the logit node is final_norm(resid) · r, read independently from
    the unembedding's input; its edges plus bias sum to it; interventions measure it."""
    model, tok = factory()
    D = model.config.hidden_size
    r = torch.randn(D, generator=torch.Generator().manual_seed(4))
    seen = {}
    head = model.get_output_embeddings()
    h = head.register_forward_pre_hook(lambda mod, args: seen.update(x=args[0][0, -1]))
    try:
        _logits(model, tok)
    finally:
        h.remove()
    want = float(seen["x"].double() @ r.double())
    g = cb.attribution_graph(
        model, tok, PROMPT, basis="neurons", target=cb.Direction(r, name="probe"),
        max_nodes=EVERY, min_edge_share=0.0, progress=False,
    )  # fmt: skip
    _check_logit_node(g, want)
    assert g.logit_labels == ["probe"] and g.stats["logit_direction"] is None
    r_out = intervene_graph(model, tok, g, [], 1.0)
    assert r_out["metric_before"] == pytest.approx(want, abs=1e-5)
    assert r_out["metric_after"] == pytest.approx(want, abs=1e-5)  # factor 1 changes nothing
