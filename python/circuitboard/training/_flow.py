"""A data flow between recorded tensors as plain data (no torch): what a run file stores and
the training view draws. :mod:`._dataflow` reads it from autograd's graph."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

META_KEY = "dataflow"


@dataclass(frozen=True)
class DataFlow:
    """Recorded tensors (``nodes``, in the order the forward computed them first) and which
    feeds which (``edges``: ``(source, target)`` names, data flowing source → target).

    Examples
    --------
    >>> import torch
    >>> class Skip(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    ...     def forward(self, x):
    ...         h = self.a(x)
    ...         return h + self.b(h)
    >>> from circuitboard.training import dataflow
    >>> flow = dataflow(Skip(), torch.ones(1, 2))
    >>> flow.nodes, flow.edges
    (['a', 'b'], [('a', 'b')])
    """

    nodes: list[str]
    edges: list[tuple[str, str]]

    def to_json(self) -> dict[str, Any]:
        return {"nodes": list(self.nodes), "edges": [[a, b] for a, b in self.edges]}

    @classmethod
    def from_json(cls, data: Any) -> DataFlow:
        try:
            nodes = [str(n) for n in data["nodes"]]
            edges = [(str(a), str(b)) for a, b in data["edges"]]
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                "a data flow is {'nodes': [names], 'edges': [[source, target], ...]}; got "
                f"{type(data).__name__}. Make one with circuitboard.training.dataflow(model, "
                "batch)."
            ) from None
        unknown = sorted({n for e in edges for n in e} - set(nodes))
        if unknown:
            raise ValueError(f"data flow edges name tensors that are not nodes: {unknown}.")
        return cls(nodes, edges)

    def sources(self, name: str) -> list[str]:
        """The recorded tensors ``name`` is computed from directly."""
        return [a for a, b in self.edges if b == name]
