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
    parallel_attn_mlp: bool = False  # GPT-NeoX/Pythia: the MLP reads resid_pre, not resid_mid
    # How each layer scores a query against a key (read by cb.explain_attention):
    rotary_fn: str | None = None  # dotted path of the model's own apply_rotary_pos_emb
    attn_scales: tuple[float, ...] | None = None  # per layer: the factor q·k is multiplied by
    attn_windows: tuple[int | None, ...] | None = None  # per layer: sliding window, or None
    attn_softcap: float | None = None  # scores soft-capped as cap * tanh(score / cap)
    qk_norm: bool = False  # queries / keys normalized after projection (Qwen3, OLMo 2, Gemma 3)

    def __post_init__(self) -> None:
        for name in ("attn_scales", "attn_windows"):  # JSON gives lists back: keep hashable
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))

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
    ``ln_final.w``, ``ln_final.b``, ``unembed.W_U`` ``[d_model, vocab]``, ``unembed.b_U``,
    and also ``blocks.{l}.attn.W_Q`` / ``W_K`` / ``W_V`` ``[heads, d_model, d_head]`` (``W_K`` and
    ``W_V`` have ``n_kv_heads`` heads under grouped-query attention) with ``b_Q`` / ``b_K`` /
    ``b_V`` ``[heads, d_head]``, ``embed.W_E`` ``[vocab, d_model]`` and, with learned positions,
    ``pos_embed.W_pos``). Weights are views of the model's parameters (no copy; they live on
    the model's device) except where the model has no such bias: absent biases are zeros.
    For ``info.norm == "gemma_rmsnorm"`` the final norm multiplies by ``1 + ln_final.w``.

    Besides the per-layer tensors a capture from :func:`circuitboard.capture` holds
    ``hook_embed`` (the token embedding added to the residual stream, Gemma's ``sqrt(d_model)``
    scale included) and, for learned positions (GPT-2, BERT), ``hook_pos_embed``. Optional
    ``what=`` kinds add ``blocks.{l}.hook_attn_out`` / ``hook_mlp_out``. ``ln_final.hook_scale``
    is the *multiplier* ``1 / sqrt(var + eps)`` (``1 / sqrt(mean(x^2) + eps)`` for RMSNorm), kept
    in float32; TransformerLens' own ``hook_scale`` is its reciprocal (converted on import).
    ``logits`` are float32. ``n_prompt_tokens`` says how many tokens came from the prompt; the
    rest were generated (``max_new_tokens=``).

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
    n_prompt_tokens: int | None = None

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

        >>> pattern = {"blocks.0.attn.hook_pattern": torch.ones(2, 1, 1)}
        >>> cap = Capture(["a"], torch.tensor([0]), pattern)
        >>> cap.stack().shape
        torch.Size([1, 2, 1, 1])
        """
        layers = self.layers(hook)
        if not layers:
            raise KeyError(
                f"no 'blocks.*.{hook}' in this capture; captured: {self.names()[:6]} ..."
            )
        return torch.stack([self.tensors[f"blocks.{i}.{hook}"] for i in layers])

    @property
    def n_generated(self) -> int:
        """How many tokens at the end were generated by the model (0 without ``max_new_tokens``)."""
        return 0 if self.n_prompt_tokens is None else self.n_tokens - self.n_prompt_tokens

    def per_head_writes(self, layer: int, pos: int | slice | None = None) -> torch.Tensor:
        """What each attention head of ``layer`` writes to the residual stream, in float32.

        ``z[pos, h] @ W_O[h]``: ``[pos, heads, d_model]`` (``[heads, d_model]`` for an int
        ``pos``). Summed over heads and plus ``attn.b_O`` this is the attention output
        (``hook_attn_out``), except for Gemma 2/3, which normalize that sum before adding it.

        >>> z = torch.ones(3, 2, 4)
        >>> W_O = torch.ones(2, 4, 5)
        >>> cap = Capture(["a", "b", "c"], torch.tensor([0, 1, 2]), {"blocks.0.attn.hook_z": z},
        ...               weights={"blocks.0.attn.W_O": W_O})
        >>> cap.per_head_writes(0).shape, cap.per_head_writes(0, pos=-1).shape
        (torch.Size([3, 2, 5]), torch.Size([2, 5]))
        """
        z = self[f"blocks.{layer}.attn.hook_z"]
        key = f"blocks.{layer}.attn.W_O"
        if key not in self.weights:
            raise KeyError(
                f"{key!r} is not in cap.weights; per-head writes need the output projection. "
                "Captures from cb.capture() and cb.load_capture() of a file saved with "
                "weights=True have it."
            )
        W_O = self.weights[key].detach().to(device=z.device, dtype=torch.float32)
        if pos is not None:
            z = z[pos]
        return torch.einsum("...hd,hdm->...hm", z.float(), W_O)

    def save(self, path: Any, *, weights: bool = True) -> None:
        """Write this capture to ``path`` (safetensors + JSON metadata); reopen it with
        :func:`circuitboard.load_capture`, no model needed. ``weights=False`` leaves out
        ``cap.weights`` (smaller file; attribution then needs the model)."""
        from ._io import save_capture

        save_capture(self, path, weights=weights)

    def __repr__(self) -> str:
        who = f"{self.info.model_name}, " if self.info else ""
        return f"Capture({who}{self.n_tokens} tokens, {len(self.tensors)} tensors)"
