"""The Capture container: one prompt's tokens, logits, activations and the weights to read them."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelInfo:
    """Shapes and names that every analysis needs, independent of the architecture."""

    architecture: str  # adapter name, e.g. "llama", "gpt2"
    model_name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    norm: str  # "rmsnorm" | "layernorm" | "gemma_rmsnorm"
    causal: bool = True
    final_logit_softcap: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True, eq=False)
class Capture(Mapping[str, torch.Tensor]):
    """Activations of one prompt, read-only, under TransformerLens-style names.

    Tensors have no batch dimension: ``blocks.{l}.attn.hook_pattern`` is
    ``[heads, query, key]``, ``blocks.{l}.attn.hook_z`` is ``[pos, heads, d_head]``,
    ``blocks.{l}.hook_resid_pre`` / ``hook_resid_mid`` / ``hook_resid_post`` are
    ``[pos, d_model]``, ``blocks.{l}.mlp.hook_post`` is ``[pos, d_mlp]`` and
    ``ln_final.hook_scale`` is ``[pos, 1]`` (the factor the final norm multiplied by).

    ``weights`` holds the parameters analyses need, under TransformerLens names
    (``blocks.{l}.attn.W_O`` ``[heads, d_head, d_model]``, ``blocks.{l}.attn.b_O``,
    ``blocks.{l}.mlp.W_out`` ``[d_mlp, d_model]``, ``blocks.{l}.mlp.b_out``,
    ``ln_final.w``, ``ln_final.b``, ``unembed.W_U`` ``[d_model, vocab]``, ``unembed.b_U``).

    Examples
    --------
    >>> cap = Capture(tokens=["a", "b"], token_ids=torch.tensor([1, 2]),
    ...               tensors={"blocks.0.attn.hook_pattern": torch.ones(1, 2, 2)})
    >>> cap.names()
    ['blocks.0.attn.hook_pattern']
    >>> cap["blocks.0.attn.hook_pattern"].shape
    torch.Size([1, 2, 2])
    """

    tokens: list[str]
    token_ids: torch.Tensor
    tensors: dict[str, torch.Tensor]
    logits: torch.Tensor | None = None  # [pos, vocab]
    info: ModelInfo | None = None
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    prompt: str | None = None
    tokenizer: Any = field(default=None, repr=False, compare=False)

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            close = [n for n in self.tensors if n.split(".")[-1] == name.split(".")[-1]][:3]
            hint = f" Similar names: {close}." if close else ""
            raise KeyError(
                f"{name!r} was not captured.{hint} See cap.names() for what is there, or "
                "capture again with a wider `what=` / `layers=`."
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def names(self) -> list[str]:
        """All captured tensor names, in capture order."""
        return list(self.tensors)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def layers(self, hook: str = "attn.hook_pattern") -> list[int]:
        """The layer indices for which ``blocks.{l}.{hook}`` was captured."""
        pat = re.compile(r"blocks\.(\d+)\." + re.escape(hook) + "$")
        return sorted(int(m.group(1)) for n in self.tensors if (m := pat.match(n)))

    def stack(self, hook: str = "attn.hook_pattern") -> torch.Tensor:
        """Stack ``blocks.{l}.{hook}`` over the captured layers (new leading dim).

        >>> cap = Capture(["a"], torch.tensor([0]), {"blocks.0.attn.hook_pattern": torch.ones(2, 1, 1)})
        >>> cap.stack().shape
        torch.Size([1, 2, 1, 1])
        """
        layers = self.layers(hook)
        if not layers:
            raise KeyError(f"no 'blocks.*.{hook}' in this capture; captured: {self.names()[:6]} ...")
        return torch.stack([self.tensors[f"blocks.{l}.{hook}"] for l in layers])

    def __repr__(self) -> str:
        who = f"{self.info.model_name}, " if self.info else ""
        return f"Capture({who}{self.n_tokens} tokens, {len(self.tensors)} tensors)"
