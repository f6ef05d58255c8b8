"""Hook names a dictionary reads and writes: TransformerLens, circuit-tracer and sparsify
spellings mapped onto circuitboard's capture names, kept as plain strings.

circuitboard's names follow TransformerLens. Where a dictionary sits at a place TransformerLens
names differently, the mapping is:

==================================  =================================  =========================
given                               circuitboard name                  what it is
==================================  =================================  =========================
``blocks.L.ln2.hook_normalized``    ``blocks.L.mlp.hook_in``           the MLP's input (after
``blocks.L.mlp.hook_in``            ``blocks.L.mlp.hook_in``           the second norm)
``blocks.L.hook_mlp_in``            ``blocks.L.hook_resid_mid``        the second norm's input
``blocks.L.mlp.hook_out``           ``blocks.L.hook_mlp_out``          the MLP's output
``layers.L`` (sparsify)             ``blocks.L.hook_resid_post``       the block's output
``layers.L.mlp`` (sparsify)         ``blocks.L.hook_mlp_out``          (input: ``mlp.hook_in``)
==================================  =================================  =========================

TransformerLens' ``ln2.hook_normalized`` is taken before the norm's weight when the model is
loaded without ``fold_ln``; circuitboard's ``mlp.hook_in`` is what the MLP really receives (the
weight applied), which is what a transcoder trained on a Hugging Face model reads.
"""

from __future__ import annotations

import re

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_SPARSIFY = re.compile(r"^(?:model\.|transformer\.|gpt_neox\.)?(?:layers|h|layer)\.(\d+)(\.mlp)?$")
_RENAME = {
    "ln2.hook_normalized": "mlp.hook_in",
    "hook_mlp_in": "hook_resid_mid",
    "mlp.hook_out": "hook_mlp_out",
}
# What a dictionary can read or write, per block (capture names).
SITES = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "mlp.hook_in",
    "mlp.hook_post",
    "attn.hook_z",
)


def to_capture_name(name: str, layer: int | None = None, *, output: bool = False) -> str:
    """circuitboard's capture name for a hook spelled the TransformerLens, circuit-tracer or
    sparsify way. ``layer`` fills a per-layer template (``"hook_resid_mid"`` with layer 3 is
    ``"blocks.3.hook_resid_mid"``); ``output=True`` reads a sparsify module path as the place a
    transcoder writes (its output) rather than reads (its input).

    Examples
    --------
    >>> to_capture_name("blocks.6.ln2.hook_normalized")
    'blocks.6.mlp.hook_in'
    >>> to_capture_name("hook_resid_mid", 3)
    'blocks.3.hook_resid_mid'
    >>> to_capture_name("layers.6.mlp"), to_capture_name("layers.6.mlp", output=True)
    ('blocks.6.mlp.hook_in', 'blocks.6.hook_mlp_out')
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a hook name must be a non-empty string; got {name!r}.")
    name = name.replace("{layer}", str(layer)) if layer is not None else name
    m = _SPARSIFY.match(name)
    if m:
        L = int(m.group(1))
        if m.group(2):
            return f"blocks.{L}.hook_mlp_out" if output else f"blocks.{L}.mlp.hook_in"
        return f"blocks.{L}.hook_resid_post"
    m = _BLOCK.match(name)
    if m is None:
        if layer is None:
            raise ValueError(
                f"hook {name!r} names no layer; expected a capture name such as "
                "'blocks.6.hook_resid_post', or a per-layer name with its layer "
                "(to_capture_name('hook_resid_mid', 6))."
            )
        return to_capture_name(f"blocks.{layer}.{name}")
    L, site = int(m.group(1)), m.group(2)
    site = _RENAME.get(site, site)
    if site not in SITES:
        raise ValueError(
            f"hook {name!r}: circuitboard does not know the site {site!r}; expected one of "
            f"{', '.join(SITES)} after 'blocks.L.' (TransformerLens spellings are mapped)."
        )
    return f"blocks.{L}.{site}"


def hook_layer(name: str | None) -> int | None:
    """The block index a capture name belongs to, or None.

    >>> hook_layer("blocks.12.hook_resid_post")
    12
    """
    if name is None:
        return None
    m = _BLOCK.match(name)
    return int(m.group(1)) if m else None
