"""Sites: named places in a model where an intervention reads or writes an activation.

A :class:`Site` names *what* (``kind``), *where in depth* (``layer``) and optionally *where in
the sequence* (``pos``) and *which component* (``head`` / ``neuron``). :func:`locate` turns it,
through the model's capture adapter, into the module and hook kind that carry that tensor, so
write hooks sit exactly where capture's read hooks do (see :mod:`circuitboard.capture._hooks`).

Kinds and the tensor each one addresses, batch-first (``B`` batch rows, ``T`` positions):

============  ==========================================  =================================
kind          tensor                                      where it lives
============  ==========================================  =================================
embed         ``[B, T, d_model]`` token embedding          output of ``adapter.embed``
resid_pre     ``[B, T, d_model]`` input of block ``l``     pre-hook on block ``l``
resid_mid     ``[B, T, d_model]`` residual after attention  see below
resid_post    ``[B, T, d_model]`` output of block ``l``    forward hook on block ``l``
attn_out      ``[B, T, d_model]`` what attention writes    ``adapter.block_attn_out``
mlp_out       ``[B, T, d_model]`` what the MLP writes      ``adapter.block_mlp_out``
z             ``[B, T, n_heads, d_head]`` per head          input of ``adapter.block_o_proj``
mlp_post      ``[B, T, d_mlp]`` MLP neurons                 input of ``adapter.block_mlp_down``
attn_in       ``[B, T, d_model]`` what attention reads     input of the attention's pre-norm
mlp_in        ``[B, T, d_model]`` what the MLP reads       input of the MLP's pre-norm
unembed_in    ``[B, T, d_model]`` final norm's output      input of ``adapter.unembed``
============  ==========================================  =================================

``attn_in`` / ``mlp_in`` are the residual stream *as one sublayer sees it*: a write or a
gradient there reaches only that sublayer (not the residual that continues), which is what
edge attribution needs (the gradient at a node's input). In pre-norm blocks ``mlp_in`` equals
``resid_mid`` in value; in parallel blocks (GPT-NeoX) both equal ``resid_pre``. BERT (post-norm)
has no pre-norm: ``attn_in`` is the self-attention's input, ``mlp_in`` the intermediate layer's.

Attention internals go through the attention function capture registers with transformers'
attention interface (:mod:`circuitboard.capture._attn_interface`), so they are the queries,
keys and weights the model really used (after rotary embeddings and query/key norms):

============  ==========================================  =================================
q             ``[B, T, n_heads, d_head]``                  the call's query (rotated)
k / v         ``[B, T, n_kv_heads, d_head]``               key / value, per **KV head**
pattern       ``[B, T_query, n_heads, T_key]``             attention weights (eager-style)
============  ==========================================  =================================

For ``k`` / ``v``, ``head=`` is a key-value head: with grouped-query attention KV head ``g``
serves query heads ``g·G .. g·G + G − 1`` (``G = n_heads / n_kv_heads``). A ``pattern``
write (or read, or gradient) makes that layer compute its weights eager-style while the other
layers keep the model's kernel.

``resid_mid`` pitfall: in pre-norm blocks the input of the post-attention norm feeds only the
MLP; the residual that continues is ``resid_pre + attn_out`` computed inside the block. So a
write to ``resid_mid`` is done on ``attn_out`` as ``attn_out := value − resid_pre`` (with the
``resid_pre`` the same forward really used), never on the norm's input. For parallel blocks
(GPT-NeoX) this is capture's definition ``resid_mid = resid_pre + attn_out`` (the MLP reads
``resid_pre`` there, so only attention's write changes). Post-norm BERT keeps its residual after
attention as the attention sublayer's output, which is written directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..capture.adapters._base import Adapter, get_module

KINDS = (
    "embed",
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "z",
    "mlp_post",
    "attn_in",
    "mlp_in",
    "unembed_in",
    "q",
    "k",
    "v",
    "pattern",
)
"""Site kinds :func:`locate` resolves (see the module docstring)."""

HEAD_KINDS = ("z", "q", "k", "v", "pattern")
ATTN_KINDS = ("q", "k", "v", "pattern")
"""Kinds that live inside the attention call (through the registered attention function)."""
"""Kinds whose tensor has a head axis (``head=`` selects one)."""

# Post-norm architectures whose residual after attention is a module's output (the module's
# output is what both the MLP and the continuing residual read). Keyed by adapter name.
_RESID_MID_OUTPUT: dict[str, tuple[str, int | None]] = {"bert": ("attention", 0)}

# The module whose input is what attention reads (its pre-norm; BERT: the self-attention), per
# adapter name; and the MLP's pre-norm where ``adapter.block_mid`` is None (parallel blocks).
# Adapters not listed use "input_layernorm" (the transformers Llama-family name).
_ATTN_IN: dict[str, str] = {"gpt2": "ln_1", "bert": "attention.self"}
_MLP_IN_PARALLEL: dict[str, str] = {"gpt_neox": "post_attention_layernorm"}


@dataclass(frozen=True)
class Site:
    """One place to read or write: ``kind`` at ``layer``, optionally one position / head / neuron.

    Parameters
    ----------
    kind
        One of :data:`KINDS`.
    layer
        Block index (ignored for ``embed`` and ``unembed_in``; use 0).
    pos
        ``None`` (every position), an int, or a tuple of ints.
    head
        For per-head kinds (``z``): one head, or ``None`` for all heads.
    neuron
        For ``mlp_post``: one neuron, or ``None`` for all.

    Examples
    --------
    >>> Site("z", 3, head=5).label
    'L3H5'
    >>> Site("resid_pre", 2, pos=7).label
    'L2 pos 7'
    """

    kind: str
    layer: int = 0
    pos: int | tuple[int, ...] | None = None
    head: int | None = None
    neuron: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown site kind {self.kind!r}; use one of {', '.join(KINDS)}.")
        if self.head is not None and self.kind not in HEAD_KINDS:
            raise ValueError(f"head= only applies to {HEAD_KINDS}; site kind is {self.kind!r}.")
        if self.neuron is not None and self.kind != "mlp_post":
            raise ValueError(f"neuron= only applies to 'mlp_post'; site kind is {self.kind!r}.")
        if isinstance(self.pos, list):
            object.__setattr__(self, "pos", tuple(self.pos))

    @property
    def label(self) -> str:
        """Short label: ``L3H5``, ``L3 N120``, ``L2 pos 7``, ``L4 attn_out``."""
        s = f"L{self.layer}"
        if self.head is not None:
            s += f"H{self.head}"
        if self.neuron is not None:
            s += f" N{self.neuron}"
        if self.pos is not None:
            s += f" pos {self.pos}" if isinstance(self.pos, int) else f" pos {list(self.pos)}"
        if self.head is None and self.neuron is None and self.pos is None:
            s += f" {self.kind}"
        return s

    def positions(self, n_tokens: int) -> list[int]:
        """The positions this site covers in a sequence of ``n_tokens`` (negatives resolved)."""
        if self.pos is None:
            return list(range(n_tokens))
        items: Sequence[int] = [self.pos] if isinstance(self.pos, int) else self.pos
        out = []
        for p in items:
            if not -n_tokens <= p < n_tokens:
                raise ValueError(
                    f"site {self.label}: position {p} is outside a {n_tokens}-token prompt."
                )
            out.append(p % n_tokens)
        return out


@dataclass(frozen=True)
class Location:
    """Where a site's tensor is: ``module`` and whether it is its input (``"pre"``, argument
    ``hidden_states`` / first positional) or its output (``"out"``, element ``index`` of a tuple
    output when not None). ``split_heads`` is the head count to view ``[..., H*dh]`` as
    ``[..., H, dh]``. ``via_attn_out`` marks ``resid_mid`` written through ``attn_out``."""

    module: Any
    hook: str
    index: int | None = None
    split_heads: int | None = None
    via_attn_out: bool = False


def check_layer(site: Site, n_layers: int) -> None:
    if site.kind not in ("embed", "unembed_in") and not 0 <= site.layer < n_layers:
        raise ValueError(
            f"site {site.label}: layer {site.layer} out of range; the model has {n_layers} "
            f"layers (0..{n_layers - 1})."
        )


def _sub(blk: Any, path: str, adapter: Adapter) -> Any:
    try:
        return get_module(blk, path)
    except AttributeError:
        raise ValueError(
            f"the {adapter.name!r} adapter's blocks have no module {path!r} for an attn_in / "
            "mlp_in site; add the module path to circuitboard.intervene._sites._ATTN_IN / "
            "_MLP_IN_PARALLEL for this architecture."
        ) from None


def locate(model: Any, adapter: Adapter, info: Any, site: Site) -> Location:
    """The module and hook kind that carry ``site``'s tensor (see the module docstring);
    ``hook="attn"`` for the kinds inside the attention call."""
    check_layer(site, info.n_layers)
    if site.kind == "embed":
        return Location(get_module(model, adapter.embed), "out")
    if site.kind == "unembed_in":
        return Location(get_module(model, adapter.unembed), "pre")
    blk = adapter.block(model, site.layer)
    k = site.kind
    if k == "resid_pre":
        return Location(blk, "pre")
    if k == "resid_post":
        return Location(blk, "out", index=0)
    if k == "attn_out":
        path, idx = adapter.block_attn_out
        return Location(get_module(blk, path), "out", index=idx)
    if k == "mlp_out":
        path, idx = adapter.block_mlp_out
        return Location(get_module(blk, path), "out", index=idx)
    if k == "resid_mid":
        if adapter.name in _RESID_MID_OUTPUT:
            path, idx = _RESID_MID_OUTPUT[adapter.name]
            return Location(get_module(blk, path), "out", index=idx)
        path, idx = adapter.block_attn_out
        return Location(get_module(blk, path), "out", index=idx, via_attn_out=True)
    if k == "z":
        return Location(get_module(blk, adapter.block_o_proj), "pre", split_heads=info.n_heads)
    if k in ATTN_KINDS:
        return Location(get_module(blk, adapter.block_attn), "attn")
    if k == "mlp_post":
        return Location(get_module(blk, adapter.block_mlp_down), "pre")
    if k == "attn_in":
        return Location(_sub(blk, _ATTN_IN.get(adapter.name, "input_layernorm"), adapter), "pre")
    if k == "mlp_in":
        path = adapter.block_mid or _MLP_IN_PARALLEL.get(adapter.name, "post_attention_layernorm")
        return Location(_sub(blk, path, adapter), "pre")
    raise AssertionError(k)  # unreachable: Site validates kind


def site_shape(info: Any, kind: str) -> tuple[int, ...]:
    """Per-position trailing shape of a kind's tensor."""
    if kind == "z":
        return (info.n_heads, info.d_head)
    if kind == "mlp_post":
        return (info.d_mlp,)
    if kind == "q":
        return (info.n_heads, info.d_head)
    if kind in ("k", "v"):
        return (info.n_kv_heads, info.d_head)
    if kind == "pattern":
        raise ValueError("the pattern's trailing shape is (n_heads, n_keys): it depends on T.")
    return (info.d_model,)


__all__ = ["ATTN_KINDS", "HEAD_KINDS", "KINDS", "Location", "Site", "locate", "site_shape"]
