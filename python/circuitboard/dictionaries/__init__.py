"""Dictionary features: sparse autoencoders and transcoders (the module, the loaders for the
ecosystem's files, training, the offline corpus and the shipped defaults).

Sits at the bottom with ``models/``: it imports nothing from capture, analysis, intervene,
widgets or export at module level. Hooks are plain capture-name strings; callers hand it
activations.
"""

from ._default import default_metrics, load_default_saes, load_default_transcoder
from ._evaluate import evaluate_sae
from ._formats import detect_format, from_sae_lens, load_sae, save_sae
from ._hooknames import to_capture_name
from ._sae import KINDS, SAE, CrossLayerTranscoder, SAEOutput, TranscoderSet
from ._train import fit_sae, train_sae

__all__ = [
    "KINDS",
    "SAE",
    "CrossLayerTranscoder",
    "SAEOutput",
    "TranscoderSet",
    "default_metrics",
    "detect_format",
    "evaluate_sae",
    "fit_sae",
    "from_sae_lens",
    "load_default_saes",
    "load_default_transcoder",
    "load_sae",
    "save_sae",
    "to_capture_name",
    "train_sae",
]
