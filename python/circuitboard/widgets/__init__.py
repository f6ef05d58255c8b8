"""Jupyter widgets (anywidget) for captures; they accept numpy arrays and never import torch."""

from ._ablation import AblationView, ablation_view  # issue 29
from ._attention import AttentionView
from ._attribution import LogitAttributionView
from ._board import Board, board
from ._causal_trace import CausalTraceView, causal_trace_view  # issue 29, second half
from ._circuit import CircuitView, circuit_view
from ._codec import decode, encode
from ._compare import CompareView, compare_view
from ._composition import CompositionView, composition_view  # issue 29
from ._dashboard import NeuronDashboard
from ._experiments import ExperimentsBrowser, ExperimentsView, experiments  # issue 29
from ._features import FeaturesView, feature_dashboard, features  # dictionary features
from ._generation import GenerationView, generation_view
from ._graph_view import GraphView, graph_view  # attribution graphs (issue #27)
from ._lens import LogitLensView
from ._link import Link
from ._linking import link
from ._neurons import NeuronsView
from ._patching import PatchingView, patching_view

# training dynamics
from ._training import TrainingView, training_view
from ._view import View

__all__ = [
    "AblationView",
    "AttentionView",
    "Board",
    "CausalTraceView",
    "CircuitView",
    "CompareView",
    "CompositionView",
    "ExperimentsBrowser",
    "ExperimentsView",
    "FeaturesView",
    "GenerationView",
    "Link",
    "LogitAttributionView",
    "LogitLensView",
    "NeuronDashboard",
    "NeuronsView",
    "PatchingView",
    "View",
    "ablation_view",
    # training dynamics
    "TrainingView",
    "training_view",
    "board",
    "causal_trace_view",
    "circuit_view",
    "compare_view",
    "composition_view",
    "decode",
    "encode",
    "experiments",
    "feature_dashboard",
    "features",
    "generation_view",
    "link",
    "patching_view",
    # attribution graphs (issue #27)
    "GraphView",
    "graph_view",
]
