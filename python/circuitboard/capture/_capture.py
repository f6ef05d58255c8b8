"""The Capture container: one prompt's tokens, logits, activations and the weights to read them."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ._patterns import Patterns, pool_rows

FORMAT_VERSION = 3
"""Version 2 stores queries and keys (``attn.hook_q`` / ``hook_k``) instead of patterns;
version 1 files (stored patterns) still load."""

_PATTERN = re.compile(r"blocks\.(\d+)\.attn\.hook_pattern$")


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
    n_experts: int = 0  # mixture of experts: d_mlp is then one expert's width
    n_experts_per_tok: int = 0
    d_shared_expert: int = 0  # Qwen2-MoE's always-on shared expert
    attn_implementation: str | None = None  # the kernel that computed attention outputs
    attention_path: str | None = None  # "interface" (q/k recorded) or "eager (...why...)"
    source: str = ""  # JSON: the weights file and its sha256, where the loader knows them
    # Blocks normalize their inputs, so the residual stream is a sum of component writes
    # (None, in captures saved before this field: decoders yes, encoders no).
    pre_norm: bool | None = None
    # How each layer scores a query against a key (read by cb.explain_attention):
    rotary_fn: str | None = None  # dotted path of the model's own apply_rotary_pos_emb
    attn_scales: tuple[float, ...] | None = None  # per layer: the factor q·k is multiplied by
    attn_windows: tuple[int | None, ...] | None = None  # per layer: sliding window, or None
    attn_softcap: float | None = None  # scores soft-capped as cap * tanh(score / cap)
    qk_norm: bool = False  # queries / keys normalized after projection (Qwen3, OLMo 2, Gemma 3)
    # The dtype the model computed in (its parameters'), e.g. "bfloat16": with the storage
    # dtype it bounds how closely decompositions can match the model's own values.
    compute_dtype: str | None = None

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
    ``what=`` kinds add ``blocks.{l}.hook_attn_out`` / ``hook_mlp_out``. Mixture-of-experts
    layers record ``blocks.{l}.mlp.hook_router_logits`` ``[pos, experts]``,
    ``mlp.hook_expert_indices`` ``[pos, k]``, ``mlp.hook_expert_weights`` ``[pos, experts]`` and
    ``mlp.experts.{e}.hook_post`` ``[pos, d_mlp]`` instead of ``mlp.hook_post``; models with
    norms on sublayer outputs (OLMo 2, Gemma 2) add ``blocks.{l}.ln1_post.hook_scale`` /
    ``ln2_post.hook_scale``. ``ln_final.hook_scale``
    is the *multiplier* ``1 / sqrt(var + eps)`` (``1 / sqrt(mean(x^2) + eps)`` for RMSNorm), kept
    in float32; TransformerLens' own ``hook_scale`` is its reciprocal (converted on import).
    ``logits`` are float32. ``n_prompt_tokens`` says how many tokens came from the prompt; the
    rest were generated (``max_new_tokens=``).

    Attention patterns of a capture from :func:`circuitboard.capture` are not stored: it holds
    ``blocks.{l}.attn.hook_q`` ``[pos, heads, d_head]`` and ``hook_k`` ``[pos, kv_heads,
    d_head]`` (as the attention kernel received them) and ``patterns`` (a
    :class:`~circuitboard.capture._patterns.Patterns`) recomputes
    ``blocks.{l}.attn.hook_pattern`` when it is read (whole layers cached within
    ``patterns.cache_bytes``). Readers that need less than a whole layer use
    :meth:`pattern` (a block), :meth:`pattern_rows` (chunks of query rows) and
    :meth:`pattern_overview` (pooled), which work the same for stored patterns.

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
    image: dict[str, Any] | None = field(default=None, repr=False)
    """Image captures (ViT): ``{"grid": [rows, cols], "patch": pixels per side, "pixels":
    [C, H, W] in [0, 1]}``; token 0 is CLS, token ``1 + r * cols + c`` the patch at (r, c)."""
    patterns: Patterns | None = field(default=None, repr=False, compare=False)
    saes: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """Dictionaries run during the capture, by the hook they read (see ``capture(saes=)``)."""

    def _virtual_layer(self, name: str) -> int | None:
        """The layer of a pattern name computed on demand (not stored), else None."""
        if self.patterns is None or name in self.tensors:
            return None
        m = _PATTERN.match(name)
        if m and int(m.group(1)) in self.patterns.specs:
            return int(m.group(1))
        return None

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            layer = self._virtual_layer(name)
            if layer is not None:
                return self.patterns.full(layer)  # type: ignore[union-attr]
            close = [n for n in self.names() if n.split(".")[-1] == name.split(".")[-1]][:3]
            hint = f" Similar names: {close}." if close else ""
            raise KeyError(
                f"{name!r} was not captured.{hint} See cap.names() for what is there, or "
                "capture again with a wider `what=` / `layers=`."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.tensors or (
            isinstance(name, str) and self._virtual_layer(name) is not None
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def names(self) -> list[str]:
        """All tensor names, in capture order (patterns computed on demand included)."""
        out = []
        for n in self.tensors:
            out.append(n)
            if self.patterns is not None and n.endswith(".attn.hook_k"):
                p = n[: -len("hook_k")] + "hook_pattern"
                if self._virtual_layer(p) is not None:
                    out.append(p)
        return out

    # -- attention patterns in blocks ----------------------------------------------------
    def _stored_pattern(self, layer: int) -> torch.Tensor | None:
        return self.tensors.get(f"blocks.{layer}.attn.hook_pattern")

    def _pattern_source(self, layer: int) -> torch.Tensor | None:
        stored = self._stored_pattern(layer)
        if stored is None and (self.patterns is None or layer not in self.patterns.specs):
            raise KeyError(
                f"layer {layer} has no attention pattern in this capture (captured: "
                f"{self.layers()}); capture again with layers=[..., {layer}] and the default "
                "what= (or what=['pattern', ...])."
            )
        return stored

    def pattern_rows(
        self,
        layer: int,
        head: int | list[int] | None = None,
        queries: slice | int | None = None,
        keys: slice | int | None = None,
        chunk: int | None = None,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(first_query, weights)`` chunks of query rows, float32 ``[h, rows, keys]``.

        The memory-bounded way to read a whole layer: each chunk's temporaries stay under
        :data:`~circuitboard.capture._patterns.CHUNK_BYTES` unless ``chunk`` (rows) says.
        ``head`` is one head, a list, or None for all (an int still yields ``[1, rows, keys]``).
        """
        from ._patterns import _heads, _range, rows_per_chunk

        stored = self._pattern_source(layer)
        if stored is None:
            hs = [head] if isinstance(head, int) else head
            yield from self.patterns.rows(layer, hs, queries, keys, chunk)  # type: ignore[union-attr]
            return
        n = stored.shape[-1]
        hs = _heads([head] if isinstance(head, int) else head, stored.shape[0])
        qa, qb = _range(queries, n, "queries")
        ka, kb = _range(keys, n, "keys")
        step = chunk or rows_per_chunk(len(hs), n)
        for a in range(qa, qb, step):
            yield a, stored[hs, a : min(qb, a + step), ka:kb].float()

    def pattern(
        self,
        layer: int,
        head: int | list[int] | None = None,
        queries: slice | int | None = None,
        keys: slice | int | None = None,
    ) -> torch.Tensor:
        """A block of ``layer``'s attention pattern, float32, without computing the rest.

        ``[queries, keys]`` for an int ``head``, else ``[heads, queries, keys]``; ``queries`` /
        ``keys`` are slices (or an int) of positions, default all.

        >>> cap = Capture(["a", "b"], torch.tensor([0, 1]),
        ...               {"blocks.0.attn.hook_pattern": torch.tensor([[[1.0, 0], [0.5, 0.5]]])})
        >>> cap.pattern(0, head=0, queries=slice(1, 2)).tolist()
        [[0.5, 0.5]]
        """
        out = torch.cat([w for _, w in self.pattern_rows(layer, head, queries, keys)], dim=1)
        return out[0] if isinstance(head, int) else out

    def pattern_overview(
        self, layer: int, head: int | list[int] | None = None, size: int = 256, reduce: str = "mean"
    ) -> torch.Tensor:
        """Pooled ``[t, t]`` (int ``head``) or ``[heads, t, t]`` overview, ``t = min(n, size)``.

        Positions are cut into ``t`` near-equal blocks. ``reduce="mean"``: a cell is the
        attention mass the block's queries put on the block's keys, averaged over the queries
        (rows sum to 1); ``"max"``: the largest weight in the block. Computed in chunks of
        query rows, never the whole pattern at once.

        >>> eye = torch.eye(4)[None]
        >>> cap = Capture(list("abcd"), torch.arange(4), {"blocks.0.attn.hook_pattern": eye})
        >>> cap.pattern_overview(0, head=0, size=2).tolist()
        [[1.0, 0.0], [0.0, 1.0]]
        """
        n = self.n_tokens
        n_heads = (
            1
            if isinstance(head, int)
            else len(range(self._n_heads(layer)) if head is None else head)
        )
        out = pool_rows(self.pattern_rows(layer, head), n, n_heads, size, reduce)
        return out[0] if isinstance(head, int) else out

    def _n_heads(self, layer: int) -> int:
        stored = self._pattern_source(layer)
        return stored.shape[0] if stored is not None else self.patterns.n_heads(layer)  # type: ignore[union-attr]

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def layers(self, hook: str = "attn.hook_pattern") -> list[int]:
        """The layer indices for which ``blocks.{l}.{hook}`` was captured."""
        pat = re.compile(r"blocks\.(\d+)\." + re.escape(hook) + "$")
        return sorted(int(m.group(1)) for n in self.names() if (m := pat.match(n)))

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
        return torch.stack([self[f"blocks.{i}.{hook}"] for i in layers])

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

    def save(self, path: Any, *, weights: bool | str = "needed") -> None:
        """Write this capture to ``path`` (safetensors + JSON metadata); reopen it with
        :func:`circuitboard.load_capture`, no model needed.

        ``weights="needed"`` (default) stores the weights analyses of the loaded capture read
        (DLA, logit lens, attention explanations): all but the token embedding and the value
        projection. ``"all"`` stores every weight, a tied embedding once; ``False`` none
        (smallest; attribution then needs the model). The vocabulary's token texts are kept,
        so the loaded capture names tokens as the tokenizer did."""
        from ._io import save_capture

        save_capture(self, path, weights=weights)

    def __repr__(self) -> str:
        who = f"{self.info.model_name}, " if self.info else ""
        return f"Capture({who}{self.n_tokens} tokens, {len(self.names())} tensors)"
