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
from ._errors import CircuitboardFileError, CircuitboardWarning
from .data import load_corpus, load_texts
from .export import report, verify_report
from .widgets import (
    AblationView,  # issue 29
    AttentionView,
    Board,
    CausalTraceView,  # issue 29, second half
    CircuitView,
    CompareView,
    CompositionView,  # issue 29
    ExperimentsView,
    FeaturesView,
    GenerationView,
    GraphView,
    Link,
    LogitAttributionView,
    LogitLensView,
    NeuronDashboard,
    NeuronsView,
    PatchingView,
    TrainingView,
    ablation_view,  # issue 29
    board,
    causal_trace_view,
    circuit_view,
    compare_view,
    composition_view,  # issue 29
    feature_dashboard,
    features,
    generation_view,
    graph_view,
    link,
    patching_view,
    training_view,
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
    # Loaders that check what they open (issue 32)
    "load_comparison": "circuitboard.analysis",
    "load_top_activations": "circuitboard.analysis",
    # everyday experiments (issue 29): composition scores, path patching, ablations
    "CompositionScores": "circuitboard.analysis",
    "composition_scores": "circuitboard.analysis",
    "load_composition_scores": "circuitboard.analysis",
    "PathPatching": "circuitboard.intervene",
    "path_patch": "circuitboard.intervene",
    "load_path_patching": "circuitboard.intervene",
    "Ablation": "circuitboard.intervene",
    "Direction": "circuitboard._direction",
    "ablate": "circuitboard.intervene",
    "load_ablation": "circuitboard.intervene",
    # dictionary features (issue 26)
    "FeatureAttribution": "circuitboard.analysis",
    "load_feature_attribution": "circuitboard.analysis",
    "FeaturePatching": "circuitboard.intervene",
    "load_feature_patching": "circuitboard.intervene",
    # attribution graphs (issue #27)
    "AttributionGraph": "circuitboard.intervene",
    "attribution_graph": "circuitboard.intervene",
    "load_graph": "circuitboard.intervene",
    # dictionaries (SAEs and transcoders)
    "CrossLayerTranscoder": "circuitboard.dictionaries",
    "SAE": "circuitboard.dictionaries",
    "TranscoderSet": "circuitboard.dictionaries",
    "load_sae": "circuitboard.dictionaries",
    # plan protocol (issue 30): a list of jobs, any engine, merged in plan order
    "Job": "circuitboard.scale",
    "Plan": "circuitboard.scale",
    "open_engine": "circuitboard.scale",
    "run_plan": "circuitboard.scale",
    # Model surgery, causal tracing and the experiment log (issue 29, second half)
    "CausalTrace": "circuitboard.intervene",
    "causal_trace": "circuitboard.intervene",
    "load_causal_trace": "circuitboard.intervene",
    "surgery": "circuitboard.intervene",
    "experiment": "circuitboard.experiments",
    "load_experiment": "circuitboard.experiments",
    "log": "circuitboard.experiments",
    "experiments": "circuitboard.experiments",
    # training dynamics
    "KpiCorrelation": "circuitboard.training",
    "TrainingRecorder": "circuitboard.training",
    "TrainingRun": "circuitboard.training",
    "from_checkpoints": "circuitboard.training",
    "load_kpi_correlation": "circuitboard.training",
    "load_training_run": "circuitboard.training",
    "evaluate_sae": "circuitboard.dictionaries",
    "train_sae": "circuitboard.dictionaries",
    "fit_sae": "circuitboard.dictionaries",
    "load_default_saes": "circuitboard.dictionaries",
    "load_default_transcoder": "circuitboard.dictionaries",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'circuitboard' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazy names exist only once touched: list them, so tab completion offers every one.
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "Ablation",
    "AblationView",
    "AttentionView",
    "AttributionGraph",
    "Board",
    "Capture",
    "CausalTrace",
    "CausalTraceView",
    "Circuit",
    "CircuitView",
    "CircuitboardFileError",
    "CircuitboardWarning",
    "CompareView",
    "Comparison",
    "CompositionScores",
    "CompositionView",
    "CrossLayerTranscoder",
    "Direction",
    "ExperimentsView",
    "FeatureAttribution",
    "FeaturePatching",
    "FeaturesView",
    "Generation",
    "GenerationView",
    "GraphView",
    "Job",
    "KpiCorrelation",
    "Link",
    "LogitAttributionView",
    "LogitLensView",
    "ModelSpec",
    "NeuronDashboard",
    "NeuronsView",
    "Patching",
    "PatchingView",
    "PathPatching",
    "Plan",
    "SAE",
    "SteeringVector",
    "TrainingRecorder",
    "TrainingRun",
    "TrainingView",
    "TranscoderSet",
    "ablate",
    "ablation_view",
    "attention",
    "attribution_graph",
    "board",
    "capture",
    "causal_trace",
    "causal_trace_view",
    "circuit",
    "circuit_view",
    "compare",
    "compare_view",
    "composition_scores",
    "composition_view",
    "direct_logit_attribution",
    "evaluate_sae",
    "experiment",
    "experiments",
    "explain_attention",
    "explain_head_output",
    "feature_dashboard",
    "features",
    "fit_sae",
    "from_checkpoints",
    "from_transformer_lens",
    "generate",
    "generation_view",
    "graph_view",
    "head_scores",
    "link",
    "load_ablation",
    "load_capture",
    "load_causal_trace",
    "load_circuit",
    "load_comparison",
    "load_composition_scores",
    "load_corpus",
    "load_default_model",
    "load_default_saes",
    "load_default_transcoder",
    "load_default_vision_model",
    "load_experiment",
    "load_feature_attribution",
    "load_feature_patching",
    "load_graph",
    "load_kpi_correlation",
    "load_patching",
    "load_path_patching",
    "load_sae",
    "load_texts",
    "load_top_activations",
    "load_training_run",
    "log",
    "logit_attribution",
    "logit_lens",
    "logit_lens_view",
    "neuron_dashboard",
    "neurons",
    "open_engine",
    "patch",
    "patching_view",
    "path_patch",
    "report",
    "run_plan",
    "steering_vector",
    "supported_architectures",
    "surgery",
    "top_activations",
    "train_sae",
    "training_view",
    "verify_report",
]
