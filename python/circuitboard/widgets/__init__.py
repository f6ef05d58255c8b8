"""Jupyter widgets (anywidget) for captures; they accept numpy arrays and never import torch."""

from ._attention import AttentionView
from ._codec import decode, encode
from ._link import Link
from ._linking import link
from ._view import View

__all__ = ["AttentionView", "Link", "View", "decode", "encode", "link"]
