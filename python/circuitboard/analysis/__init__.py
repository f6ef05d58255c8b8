"""Pure tensor math on a Capture: exact logit attribution, logit lens, head scores."""

from ._attribution import Attribution, direct_logit_attribution
from ._head_scores import SCORES, head_scores, scores_from_patterns
from ._lens import LogitLens, logit_lens
from ._neurons import TopActivations, logit_effects, top_activations

__all__ = [
    "SCORES",
    "Attribution",
    "LogitLens",
    "TopActivations",
    "direct_logit_attribution",
    "head_scores",
    "logit_effects",
    "logit_lens",
    "scores_from_patterns",
    "top_activations",
]
