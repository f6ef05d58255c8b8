"""CircuitView: a circuit's graph in layer bands, its faithfulness curve, kernel ablations."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import traitlets

from ._codec import encode
from ._validate import token_list
from ._view import View, pack

FIRST_EDGES = 1024  # edges sent with the view; more are paged in by the slider
PAGE = 2048  # edges per page
MAX_SLIDER = 5000  # the slider's upper end (more edges than this are no longer a picture)
EXPORT_EDGES = 5000  # edges a report embeds (the slider's whole range)
EXPORT_ABLATIONS = 12  # "without node" evaluations precomputed for a report


def _edge_block(circuit: Any, start: int, stop: int) -> dict[str, Any]:
    src, dst, score = circuit.edge_arrays
    block = np.stack([src[start:stop], dst[start:stop], score[start:stop]], 1)
    return encode(block.astype(np.float32).reshape(-1, 3), "float32")


class CircuitView(View):
    """The circuit graph: nodes in layer bands (embedding at the bottom, logits at the top),
    heads across each band, the top ``k`` edges as curves (width and colour by score), and the
    faithfulness curve with the current ``k`` marked.

    Only the kept edges travel to the browser (binary); dragging the edge-count slider pages
    more in from the kernel. Hover a node for its score and its in/out edges; click it to select
    the head (or layer) in linked attention / attribution / patching views; shift-click adds to
    :attr:`selected`. "Ablate selection" evaluates the circuit without the selected nodes (or
    with only them) in the kernel and shows the metric in place. A saved report keeps the
    graph, the curve and precomputed evaluations; live ablation there needs a kernel.

    Parameters
    ----------
    circuit : Circuit
        From :func:`circuitboard.circuit` (or :func:`circuitboard.load_circuit`).
    k : int, optional
        Edges shown first (default: the smallest count on the curve reaching 80%, at most 1000).

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> import circuitboard as cb
    >>> model, tok = tiny_model("llama")
    >>> c = cb.circuit(model, tok, "1 2 3 4 5 6 7 8", "9 8 7 6 5 4 3 2", method="eap")
    >>> view = cb.circuit_view(c, k=20)
    >>> view.k, view.n_edges
    (20, 82)
    >>> view.selected = ["L1H0"]
    >>> round(view.ablate()["value"], 3) == round(c.evaluate(20, without=["L1H0"]), 3)
    True
    """

    _view = traitlets.Unicode("circuit").tag(sync=True)
    description = traitlets.Unicode().tag(sync=True)
    """How the edges were scored: method, direction, metric and both endpoints."""
    n_layers = traitlets.Int().tag(sync=True)
    n_heads = traitlets.Int().tag(sync=True)
    n_kv_heads = traitlets.Int().tag(sync=True)
    nodes_mode = traitlets.Unicode("heads").tag(sync=True)
    """"heads" (a node per head) or "layers" (a node per attention layer)."""
    n_edges = traitlets.Int().tag(sync=True)
    """Edges in the whole graph."""
    k = traitlets.Int().tag(sync=True)
    """Edges shown (the top k by |score|); the slider sets it."""
    max_k = traitlets.Int().tag(sync=True)
    """The slider's upper end."""
    selected = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Selected nodes ("L17H3", "L5.mlp", "embed", "logits"); set it from Python or by
    (shift-)clicking nodes."""
    ablate_mode = traitlets.Unicode("without").tag(sync=True)
    """"without" (the circuit minus the selected nodes) or "only" (just them)."""
    ablation = traitlets.Dict().tag(sync=True)
    """The last ablation evaluated: ``{nodes, mode, k, value}``."""
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Clean prompt tokens."""
    corrupted_tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Corrupted prompt tokens."""
    live = traitlets.Bool(False).tag(sync=True)
    """Whether the circuit can evaluate (a model is attached)."""
    _writers = traitlets.List().tag(sync=True)  # [[name, kind, layer, head]]
    _readers = traitlets.List().tag(sync=True)  # [[name, kind, layer, [served heads]]]
    _node_scores = traitlets.Dict().tag(sync=True)  # Encoded float32 [2, writers]: out, in
    _edges = traitlets.Dict().tag(sync=True)  # Encoded float32 [n, 3]: writer, reader, score
    _curve = traitlets.Dict().tag(sync=True)  # {"k": [...], "value": [...]}
    _evaluations = traitlets.Dict().tag(sync=True)  # {"k=10": value, ...}

    _fetchers: ClassVar[dict[str, str]] = {
        "fetch-edges": "_fetch_edges",
        "fetch-ablation": "_fetch_ablation",
        "fetch-evaluation": "_fetch_evaluation",
    }

    def __init__(self, circuit: Any, *, k: int | None = None, **kwargs: Any) -> None:
        for attr in ("graph", "edge_arrays", "n_edges", "curve", "evaluate"):
            if not hasattr(circuit, attr):
                raise TypeError(
                    f"CircuitView needs a Circuit (from cb.circuit or cb.load_circuit); got "
                    f"{type(circuit).__name__}, which lacks {attr!r}."
                )
        self.circuit = circuit
        g = circuit.graph
        live = getattr(circuit, "_live", None) is not None
        if live and not circuit.curve:
            circuit.faithfulness()
        n = int(circuit.n_edges)
        max_k = min(n, MAX_SLIDER)
        if k is None:
            k = _default_k(circuit.curve, max_k)
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 0 <= k <= max_k:
            raise ValueError(f"k must be an int in 0..{max_k} (edges shown); got {k!r}.")
        S = np.nan_to_num(np.asarray(circuit.scores, dtype=np.float64))
        in_s = np.zeros(len(g.writers))
        rin = S.sum(0)
        for j, owners in enumerate(g.node_of_reader()):
            for o in owners:
                if o in g.writer_index:
                    in_s[g.writer_index[o]] += rin[j]
        first = min(n, max(FIRST_EDGES, int(k)))
        super().__init__(
            description=str(getattr(circuit, "description", "")),
            n_layers=g.n_layers,
            n_heads=g.n_heads,
            n_kv_heads=g.n_kv_heads,
            nodes_mode=g.nodes,
            n_edges=n,
            k=int(k),
            max_k=max_k,
            tokens=token_list(list(circuit.tokens), len(circuit.tokens), "the circuit"),
            corrupted_tokens=token_list(
                list(circuit.corrupted_tokens), len(circuit.corrupted_tokens), "the circuit"
            ),
            live=live,
            _writers=[
                [w.name, w.kind, w.layer, w.heads[0] if w.kind == "head" else -1] for w in g.writers
            ],
            _readers=[[r.name, r.kind, r.layer, list(r.serves)] for r in g.readers],
            _node_scores=encode(np.stack([S.sum(1), in_s]), "float32"),
            _edges=_edge_block(circuit, 0, first),
            _curve=dict(circuit.curve),
            _evaluations=dict(getattr(circuit, "evaluations", {})),
            **kwargs,
        )

    # -- kernel actions ----------------------------------------------------------------------
    def ablate(
        self, nodes: list[str] | None = None, *, mode: str | None = None, k: int | None = None
    ) -> dict[str, Any]:
        """Evaluate the top ``k`` edges without the ``nodes`` (default: :attr:`selected`), or
        with only them (``mode="only"``); the result is shown in the view and returned."""
        nodes = list(self.selected if nodes is None else nodes)
        mode = self.ablate_mode if mode is None else mode
        k = self.k if k is None else int(k)
        if mode not in ("without", "only"):
            raise ValueError(f"mode must be 'without' or 'only'; got {mode!r}.")
        if not nodes:
            raise ValueError("no nodes selected: click nodes in the view or pass nodes=[...].")
        if mode == "without":
            value = self.circuit.evaluate(k, without=nodes)
        else:
            value = self.circuit.evaluate(k, only=nodes)
        full = self.circuit.evaluate(k)
        self.ablation = {"nodes": nodes, "mode": mode, "k": k, "value": value, "circuit": full}
        return dict(self.ablation)

    def _fetch_edges(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        start, stop = int(msg.get("start", 0)), int(msg.get("stop", 0))
        n = int(self.circuit.n_edges)
        if not 0 <= start <= stop:
            raise ValueError(f"fetch-edges needs 0 <= start <= stop; got {start}, {stop}.")
        stop = min(stop, n)
        return pack(start=start, edges=_edge_block(self.circuit, start, stop))

    def _fetch_ablation(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        nodes = [str(x) for x in msg.get("nodes") or []]
        result = self.ablate(nodes, mode=str(msg.get("mode", "without")), k=int(msg["k"]))
        return pack(**result)

    def _fetch_evaluation(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        k = int(msg["k"])
        return pack(k=k, value=self.circuit.evaluate(k))

    # -- static reports ------------------------------------------------------------------
    def export_requests(self, budget_bytes: int) -> list[dict[str, Any]]:
        n = int(self.circuit.n_edges)
        reqs: list[dict[str, Any]] = []
        sent = min(n, max(FIRST_EDGES, self.k))
        stop = min(n, EXPORT_EDGES)
        for s in range(sent, stop, PAGE):
            if (s - sent + PAGE) * 12 > budget_bytes:
                break
            reqs.append({"kind": "fetch-edges", "start": s, "stop": s + PAGE})
        if self.live:
            k = int(self.k)
            nodes = self._top_nodes(EXPORT_ABLATIONS)
            # one batched evaluation for all of them; the handlers below then read the cache
            self.circuit.evaluate_many(
                [{"edges": k}] + [{"edges": k, "without": [n]} for n in nodes]
            )
            reqs.append({"kind": "fetch-evaluation", "k": k})
            for node in nodes:
                reqs.append({"kind": "fetch-ablation", "nodes": [node], "mode": "without", "k": k})
        return reqs

    def export_notes(self, budget_bytes: int) -> list[str]:
        notes = []
        if self.live:
            notes.append(
                f"Circuit: ablations of the top {EXPORT_ABLATIONS} single nodes at k = {self.k} "
                "are precomputed; other ablations need a running kernel."
            )
        return notes

    def _top_nodes(self, n: int) -> list[str]:
        scores = dict(self.circuit.node_scores())
        scores.pop("embed", None)
        return sorted(scores, key=lambda x: -abs(scores[x]))[:n]


def _default_k(curve: dict[str, list[float]], max_k: int) -> int:
    ks, vs = curve.get("k") or [], curve.get("value") or []
    hit = next((int(kk) for kk, v in zip(ks, vs, strict=False) if kk > 0 and v >= 0.8), None)
    if hit is None:
        return min(max_k, 100)
    return max(1, min(hit, max_k, 1000))


def circuit_view(circuit: Any, **kwargs: Any) -> CircuitView:
    """The circuit graph view of a :class:`circuitboard.Circuit` (see :class:`CircuitView`).

    Examples
    --------
    >>> c = cb.circuit(model, tok, clean, corrupted, answer=" Mary")  # doctest: +SKIP
    >>> view = cb.circuit_view(c)  # doctest: +SKIP
    >>> cb.link(view, cb.attention(cap))  # doctest: +SKIP
    """
    return CircuitView(circuit, **kwargs)
