"""Jupyter widgets (anywidget) for captures; they accept numpy arrays and never import torch."""

from ._attention import AttentionView
from ._attribution import LogitAttributionView
from ._board import Board, board
from ._circuit import CircuitView, circuit_view
from ._codec import decode, encode
from ._compare import CompareView, compare_view
from ._dashboard import NeuronDashboard
from ._generation import GenerationView, generation_view
from ._graph_view import GraphView, graph_view  # attribution graphs (issue #27)
from ._lens import LogitLensView
from ._link import Link
from ._linking import link
from ._neurons import NeuronsView
from ._patching import PatchingView, patching_view
from ._view import View

__all__ = [
    "AttentionView",
    "Board",
    "CircuitView",
    "CompareView",
    "GenerationView",
    "Link",
    "LogitAttributionView",
    "LogitLensView",
    "NeuronDashboard",
    "NeuronsView",
    "PatchingView",
    "View",
    "board",
    "circuit_view",
    "compare_view",
    "decode",
    "encode",
    "generation_view",
    "link",
    "patching_view",
    # attribution graphs (issue #27)
    "GraphView",
    "graph_view",
]
