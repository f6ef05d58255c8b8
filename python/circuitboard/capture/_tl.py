"""Build a :class:`Capture` from a TransformerLens run (placeholder, filled in below)."""

from __future__ import annotations

from typing import Any


def from_transformer_lens(cache: Any, model: Any, tokens: Any) -> Any:
    raise NotImplementedError
