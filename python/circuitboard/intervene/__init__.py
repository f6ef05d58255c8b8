"""Interventions: write hooks through the capture adapters, patching and attribution patching.

Building blocks (for patching, circuits, steering and generation alike):

- :class:`Site` / :func:`locate` (:mod:`._sites`): named places (``resid_pre``, ``resid_mid``,
  ``resid_post``, ``attn_out``, ``mlp_out``, per-head ``z``, neurons ``mlp_post``, ``embed``)
  resolved through the model's adapter.
- :class:`Edit` / :func:`write_hooks` (:mod:`._hooks`): read / replace / add / grad-delta at
  sites, per batch row, every hook removed on exit (also on errors).
- :class:`Runner` (:mod:`._runner`): batched patched forwards with logits only at the metric
  position and the shared prefix run once.
- metrics (:mod:`._metric`): :func:`logit_diff`, :func:`log_prob`, :func:`evaluate`,
  :func:`normalize` (clean = 1, corrupted = 0), :func:`token_id`.
- circuits (:mod:`._eap`, :mod:`._circuit`): :func:`circuit` (EAP / EAP-IG edge scores) and
  the :class:`Circuit` result (evaluation with non-kept edges corrupted, faithfulness curves).

Generation and steering: :func:`generate` (a :class:`Generation` captured step by step with
the KV cache, ``.fork``), :func:`steering_vector` (:class:`SteeringVector`).
Patching (:mod:`._patch`, :mod:`._result`): :func:`patch` → :class:`Patching`,
:func:`load_patching`.
"""

# path patching and ablations (issue 29)
from ._ablate import Ablation, ablate, load_ablation
from ._causal_trace import causal_trace  # causal tracing (issue 29, second half)
from ._causal_trace_result import CausalTrace, load_causal_trace
from ._circuit import Circuit, load_circuit
from ._eap import circuit
from ._feature_patch import FeaturePatching, load_feature_patching  # dictionary features
from ._generate import Generation, generate
from ._graph_attribute import attribution_graph  # attribution graphs (issue #27)
from ._graph_result import AttributionGraph, load_graph  # attribution graphs (issue #27)
from ._hooks import OPS, Edit, write_hooks
from ._metric import evaluate, log_prob, logit_diff, normalize, token_id
from ._patch import DIRECTIONS, METHODS, SITES, patch
from ._path_patch import PathPatching, load_path_patching, path_patch
from ._result import Patching, load_patching
from ._runner import Runner, eval_mode
from ._sites import HEAD_KINDS, KINDS, Location, Site, locate, site_shape
from ._steering import SteeringVector, steering_vector
from ._surgery import Surgery, surgery  # model surgery (issue 29, second half)

__all__ = [
    "Ablation",
    "AttributionGraph",
    "CausalTrace",
    "Circuit",
    "DIRECTIONS",
    "Edit",
    "FeaturePatching",
    "Generation",
    "HEAD_KINDS",
    "KINDS",
    "Location",
    "METHODS",
    "OPS",
    "Patching",
    "PathPatching",
    "Runner",
    "SITES",
    "Site",
    "SteeringVector",
    "Surgery",
    "ablate",
    "attribution_graph",
    "causal_trace",
    "circuit",
    "eval_mode",
    "evaluate",
    "generate",
    "load_ablation",
    "load_causal_trace",
    "load_circuit",
    "load_feature_patching",
    "load_graph",
    "load_patching",
    "load_path_patching",
    "locate",
    "log_prob",
    "logit_diff",
    "normalize",
    "patch",
    "path_patch",
    "site_shape",
    "steering_vector",
    "surgery",
    "token_id",
    "write_hooks",
]
