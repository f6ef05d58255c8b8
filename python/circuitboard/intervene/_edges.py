"""Edge-level runs of a model: record writers and readers, take gradients per reader input,
and run forwards where chosen edges carry their corrupted value.

Each reader of the graph (a head's query input, a KV head's key / value input, an MLP's input,
the logits) gets its own copy of the residual stream. The model is never re-implemented: the
hooks sit where the adapters' modules already are (the block input, the q/k/v projections'
outputs, the output projection's input, the MLP's norm input, the final norm's input), and a
reader's own input is rebuilt as ``residual − Σ (removed writers' run value − corrupted value)``
and pushed through the model's own norm and projection weights. Every hook handle is removed in
a ``finally``, also when the forward or the metric raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..capture._hooks import norm_scale
from ..capture.adapters import Adapter
from ..capture.adapters._base import execution_device, gather_weights, get_module
from ._graph import Graph
from ._sites import Site, locate


@dataclass(frozen=True)
class Projections:
    """Where one architecture computes q, k and v (paths inside a block), beyond the shared
    sites of :mod:`._sites` (``attn_in`` / ``mlp_in`` give the norms that feed them)."""

    qkv: tuple[str, ...]  # ("q_proj", "k_proj", "v_proj") paths, or one fused projection
    layout: str  # "separate" | "fused_blocks" (q|k|v, GPT-2) | "fused_heads" ([H, 3, dh], NeoX)
    sandwich: str | None = None  # a norm on the attention output before the residual add


_SEPARATE = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
PROJECTIONS: dict[str, Projections] = {
    "llama": Projections(_SEPARATE, "separate"),
    "gemma": Projections(_SEPARATE, "separate"),
    "gemma2": Projections(_SEPARATE, "separate", sandwich="post_attention_layernorm"),
    "gpt2": Projections(("attn.c_attn",), "fused_blocks"),
    "gpt_neox": Projections(("attention.query_key_value",), "fused_heads"),
}


def projections_for(adapter: Adapter) -> Projections:
    s = PROJECTIONS.get(adapter.name)
    if s is None:
        if not adapter.causal:
            raise ValueError(
                f"circuits need a causal language model; {adapter.name} is a bidirectional "
                "encoder, whose logits at a position are not a single readout of one residual "
                "stream. Use a causal model (GPT-2, Llama/SmolLM2, Pythia, Gemma)."
            )
        raise ValueError(
            f"no circuit projections for the {adapter.name!r} adapter; add an entry to "
            "circuitboard.intervene._edges.PROJECTIONS naming its q/k/v projections."
        )
    return s


def _hidden(args: tuple, kwargs: dict) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """The hidden-state argument of a block call and a function that rebuilds the call with a
    replacement (blocks take it positionally or as ``hidden_states=``)."""
    if args:
        return args[0], lambda x: ((x, *args[1:]), kwargs)
    return kwargs["hidden_states"], lambda x: (args, {**kwargs, "hidden_states": x})


class EdgeModel:
    """Hooks for one model and one graph; ``metric(logits[B, P, vocab]) -> [B]``."""

    def __init__(self, model: Any, adapter: Adapter, info: Any, graph: Graph) -> None:
        self.model, self.adapter, self.info, self.graph = model, adapter, info, graph
        self.sites = projections_for(adapter)
        L = info.n_layers
        # the norms whose outputs feed attention and the MLP: the shared attn_in / mlp_in sites
        self.attn_norms = [
            locate(model, adapter, info, Site("attn_in", i)).module for i in range(L)
        ]
        self.mlp_norms = [locate(model, adapter, info, Site("mlp_in", i)).module for i in range(L)]
        p = next(model.parameters())
        self.device, self.dtype = execution_device(model), p.dtype
        H, KV, dh = info.n_heads, info.n_kv_heads, info.d_head
        self.H, self.KV, self.dh, self.D = H, KV, dh, info.d_model
        w = gather_weights(model, adapter, info)  # offloaded layers read through accelerate
        L = info.n_layers
        # float32 copies of the few projections the hooks multiply by (views for float32 models)
        self.W = {
            k: v.detach().float()
            for k, v in w.items()
            if k.split(".")[-1] in ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "W_O", "b_O")
        }
        self.blocks = [adapter.block(model, layer) for layer in range(L)]
        g = graph
        U = len(g.writers)
        self.U = U
        self.head_writer = np.full((L, H), -1)  # writer index holding head (l, h)
        self.mlp_writer = np.zeros(L, dtype=int)
        for i, wr in enumerate(g.writers):
            if wr.kind in ("head", "attn"):
                for h in wr.heads:
                    self.head_writer[wr.layer, h] = i
            elif wr.kind == "mlp":
                self.mlp_writer[wr.layer] = i
        self.attn_readers = [
            [
                j
                for j, r in enumerate(g.readers)
                if r.layer == layer and r.kind in ("q", "k", "v", "attn")
            ]
            for layer in range(L)
        ]
        self.mlp_reader = [g.reader_index[f"L{layer}.mlp"] for layer in range(L)]
        # which attention reader of a layer feeds each q head / each kv head's k and v
        # (positions in attn_readers[layer]; the same in every layer)
        first = [g.readers[j] for j in self.attn_readers[0]]
        self.head_reader = {
            "q": [next(n for n, r in enumerate(first) if h in r.q_heads) for h in range(H)],
            **{
                k: [
                    next(n for n, r in enumerate(first) if k in r.kv_kinds and h in r.kv_heads)
                    for h in range(KV)
                ]
                for k in ("k", "v")
            },
        }
        self.logits_reader = g.reader_index["logits"]
        self.upstream = [int(g.valid[:, j].sum()) for j in range(len(g.readers))]
        # writers are ordered by stage, so a reader's upstream writers are a prefix
        for j in range(len(g.readers)):
            n = self.upstream[j]
            if not g.valid[:n, j].all():
                raise AssertionError("graph writers are not ordered by stage")

    # -- small helpers ---------------------------------------------------------------------
    def _mod(self, layer: int, path: str) -> Any:
        return get_module(self.blocks[layer], path)

    def _proj_parts(self, out: torch.Tensor, proj: int) -> dict[str, torch.Tensor]:
        """Views ``{kind: [B, P, heads, dh]}`` of a q/k/v projection output."""
        B, P = out.shape[:2]
        H, KV, dh = self.H, self.KV, self.dh
        lay = self.sites.layout
        if lay == "separate":
            kind = "qkv"[proj]
            return {kind: out.view(B, P, H if kind == "q" else KV, dh)}
        if lay == "fused_blocks":
            D = H * dh
            return {k: out[..., i * D : (i + 1) * D].view(B, P, H, dh) for i, k in enumerate("qkv")}
        v = out.view(B, P, H, 3, dh)
        return {k: v[..., i, :] for i, k in enumerate("qkv")}

    def _head_writes(self, layer: int, z: torch.Tensor, raw: torch.Tensor | None) -> torch.Tensor:
        """``[B, P, H, D]``: what each head adds to the residual stream (``b_O`` shared out
        evenly); under a sandwich norm, scaled by that norm's factor (frozen at this run)."""
        W_O = self.W[f"blocks.{layer}.attn.W_O"]
        b_O = self.W[f"blocks.{layer}.attn.b_O"]
        B, P = z.shape[:2]
        zz = z.float().reshape(B, P, self.H, self.dh)
        out = torch.einsum("bphd,hdm->bphm", zz, W_O) + b_O / self.H
        if self.sites.sandwich is not None and raw is not None:
            norm = self._mod(layer, self.sites.sandwich)
            s = norm_scale(norm, raw, "rmsnorm")  # [B, P, 1]
            wgt = norm.weight.detach().float()
            if self.adapter.norm == "gemma_rmsnorm":
                wgt = 1.0 + wgt
            out = out * (s * wgt).unsqueeze(2)
        return out

    @contextlib.contextmanager
    def _hooks(self) -> Iterator[list[Any]]:
        handles: list[Any] = []
        try:
            yield handles
        finally:
            while handles:
                handles.pop().remove()

    def _logits(self, x: torch.Tensor, positions: list[int] | None) -> torch.Tensor:
        out = self.model(input_ids=x, use_cache=False)
        return out.logits if hasattr(out, "logits") else out[0]

    def _slice_logits(self, handles: list[Any], positions: list[int] | None) -> None:
        """Compute the unembedding only at the metric's positions."""
        if positions is None:
            return
        idx = torch.tensor(positions, device=self.device)
        unembed = get_module(self.model, self.adapter.unembed)
        handles.append(unembed.register_forward_pre_hook(lambda m, a: (a[0][:, idx], *a[1:])))

    def _writer_hooks(
        self,
        handles: list[Any],
        store: Callable[[int, torch.Tensor], None] | None,
        *,
        on_block: Any,
        wanted: list[bool] | None = None,
    ) -> None:
        """Hooks that hand each writer's output ``[B, P, D]`` (float32) to ``store(i, out)``."""
        a, s = self.adapter, self.sites
        L = self.info.n_layers
        g = self.graph
        zs: dict[int, torch.Tensor] = {}
        for layer in range(L):
            blk = self.blocks[layer]

            def pre(mod: Any, args: tuple, kwargs: dict, layer: int = layer) -> Any:
                x, rebuild = _hidden(args, kwargs)
                if layer == 0 and store is not None:
                    store(0, x.float())
                new = on_block(layer, x)
                return None if new is None else rebuild(new)

            handles.append(blk.register_forward_pre_hook(pre, with_kwargs=True))
            if store is None:
                continue

            def put_heads(layer: int, raw: torch.Tensor | None) -> None:
                z = zs.pop(layer)
                if wanted is not None and not any(wanted[i] for i in self.head_writer[layer]):
                    return
                writes = self._head_writes(layer, z, raw)
                if g.nodes == "heads":
                    for h in range(self.H):
                        store(int(self.head_writer[layer, h]), writes[:, :, h])
                else:
                    store(int(self.head_writer[layer, 0]), writes.sum(2))

            def z_hook(mod: Any, args: tuple, layer: int = layer) -> None:
                zs[layer] = args[0]
                if s.sandwich is None:
                    put_heads(layer, None)

            handles.append(get_module(blk, a.block_o_proj).register_forward_pre_hook(z_hook))
            if s.sandwich is not None:
                handles.append(
                    get_module(blk, s.sandwich).register_forward_pre_hook(
                        lambda mod, args, layer=layer: put_heads(layer, args[0])
                    )
                )
            mlp_path, mlp_idx = a.block_mlp_out

            def mlp_hook(
                mod: Any, args: tuple, out: Any, layer: int = layer, mlp_idx: Any = mlp_idx
            ) -> None:
                o = out[mlp_idx] if mlp_idx is not None else out
                store(int(self.mlp_writer[layer]), o.float())

            handles.append(get_module(blk, mlp_path).register_forward_hook(mlp_hook))

    # -- 1. record writers and reader inputs -------------------------------------------------
    def record(
        self, ids: torch.Tensor, metric: Callable, positions: list[int] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Writer outputs ``[B, U, P, D]``, reader inputs ``[B, V, P, D]`` and the metric ``[B]``
        of plain forwards on ``ids`` ``[B, P]``."""
        B, P = ids.shape
        g = self.graph
        Wout = torch.zeros(B, self.U, P, self.D, device=self.device)
        Rin = torch.zeros(B, len(g.readers), P, self.D, device=self.device)

        def store(i: int, out: torch.Tensor) -> None:
            Wout[:, i] = out

        def on_block(layer: int, x: torch.Tensor) -> None:
            for j in self.attn_readers[layer]:
                Rin[:, j] = x.float()
            if g.parallel:
                Rin[:, self.mlp_reader[layer]] = x.float()

        with torch.no_grad(), self._hooks() as hs:
            self._writer_hooks(hs, store, on_block=on_block)
            if not g.parallel:
                for layer in range(self.info.n_layers):
                    hs.append(
                        self.mlp_norms[layer].register_forward_pre_hook(
                            lambda m, a, layer=layer: Rin.__setitem__(
                                (slice(None), self.mlp_reader[layer]), a[0].float()
                            )
                        )
                    )
            norm = get_module(self.model, self.adapter.final_norm)
            hs.append(
                norm.register_forward_pre_hook(
                    lambda m, a: Rin.__setitem__((slice(None), self.logits_reader), a[0].float())
                )
            )
            self._slice_logits(hs, positions)
            values = metric(self._logits(ids, positions))
        return Wout, Rin, values.detach().float()

    # -- 2. gradients of the metric with respect to every reader's input ---------------------
    def gradients(
        self,
        ids: torch.Tensor,
        metric: Callable,
        positions: list[int] | None,
        embed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``d metric / d reader input`` summed over the batch rows, ``[V, P, D]``, and the
        metric per row. ``embed`` ``[B, P, D]`` replaces the block-0 input (integrated
        gradients interpolate it)."""
        B, P = ids.shape
        g, s, L = self.graph, self.sites, self.info.n_layers
        resid: dict[int, torch.Tensor] = {}
        proj_deltas: dict[tuple[int, int], torch.Tensor] = {}
        mlp_deltas: dict[int, torch.Tensor] = {}
        final: list[torch.Tensor] = []

        def zero(like: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(like, requires_grad=True)

        def on_block(layer: int, x: torch.Tensor) -> torch.Tensor | None:
            if layer == 0 and embed is not None:
                x = embed.to(x.dtype)
                resid[layer] = x.detach()
                return x
            resid[layer] = x.detach()
            return None

        with torch.enable_grad(), self._hooks() as hs:
            self._writer_hooks(hs, None, on_block=on_block)
            for layer in range(L):
                for pi, path in enumerate(s.qkv):

                    def proj_hook(m: Any, a: tuple, out: torch.Tensor, key=(layer, pi)) -> Any:
                        d = zero(out)
                        proj_deltas[key] = d
                        return out + d

                    hs.append(self._mod(layer, path).register_forward_hook(proj_hook))

                def mlp_pre(m: Any, a: tuple, layer: int = layer) -> Any:
                    d = zero(a[0])
                    mlp_deltas[layer] = d
                    return (a[0] + d, *a[1:])

                hs.append(self.mlp_norms[layer].register_forward_pre_hook(mlp_pre))

            def final_pre(m: Any, a: tuple) -> Any:
                d = zero(a[0])
                final.append(d)
                return (a[0] + d, *a[1:])

            hs.append(
                get_module(self.model, self.adapter.final_norm).register_forward_pre_hook(final_pre)
            )
            self._slice_logits(hs, positions)
            values = metric(self._logits(ids, positions))
            keys = sorted(proj_deltas)
            grads = torch.autograd.grad(
                values.sum(),
                [proj_deltas[k] for k in keys] + [mlp_deltas[k] for k in range(L)] + final,
                allow_unused=True,
            )
        G = torch.zeros(len(g.readers), P, self.D, device=self.device)
        gp = dict(zip(keys, grads[: len(keys)], strict=True))
        for layer in range(L):
            gm = grads[len(keys) + layer]
            if gm is not None:
                G[self.mlp_reader[layer]] = gm.float().sum(0)
            self._pull_back(layer, gp, resid[layer], G)
        if grads[-1] is not None:
            G[self.logits_reader] = grads[-1].float().sum(0)
        return G, values.detach().float()

    def _pull_back(
        self,
        layer: int,
        gp: dict[tuple[int, int], torch.Tensor | None],
        r: torch.Tensor,
        G: torch.Tensor,
    ) -> None:
        """Gradients at the q/k/v projections → each attention reader's residual input: back
        through the projection weights of its heads, then through the model's own norm."""
        parts: dict[str, torch.Tensor] = {}
        for pi in range(len(self.sites.qkv)):
            gout = gp.get((layer, pi))
            if gout is None:
                continue
            parts.update(self._proj_parts(gout.float(), pi))
        readers = self.attn_readers[layer]
        if not readers or not parts:
            return
        B, P = r.shape[:2]
        gx = torch.zeros(len(readers), B, P, self.D, device=self.device)
        p = f"blocks.{layer}.attn."
        for n, j in enumerate(readers):
            rd = self.graph.readers[j]
            if rd.q_heads and "q" in parts:
                hs = list(rd.q_heads)
                gx[n] += torch.einsum("bphd,hmd->bpm", parts["q"][:, :, hs], self.W[p + "W_Q"][hs])
            for kind in rd.kv_kinds:
                if kind in parts:
                    hs = list(rd.kv_heads)
                    Wk = self.W[p + ("W_K" if kind == "k" else "W_V")][hs]
                    gx[n] += torch.einsum("bphd,hmd->bpm", parts[kind][:, :, hs], Wk)
        norm = self.attn_norms[layer]
        with torch.enable_grad():
            R = r.unsqueeze(0).expand(len(readers), *r.shape).to(self.dtype).clone()
            R.requires_grad_(True)
            y = norm(R)
            (gr,) = torch.autograd.grad(y, R, gx.to(y.dtype))
        G[readers] += gr.float().sum(1)

    # -- 3. forwards with edges removed ------------------------------------------------------
    def ablate(
        self,
        ids: torch.Tensor,
        keep: torch.Tensor,
        W_corr: torch.Tensor,
        R_corr: torch.Tensor,
        metric: Callable,
        positions: list[int] | None,
        start: int = 0,
    ) -> torch.Tensor:
        """The metric ``[B]`` of the clean prompt ``ids`` ``[P]`` with, in row b, every edge
        where ``keep[b]`` ``[U, V]`` is False fed the corrupted value of its writer.

        A reader's input is rebuilt from whichever is fewer, its removed or its kept edges:
        ``residual − Σ_removed (run − corrupted)`` or ``corrupted residual + Σ_kept (run −
        corrupted)`` (equal in exact arithmetic; each is exact at its own end: nothing removed
        leaves the clean run untouched, nothing kept gives the corrupted input exactly).
        Positions before ``start`` (the first token where the prompts differ) are equal in every
        run of a causal model, so only positions ``start:`` are rebuilt.
        """
        B = keep.shape[0]
        P = ids.shape[-1]
        p0 = start
        g, s, L = self.graph, self.sites, self.info.n_layers
        valid = torch.as_tensor(g.valid, device=self.device)
        keep = keep.to(self.device) & valid
        n_keep = keep.sum(1)
        n_valid = valid.sum(0)
        from_corr = n_keep < (n_valid - n_keep)  # [B, V]: rebuild from the corrupted end
        M = torch.where(from_corr[:, None, :], keep, valid & ~keep)  # [B, U, V] bool
        touched = M.any(1) | from_corr  # readers whose input changes in each row
        # run − corrupted value of every writer, from the first differing position on
        Drun = torch.zeros(B, self.U, P - p0, self.D, device=self.device)
        Wc = W_corr[:, p0:]

        needed = M.any(2).any(0).tolist()  # writers some rebuilt input depends on

        def store(i: int, out: torch.Tensor) -> None:
            if needed[i]:
                Drun[:, i] = out[:, p0:] - Wc[i]

        def new_inputs(js: list[int], x: torch.Tensor) -> torch.Tensor:
            """Rebuilt residual inputs ``[len(js), B, P - p0, D]`` of readers ``js``."""
            n = self.upstream[js[0]]
            Ms = M[:, :n, js]
            us = Ms.any(2).any(0).nonzero().squeeze(1)  # writers that matter to these readers
            base_run = x[:, p0:].float()[None]
            base_corr = R_corr[js][:, None, p0:]
            fc = from_corr[:, js].T[:, :, None, None]
            if len(us):
                d = Drun[:, us].reshape(B, len(us), -1)
                delta = torch.einsum("buv,bup->vbp", Ms[:, us].float(), d)
                delta = delta.reshape(len(js), B, P - p0, self.D)
                return torch.where(fc, base_corr + delta, base_run - delta)
            return torch.where(fc, base_corr, base_run)

        attn_new: dict[int, torch.Tensor] = {}

        def on_block(layer: int, x: torch.Tensor) -> torch.Tensor | None:
            js = self.attn_readers[layer]
            if js and bool(touched[:, js].any()):
                R = new_inputs(js, x)
                attn_new[layer] = self.attn_norms[layer](R.to(self.dtype)).float()
            return None

        def proj_hook(m: Any, a: tuple, out: torch.Tensor, layer: int, pi: int) -> Any:
            x = attn_new.get(layer)  # the rebuilt inputs after the attention norm
            if x is None:
                return None
            js = self.attn_readers[layer]
            out = out.clone()
            parts = self._proj_parts(out, pi)
            p = f"blocks.{layer}.attn."
            for kind, tgt in parts.items():
                idx = self.head_reader[kind]  # for each head of this kind: its reader (in js)
                K = kind.upper()
                val = torch.einsum("hbpd,hdk->bphk", x[idx], self.W[p + "W_" + K])
                val = (val + self.W[p + "b_" + K]).to(out.dtype)  # [B, P - p0, heads, dh]
                rows = touched[:, js][:, idx]  # [B, heads]
                cur = tgt[:, p0:]
                cur.copy_(torch.where(rows[:, None, :, None], val, cur))
            return out

        def resid_pre_hook(j: int, a: tuple) -> Any:
            if not bool(touched[:, j].any()):
                return None
            x = a[0]
            rows = touched[:, j]
            new = x.clone()
            sub = new[rows]
            sub[:, p0:] = new_inputs([j], x)[0][rows].to(x.dtype)
            new[rows] = sub
            return (new, *a[1:])

        with torch.no_grad(), self._hooks() as hs:
            self._writer_hooks(hs, store, on_block=on_block, wanted=needed)
            for layer in range(L):
                for pi, path in enumerate(s.qkv):
                    hs.append(
                        self._mod(layer, path).register_forward_hook(
                            lambda m, a, o, layer=layer, pi=pi: proj_hook(m, a, o, layer, pi)
                        )
                    )
                hs.append(
                    self.mlp_norms[layer].register_forward_pre_hook(
                        lambda m, a, j=self.mlp_reader[layer]: resid_pre_hook(j, a)
                    )
                )
            hs.append(
                get_module(self.model, self.adapter.final_norm).register_forward_pre_hook(
                    lambda m, a: resid_pre_hook(self.logits_reader, a)
                )
            )
            self._slice_logits(hs, positions)
            values = metric(self._logits(ids.reshape(1, -1).expand(B, -1), positions))
        return values.detach().float()
