"""Record a model's activations under TransformerLens-style names (see :class:`Capture`)."""

from ._attn_interface import AttentionCall, LayerHooks, attention_hooks
from ._capture import FORMAT_VERSION, Capture, ModelInfo
from ._io import load_capture
from ._run import capture
from ._tl import from_transformer_lens
from .adapters import register as register_adapter
from .adapters import supported as supported_architectures

__all__ = [
    "FORMAT_VERSION",
    "AttentionCall",
    "Capture",
    "LayerHooks",
    "ModelInfo",
    "attention_hooks",
    "capture",
    "from_transformer_lens",
    "load_capture",
    "register_adapter",
    "supported_architectures",
]


class _CallableModule(type(__import__("sys"))):
    """This package is callable as :func:`capture`.

    ``circuitboard.capture`` is both this package and the function: once the package is
    imported, Python's import system sets the attribute ``circuitboard.capture`` to the
    package, shadowing the lazily exported function. Making the package call the function
    keeps ``cb.capture(model, tokenizer, prompt)`` working whatever was imported first.
    """

    __call__ = staticmethod(capture)


__import__("sys").modules[__name__].__class__ = _CallableModule
