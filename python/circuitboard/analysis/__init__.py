"""Pure tensor math on a Capture: exact logit attribution, logit lens, head scores."""

from ._attribution import Attribution, direct_logit_attribution
from ._compare import Comparison, Effect, RunningStats, compare
from ._comparison import load_comparison
from ._composition import CompositionScores, composition_scores, load_composition_scores
from ._explain import (
    AttentionExplanation,
    HeadOutputExplanation,
    explain_attention,
    explain_head_output,
)
from ._features import FeatureAttribution, load_feature_attribution  # dictionary features
from ._head_scores import SCORES, head_scores, scores_from_patterns
from ._lens import LogitLens, logit_lens
from ._neurons import TopActivations, logit_effects, top_activations
from ._top_activations import load_top_activations

__all__ = [
    "SCORES",
    "AttentionExplanation",
    "Attribution",
    "Comparison",
    "CompositionScores",
    "Effect",
    "FeatureAttribution",
    "HeadOutputExplanation",
    "LogitLens",
    "RunningStats",
    "TopActivations",
    "compare",
    "composition_scores",
    "direct_logit_attribution",
    "explain_attention",
    "explain_head_output",
    "head_scores",
    "load_comparison",
    "load_composition_scores",
    "load_top_activations",
    "load_feature_attribution",
    "logit_effects",
    "logit_lens",
    "scores_from_patterns",
    "top_activations",
]
