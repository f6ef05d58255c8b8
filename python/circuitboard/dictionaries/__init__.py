"""Dictionary features: sparse autoencoders and transcoders (the module, the loaders for the
ecosystem's files, training, the offline corpus and the shipped defaults).

Sits at the bottom with ``models/``: it imports nothing from capture, analysis, intervene,
widgets or export at module level. Hooks are plain capture-name strings; callers hand it
activations.
"""

from ._formats import detect_format, from_sae_lens, load_sae, save_sae
from ._hooknames import to_capture_name
from ._sae import KINDS, SAE, CrossLayerTranscoder, SAEOutput, TranscoderSet

__all__ = [
    "KINDS",
    "SAE",
    "CrossLayerTranscoder",
    "SAEOutput",
    "TranscoderSet",
    "detect_format",
    "from_sae_lens",
    "load_sae",
    "save_sae",
    "to_capture_name",
]
