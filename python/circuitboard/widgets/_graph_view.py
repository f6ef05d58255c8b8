"""GraphView: an attribution graph with tokens along x and layers along y, supernodes and
interventions run in the kernel."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import traitlets

from ._codec import encode
from ._validate import token_list
from ._view import View, pack

EXPORT_INTERVENTIONS = 8  # single-node ablations a report precomputes
EXPORT_EXPLAINED = 128  # explanations of head-loading buttons a report embeds (~5 kB each)


class GraphView(View):
    """An attribution graph (``cb.attribution_graph``): tokens along x, layers along y (token
    nodes at the bottom, logit nodes at the top); neurons / features as circles (blue: positive
    activation, red: negative), error nodes as diamonds, tokens as squares, logits as bars.

    Only the pruned graph travels, as binary buffers. Every kept edge is drawn faintly; hover a
    node to see its edges (blue helps, red hurts) and its top inputs, with the per-head parts
    of cross-position edges (head loadings). Click a node to select its layer, token and neuron
    in linked views; shift-click pins it. Clicking a head loading selects that head in linked
    views and, with a model attached, opens ``cb.explain_attention`` of that head at (the
    target's position, the source's position) in a panel beside the graph, computed in the
    kernel (:meth:`explain_head`). Pinned nodes group into named supernodes; "run" scales a
    supernode's activations (0 ablates) in the model's own forward in the kernel and shows the
    new top tokens and the change of the target metric. A saved report keeps the graph, the
    supernodes, every intervention already run and the explanations behind the largest head
    loadings; new ones need a kernel.

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> import circuitboard as cb
    >>> model, tok = tiny_model("llama")
    >>> g = cb.attribution_graph(model, tok, "When Mary and John went", basis="neurons",
    ...                          max_nodes=32, progress=False)
    >>> view = cb.graph_view(g, model=model, tokenizer=tok)
    >>> view.n_nodes == g.n_nodes
    True
    """

    _view = traitlets.Unicode("graph").tag(sync=True)
    description = traitlets.Unicode().tag(sync=True)
    """What the graph measures (basis, targets, thresholds, scores)."""
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Prompt tokens, one per position (always shown as text)."""
    n_layers = traitlets.Int().tag(sync=True)
    basis = traitlets.Unicode().tag(sync=True)
    n_nodes = traitlets.Int().tag(sync=True)
    logit_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The target logit nodes' labels."""
    pinned = traitlets.List(traitlets.Int()).tag(sync=True)
    """Pinned nodes (indices into the view's node list); shift-click toggles."""
    supernodes = traitlets.Dict().tag(sync=True)
    """Named groups of nodes ``{name: [node, ...]}``."""
    interventions = traitlets.List(traitlets.Dict()).tag(sync=True)
    """Interventions run so far: ``{name, nodes, factor, metric, metric_before, metric_after,
    top}``; a report keeps them."""
    live = traitlets.Bool(False).tag(sync=True)
    """Whether a model is attached (interventions can run)."""
    explainable = traitlets.Bool(False).tag(sync=True)
    """Whether a click on a head loading opens ``cb.explain_attention`` (a model is attached)."""
    _nodes = traitlets.Dict().tag(sync=True)  # float32 [n, 6]: kind, layer, pos, index, act, infl
    _edges = traitlets.Dict().tag(sync=True)  # float32 [m, 3]: src, dst, weight (view node ids)
    _loadings = traitlets.Dict().tag(sync=True)  # float32 [k, 4]: edge, layer, head, value

    _fetchers: ClassVar[dict[str, str]] = {
        "intervene": "_fetch_intervene",
        "fetch-explain": "_fetch_explain",
    }

    def __init__(
        self, graph: Any, *, model: Any = None, tokenizer: Any = None, **kwargs: Any
    ) -> None:
        for attr in ("node_kind", "edge_src", "node_mask", "edge_mask"):
            if not hasattr(graph, attr):
                raise TypeError(
                    "GraphView needs an AttributionGraph (from cb.attribution_graph or "
                    f"cb.load_graph); got {type(graph).__name__}, which lacks {attr!r}."
                )
        if (model is None) != (tokenizer is None):
            raise ValueError("pass both model= and tokenizer= (for interventions) or neither.")
        self.graph = graph
        self._model, self._tokenizer = model, tokenizer
        self._cap: Any = None  # the prompt's capture, made at the first explanation
        keep = np.flatnonzero(graph.node_mask)
        self._keep = keep
        remap = np.full(len(graph.node_kind), -1, np.int64)
        remap[keep] = np.arange(len(keep))
        e = np.flatnonzero(graph.edge_mask)
        edge_pos = np.full(len(graph.edge_src), -1, np.int64)
        edge_pos[e] = np.arange(len(e))
        nodes = np.stack(
            [
                graph.node_kind[keep],
                graph.node_layer[keep],
                graph.node_pos[keep],
                graph.node_index[keep],
                graph.node_activation[keep],
                graph.node_influence[keep],
            ],
            1,
        ).astype(np.float32)
        edges = np.stack(
            [remap[graph.edge_src[e]], remap[graph.edge_dst[e]], graph.edge_weight[e]], 1
        ).astype(np.float32)
        hl = np.flatnonzero(edge_pos[graph.hl_edge] >= 0) if len(graph.hl_edge) else []
        loadings = (
            np.stack(
                [
                    edge_pos[graph.hl_edge[hl]],
                    graph.hl_layer[hl],
                    graph.hl_head[hl],
                    graph.hl_value[hl],
                ],
                1,
            ).astype(np.float32)
            if len(hl)
            else np.zeros((0, 4), np.float32)
        )
        super().__init__(
            description=(
                f"attribution graph, basis={graph.basis!r}, {graph.model_name}: targets "
                f"{', '.join(graph.logit_labels)}; {len(keep)} nodes, {len(e)} edges kept "
                f"(node_threshold {graph.node_threshold}, edge_threshold "
                f"{graph.edge_threshold}); replacement score {graph.replacement_score:.3f}, "
                f"completeness {graph.completeness_score:.3f}. Edges are direct effects with "
                f"{getattr(graph, 'frozen_what', 'attention patterns and norm scales frozen')}."
            ),
            tokens=token_list(list(graph.tokens), len(graph.tokens), "the graph"),
            n_layers=int(graph.n_layers),
            basis=str(graph.basis),
            n_nodes=len(keep),
            logit_labels=[str(x) for x in graph.logit_labels],
            live=model is not None,
            explainable=model is not None,
            _nodes=encode(nodes.reshape(-1, 6), "float32"),
            _edges=encode(edges.reshape(-1, 3), "float32"),
            _loadings=encode(loadings.reshape(-1, 4), "float32"),
            **kwargs,
        )

    # -- kernel actions ----------------------------------------------------------------------
    def group(self, name: str, nodes: list[int] | None = None) -> dict[str, list[int]]:
        """Group ``nodes`` (default: :attr:`pinned`) into the supernode ``name``."""
        nodes = list(self.pinned if nodes is None else nodes)
        if not name or not isinstance(name, str):
            raise ValueError(f"a supernode needs a non-empty name; got {name!r}.")
        bad = [n for n in nodes if not 0 <= int(n) < self.n_nodes]
        if bad or not nodes:
            raise ValueError(
                f"supernode nodes must be view node indices in 0..{self.n_nodes - 1}; got "
                f"{nodes}. Pin nodes (shift-click) first."
            )
        self.supernodes = {**self.supernodes, name: [int(n) for n in nodes]}
        return dict(self.supernodes)

    def intervene(self, name: str, factor: float = 0.0) -> dict[str, Any]:
        """Scale the supernode ``name``'s activations by ``factor`` (0 ablates) in the model's
        forward; the result is added to :attr:`interventions` and returned."""
        if self._model is None:
            raise ValueError(
                "no model attached: interventions need a kernel with the model. Build the view "
                "with cb.graph_view(graph, model=model, tokenizer=tokenizer)."
            )
        if name not in self.supernodes:
            raise ValueError(f"no supernode {name!r}; have {sorted(self.supernodes)}.")
        from ..intervene._graph_intervene import intervene_graph

        nodes = [int(self._keep[n]) for n in self.supernodes[name]]
        out = intervene_graph(self._model, self._tokenizer, self.graph, nodes, float(factor))
        out = {"name": name, **out, "nodes": list(self.supernodes[name])}
        self.interventions = [*self.interventions, out]
        return out

    def _fetch_intervene(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        name = str(msg.get("name", ""))
        nodes = msg.get("nodes")
        if nodes is not None and name not in self.supernodes:
            self.group(name, [int(n) for n in nodes])
        return pack(**self.intervene(name, float(msg.get("factor", 0.0))))

    def explain_head(self, layer: int, head: int, query: int, key: int) -> dict[str, Any]:
        """``cb.explain_attention`` of ``head`` in ``layer`` at (``query``, ``key``) on the
        graph's prompt, as the explanation panel shows it (top component pairs, the score and
        their sum). A head loading's button asks for (the edge's target position, its source
        position). Needs the model: the prompt is captured (float32) at the first call."""
        if self._model is None:
            raise ValueError(
                "no model attached: explaining a head's score needs a kernel with the model. "
                "Build the view with cb.graph_view(graph, model=model, tokenizer=tokenizer)."
            )
        n = len(self.graph.tokens)
        for name, v, hi in (("query", query, n), ("key", key, n), ("layer", layer, None)):
            hi = hi or int(self.graph.n_layers)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < hi:
                raise ValueError(f"{name} must be an int in 0..{hi - 1}; got {v!r}.")
        if self._cap is None:
            import torch

            from ..capture import capture

            self._cap = capture(
                self._model, self._tokenizer, self.graph.prompt, dtype=torch.float32
            )
        from ..analysis._explain import explain_attention
        from ._explain_panel import panel_reply

        ex = explain_attention(self._cap, layer=layer, head=head, query=query, key=key)
        return panel_reply(ex)

    def _fetch_explain(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        args = []
        for name in ("layer", "head", "query", "key"):
            v = msg.get(name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"a fetch-explain request needs an int {name}; got {v!r}.")
            args.append(v)
        return self.explain_head(*args), []

    def _loading_cells(self) -> list[tuple[int, int, int, int]]:
        """Distinct (layer, head, query, key) of the head-loading buttons the view shows (each
        node's 8 strongest inputs, their 3 largest parts), the largest parts first."""
        g = self.graph
        if not len(g.hl_edge):
            return []
        shown: list[tuple[float, tuple[int, int, int, int]]] = []
        kept_edges = np.flatnonzero(g.edge_mask)
        by_edge: dict[int, list[int]] = {}
        for r, e in enumerate(g.hl_edge.tolist()):
            by_edge.setdefault(int(e), []).append(r)
        for dst in np.unique(g.edge_dst[kept_edges]):
            ins = kept_edges[g.edge_dst[kept_edges] == dst]
            ins = ins[np.argsort(-np.abs(g.edge_weight[ins]), kind="stable")][:8]
            for e in ins.tolist():
                parts = sorted(by_edge.get(e, []), key=lambda r: -abs(float(g.hl_value[r])))[:3]
                for r in parts:
                    cell = (
                        int(g.hl_layer[r]),
                        int(g.hl_head[r]),
                        int(g.node_pos[dst]),
                        int(g.node_pos[g.edge_src[e]]),
                    )
                    shown.append((-abs(float(g.hl_value[r])), cell))
        cells: dict[tuple[int, int, int, int], None] = {}
        for _, cell in sorted(shown):
            cells.setdefault(cell, None)
        return list(cells)

    # -- static reports ------------------------------------------------------------------
    def export_requests(self, budget_bytes: int) -> list[dict[str, Any]]:
        """A report embeds the explanations behind the largest head-loading buttons (views
        with a model only), at most a tenth of the budget."""
        if not self.explainable or self._model is None:
            return []
        from ._explain_panel import REPLY_BYTES

        n = min(EXPORT_EXPLAINED, int(budget_bytes) // 10 // REPLY_BYTES)
        return [
            {"kind": "fetch-explain", "layer": a, "head": b, "query": q, "key": k}
            for a, b, q, k in self._loading_cells()[:n]
        ]

    def export_notes(self, budget_bytes: int) -> list[str]:
        notes = [
            "Attribution graph: the pruned graph, its supernodes and the interventions already "
            "run are saved; new interventions need a running kernel."
        ]
        if self.explainable and self._model is not None:
            cells = self._loading_cells()
            kept = len(self.export_requests(budget_bytes))
            notes.append(
                f"Attribution graph: explanations of {kept} of {len(cells)} head loadings "
                "(the largest) are saved; the others open in a live notebook."
            )
        return notes


def graph_view(graph: Any, *, model: Any = None, tokenizer: Any = None, **kwargs: Any) -> GraphView:
    """The view of an :class:`circuitboard.AttributionGraph` (see :class:`GraphView`); pass
    ``model`` and ``tokenizer`` to run supernode interventions in the kernel.

    Examples
    --------
    >>> graph = cb.attribution_graph(model, tok, prompt, basis="neurons")  # doctest: +SKIP
    >>> view = cb.graph_view(graph, model=model, tokenizer=tok)  # doctest: +SKIP
    >>> view.group("names", [3, 8]); view.intervene("names", 0.0)  # doctest: +SKIP
    """
    return GraphView(graph, model=model, tokenizer=tokenizer, **kwargs)
