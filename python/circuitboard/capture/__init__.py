"""Record a model's activations under TransformerLens-style names (see :class:`Capture`)."""

from ._capture import Capture, ModelInfo
from ._run import capture

__all__ = ["Capture", "ModelInfo", "capture"]
