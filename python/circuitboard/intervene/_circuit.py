"""`circuit()`: edge attribution patching (EAP, EAP-IG) and the `Circuit` it returns.

Conventions (carried by every result): edges are scored by the effect of *corrupting* them
(noising: the clean prompt runs, an edge is fed its corrupted value). A score is the share of
the clean − corrupted metric gap the edge carries, estimated to first order::

    score(u → v) = (out_u(clean) − out_u(corrupted)) · ∂m/∂input_v / (m_clean − m_corrupted)

summed over positions, where ``input_v`` is reader ``v``'s own copy of the residual stream
(EAP: the gradient on the clean run; EAP-IG: averaged over ``steps`` runs whose input
embeddings are interpolated from corrupted to clean, midpoint rule). Positive = the edge helps
the answer. Evaluations report faithfulness ``(m(circuit) − m(∅)) / (m(full) − m(∅))``: 1 is
the clean model, 0 the corrupted one; non-kept edges get the corrupted value of their writer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._files import decoding, json_array, not_a, read_npz, stamp
from .._npz import save_npz
from .._threads import one_thread
from ._graph import Graph

FORMAT = "circuitboard.circuit/1"
EVAL_BYTES = 256 * 2**20  # activations held per batched evaluation


# ----------------------------------------------------------------------------------------
# The result
# ----------------------------------------------------------------------------------------
@dataclass(eq=False)
class Circuit:
    """Edge scores of one behaviour, and evaluations of sub-circuits.

    ``edges[i]`` is the ``i``-th strongest edge (by ``|score|``); ``evaluate(k)`` keeps the
    top ``k`` edges. A circuit from :func:`circuit` holds the model and evaluates live; one
    from :func:`load_circuit` keeps its precomputed curve and evaluates again once a model is
    passed.

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> import circuitboard as cb
    >>> model, tok = tiny_model("llama")
    >>> c = cb.circuit(model, tok, "1 2 3 4 5 6 7 8", "9 8 7 6 5 4 3 2", method="eap")
    >>> c.n_edges, c.graph.n_heads, c.graph.n_kv_heads
    (82, 4, 2)
    >>> round(c.evaluate(c.n_edges), 4), round(c.evaluate(0), 4)
    (1.0, 0.0)
    """

    graph: Graph
    scores: np.ndarray  # [n_writers, n_readers] float32, NaN where no edge
    method: str
    steps: int
    metric: str
    clean_value: float
    corrupted_value: float
    tokens: list[str]
    corrupted_tokens: list[str]
    model_name: str = ""
    n_pairs: int = 1
    direction: str = "noising"
    curve: dict[str, list[float]] = field(default_factory=dict)  # {"k": [...], "value": [...]}
    evaluations: dict[str, float] = field(default_factory=dict)  # cached, keyed by spec
    prompts: dict[str, Any] = field(default_factory=dict)  # pairs and answer ids, to re-attach
    _live: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        src, dst = self.graph.edge_pairs()
        s = self.scores[src, dst]
        order = np.lexsort((np.arange(len(s)), -np.abs(s)))  # strongest first, stable
        self._src = src[order]
        self._dst = dst[order]
        self._score = s[order].astype(np.float32)
        self._rank = {
            (int(a), int(b)): i for i, (a, b) in enumerate(zip(self._src, self._dst, strict=False))
        }

    # -- plain data ----------------------------------------------------------------------
    @property
    def n_edges(self) -> int:
        """Number of edges in the graph (SmolLM2: 70,651 with key/value inputs per KV head)."""
        return len(self._score)

    @property
    def edges(self) -> list[tuple[str, str, float]]:
        """``(source, target, score)`` of every edge, strongest first."""
        W, R = self.graph.writers, self.graph.readers
        return [
            (W[a].name, R[b].name, float(s))
            for a, b, s in zip(self._src, self._dst, self._score, strict=True)
        ]

    @property
    def edge_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(writer index, reader index, score)`` arrays, strongest first."""
        return self._src, self._dst, self._score

    def node_scores(self) -> dict[str, float]:
        """Each writer's total effect: the sum of its out-edge scores (= attribution patching of
        the node, to first order)."""
        s = np.nan_to_num(self.scores.astype(np.float64)).sum(1)
        return {w.name: float(v) for w, v in zip(self.graph.writers, s, strict=True)}

    @property
    def head_scores(self) -> np.ndarray:
        """``[layers, heads]`` writer scores of the heads (``nodes="heads"``)."""
        g = self.graph
        if g.nodes != "heads":
            raise ValueError("head_scores needs a circuit built with nodes='heads'.")
        s = np.nan_to_num(self.scores.astype(np.float64)).sum(1)
        out = np.zeros((g.n_layers, g.n_heads))
        for i, w in enumerate(g.writers):
            if w.kind == "head":
                out[w.layer, w.heads[0]] = s[i]
        return out

    @property
    def nodes(self) -> list[dict[str, Any]]:
        """Nodes (embedding, heads or attention layers, MLPs, logits) with their scores.

        ``score`` sums the node's out-edges, ``in_score`` its in-edges; key/value inputs of a
        KV head count for every query head they serve (``inputs`` lists them).
        """
        g = self.graph
        S = np.nan_to_num(self.scores.astype(np.float64))
        out_s = S.sum(1)
        in_s = S.sum(0)
        inputs: dict[str, list[str]] = {}
        in_score: dict[str, float] = {}
        for j, owners in enumerate(g.node_of_reader()):
            for o in owners:
                inputs.setdefault(o, []).append(g.readers[j].name)
                in_score[o] = in_score.get(o, 0.0) + float(in_s[j])
        rows = []
        for i, w in enumerate(g.writers):
            rows.append(
                {
                    "name": w.name,
                    "kind": w.kind,
                    "layer": w.layer,
                    "head": w.heads[0] if w.kind == "head" else None,
                    "score": float(out_s[i]),
                    "in_score": in_score.get(w.name, 0.0),
                    "inputs": inputs.get(w.name, []),
                }
            )
        rows.append(
            {
                "name": "logits",
                "kind": "logits",
                "layer": g.n_layers,
                "head": None,
                "score": None,
                "in_score": in_score.get("logits", 0.0),
                "inputs": ["logits"],
            }
        )
        return rows

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """Reader inputs: ``{name, kind, layer, serves}``; a key/value input of KV head ``g``
        serves query heads ``g·group … (g+1)·group − 1``."""
        return [
            {
                "name": r.name,
                "kind": r.kind,
                "layer": r.layer,
                "serves": [f"L{r.layer}H{h}" for h in r.serves] if r.serves else [r.node],
            }
            for r in self.graph.readers
        ]

    def top(self, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` strongest edges as dicts (``label`` first)."""
        W, R = self.graph.writers, self.graph.readers
        return [
            {
                "label": f"{W[a].name} → {R[b].name}",
                "source": W[a].name,
                "target": R[b].name,
                "score": float(s),
                "rank": i,
            }
            for i, (a, b, s) in enumerate(
                zip(self._src[:k], self._dst[:k], self._score[:k], strict=False)
            )
        ]

    @property
    def completeness(self) -> float:
        """Sum of the scores of all edges leaving the embedding (a cut of the graph). Integrated
        gradients make it → 1 as ``steps`` grows; plain EAP only approximates it."""
        return float(np.nansum(self.scores[0].astype(np.float64)))

    # -- edge sets -----------------------------------------------------------------------
    def _keep(self, spec: Any) -> np.ndarray:
        """A kept-edge mask ``[U, V]`` from ``k``, indices into ``edges`` or (source, target)."""
        g = self.graph
        keep = np.zeros(g.valid.shape, dtype=bool)
        if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
            k = int(spec)
            if not 0 <= k <= self.n_edges:
                raise ValueError(
                    f"k={k} is outside 0..{self.n_edges} (the circuit has {self.n_edges} edges)."
                )
            keep[self._src[:k], self._dst[:k]] = True
            return keep
        if isinstance(spec, np.ndarray) and spec.dtype == bool and spec.shape == keep.shape:
            return spec & g.valid
        items = list(spec)
        for it in items:
            if isinstance(it, (int, np.integer)) and not isinstance(it, bool):
                if not 0 <= int(it) < self.n_edges:
                    raise IndexError(f"edge index {it} is outside 0..{self.n_edges - 1}.")
                keep[self._src[int(it)], self._dst[int(it)]] = True
            elif isinstance(it, (tuple, list)) and len(it) >= 2:
                s, t = it[0], it[1]
                if s not in g.writer_index or t not in g.reader_index:
                    raise KeyError(
                        f"no edge {s!r} → {t!r}: sources are writers like 'embed', 'L3H2', "
                        "'L3.mlp'; targets are inputs like 'L5H1.q', 'L5KV0.k', 'L5.mlp', "
                        "'logits' (see circuit.inputs)."
                    )
                a, b = g.writer_index[s], g.reader_index[t]
                if not g.valid[a, b]:
                    raise ValueError(f"{s!r} does not write before {t!r} reads: no such edge.")
                keep[a, b] = True
            else:
                raise TypeError(
                    "evaluate() takes k (an int), edge indices into circuit.edges, or "
                    f"(source, target) pairs; got an item {it!r}."
                )
        return keep

    def _node_sets(self, names: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """Writer and reader masks of the named nodes."""
        g = self.graph
        wmask = np.zeros(len(g.writers), dtype=bool)
        rmask = np.zeros(len(g.readers), dtype=bool)
        owners = g.node_of_reader()
        known = set(g.writer_index) | {"logits"}
        for n in names:
            if n not in known:
                raise KeyError(
                    f"unknown node {n!r}; nodes are 'embed', 'L{{l}}H{{h}}' (or 'L{{l}}.attn'), "
                    "'L{l}.mlp' and 'logits' (see circuit.nodes)."
                )
            if n in g.writer_index:
                wmask[g.writer_index[n]] = True
            for j, own in enumerate(owners):
                if n in own:
                    rmask[j] = True
        return wmask, rmask

    def mask(
        self,
        spec: Any = None,
        *,
        without: Iterable[str] | None = None,
        only: Iterable[str] | None = None,
    ) -> np.ndarray:
        """Kept-edge mask ``[writers, readers]``: ``spec`` (default: every edge), minus the
        out-edges of the nodes in ``without`` (that patches those nodes with their corrupted
        output), or restricted to edges among ``only`` (plus the embedding and the logits)."""
        keep = self._keep(self.n_edges if spec is None else spec)
        if without:
            wmask, rmask = self._node_sets(without)
            keep[wmask] = False
            if "logits" in set(without):
                keep[:, rmask] = False
        if only is not None:
            wmask, rmask = self._node_sets(list(only) + ["logits"])
            wmask[0] = True  # the embedding
            keep &= wmask[:, None] & rmask[None, :]
        return keep

    # -- evaluation ----------------------------------------------------------------------
    def _require_live(self) -> Any:
        if self._live is None:
            raise RuntimeError(
                "this circuit has no model attached (it was loaded from a file, or scored on "
                "workers from a ModelSpec): evaluating it runs the model. Attach one: "
                "circuit.attach(model, tokenizer), or cb.load_circuit(path, model, tokenizer)."
            )
        return self._live

    def attach(self, model: Any, tokenizer: Any, **kwargs: Any) -> Circuit:
        """Give the circuit a model to evaluate on (the one it was scored on): each stored
        pair's corrupted run is recorded once. ``metric=`` for a custom metric (a file cannot
        hold it); ``clean=`` / ``corrupted=`` for other prompts. Returns the circuit.

        Examples
        --------
        >>> c = cb.circuit(cb.ModelSpec("default"), None, clean, corrupted)  # doctest: +SKIP
        >>> c.attach(model, tok).evaluate(100)  # doctest: +SKIP
        """
        from ._eap import attach

        return attach(self, model, tokenizer, **kwargs)

    @one_thread(when_busy=True)  # see circuitboard.circuit
    def evaluate_masks(self, masks: Sequence[np.ndarray]) -> np.ndarray:
        """Faithfulness of each kept-edge mask, batched (several masks share one forward)."""
        return self._require_live().evaluate(np.stack([np.asarray(m, bool) for m in masks]))

    def evaluate(
        self,
        edges: Any = None,
        *,
        without: Iterable[str] | None = None,
        only: Iterable[str] | None = None,
    ) -> float:
        """Faithfulness with only ``edges`` kept: ``k`` (the top k), indices into
        :attr:`edges`, or ``(source, target)`` pairs; every other edge is fed the corrupted
        value of its writer. ``without=`` / ``only=`` name nodes (see :meth:`mask`).

        One forward of the clean prompt per evaluation (batched in :meth:`faithfulness`).

        Examples
        --------
        >>> c.evaluate(10), c.evaluate([("embed", "logits")])  # doctest: +SKIP
        >>> c.evaluate(100, without=["L17H3"])  # doctest: +SKIP
        """
        key = _spec_key(edges, without, only)
        if key is not None and key in self.evaluations:  # evaluations are deterministic
            return self.evaluations[key]
        value = float(self.evaluate_masks([self.mask(edges, without=without, only=only)])[0])
        if key is not None:
            self.evaluations[key] = value
        return value

    def evaluate_many(self, specs: Sequence[dict[str, Any]]) -> list[float]:
        """Several :meth:`evaluate` calls (``{"edges": k, "without": [...]}`` dicts) batched
        into as few forwards as memory allows; results are cached like :meth:`evaluate`'s."""
        keys = [_spec_key(d.get("edges"), d.get("without"), d.get("only")) for d in specs]
        todo = [i for i, key in enumerate(keys) if key is None or key not in self.evaluations]
        if todo:
            masks = [
                self.mask(
                    specs[i].get("edges"),
                    without=specs[i].get("without"),
                    only=specs[i].get("only"),
                )
                for i in todo
            ]
            values = self.evaluate_masks(masks)
            out = {i: float(v) for i, v in zip(todo, values, strict=True)}
            for i, v in out.items():
                if keys[i] is not None:
                    self.evaluations[keys[i]] = v
        else:
            out = {}
        return [out[i] if i in out else self.evaluations[keys[i]] for i in range(len(specs))]

    @one_thread(when_busy=True)  # see circuitboard.circuit
    def faithfulness(self, ks: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ks, values)``: faithfulness of the top ``k`` edges for each ``k`` (default: 25
        counts spaced logarithmically from 1 to all edges). Stored as ``circuit.curve``."""
        if ks is None:
            ks = default_ks(self.n_edges)
        ks = np.array(sorted({int(k) for k in ks}), dtype=np.int64)
        if not len(ks):
            raise ValueError("faithfulness() needs at least one edge count.")
        values = self.evaluate_masks([self._keep(int(k)) for k in ks])
        self.curve = {"k": [int(k) for k in ks], "value": [float(v) for v in values]}
        for k, v in zip(ks, values, strict=True):
            self.evaluations[f"k={int(k)}"] = float(v)
        return ks, values

    @one_thread(when_busy=True)  # see circuitboard.circuit
    def edges_for(self, target: float = 0.8, *, progress: bool | None = None) -> int:
        """The smallest number of top edges whose faithfulness reaches ``target`` (a search on
        the curve, refined by bisection; assumes the curve crosses ``target`` once there).

        ``progress``: a tqdm bar over the bisection rounds (default: from 3 rounds on)."""
        if not self.curve:
            self.faithfulness()
        ks, vs = self.curve["k"], self.curve["value"]
        hit = next((i for i, v in enumerate(vs) if v >= target), None)
        if hit is None:
            raise ValueError(
                f"no edge count on the curve reaches {target}; the best is {max(vs):.3f}. "
                "Lower the target or check the metric."
            )
        lo, hi = (ks[hit - 1] if hit else 0), ks[hit]
        if self._live is None:
            return int(hi)
        rounds = max(1, math.ceil(math.log(max(hi - lo, 2), 4)))  # 3 probes: a quarter each
        bar = None
        if progress or (progress is None and rounds >= 3):
            from tqdm.auto import tqdm

            bar = tqdm(total=rounds, desc="circuitboard edges_for", unit="round")
        try:
            return self._bisect(lo, hi, target, bar)
        finally:
            if bar is not None:
                bar.close()

    def _bisect(self, lo: int, hi: int, target: float, bar: Any) -> int:
        while hi - lo > 1:
            mids = sorted({int(lo + (hi - lo) * f) for f in (0.25, 0.5, 0.75)} - {lo, hi})
            vals = self.evaluate_masks([self._keep(m) for m in mids])
            for m, v in zip(mids, vals, strict=True):
                self.evaluations[f"k={m}"] = float(v)
            above = [m for m, v in zip(mids, vals, strict=True) if v >= target]
            below = [m for m, v in zip(mids, vals, strict=True) if v < target]
            if above:
                hi = min(above)
            lo = max([lo] + [m for m in below if m < hi])
            if bar is not None:
                bar.set_postfix_str(f"{lo}..{hi} edges")
                bar.update(1)
        return int(hi)

    # -- derived circuits ----------------------------------------------------------------
    def prune(
        self, k: int | None = None, *, fraction: float | None = None, dangling: bool = True
    ) -> Circuit:
        """A circuit of the top ``k`` edges (or the top ``fraction`` of them); other scores are
        dropped. ``dangling=True`` also drops kept edges that cannot matter: out of a node none
        of whose inputs is reached from the embedding through kept edges (it computes its
        corrupted output anyway), or into a node whose output reaches no logit."""
        if (k is None) == (fraction is None):
            raise ValueError("prune() takes exactly one of k= or fraction=.")
        if fraction is not None:
            if not 0 <= fraction <= 1:
                raise ValueError(f"fraction must be in [0, 1]; got {fraction}.")
            k = int(round(fraction * self.n_edges))
        keep = self._keep(int(k))
        if dangling:
            keep = self._live_edges(keep)
        scores = np.where(keep, self.scores, np.nan).astype(np.float32)
        return _Pruned.make(self, scores, keep)

    def _live_edges(self, keep: np.ndarray) -> np.ndarray:
        g = self.graph
        owners = g.node_of_reader()
        U, V = keep.shape
        reached_w = np.zeros(U, bool)
        reached_w[0] = True
        for _ in range(2 * g.n_layers + 2):  # stages: one sweep per layer reaches everything
            reached_r = (keep & reached_w[:, None]).any(0)
            new = reached_w.copy()
            for j in np.nonzero(reached_r)[0]:
                for o in owners[j]:
                    if o in g.writer_index:
                        new[g.writer_index[o]] = True
            if (new == reached_w).all():
                break
            reached_w = new
        useful_r = np.zeros(V, bool)
        useful_r[g.reader_index["logits"]] = True
        for _ in range(2 * g.n_layers + 2):
            useful_w = (keep & useful_r[None, :]).any(1)
            new = useful_r.copy()
            for j, own in enumerate(owners):
                if any(o in g.writer_index and useful_w[g.writer_index[o]] for o in own):
                    new[j] = True
            if (new == useful_r).all():
                break
            useful_r = new
        return keep & reached_w[:, None] & useful_r[None, :]

    # -- export ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready): conventions, nodes, inputs, edges, curve."""
        return {
            "format": FORMAT,
            **self._meta(),
            "nodes": self.nodes,
            "inputs": self.inputs,
            "edges": [{"source": s, "target": t, "score": v} for s, t, v in self.edges],
        }

    def to_networkx(self, k: int | None = None) -> Any:
        """A ``networkx.DiGraph`` of the top ``k`` edges (all by default); edge attribute
        ``score``, node attributes ``kind``, ``layer``, ``score``. Input names (``L5H1.q``)
        are kept as edge attribute ``input``; edges point at the node that owns the input."""
        try:
            import networkx as nx
        except ImportError:
            raise ImportError(
                "to_networkx() needs networkx: pip install networkx (or use circuit.to_dict())."
            ) from None
        G = nx.DiGraph()
        for n in self.nodes:
            G.add_node(n["name"], kind=n["kind"], layer=n["layer"], score=n["score"])
        owners = self.graph.node_of_reader()
        W = self.graph.writers
        k = self.n_edges if k is None else int(k)
        for a, b, s in zip(self._src[:k], self._dst[:k], self._score[:k], strict=False):
            for o in owners[b]:
                prev = G.get_edge_data(W[a].name, o)
                if prev is None or abs(prev["score"]) < abs(s):
                    G.add_edge(W[a].name, o, score=float(s), input=self.graph.readers[b].name)
        return G

    def _meta(self) -> dict[str, Any]:
        return {
            "graph": self.graph.to_dict(),
            "method": self.method,
            "steps": self.steps,
            "metric": self.metric,
            "direction": self.direction,
            "clean_value": self.clean_value,
            "corrupted_value": self.corrupted_value,
            "tokens": self.tokens,
            "corrupted_tokens": self.corrupted_tokens,
            "model_name": self.model_name,
            "n_pairs": self.n_pairs,
            "n_edges": self.n_edges,
            "completeness": self.completeness,
            "curve": self.curve,
            "evaluations": self.evaluations,
            "prompts": self.prompts,
        }

    def save(self, path: str | Path) -> Path:
        """Write scores, conventions and precomputed evaluations to one ``.npz`` file; reopen
        with :func:`load_circuit` (pass the model again to evaluate more)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps(_json_safe(self._meta()))
        scores = self.scores.astype(np.float32)
        save_npz(out, {**stamp("circuit"), "scores": scores, "meta": np.array(meta)})
        return out

    @property
    def description(self) -> str:
        return (
            f"{self.method.upper()}"
            f"{f' ({self.steps} steps)' if self.method == 'eap-ig' else ''}, {self.direction}, "
            f"metric {self.metric}: clean {self.clean_value:.3f}, corrupted "
            f"{self.corrupted_value:.3f}"
        )

    def __repr__(self) -> str:
        top = ", ".join(f"{d['label']} {d['score']:+.3f}" for d in self.top(3))
        return (
            f"Circuit({self.model_name or 'model'}: {self.n_edges} edges, {self.description}; "
            f"faithfulness = (m − m_corrupted)/(m_clean − m_corrupted); top: {top})"
        )


class _Pruned:
    @staticmethod
    def make(parent: Circuit, scores: np.ndarray, keep: np.ndarray) -> Circuit:
        c = replace(parent, scores=scores, curve={}, evaluations={})
        c.__post_init__()
        # the pruned circuit's edges are only the kept ones
        n = int(keep.sum())
        c._src, c._dst, c._score = c._src[:n], c._dst[:n], c._score[:n]
        return c


def _spec_key(edges: Any, without: Any, only: Any) -> str | None:
    if isinstance(edges, (int, np.integer)) and not isinstance(edges, bool) or edges is None:
        k = "all" if edges is None else f"k={int(edges)}"
        if without:
            k += " without " + ",".join(sorted(without))
        if only is not None:
            k += " only " + ",".join(sorted(only))
        return k
    return None


def _json_safe(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def default_ks(n: int, points: int = 25) -> list[int]:
    """Edge counts spaced logarithmically from 1 to ``n`` (0 and ``n`` included).

    >>> default_ks(1000, 5)
    [0, 1, 10, 100, 1000]
    """
    if n <= 0:
        return [0]
    ks = {0, n} | {int(round(x)) for x in np.geomspace(1, n, points - 1)}
    return sorted(k for k in ks if 0 <= k <= n)


def load_circuit(
    path: str | Path, model: Any = None, tokenizer: Any = None, **kwargs: Any
) -> Circuit:
    """Open a circuit written by :meth:`Circuit.save`. With ``model`` and ``tokenizer`` it is
    recomputed-free but evaluates live again (same prompts; pass ``clean``, ``corrupted``,
    ``metric`` ... as keywords when they cannot be stored, e.g. a custom metric).

    Examples
    --------
    >>> c.save(tmp_path / "ioi.circuit.npz")  # doctest: +SKIP
    >>> cb.load_circuit(tmp_path / "ioi.circuit.npz").curve["value"][-1]  # doctest: +SKIP
    1.0
    """
    writer = "Circuit.save(path)"
    f = read_npz(path, "circuit", writer, required=("scores", "meta"))
    scores, meta = f["scores"], json_array(f, "meta", path, "circuit", writer)
    if meta.get("format", FORMAT) != FORMAT:
        raise not_a(Path(path), "circuit", f"its format is {meta.get('format')!r}", writer)
    with decoding(path, "circuit", writer):
        c = _from_meta(scores, meta)
    if model is not None:
        from ._eap import attach

        attach(c, model, tokenizer, **kwargs)
    return c


def _from_meta(scores: np.ndarray, meta: dict[str, Any]) -> Circuit:
    return Circuit(
        graph=Graph.from_dict(meta["graph"]),
        scores=scores,
        method=meta["method"],
        steps=int(meta["steps"]),
        metric=meta["metric"],
        clean_value=float(meta["clean_value"]),
        corrupted_value=float(meta["corrupted_value"]),
        tokens=list(meta["tokens"]),
        corrupted_tokens=list(meta["corrupted_tokens"]),
        model_name=meta.get("model_name", ""),
        n_pairs=int(meta.get("n_pairs", 1)),
        direction=meta.get("direction", "noising"),
        curve=meta.get("curve") or {},
        evaluations=meta.get("evaluations") or {},
        prompts=meta.get("prompts") or {},
    )
