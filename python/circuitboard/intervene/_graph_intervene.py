"""Interventions on attribution-graph nodes: scale neurons (or token embeddings) in the model's
own forward and read the new top logits and the change of the graph's target metric."""

from __future__ import annotations

from typing import Any

import torch

from ..capture.adapters import get_adapter
from ..capture.adapters._base import get_module
from ._graph_result import AttributionGraph


def intervene_graph(
    model: Any,
    tokenizer: Any,
    graph: AttributionGraph,
    nodes: list[int],
    factor: float = 0.0,
    *,
    top: int = 5,
) -> dict[str, Any]:
    """Rerun ``graph.prompt`` with the activations of ``nodes`` (indices into the graph's node
    arrays) multiplied by ``factor`` (0 ablates, 2 doubles) and report the target metric and the
    top tokens before and after. Neuron nodes scale the neuron's input to the down projection at
    its position; token nodes scale the residual stream entering layer 0 at their position.
    Attention, norms and MLPs run normally (the real model, not the frozen replacement).

    Examples
    --------
    >>> r = intervene_graph(model, tok, graph, [12, 40], 0.0)  # doctest: +SKIP
    >>> r["metric_after"] - r["metric_before"]  # doctest: +SKIP
    """
    if graph.basis != "neurons":
        raise ValueError(f"interventions support the neuron basis; this graph is {graph.basis!r}.")
    kinds = graph.node_kind[nodes] if len(nodes) else []
    bad = [int(n) for n, k in zip(nodes, kinds, strict=True) if k not in (0, 1)]
    if bad:
        raise ValueError(
            f"nodes {bad} are logit or error nodes; only neuron and token nodes can be scaled."
        )
    ad = get_adapter(model)
    ids = tokenizer(graph.prompt, return_tensors="pt")["input_ids"]
    dev = next(model.parameters()).device
    ids = ids.to(dev)
    by_layer: dict[int, list[tuple[int, int]]] = {}
    tok_pos: list[int] = []
    for n in nodes:
        if graph.node_kind[n] == 0:
            tok_pos.append(int(graph.node_pos[n]))
        else:
            by_layer.setdefault(int(graph.node_layer[n]), []).append(
                (int(graph.node_pos[n]), int(graph.node_index[n]))
            )
    handles = []

    def scale_neurons(sites):
        def hook(mod, args):
            x = args[0].clone()
            for p, i in sites:
                x[:, p, i] *= factor
            return (x, *args[1:])

        return hook

    def scale_tokens(mod, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        x = x.clone()
        x[:, tok_pos] *= factor
        if args:
            return (x, *args[1:]), kwargs
        kwargs["hidden_states"] = x
        return args, kwargs

    target_ids = graph.stats.get("logit_token_ids") or []
    baseline = graph.stats.get("baseline_id")
    along = graph.stats.get("logit_direction")  # a set or direction target
    resid = graph.stats.get("residual_direction")  # read on the unembedding's input
    unembed_in: dict[str, torch.Tensor] = {}
    if resid:
        head = model.get_output_embeddings()
        handles.append(
            head.register_forward_pre_hook(
                lambda mod, args: unembed_in.__setitem__("x", args[0][0, -1].detach())
            )
        )

    def metric(logits: torch.Tensor) -> float:
        if resid:
            x = unembed_in["x"].double().cpu()
            return float(x @ torch.tensor(resid, dtype=torch.float64))
        if along:
            return float(logits[along[0]].double() @ torch.tensor(along[1], dtype=torch.float64))
        v = logits[target_ids[0]] if target_ids else logits.max()
        return float(v - logits[baseline]) if baseline is not None else float(v)

    with torch.no_grad():
        try:
            before = model(ids).logits[0, -1].float()
            value_before = metric(before.cpu())  # now: a residual target reads this forward
            for layer, sites in by_layer.items():
                down = get_module(ad.block(model, layer), ad.block_mlp_down)
                handles.append(down.register_forward_pre_hook(scale_neurons(sites)))
            if tok_pos:
                handles.append(
                    ad.block(model, 0).register_forward_pre_hook(scale_tokens, with_kwargs=True)
                )
            after = model(ids).logits[0, -1].float()
            value_after = metric(after.cpu())
        finally:
            for h in handles:
                h.remove()
    probs = torch.softmax(after, -1)
    p, i = probs.topk(top)
    return {
        "nodes": [int(n) for n in nodes],
        "factor": float(factor),
        "metric": graph.logit_labels[0] if graph.logit_labels else "",
        "metric_before": value_before,
        "metric_after": value_after,
        "top": [
            [tokenizer.decode([int(t)]), float(q)]
            for t, q in zip(i.tolist(), p.tolist(), strict=True)
        ],
    }
