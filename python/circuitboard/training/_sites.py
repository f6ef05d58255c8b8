"""Which tensors a recorder watches: capture names for adapter-backed models, module paths else."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Site:
    """One recorded tensor: the input (``"in"``) or output (``"out"``) of ``module``."""

    name: str
    module: Any
    where: str = "out"
    index: int | None = None  # which element of a tuple output

    def pick(self, args: tuple, kwargs: dict, out: Any = None) -> Any:
        if self.where == "in":
            if args:
                return args[0]
            return kwargs.get("hidden_states", next(iter(kwargs.values()), None))
        if isinstance(out, tuple | list):
            return out[self.index or 0] if out else None
        return out


def adapter_sites(model: Any) -> dict[str, Site] | None:
    """Capture-named sites of a Hugging Face model with a circuitboard adapter, else None."""
    if not hasattr(model, "config") or not hasattr(model.config, "model_type"):
        return None
    from ..capture.adapters import get_adapter, get_module

    try:
        a = get_adapter(model)
        n = a.n_blocks(model)
    except (ValueError, AttributeError, TypeError):
        return None
    sites: dict[str, Site] = {}
    for layer in range(n):
        blk, p = a.block(model, layer), f"blocks.{layer}."
        table = {
            "hook_resid_pre": (blk, "in", None),
            "attn.hook_z": (a.block_o_proj, "in", None),
            "hook_attn_out": (a.block_attn_out[0], "out", a.block_attn_out[1]),
            "mlp.hook_post": (a.block_mlp_down, "in", None),
            "hook_mlp_out": (a.block_mlp_out[0], "out", a.block_mlp_out[1]),
            "hook_resid_post": (blk, "out", 0),
        }
        for hook, (path, where, idx) in table.items():
            try:
                mod = get_module(blk, path) if isinstance(path, str) else path
            except (AttributeError, IndexError):
                continue  # e.g. a mixture-of-experts block has no single down projection
            sites[p + hook] = Site(p + hook, mod, where, idx)
    return sites


DEFAULT_HOOKS = ("hook_attn_out", "hook_mlp_out", "hook_resid_post")


def resolve_modules(model: Any, modules: Sequence[str] | None) -> list[Site]:
    """The sites for ``modules`` (default: attention / MLP outputs and the residual stream of
    each block for adapter-backed models; the ``hook_*`` points but attention patterns for
    models that have them; every leaf module otherwise)."""
    named = dict(model.named_modules())
    capture_named = adapter_sites(model) or {}
    if modules is None:
        if capture_named:
            return [s for n, s in capture_named.items() if n.endswith(DEFAULT_HOOKS)]
        hooks = [n for n in named if n.rsplit(".", 1)[-1].startswith("hook_")]
        if hooks:
            # hook points (TransformerLens style): every one except attention patterns, which
            # the probes store, and whose [batch, heads, pos, pos] KPIs would cost more than
            # all the rest together
            return [Site(n, named[n]) for n in hooks if not n.endswith("hook_pattern")]
        return [Site(n, m) for n, m in named.items() if n and not list(m.children())]
    if isinstance(modules, str):
        modules = [modules]
    out = []
    for name in modules:
        if name in capture_named:
            out.append(capture_named[name])
        elif name in named:
            out.append(Site(name, named[name]))
        else:
            known = list(capture_named) + [n for n in named if n]
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
            hint = f" Close names: {close}." if close else ""
            raise ValueError(
                f"module {name!r} is not in {type(model).__name__}; expected a module path from "
                f"model.named_modules(){' or a capture name' if capture_named else ''}.{hint} "
                "Leave modules=None for the default set."
            )
    return out


def resolve_params(model: Any, params: Sequence[str] | str | None) -> list[tuple[str, Any]]:
    """``(name, parameter)`` pairs: every trainable parameter by default, ``[]`` for none."""
    named = dict(model.named_parameters())
    if params is None or params == "all":
        return [(n, p) for n, p in named.items() if p.requires_grad]
    if isinstance(params, str):
        params = [params]
    out = []
    for name in params:
        if name not in named:
            close = difflib.get_close_matches(name, list(named), n=5, cutoff=0.5)
            hint = f" Close names: {close}." if close else ""
            raise ValueError(
                f"parameter {name!r} is not in {type(model).__name__}; expected a name from "
                f"model.named_parameters().{hint} Pass params=[] to record none."
            )
        out.append((name, named[name]))
    return out


def is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()
