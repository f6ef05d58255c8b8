"""The computational graph a circuit lives in: writers, readers and the edges between them.

A *writer* adds to the residual stream (the embedding, each attention head, each MLP); a
*reader* takes the residual stream in (each head's query input, each key/value head's key and
value inputs, each MLP's input, the logits). An edge ``u → v`` exists when ``u`` writes before
``v`` reads. Pure numpy: no torch, so a saved circuit opens without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Writer:
    name: str  # "embed", "L3H2", "L3.attn" (nodes="layers"), "L3.mlp"
    kind: str  # "embed" | "head" | "attn" | "mlp"
    layer: int  # -1 for the embedding
    heads: tuple[int, ...] = ()  # query heads whose writes this node sums
    stage: int = 0  # order in the forward: embed 0, attention of layer l 2l+1, MLP 2l+2


@dataclass(frozen=True)
class Reader:
    name: str  # "L3H2.q", "L3KV0.k", "L3KV0.v", "L3.attn", "L3.mlp", "logits"
    kind: str  # "q" | "k" | "v" | "attn" | "mlp" | "logits"
    layer: int  # n_layers for the logits
    node: str  # the node this input belongs to ("L3H2", "L3.mlp", "logits")
    q_heads: tuple[int, ...] = ()  # query projections fed by this input
    kv_heads: tuple[int, ...] = ()  # key/value projections fed by this input
    kv_kinds: tuple[str, ...] = ()  # which of "k", "v" (with kv_heads)
    serves: tuple[int, ...] = ()  # query heads whose attention this input changes
    stage: int = 0  # reads every writer with a smaller stage


@dataclass
class Graph:
    """Writers, readers and the mask of edges between them.

    Examples
    --------
    >>> g = Graph.build(n_layers=30, n_heads=9, n_kv_heads=3)
    >>> g.n_edges, g.n_edges_per_query_head
    (70651, 123211)
    >>> g.readers[g.reader_index["L0KV1.k"]].serves
    (3, 4, 5)
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    nodes: str
    parallel: bool
    writers: list[Writer]
    readers: list[Reader]
    valid: np.ndarray  # [n_writers, n_readers] bool
    writer_index: dict[str, int] = field(default_factory=dict)
    reader_index: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        n_layers: int,
        n_heads: int,
        n_kv_heads: int,
        *,
        nodes: str = "heads",
        parallel: bool = False,
    ) -> Graph:
        if nodes not in ("heads", "layers"):
            raise ValueError(
                f"nodes must be 'heads' (one node per attention head) or 'layers' (one node per "
                f"attention layer); got {nodes!r}."
            )
        if n_heads % n_kv_heads:
            raise ValueError(
                f"{n_heads} query heads cannot share {n_kv_heads} key/value heads evenly."
            )
        group = n_heads // n_kv_heads
        writers = [Writer("embed", "embed", -1, (), 0)]
        readers: list[Reader] = []
        for layer in range(n_layers):
            a, m = 2 * layer + 1, 2 * layer + 2
            if nodes == "heads":
                for h in range(n_heads):
                    readers.append(
                        Reader(
                            f"L{layer}H{h}.q", "q", layer, f"L{layer}H{h}", (h,), (), (), (h,), a
                        )
                    )
                for kind in ("k", "v"):
                    for g in range(n_kv_heads):
                        serves = tuple(range(g * group, (g + 1) * group))
                        label = f"L{layer}KV{g}.{kind}" if group > 1 else f"L{layer}H{g}.{kind}"
                        node = f"L{layer}KV{g}" if group > 1 else f"L{layer}H{g}"
                        readers.append(
                            Reader(label, kind, layer, node, (), (g,), (kind,), serves, a)
                        )
                writers.extend(
                    Writer(f"L{layer}H{h}", "head", layer, (h,), a) for h in range(n_heads)
                )
            else:
                heads, kvs = tuple(range(n_heads)), tuple(range(n_kv_heads))
                readers.append(
                    Reader(
                        f"L{layer}.attn",
                        "attn",
                        layer,
                        f"L{layer}.attn",
                        heads,
                        kvs,
                        ("k", "v"),
                        heads,
                        a,
                    )
                )
                writers.append(Writer(f"L{layer}.attn", "attn", layer, heads, a))
            readers.append(
                Reader(f"L{layer}.mlp", "mlp", layer, f"L{layer}.mlp", stage=a if parallel else m)
            )
            writers.append(Writer(f"L{layer}.mlp", "mlp", layer, (), m))
        readers.append(Reader("logits", "logits", n_layers, "logits", stage=2 * n_layers + 1))
        ws = np.array([w.stage for w in writers])
        rs = np.array([r.stage for r in readers])
        valid = ws[:, None] < rs[None, :]
        return cls(
            n_layers,
            n_heads,
            n_kv_heads,
            nodes,
            parallel,
            writers,
            readers,
            valid,
            {w.name: i for i, w in enumerate(writers)},
            {r.name: i for i, r in enumerate(readers)},
        )

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    @property
    def n_edges_per_query_head(self) -> int:
        """Edges if key/value inputs were counted once per query head (tools without GQA)."""
        if self.nodes != "heads":
            return self.n_edges
        group = self.n_heads // self.n_kv_heads
        kv = [j for j, r in enumerate(self.readers) if r.kind in ("k", "v")]
        return self.n_edges + (group - 1) * int(self.valid[:, kv].sum())

    def edge_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(writer index, reader index) of every edge, in a fixed order."""
        src, dst = np.nonzero(self.valid)
        return src.astype(np.int32), dst.astype(np.int32)

    def node_of_reader(self) -> list[list[str]]:
        """For each reader, the node names it belongs to (a KV input feeds several heads)."""
        out = []
        for r in self.readers:
            if r.kind in ("k", "v") and self.nodes == "heads":
                out.append([f"L{r.layer}H{h}" for h in r.serves])
            else:
                out.append([r.node])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "nodes": self.nodes,
            "parallel": self.parallel,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Graph:
        return cls.build(
            int(d["n_layers"]),
            int(d["n_heads"]),
            int(d["n_kv_heads"]),
            nodes=str(d["nodes"]),
            parallel=bool(d["parallel"]),
        )
