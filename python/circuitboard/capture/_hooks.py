"""Forward hooks that copy a batch's activations, per prompt, to CPU storage.

Every hook is registered with the public ``register_forward_hook`` /
``register_forward_pre_hook``; :class:`Recorder` keeps the handles and removes them all in
``close()`` (called from a ``finally``). Hooks never change what a module returns.
"""

from __future__ import annotations

from typing import Any

import torch

from ._attn_interface import AttentionCall, InterfaceUnavailable, LayerHooks
from ._patterns import LayerSpec, span_from_allowed
from .adapters._base import Adapter, get_module


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, tuple | list) else x


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    return next(v for v in kwargs.values() if isinstance(v, torch.Tensor))


def norm_scale(module: Any, x: torch.Tensor, kind: str) -> torch.Tensor:
    """The factor a norm multiplies its (centred, for LayerNorm) input by, in float32."""
    eps = getattr(module, "variance_epsilon", None)
    if eps is None:
        eps = getattr(module, "eps", 1e-6)
    x = x.float()
    if kind == "layernorm":
        return torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class Recorder:
    """Install capture hooks on ``model`` and collect tensors per prompt.

    ``rows`` is set before each batch to ``[(prompt_index, length), ...]``, one per batch row
    (right padding: a row's real tokens are ``[:length]``).

    With ``qk=True`` the ``"pattern"`` kind is recorded through the attention interface
    (:meth:`attention_hooks`: queries, keys and a :class:`LayerSpec` per layer) instead of
    from eager attention weights.
    """

    def __init__(
        self,
        model: Any,
        adapter: Adapter,
        info: Any,
        layers: list[int],
        what: tuple[str, ...],
        n_prompts: int,
        dtype: torch.dtype,
        qk: bool = False,
    ) -> None:
        self.model, self.adapter, self.info = model, adapter, info
        self.dtype = dtype
        self.what = set(what)
        self.qk = qk and "pattern" in self.what
        self.layers = list(layers)
        self.store: list[dict[str, torch.Tensor]] = [{} for _ in range(n_prompts)]
        self.specs: list[dict[int, LayerSpec]] = [{} for _ in range(n_prompts)]
        self._rows: list[tuple[int, int]] = []
        self._spans: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.handles: list[Any] = []
        self._resid_pre: dict[int, torch.Tensor] = {}  # batch-scoped, parallel blocks only
        try:
            self._install(layers)
        except BaseException:
            self.close()
            raise

    @property
    def rows(self) -> list[tuple[int, int]]:
        return self._rows

    @rows.setter
    def rows(self, rows: list[tuple[int, int]]) -> None:
        self._rows = rows
        self._spans.clear()  # masks are per batch

    # -- storage -------------------------------------------------------------------------
    def _copy(self, t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.dtype
        t = t.detach()
        if t.device.type != "cpu":
            return t.to(dtype).to("cpu")
        out = t.to(dtype=dtype, copy=True)
        return out if out.is_contiguous() else out.contiguous()

    def put(self, name: str, t: torch.Tensor, dtype: torch.dtype | None = None) -> None:
        """Store ``t`` (batch-first, ``[b, pos, ...]``) cut to each row's length."""
        for r, (idx, n) in enumerate(self.rows):
            self.store[idx][name] = self._copy(t[r, :n], dtype)

    def put_pattern(self, name: str, w: torch.Tensor) -> None:
        for r, (idx, n) in enumerate(self.rows):
            self.store[idx][name] = self._copy(w[r, :, :n, :n])

    # -- hooks ---------------------------------------------------------------------------
    def _add(self, module: Any, fn: Any, pre: bool = False, kwargs: bool = False) -> None:
        if pre:
            self.handles.append(module.register_forward_pre_hook(fn, with_kwargs=kwargs))
        else:
            self.handles.append(module.register_forward_hook(fn))

    def _install(self, layers: list[int]) -> None:
        a, m, w = self.adapter, self.model, self.what
        if "embed" in w:
            self._add(get_module(m, a.embed), lambda mod, i, o: self.put("hook_embed", _first(o)))
            if a.pos_embed:
                self._add(
                    get_module(m, a.pos_embed),
                    lambda mod, i, o: self._put_pos(_first(o)),
                )
        if "scale" in w:
            norm = get_module(m, a.final_norm)
            kind = a.norm

            def scale_hook(mod: Any, args: tuple) -> None:
                self.put("ln_final.hook_scale", norm_scale(mod, args[0], kind), torch.float32)

            self._add(norm, scale_hook, pre=True)
        for layer in layers:
            self._install_layer(layer)

    def _put_pos(self, pos: torch.Tensor) -> None:
        # position embeddings may come out with batch 1 (broadcast over the batch)
        for r, (idx, n) in enumerate(self.rows):
            self.store[idx]["hook_pos_embed"] = self._copy(pos[min(r, pos.shape[0] - 1), :n])

    def _install_layer(self, layer: int) -> None:
        a, w, info = self.adapter, self.what, self.info
        blk = a.block(self.model, layer)
        p = f"blocks.{layer}."
        parallel_mid = "resid_mid" in w and a.block_mid is None

        if "resid_pre" in w or parallel_mid:

            def pre_hook(mod: Any, args: tuple, kwargs: dict) -> None:
                x = _hidden_arg(args, kwargs)
                if parallel_mid:
                    self._resid_pre[layer] = x
                if "resid_pre" in w:
                    self.put(p + "hook_resid_pre", x)

            self._add(blk, pre_hook, pre=True, kwargs=True)

        if "pattern" in w and not self.qk:

            def pattern_hook(mod: Any, args: tuple, out: Any) -> None:
                weights = out[1] if isinstance(out, tuple) and len(out) > 1 else None
                if weights is None:
                    raise RuntimeError(
                        f"layer {layer}'s attention module ({type(mod).__name__}) returned no "
                        "attention weights although circuitboard switched the model to eager "
                        "attention; its adapter's block_attn path may point at the wrong module."
                    )
                self.put_pattern(p + "attn.hook_pattern", weights)

            self._add(get_module(blk, a.block_attn), pattern_hook)

        if "z" in w:
            H = info.n_heads

            def z_hook(mod: Any, args: tuple) -> None:
                x = args[0]
                self.put(p + "attn.hook_z", x.reshape(*x.shape[:-1], H, x.shape[-1] // H))

            self._add(get_module(blk, a.block_o_proj), z_hook, pre=True)

        if "attn_out" in w or parallel_mid:
            attn_path, attn_idx = a.block_attn_out

            def attn_out_hook(mod: Any, args: tuple, out: Any) -> None:
                o = out[attn_idx] if attn_idx is not None else out
                if "attn_out" in w:
                    self.put(p + "hook_attn_out", o)
                if parallel_mid:
                    self.put(p + "hook_resid_mid", self._resid_pre.pop(layer) + o)

            self._add(get_module(blk, attn_path), attn_out_hook)

        if "resid_mid" in w and a.block_mid is not None:
            self._add(
                get_module(blk, a.block_mid),
                lambda mod, args: self.put(p + "hook_resid_mid", args[0]),
                pre=True,
            )

        if "mlp_post" in w:
            self._add(
                get_module(blk, a.block_mlp_down),
                lambda mod, args: self.put(p + "mlp.hook_post", args[0]),
                pre=True,
            )

        if "mlp_out" in w:
            mlp_path, mlp_idx = a.block_mlp_out

            def mlp_out_hook(mod: Any, args: tuple, out: Any) -> None:
                self.put(p + "hook_mlp_out", out[mlp_idx] if mlp_idx is not None else out)

            self._add(get_module(blk, mlp_path), mlp_out_hook)

        if "resid_post" in w:
            self._add(blk, lambda mod, args, out: self.put(p + "hook_resid_post", _first(out)))

    # -- queries and keys through the attention interface ---------------------------------
    def attention_hooks(self) -> dict[int, LayerHooks]:
        """Per-layer hooks for :func:`~._attn_interface.attention_hooks` that record
        ``attn.hook_q`` / ``attn.hook_k`` (as the kernel received them, in its dtype) and the
        :class:`LayerSpec` that reproduces the layer's weights."""
        return {layer: LayerHooks(on_qkv=self._qk_recorder(layer)) for layer in self.layers}

    def _qk_recorder(self, layer: int) -> Any:
        p = f"blocks.{layer}.attn."

        def on_qkv(call: AttentionCall) -> None:
            q = call.query.transpose(1, 2)  # [b, pos, heads, d_head], TransformerLens' layout
            k = call.key.transpose(1, 2)
            for r, (idx, n) in enumerate(self.rows):
                self.store[idx][p + "hook_q"] = self._copy(q[r, :n], q.dtype)
                self.store[idx][p + "hook_k"] = self._copy(k[r, :n], k.dtype)
                span, dense = self._span(call, r, n)
                self.specs[idx][layer] = LayerSpec(call.scaling, call.softcap, span, dense)

        return on_qkv

    def _span(self, call: AttentionCall, r: int, n: int) -> tuple[torch.Tensor, Any]:
        mask = call.mask
        if mask is None:  # no padding: causal (is_causal) or full attention
            i = torch.arange(n, dtype=torch.int32)
            causal = call.is_causal and call.query.shape[2] > 1
            hi = i + 1 if causal else torch.full((n,), n, dtype=torch.int32)
            return torch.stack([torch.zeros_like(i), hi], -1), None
        key = (id(mask), mask.data_ptr(), tuple(mask.shape), r, n)
        if key not in self._spans:
            allowed = call.allowed()[r, :, :n, :n]
            if allowed.shape[0] > 1 and not bool((allowed == allowed[:1]).all()):
                raise InterfaceUnavailable(
                    f"layer {call.layer} has a different mask per head; circuitboard records "
                    "one mask per layer."
                )
            self._spans[key] = span_from_allowed(allowed[0])
        return self._spans[key]

    def close(self) -> None:
        """Remove every hook this recorder installed (idempotent)."""
        while self.handles:
            self.handles.pop().remove()
        self._resid_pre.clear()
        self._spans.clear()
