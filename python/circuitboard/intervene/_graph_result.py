"""The :class:`AttributionGraph` result: nodes, sparse edges, pruning, scores and head loadings,
saved as one ``.npz`` (never pickled) or as circuit-tracer's frontend JSON. Numpy only."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._files import check_file, decoding, json_array, not_a, read_npz, stamp
from ._graph_prune import prune

KIND_NAMES = ("token", "neuron", "error", "logit")
FORMAT = "circuitboard.attribution_graph/1"
_ARRAYS = (
    "token_ids",
    "node_kind",
    "node_layer",
    "node_pos",
    "node_index",
    "node_activation",
    "node_bias",
    "node_influence",
    "node_mask",
    "edge_src",
    "edge_dst",
    "edge_weight",
    "edge_mask",
    "logit_weights",
    "hl_edge",
    "hl_layer",
    "hl_head",
    "hl_value",
)


@dataclass(frozen=True, eq=False)
class AttributionGraph:
    """One prompt's attribution graph (circuit-tracer's method) and its pruning.

    Nodes are tokens (kind 0), basis nodes (1: neurons or transcoder features), error nodes (2)
    and logit nodes (3); ``node_layer`` is -1 for tokens and ``n_layers`` for logits. An edge
    ``src -> dst`` holds the direct effect of ``src`` on ``dst`` in the replacement model
    (attention patterns, norm scales and MLP multipliers frozen at the prompt's values), so
    each node's incoming edges from *all* sources plus ``node_bias`` equal its activation.
    Only sources that became nodes keep their edges here. ``node_mask`` / ``edge_mask`` say
    what pruning kept; ``prune(...)`` re-prunes from the same edges.

    Head loadings ``hl_*``: for kept edges whose source and target positions differ, the part
    carried by each attention head (``hl_layer``, ``hl_head``) at the last hop that changes
    position; an edge's parts sum to its weight.

    Examples
    --------
    >>> import circuitboard as cb
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> g = cb.attribution_graph(model, tok, "When Mary and John went", basis="neurons",
    ...                          max_nodes=16, progress=False)
    >>> g.prune(0.95, 0.99).n_nodes >= g.n_nodes  # a higher threshold keeps more
    True
    >>> int((g.node_kind[g.node_mask] == 0).sum()) == len(g.tokens)  # tokens always kept
    True
    """

    prompt: str
    tokens: list[str]
    token_ids: np.ndarray
    basis: str
    model_name: str
    n_layers: int
    node_kind: np.ndarray
    node_layer: np.ndarray
    node_pos: np.ndarray
    node_index: np.ndarray
    node_activation: np.ndarray
    node_bias: np.ndarray
    node_influence: np.ndarray
    node_mask: np.ndarray
    edge_src: np.ndarray
    edge_dst: np.ndarray
    edge_weight: np.ndarray
    edge_mask: np.ndarray
    logit_weights: np.ndarray
    logit_labels: list[str]
    node_threshold: float
    edge_threshold: float
    replacement_score: float
    completeness_score: float
    hl_edge: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    hl_layer: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    hl_head: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    hl_value: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    stats: dict[str, Any] = field(default_factory=dict)

    # -- the shared result API -----------------------------------------------------------------
    @property
    def values(self) -> np.ndarray:
        """Influence on the logits of each kept node."""
        return self.node_influence[self.node_mask]

    @property
    def labels(self) -> list[str]:
        """Labels of the kept nodes (same order as ``values``)."""
        return [self.node_label(i) for i in np.flatnonzero(self.node_mask)]

    def node_label(self, i: int) -> str:
        kind, layer, pos, idx = (
            int(self.node_kind[i]),
            int(self.node_layer[i]),
            int(self.node_pos[i]),
            int(self.node_index[i]),
        )
        if kind == 0:
            return f"tok {pos} {self.tokens[pos]!r}"
        if kind == 3:
            return f"logit {self.logit_labels[idx]}"
        if kind == 2:
            return f"L{layer} err @{pos}"
        unit = "N" if self.basis == "neurons" else "F"
        return f"L{layer}{unit}{idx} @{pos}"

    def top(self, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` kept basis/error nodes with most influence on the logits."""
        keep = np.flatnonzero(self.node_mask & ((self.node_kind == 1) | (self.node_kind == 2)))
        order = keep[np.argsort(-self.node_influence[keep], kind="stable")][:k]
        return [
            {
                "label": self.node_label(int(i)),
                "influence": float(self.node_influence[i]),
                "activation": float(self.node_activation[i]),
                "layer": int(self.node_layer[i]),
                "pos": int(self.node_pos[i]),
                "index": int(self.node_index[i]),
            }
            for i in order
        ]

    @property
    def n_nodes(self) -> int:
        return int(self.node_mask.sum())

    @property
    def n_edges(self) -> int:
        return int(self.edge_mask.sum())

    def __repr__(self) -> str:
        return (
            f"AttributionGraph({self.model_name}, {len(self.tokens)} tokens, basis={self.basis!r}: "
            f"{self.n_nodes} of {len(self.node_kind)} nodes and {self.n_edges} of "
            f"{len(self.edge_src)} edges kept at node_threshold={self.node_threshold}, "
            f"edge_threshold={self.edge_threshold}; direct effects in the replacement model "
            f"({self.frozen_what}); "
            f"replacement score {self.replacement_score:.3f}, completeness "
            f"{self.completeness_score:.3f}; targets {self.logit_labels})"
        )

    @property
    def frozen_what(self) -> str:
        """What the replacement model holds fixed, in words."""
        if self.basis == "neurons":
            return "attention patterns, norm scales and MLP neuron multipliers frozen"
        return (
            "attention patterns and norm scales frozen, MLPs replaced by transcoder features "
            "plus error nodes"
        )

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> AttributionGraph:
        """The same graph pruned again (thresholds in [0, 1]; higher keeps more)."""
        node_mask, edge_mask, _ = prune(
            self.node_kind,
            self.edge_src,
            self.edge_dst,
            self.edge_weight,
            self.logit_weights,
            node_threshold,
            edge_threshold,
        )
        return replace(
            self,
            node_mask=node_mask,
            edge_mask=edge_mask,
            node_threshold=node_threshold,
            edge_threshold=edge_threshold,
        )

    def head_loadings(self, edge: int) -> list[dict[str, Any]]:
        """Per-head parts of edge ``edge`` (index into the edge arrays), largest first."""
        sel = np.flatnonzero(self.hl_edge == edge)
        sel = sel[np.argsort(-np.abs(self.hl_value[sel]), kind="stable")]
        return [
            {
                "label": f"L{int(self.hl_layer[i])}H{int(self.hl_head[i])}",
                "layer": int(self.hl_layer[i]),
                "head": int(self.hl_head[i]),
                "value": float(self.hl_value[i]),
            }
            for i in sel
        ]

    # -- files --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a compressed ``.npz`` (arrays plus one JSON header); ``cb.load_graph`` reads it."""
        from .._npz import save_npz

        header = {
            "format": FORMAT,
            "prompt": self.prompt,
            "tokens": self.tokens,
            "basis": self.basis,
            "model_name": self.model_name,
            "n_layers": self.n_layers,
            "logit_labels": self.logit_labels,
            "node_threshold": self.node_threshold,
            "edge_threshold": self.edge_threshold,
            "replacement_score": self.replacement_score,
            "completeness_score": self.completeness_score,
            "stats": self.stats,
        }
        arrays: dict[str, Any] = {"header": np.frombuffer(json.dumps(header).encode(), np.uint8)}
        arrays.update({k: np.asarray(getattr(self, k)) for k in _ARRAYS})
        save_npz(path, {**stamp("attribution graph"), **arrays})

    def to_circuit_tracer_json(self, path: str | os.PathLike[str] | None = None) -> dict:
        """circuit-tracer's frontend schema (``metadata``, ``qParams``, ``nodes``, ``links``)
        for the kept nodes and edges; written to ``path`` when given. Neuron nodes use the
        feature-node layout with the neuron index as feature."""
        keep = np.flatnonzero(self.node_mask)
        ids: dict[int, str] = {}
        nodes = []
        L = self.n_layers
        for i in keep:
            kind, layer, pos, idx = (
                int(self.node_kind[i]),
                int(self.node_layer[i]),
                int(self.node_pos[i]),
                int(self.node_index[i]),
            )
            infl = float(self.node_influence[i])
            act = float(self.node_activation[i])
            if kind == 0:
                nid, js, ftype, lyr, feat = (
                    f"E_{idx}_{pos}",
                    f"E_{idx}-{pos}",
                    "embedding",
                    "E",
                    pos,
                )
            elif kind == 3:
                vocab_ids = self.stats.get("logit_token_ids") or []
                vocab = int(vocab_ids[idx]) if idx < len(vocab_ids) else idx
                nid, js, ftype = f"{L + 1}_{vocab}_{pos}", f"L_{vocab}-{pos}", "logit"
                lyr, feat = str(L + 1), vocab
            elif kind == 2:
                nid, js, ftype = (
                    f"{layer}_-1_{pos}",
                    f"{layer}_-1-{pos}",
                    "mlp reconstruction error",
                )
                lyr, feat = str(layer), -1
            else:
                nid, js = f"{layer}_{idx}_{pos}", f"{layer}_{idx}-0"
                ftype = "mlp neuron" if self.basis == "neurons" else "cross layer transcoder"
                lyr, feat = str(layer), idx
            ids[int(i)] = nid
            node = {
                "node_id": nid,
                "feature": feat,
                "layer": lyr,
                "ctx_idx": pos,
                "feature_type": ftype,
                "token_prob": float(self.logit_weights[i]) if kind == 3 else 0.0,
                "is_target_logit": bool(kind == 3 and idx == 0),
                "run_idx": 0,
                "reverse_ctx_idx": 0,
                "jsNodeId": js,
                "clerp": f'Output "{self.logit_labels[idx]}"' if kind == 3 else "",
                "influence": infl,
                "activation": act,
            }
            nodes.append(node)
        e = np.flatnonzero(self.edge_mask)
        links = [
            {
                "source": ids[int(self.edge_src[j])],
                "target": ids[int(self.edge_dst[j])],
                "weight": float(self.edge_weight[j]),
            }
            for j in e
        ]
        out = {
            "metadata": {
                "slug": "circuitboard",
                "scan": f"{self.model_name}-{self.basis}",
                "transcoder_list": [],
                "prompt_tokens": list(self.tokens),
                "prompt": self.prompt,
                "node_threshold": self.node_threshold,
                "schema_version": 1,
                "circuitboard": {
                    "format": FORMAT,
                    "basis": self.basis,
                    "model_name": self.model_name,
                    "n_layers": L,
                    "token_ids": [int(t) for t in self.token_ids],
                    "logit_labels": self.logit_labels,
                    "edge_threshold": self.edge_threshold,
                    "replacement_score": self.replacement_score,
                    "completeness_score": self.completeness_score,
                },
            },
            "qParams": {
                "pinnedIds": [],
                "supernodes": [],
                "linkType": "both",
                "clickedId": "",
                "sg_pos": "",
            },
            "nodes": nodes,
            "links": links,
        }
        if path is not None:
            Path(path).write_text(json.dumps(out))
        return out


def _from_circuit_tracer(data: dict) -> AttributionGraph:
    """An :class:`AttributionGraph` of the nodes and links in circuit-tracer's JSON (the
    pruned graph: everything in the file is kept)."""
    meta = data.get("metadata", {})
    ours = meta.get("circuitboard", {})
    kinds = {"embedding": 0, "logit": 3, "mlp reconstruction error": 2}
    tokens = [str(t) for t in meta.get("prompt_tokens", [])]
    n_layers = int(ours.get("n_layers", 0)) or (
        max((int(n["layer"]) for n in data["nodes"] if n["layer"] != "E"), default=1) - 1
    )
    index, cols = {}, {k: [] for k in ("kind", "layer", "pos", "index", "act", "infl", "w")}
    labels: list[str] = []
    for i, n in enumerate(data["nodes"]):
        kind = kinds.get(n["feature_type"], 1)
        index[n["node_id"]] = i
        pos = int(n["ctx_idx"])
        if kind == 0:
            layer, idx = -1, int(n["node_id"].split("_")[1])
        elif kind == 3:
            layer, idx = n_layers, len(labels)
            clerp = n.get("clerp", "")
            labels.append(clerp[len('Output "') : -1] if clerp.startswith('Output "') else clerp)
        else:
            layer, idx = int(n["layer"]), int(n["feature"])
        cols["kind"].append(kind)
        cols["layer"].append(layer)
        cols["pos"].append(pos)
        cols["index"].append(idx)
        cols["act"].append(n.get("activation") or 0.0)
        cols["infl"].append(n.get("influence") or 0.0)
        cols["w"].append(float(n.get("token_prob", 0.0)) if kind == 3 else 0.0)
    links = data["links"]
    src = np.array([index[x["source"]] for x in links], np.int64)
    dst = np.array([index[x["target"]] for x in links], np.int64)
    n = len(cols["kind"])
    ids = ours.get("token_ids")
    return AttributionGraph(
        prompt=str(meta.get("prompt", "")),
        tokens=tokens,
        token_ids=np.array(ids if ids is not None else [], np.int64),
        basis=str(ours.get("basis", "transcoders")),
        model_name=str(ours.get("model_name", meta.get("scan", ""))),
        n_layers=n_layers,
        node_kind=np.array(cols["kind"], np.uint8),
        node_layer=np.array(cols["layer"], np.int32),
        node_pos=np.array(cols["pos"], np.int32),
        node_index=np.array(cols["index"], np.int64),
        node_activation=np.array(cols["act"], np.float32),
        node_bias=np.zeros(n, np.float32),
        node_influence=np.array(cols["infl"], np.float32),
        node_mask=np.ones(n, bool),
        edge_src=src,
        edge_dst=dst,
        edge_weight=np.array([float(x["weight"]) for x in links], np.float32),
        edge_mask=np.ones(len(links), bool),
        logit_weights=np.array(cols["w"], np.float32),
        logit_labels=list(ours.get("logit_labels", labels)),
        node_threshold=float(meta.get("node_threshold") or 0.8),
        edge_threshold=float(ours.get("edge_threshold", 0.98)),
        replacement_score=float(ours.get("replacement_score", float("nan"))),
        completeness_score=float(ours.get("completeness_score", float("nan"))),
    )


def load_graph(path: str | os.PathLike[str]) -> AttributionGraph:
    """Read a graph written by :meth:`AttributionGraph.save` (``.npz``) or by
    :meth:`AttributionGraph.to_circuit_tracer_json` / circuit-tracer itself (``.json``).
    Never unpickles.

    Examples
    --------
    >>> import circuitboard as cb  # doctest: +SKIP
    >>> graph.save("ioi.npz"); cb.load_graph("ioi.npz").n_nodes == graph.n_nodes  # doctest: +SKIP
    True
    """
    writer = "AttributionGraph.save(path)"
    p = check_file(path, "attribution graph", writer)
    if p.suffix == ".json":
        with decoding(p, "attribution graph", writer):
            return _from_circuit_tracer(json.loads(p.read_text(encoding="utf-8")))
    z = read_npz(p, "attribution graph", writer, required=("header", *_ARRAYS))
    header = json_array(z, "header", p, "attribution graph", writer)
    if header.get("format") != FORMAT:
        raise not_a(p, "attribution graph", f"its format is {header.get('format')!r}", writer)
    arrays = {k: z[k] for k in _ARRAYS}
    with decoding(p, "attribution graph", writer):
        return _graph_from(header, arrays)


def _graph_from(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> AttributionGraph:
    return AttributionGraph(
        prompt=header["prompt"],
        tokens=header["tokens"],
        basis=header["basis"],
        model_name=header["model_name"],
        n_layers=header["n_layers"],
        logit_labels=header["logit_labels"],
        node_threshold=header["node_threshold"],
        edge_threshold=header["edge_threshold"],
        replacement_score=header["replacement_score"],
        completeness_score=header["completeness_score"],
        stats=header.get("stats", {}),
        **arrays,
    )
