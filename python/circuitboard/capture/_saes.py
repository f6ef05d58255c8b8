"""Dictionaries (SAEs, transcoders) attached to a capture: features read, or spliced, at their hook.

A dictionary is any module with ``encode(x) -> acts``, ``decode(acts) -> x_hat`` and a ``hook``
naming the capture tensor it reads (``blocks.12.hook_resid_post``); a transcoder also names the
tensor it writes (``hook_out``, e.g. ``blocks.6.hook_mlp_out``). ``cb.SAE`` is one; SAELens
objects with ``cfg.hook_name`` work too. Next to the hook a capture stores, following SAELens'
names (``blocks.12.hook_resid_post.sae.hook_sae_acts_post``, ...):

==============================  ===============================================================
``hook_sae_input``              ``[pos, d_in]`` what the dictionary read
``hook_sae_acts_post``          ``[pos, d_sae]`` feature activations, a **sparse** COO tensor
                                (memory grows with active features, never with ``d_sae``)
``hook_sae_recons``             ``[pos, d_out]`` the reconstruction ``decode(acts)``
``hook_sae_error``              ``[pos, d_out]`` ``target − recons`` (target: the input, or the
                                transcoder's output hook)
==============================  ===============================================================

By default the dictionary only reads; ``splice=True`` puts the reconstruction in place of the
hooked tensor (``keep_error=True``: reconstruction + error, the model's own value again).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .adapters._base import Adapter, get_module

SUFFIXES = ("hook_sae_input", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error")
_HOOK = re.compile(r"blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|"
                   r"hook_mlp_out|mlp\.hook_in|mlp\.hook_post|attn\.hook_z)$")  # fmt: skip


def sae_hook(sae: Any) -> str:
    """The capture name a dictionary reads (``sae.hook``, or SAELens' ``cfg.hook_name``)."""
    hook = getattr(sae, "hook", None) or getattr(getattr(sae, "cfg", None), "hook_name", None)
    if not isinstance(hook, str):
        raise TypeError(
            f"a dictionary must name the activation it reads; {type(sae).__name__} has no "
            "`hook` (e.g. 'blocks.12.hook_resid_post'). Load it with cb.SAE.load(folder) or set "
            "sae.hook."
        )
    return hook


def sae_hook_out(sae: Any) -> str:
    """Where a dictionary's reconstruction belongs: ``hook_out`` for a transcoder, else ``hook``."""
    out = getattr(sae, "hook_out", None)
    return out if isinstance(out, str) and out else sae_hook(sae)


def sae_names(hook: str) -> dict[str, str]:
    """Capture names of a dictionary reading ``hook``, by suffix.

    >>> sae_names("blocks.3.hook_resid_post")["hook_sae_acts_post"]
    'blocks.3.hook_resid_post.sae.hook_sae_acts_post'
    """
    return {s: f"{hook}.sae.{s}" for s in SUFFIXES}


@dataclass
class HookPoint:
    """Where a capture name lives in the model: a module, read before (``pre``) or after it
    runs, ``index`` into a tuple output, and ``heads`` to flatten (``attn.hook_z``)."""

    module: Any
    pre: bool
    index: int | None = None

    def get(self, args: tuple, kwargs: dict, out: Any = None) -> torch.Tensor:
        if self.pre:
            return args[0] if args else kwargs["hidden_states"]
        if isinstance(out, tuple | list):
            return out[self.index or 0]
        return out

    def put(self, value: torch.Tensor, args: tuple, kwargs: dict, out: Any = None) -> Any:
        """The hook's return value that makes the module see / return ``value`` instead."""
        if self.pre:
            if args:
                return (value, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": value}
        if isinstance(out, tuple | list):
            i = self.index or 0
            return type(out)((*out[:i], value, *out[i + 1 :]))
        return value


def locate_hook(model: Any, adapter: Adapter, hook: str, n_layers: int) -> HookPoint:
    """The :class:`HookPoint` of capture name ``hook``; errors name the hooks that exist."""
    m = _HOOK.match(hook)
    if m is None or int(m.group(1)) >= n_layers:
        raise ValueError(
            f"a dictionary reads {hook!r}, which this model's capture does not have (it has "
            f"{n_layers} layers and dictionaries attach to blocks.{{l}}.hook_resid_pre / "
            "hook_resid_mid / hook_resid_post / hook_attn_out / hook_mlp_out / mlp.hook_in / "
            "mlp.hook_post / attn.hook_z). Use a dictionary trained for this model, or set "
            "sae.hook to one of those names (TransformerLens names map the same way)."
        )
    blk = adapter.block(model, int(m.group(1)))
    kind = m.group(2)
    if kind in ("hook_resid_pre", "hook_resid_post"):
        return HookPoint(blk, pre=kind == "hook_resid_pre")
    if kind == "hook_attn_out":
        path, idx = adapter.block_attn_out
        return HookPoint(get_module(blk, path), pre=False, index=idx)
    if kind == "hook_mlp_out":
        path, idx = adapter.block_mlp_out
        return HookPoint(get_module(blk, path), pre=False, index=idx)
    if kind == "mlp.hook_in":  # what the MLP module receives (after its norm)
        path, _ = adapter.block_mlp_out
        return HookPoint(get_module(blk, path), pre=True)
    if kind == "mlp.hook_post":
        return HookPoint(get_module(blk, adapter.block_mlp_down), pre=True)
    if kind == "attn.hook_z":
        return HookPoint(get_module(blk, adapter.block_o_proj), pre=True)
    if adapter.block_mid is None:
        raise ValueError(
            f"{hook!r}: this {adapter.name} model runs attention and MLP in parallel, so it has no "
            "module whose input is resid_mid; attach the dictionary to hook_resid_pre instead."
        )
    return HookPoint(get_module(blk, adapter.block_mid), pre=True)


def check_fits(sae: Any, d_in: int, hook: str) -> None:
    """Refuse a dictionary whose input width is not the hooked tensor's."""
    want = getattr(sae, "d_in", None)
    if want is None:
        cfg = getattr(sae, "cfg", None)
        want = getattr(cfg, "d_in", None)
    if want is not None and int(want) != d_in:
        raise ValueError(
            f"the dictionary reading {hook!r} expects inputs of width d_in={want}, but this "
            f"model's {hook} has width {d_in}: it was trained for another model (or another "
            "hook). Use a dictionary made for this model, e.g. cb.load_default_saes() for the "
            "default model, or train one with cb.train_sae(...)."
        )


def _topk_sparse(
    sae: Any, xs: torch.Tensor, lengths: list[int]
) -> tuple[list[torch.Tensor], torch.Tensor] | None:
    """A ``cb.SAE`` of kind ``topk``, encoded and decoded without its dense ``[pos, d_sae]``
    activations: per row of the batch (its first ``lengths[r]`` positions: padding left out)
    the sparse activations (the values ``encode`` gives,
    zeros left out) and the reconstruction ``acts @ W_dec + b_dec`` as a sparse product (``k``
    rows of ``W_dec`` per token instead of all ``d_sae``; equal to ``decode`` up to float
    rounding, and ``recons + error`` is the hooked tensor exactly either way). None for any
    other dictionary: it goes through its own ``encode`` / ``decode``."""
    from ..dictionaries._sae import SAE

    if not (isinstance(sae, SAE) and sae.kind == "topk"):
        return None
    if type(sae).encode is not SAE.encode or type(sae).decode is not SAE.decode:
        return None  # a subclass that changes the maths: run it as it says
    B, T, _ = xs.shape
    pre = sae.pre_activations(xs)  # [B, T, d_sae]
    vals, idx = pre.topk(sae.k, dim=-1, sorted=False)
    del pre
    idx, order = idx.sort(-1)  # features in index order: each row's COO is born coalesced
    vals = torch.relu(vals.gather(-1, order))  # as encode: the k largest, ReLU'd
    flat_idx, flat_vals = idx.reshape(B * T, -1), vals.reshape(B * T, -1)
    # k weighted rows of W_dec per token (embedding_bag: no [pos, d_sae] tensor, no scan)
    recons = F.embedding_bag(flat_idx, sae.W_dec, per_sample_weights=flat_vals, mode="sum")
    recons = recons + sae.b_dec
    if sae.W_skip is not None:
        recons = recons + sae._input(xs.reshape(B * T, -1)) @ sae.W_skip.T
    out = []
    for r, n in enumerate(lengths):
        v, i = vals[r, :n], idx[r, :n]
        keep = v > 0
        pos = torch.arange(n, device=xs.device)[:, None].expand(n, sae.k)[keep]
        out.append(
            torch.sparse_coo_tensor(
                torch.stack([pos, i[keep]]).to("cpu"),
                v[keep].to("cpu", torch.float32),
                (n, sae.d_sae),
                is_coalesced=True,  # rows in order, columns sorted and unique within a row
                check_invariants=False,
            )
        )
    return out, recons.reshape(B, T, -1)


def _sparse_rows(acts: torch.Tensor) -> torch.Tensor:
    """``[pos, d_sae]`` as a coalesced sparse COO tensor, float32, on CPU."""
    acts = acts.detach().to("cpu", torch.float32)
    return acts.to_sparse_coo().coalesce()


class SaeHooks:
    """Install each dictionary's hooks on ``model`` and store its tensors per prompt through
    ``rec.store`` (a :class:`~circuitboard.capture._hooks.Recorder`); handles go into
    ``rec.handles`` so the recorder removes them with its own."""

    def __init__(
        self,
        model: Any,
        adapter: Adapter,
        rec: Any,
        saes: Sequence[Any],
        *,
        splice: bool = False,
        keep_error: bool = False,
    ) -> None:
        self.rec, self.splice, self.keep_error = rec, splice, keep_error
        n_layers = adapter.n_blocks(model)
        seen: set[str] = set()
        for sae in saes:
            hook, hook_out = sae_hook(sae), sae_hook_out(sae)
            if hook in seen:
                raise ValueError(
                    f"two dictionaries read {hook!r}; capture names are per hook, so attach one "
                    "dictionary per hook (capture twice to compare two of them)."
                )
            seen.add(hook)
            if splice and hook_out.endswith("hook_resid_mid"):
                # the norm's input feeds only the MLP; the residual that continues is computed
                # inside the block, so a write there would not be a splice of resid_mid
                raise ValueError(
                    f"splice=True cannot replace {hook_out!r}: resid_mid is read by the MLP only, "
                    "the residual that continues is computed inside the block. Splice at "
                    "hook_resid_pre / hook_resid_post / hook_attn_out / hook_mlp_out, or capture "
                    "with splice=False to read it."
                )
            self._install(sae, hook, hook_out, model, adapter, n_layers)

    def _install(
        self, sae: Any, hook: str, hook_out: str, model: Any, adapter: Adapter, n_layers: int
    ) -> None:
        names = sae_names(hook)
        point_in = locate_hook(model, adapter, hook, n_layers)
        point_out = (
            point_in if hook_out == hook else locate_hook(model, adapter, hook_out, n_layers)
        )
        pending: dict[str, torch.Tensor] = {}  # transcoders: input hook → output hook
        rec = self.rec

        def encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            flat = x.reshape(*x.shape[:2], -1)  # attn.hook_z: heads flattened, as SAELens
            check_fits(sae, flat.shape[-1], hook)
            dtype, device = _param_dtype(sae, flat.dtype), _param_device(sae, flat.device)
            xs = flat.to(device=device, dtype=dtype)  # the dictionary's device and dtype
            fast = _topk_sparse(sae, xs, [n for _, n in rec.rows])
            if fast is not None:
                rows, recons = fast
            else:
                acts = sae.encode(xs)
                # skip transcoders add x @ W_skip.T: their decode needs the input too
                skip = getattr(sae, "W_skip", None) is not None
                recons = sae.decode(acts, xs) if skip else sae.decode(acts)
                rows = [_sparse_rows(acts[r, :n]) for r, (_, n) in enumerate(rec.rows)]
            for r, (idx, n) in enumerate(rec.rows):
                rec.store[idx][names["hook_sae_input"]] = rec._copy(flat[r, :n])
                rec.store[idx][names["hook_sae_acts_post"]] = rows[r]
            return None, recons

        def finish(target: torch.Tensor, recons: torch.Tensor) -> torch.Tensor | None:
            flat = target.reshape(*target.shape[:2], -1).to(recons.device)
            # in float64 the difference of two float32 tensors and its sum back are exact, so
            # recons + error gives the hooked tensor bit for bit (keep_error splices exactly)
            error = flat.double() - recons.double()
            for r, (idx, n) in enumerate(rec.rows):
                rec.store[idx][names["hook_sae_recons"]] = rec._copy(recons[r, :n])
                rec.store[idx][names["hook_sae_error"]] = rec._copy(error[r, :n])
            if not self.splice:
                return None
            new = recons.double() + error if self.keep_error else recons
            return new.to(device=target.device, dtype=target.dtype).reshape(target.shape)

        def on_in(x: torch.Tensor) -> torch.Tensor | None:
            _, recons = encode(x)
            if point_out is point_in:
                return finish(x, recons)
            pending["recons"] = recons
            return None

        def on_out(y: torch.Tensor) -> torch.Tensor | None:
            recons = pending.pop("recons", None)
            if recons is None:
                return None
            return finish(y, recons)

        rec.handles.append(_register(point_in, on_in))
        if point_out is not point_in:
            rec.handles.append(_register(point_out, on_out))


def _register(point: HookPoint, fn: Any) -> Any:
    """Register ``fn(tensor) -> replacement or None`` at ``point``."""
    if point.pre:

        def pre(mod: Any, args: tuple, kwargs: dict) -> Any:
            new = fn(point.get(args, kwargs))
            return None if new is None else point.put(new, args, kwargs)

        return point.module.register_forward_pre_hook(pre, with_kwargs=True)

    def post(mod: Any, args: tuple, out: Any) -> Any:
        new = fn(point.get(args, {}, out))
        return None if new is None else point.put(new, args, {}, out)

    return point.module.register_forward_hook(post)


def _param_device(sae: Any, fallback: torch.device) -> torch.device:
    for p in getattr(sae, "parameters", lambda: iter(()))():
        return p.device
    return fallback


def _param_dtype(sae: Any, fallback: torch.dtype) -> torch.dtype:
    for p in getattr(sae, "parameters", lambda: iter(()))():
        return p.dtype
    return fallback
