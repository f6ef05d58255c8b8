"""circuitboard: linked, fast Jupyter widgets for mechanistic interpretability.

>>> import circuitboard as cb
>>> model, tokenizer = cb.load_default_model()  # doctest: +SKIP
>>> prompt = "When Mary and John went to the store, John gave a drink to"
>>> cap = cb.capture(model, tokenizer, prompt)  # doctest: +SKIP
>>> cb.attention(cap)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from ._api import attention, logit_attribution, logit_lens_view, neuron_dashboard, neurons
from ._errors import CircuitboardWarning
from .data import load_corpus, load_texts
from .export import report
from .widgets import (
    AttentionView,
    Board,
    CircuitView,
    CompareView,
    GenerationView,
    GraphView,
    Link,
    LogitAttributionView,
    LogitLensView,
    NeuronDashboard,
    NeuronsView,
    PatchingView,
    board,
    circuit_view,
    compare_view,
    generation_view,
    graph_view,
    link,
    patching_view,
)

__version__ = "0.1.0"

# Capture and the default model need torch: imported on first use so that viewing a saved
# capture or a numpy array never pays for (or requires) torch.
_LAZY = {
    "Capture": "circuitboard.capture",
    "Circuit": "circuitboard.intervene",
    "circuit": "circuitboard.intervene",
    "load_circuit": "circuitboard.intervene",
    "capture": "circuitboard.capture",
    "compare": "circuitboard.analysis",
    "Comparison": "circuitboard.analysis",
    "from_transformer_lens": "circuitboard.capture",
    "load_capture": "circuitboard.capture",
    "load_default_model": "circuitboard.models",
    "load_default_vision_model": "circuitboard.models",
    "ModelSpec": "circuitboard.scale",
    "load_patching": "circuitboard.intervene",
    "patch": "circuitboard.intervene",
    "Patching": "circuitboard.intervene",
    "direct_logit_attribution": "circuitboard.analysis",
    "explain_attention": "circuitboard.analysis",
    "explain_head_output": "circuitboard.analysis",
    "head_scores": "circuitboard.analysis",
    "logit_lens": "circuitboard.analysis",
    "top_activations": "circuitboard.analysis",
    "supported_architectures": "circuitboard.capture",
    "generate": "circuitboard.intervene",
    "Generation": "circuitboard.intervene",
    "steering_vector": "circuitboard.intervene",
    "SteeringVector": "circuitboard.intervene",
    # attribution graphs (issue #27)
    "AttributionGraph": "circuitboard.intervene",
    "attribution_graph": "circuitboard.intervene",
    "load_graph": "circuitboard.intervene",
    # dictionaries (SAEs and transcoders)
    "CrossLayerTranscoder": "circuitboard.dictionaries",
    "SAE": "circuitboard.dictionaries",
    "TranscoderSet": "circuitboard.dictionaries",
    "load_sae": "circuitboard.dictionaries",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'circuitboard' has no attribute {name!r}")


__all__ = [
    "AttentionView",
    "Board",
    "Capture",
    "Circuit",
    "CircuitView",
    "CircuitboardWarning",
    "CompareView",
    "Comparison",
    "CrossLayerTranscoder",
    "Generation",
    "GenerationView",
    "Link",
    "LogitAttributionView",
    "LogitLensView",
    "ModelSpec",
    "NeuronDashboard",
    "NeuronsView",
    "Patching",
    "PatchingView",
    "SAE",
    "SteeringVector",
    "TranscoderSet",
    "attention",
    "board",
    "capture",
    "circuit",
    "circuit_view",
    "compare",
    "compare_view",
    "direct_logit_attribution",
    "explain_attention",
    "explain_head_output",
    "from_transformer_lens",
    "generate",
    "generation_view",
    "head_scores",
    "link",
    "load_capture",
    "load_circuit",
    "load_corpus",
    "load_default_model",
    "load_default_vision_model",
    "load_patching",
    "load_sae",
    "load_texts",
    "logit_attribution",
    "logit_lens",
    "logit_lens_view",
    "neuron_dashboard",
    "neurons",
    "patch",
    "patching_view",
    "report",
    "steering_vector",
    "supported_architectures",
    "top_activations",
    # attribution graphs (issue #27)
    "AttributionGraph",
    "GraphView",
    "attribution_graph",
    "graph_view",
    "load_graph",
]
