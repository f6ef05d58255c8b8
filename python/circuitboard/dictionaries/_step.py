"""One dictionary being trained: its parameters in training units and one sparse Adam step.

The gradients are written by hand so that only the encoder's forward is a dense product: the
decoder, its gradient and the encoder's gradient touch only the ``k`` active features of each
token (sparse CSR/COO products), which is what makes a CPU step cheap. Inputs are scaled to
unit mean norm while training; :meth:`Trainee.to_sae` folds the scale back into the weights.

JumpReLU dictionaries learn one threshold per feature (Rajamanoharan et al. 2024): the step
function's gradient with respect to the threshold is the straight-through pseudo-derivative of
a rectangle kernel of width ``bandwidth``, and an L0 penalty pushes thresholds up. Its
coefficient adapts so that the mean L0 settles at the asked ``k`` (a target, not a cap).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ._sae import SAE


@dataclass
class Spec:
    """What to train (one dictionary)."""

    hook: str | None
    hook_out: str | None
    d_in: int
    d_out: int
    d_sae: int
    kind: str
    k: int
    skip: bool
    lr: float
    transcoder: bool = False
    auxk_coef: float = 1 / 32
    dead_tokens: int = 100_000
    key_in: str = "x"  # where its inputs / targets are in a buffer
    key_out: str = "x"
    # JumpReLU: the kernel's width as a fraction of the starting threshold (Gemma Scope's
    # width equals its starting threshold; narrower kernels barely move in short runs)
    bandwidth: float = 0.05
    # the L0 coefficient follows log(L0 / k): integral (per step) and proportional gains
    l0_integral: float = 0.03
    l0_proportional: float = 2.0
    # thresholds move in log space by about lr per Adam step: short runs need them faster
    threshold_lr_scale: float = 30.0


# JumpReLU's L0 coefficient starts here (the loss is FVU + coef * mean L0) and adapts
_L0_COEF_START = 1e-3


def _csr(rows_ptr: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]):
    with warnings.catch_warnings():  # "sparse CSR support is in beta": it is exact here
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(rows_ptr, cols, vals, size=shape, check_invariants=False)


def _coo_t(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]):
    """The transpose ``[d_sae, B]`` of a sparse ``[B, d_sae]`` matrix, as COO."""
    idx = torch.stack([cols, rows])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_coo_tensor(idx, vals, (shape[1], shape[0]), is_coalesced=False)


class Trainee:
    """Parameters (``enc [d_sae, d_in]``, ``b_enc``, ``dec [d_sae, d_out]``, ``b_dec``, optional
    ``skip [d_out, d_in]``), their Adam state and the dead-latent counters of one dictionary."""

    def __init__(
        self, spec: Spec, x: torch.Tensor, y: torch.Tensor, seed: int, device: Any = None
    ) -> None:
        self.spec = spec
        self.device = torch.device(device or "cpu")
        x, y = x.float(), y.float()
        # scale factors from the first buffer: inputs and targets of unit mean norm
        self.c_in = float(1.0 / x.norm(dim=-1).mean().clamp_min(1e-12))
        self.c_out = float(1.0 / y.norm(dim=-1).mean().clamp_min(1e-12))
        gen = torch.Generator().manual_seed(seed)
        dec = torch.randn(spec.d_sae, spec.d_out, generator=gen)
        dec /= dec.norm(dim=-1, keepdim=True)
        if spec.transcoder:
            enc = torch.randn(spec.d_sae, spec.d_in, generator=gen) / math.sqrt(spec.d_in)
        else:
            enc = dec.clone()
        dv = self.device  # initialised on CPU (same numbers everywhere), trained on the device
        self.enc = enc.to(dv).requires_grad_()
        self.b_enc = torch.zeros(spec.d_sae, device=dv).requires_grad_()
        self.dec = dec.to(dv).requires_grad_()
        self.b_dec = (y * self.c_out).mean(0).to(dv).requires_grad_()  # the data mean
        self.skip = (
            torch.zeros(spec.d_out, spec.d_in, device=dv).requires_grad_() if spec.skip else None
        )
        self.log_threshold = None
        self.l0_coef = _L0_COEF_START
        self.log_coef_integral = math.log(_L0_COEF_START)
        self.eps = 0.0
        if spec.kind == "jumprelu":
            # start every threshold where TopK would cut the first rows: L0 starts near k
            xs = x.detach() * self.c_in
            pre = (xs if spec.transcoder else xs - self.b_dec.detach().cpu()) @ enc.detach().T
            start = pre.reshape(-1).topk(spec.k * pre.shape[0]).values[-1].clamp_min(1e-6)
            self.eps = spec.bandwidth * start.item()
            self.log_threshold = torch.full((spec.d_sae,), float(start.log()), device=dv)
            self.log_threshold.requires_grad_()
        self.params = list(self._named_params().values())
        self.opt = torch.optim.Adam(
            [{"params": [p], "lr_scale": self._lr_scale(p)} for p in self.params],
            lr=spec.lr,
            betas=(0.9, 0.999),
            eps=6.25e-10,
        )
        self.since_fired = torch.zeros(spec.d_sae, dtype=torch.long, device=dv)
        self.threshold = -1.0  # BatchTopK's running threshold (training units); -1: unset

    def _lr_scale(self, p: torch.Tensor) -> float:
        return self.spec.threshold_lr_scale if p is self.log_threshold else 1.0

    def _named_params(self) -> dict[str, torch.Tensor]:
        named = {"enc": self.enc, "b_enc": self.b_enc, "dec": self.dec, "b_dec": self.b_dec}
        if self.skip is not None:
            named["skip"] = self.skip
        if self.log_threshold is not None:
            named["log_threshold"] = self.log_threshold
        return named

    # -- state for checkpoints ----------------------------------------------------------------
    def state(self, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        names = list(self._named_params())
        tensors = {f"{prefix}.{n}": getattr(self, n).detach().clone() for n in names}
        for n, p in zip(names, self.params, strict=True):
            st = self.opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    tensors[f"{prefix}.adam.{n}.{key}"] = st[key].clone()
        tensors[f"{prefix}.since_fired"] = self.since_fired.cpu().clone()
        tensors = {k: v.detach().cpu() for k, v in tensors.items()}
        step = next((float(s["step"]) for s in self.opt.state.values() if "step" in s), 0.0)
        info = {
            "c_in": self.c_in,
            "c_out": self.c_out,
            "threshold": self.threshold,
            "l0_coef": self.l0_coef,
            "log_coef_integral": self.log_coef_integral,
            "eps": self.eps,
            "adam_step": step,
        }
        return tensors, info

    def load_state(
        self, prefix: str, tensors: dict[str, torch.Tensor], info: dict[str, Any]
    ) -> None:
        names = list(self._named_params())
        with torch.no_grad():
            for n in names:
                getattr(self, n).copy_(tensors[f"{prefix}.{n}"].to(self.device))
        for n, p in zip(names, self.params, strict=True):
            if f"{prefix}.adam.{n}.exp_avg" in tensors:
                self.opt.state[p] = {
                    "step": torch.tensor(info["adam_step"]),
                    "exp_avg": tensors[f"{prefix}.adam.{n}.exp_avg"].to(self.device),
                    "exp_avg_sq": tensors[f"{prefix}.adam.{n}.exp_avg_sq"].to(self.device),
                }
        self.since_fired = tensors[f"{prefix}.since_fired"].to(self.device)
        self.c_in, self.c_out, self.threshold = info["c_in"], info["c_out"], info["threshold"]
        self.l0_coef = info.get("l0_coef", _L0_COEF_START)
        self.log_coef_integral = info.get("log_coef_integral", math.log(self.l0_coef))
        self.eps = info.get("eps", self.eps)

    # -- one step -------------------------------------------------------------------------------
    def _select(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row pointers, columns and pre-activation values of the active set (rows sorted)."""
        B, n = pre.shape
        k = self.spec.k
        if self.spec.kind == "topk":
            vals, idx = pre.topk(k, dim=-1, sorted=False)
            idx, order = idx.sort(dim=-1)
            vals = vals.gather(1, order)
            ptr = torch.arange(0, B * k + 1, k, device=pre.device)
            return ptr, idx.reshape(-1), vals.reshape(-1)
        if self.spec.kind == "jumprelu":  # every pre-activation above its feature's threshold
            rows, idx = (pre > self.log_threshold.detach().exp()).nonzero(as_tuple=True)
            ptr = torch.zeros(B + 1, dtype=torch.long, device=pre.device)
            ptr[1:] = torch.bincount(rows, minlength=B).cumsum(0)
            return ptr, idx, pre[rows, idx]
        flat = pre.reshape(-1)  # batchtopk: the k * B largest over the whole batch
        _, fi = flat.topk(k * B, sorted=False)
        fi = fi.sort().values
        rows = torch.div(fi, n, rounding_mode="floor")
        ptr = torch.zeros(B + 1, dtype=torch.long, device=pre.device)
        ptr[1:] = torch.bincount(rows, minlength=B).cumsum(0)
        return ptr, fi - rows * n, flat[fi]

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> dict[str, float]:
        """One Adam step on a batch ``x [B, d_in]`` → ``y [B, d_out]`` (raw units)."""
        s = self.spec
        B, n, dv = x.shape[0], s.d_sae, self.device
        x, y = x.to(dv, torch.float32), y.to(dv, torch.float32)
        with torch.no_grad():
            xs, ys = x * self.c_in, y * self.c_out
            enc, dec, b_dec = self.enc.detach(), self.dec.detach(), self.b_dec.detach()
            xc = xs if s.transcoder else xs - b_dec
            pre = torch.addmm(self.b_enc.detach(), xc, enc.T)
            ptr, cols, vals = self._select(pre)
            acts = vals.clamp_min(0)
            rows = torch.repeat_interleave(torch.arange(B, device=dv), ptr.diff())
            recon = _csr(ptr, cols, acts, (B, n)) @ dec + b_dec
            if self.skip is not None:
                recon = recon + xs @ self.skip.detach().T
            err = recon - ys
            total_var = (ys - ys.mean(0)).pow(2).sum().clamp_min(1e-12)
            fvu = float(err.pow(2).sum() / total_var)
            g_recon = err * (2.0 / total_var)

            # decoder and encoder gradients through the active set only
            g_dec = torch.sparse.mm(_coo_t(rows, cols, acts, (B, n)), g_recon)
            pattern = _csr(ptr, cols, torch.zeros_like(acts), (B, n))
            g_act = torch.sparse.sampled_addmm(pattern, g_recon, dec.T, beta=0.0).values()
            g_pre = g_act * (vals > 0)
            g_enc = torch.sparse.mm(_coo_t(rows, cols, g_pre, (B, n)), xc)
            g_b_enc = torch.zeros(n, device=dv).index_add_(0, cols, g_pre)

            # AuxK: the dead latents' top pre-activations explain what the live ones missed
            dead = self.since_fired > s.dead_tokens
            n_dead = int(dead.sum())
            aux = 0.0
            if n_dead and s.auxk_coef > 0:
                k_aux = min(s.d_out // 2, n_dead)
                scale = min(n_dead / k_aux, 1.0)
                masked = pre.masked_fill(~dead, -torch.inf)
                va, ia = masked.topk(k_aux, dim=-1, sorted=False)
                ia, order = ia.sort(dim=-1)
                va = va.gather(1, order).reshape(-1)
                ia = ia.reshape(-1)
                a_aux = va.clamp_min(0)
                ptr_a = torch.arange(0, B * k_aux + 1, k_aux, device=dv)
                rows_a = torch.repeat_interleave(torch.arange(B, device=dv), k_aux)
                e_hat = _csr(ptr_a, ia, a_aux, (B, n)) @ dec
                diff = e_hat + err  # e_hat should equal the residual -err
                aux = float(diff.pow(2).sum() / total_var) * scale
                g_e = diff * (2.0 * s.auxk_coef * scale / total_var)
                g_dec += torch.sparse.mm(_coo_t(rows_a, ia, a_aux, (B, n)), g_e)
                pat_a = _csr(ptr_a, ia, torch.zeros_like(a_aux), (B, n))
                g_pa = torch.sparse.sampled_addmm(pat_a, g_e, dec.T, beta=0.0).values() * (va > 0)
                g_enc += torch.sparse.mm(_coo_t(rows_a, ia, g_pa, (B, n)), xc)
                g_b_enc.index_add_(0, ia, g_pa)

            if self.log_threshold is not None:
                g_log_threshold = self._threshold_grad(pre, g_recon, dec)

            g_b_dec = g_recon.sum(0)
            if not s.transcoder:
                g_b_dec -= g_b_enc @ enc  # b_dec is also subtracted from the encoder's input
            # keep decoder rows on the unit sphere: drop the gradient along each row
            g_dec -= (g_dec * dec).sum(-1, keepdim=True) * dec
            grads = [g_enc, g_b_enc, g_dec, g_b_dec]
            if self.skip is not None:
                grads.append(g_recon.T @ xs)
            if self.log_threshold is not None:
                grads.append(g_log_threshold)
            for p, g in zip(self.params, grads, strict=True):
                p.grad = g
        for group in self.opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        self.opt.step()
        with torch.no_grad():
            self.dec /= self.dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            fired = torch.zeros(n, dtype=torch.bool, device=dv)
            fired[cols[acts > 0]] = True
            self.since_fired += B
            self.since_fired[fired] = 0
            if s.kind == "batchtopk":
                live = acts[acts > 0]
                if live.numel():
                    m = float(live.min())
                    self.threshold = m if self.threshold < 0 else 0.99 * self.threshold + 0.01 * m
            if s.kind == "jumprelu":  # L0 above the target raises the penalty, below lowers it
                miss = math.log(max(float((acts > 0).sum()) / B, 0.1) / s.k)
                miss = max(-2.0, min(2.0, miss))
                self.log_coef_integral += s.l0_integral * miss
                self.l0_coef = math.exp(self.log_coef_integral + s.l0_proportional * miss)
        return {
            "fvu": fvu,
            "l0": float((acts > 0).sum()) / B,
            "dead": n_dead / n,
            "auxk": aux,
        }

    def _threshold_grad(
        self, pre: torch.Tensor, g_recon: torch.Tensor, dec: torch.Tensor
    ) -> torch.Tensor:
        """d loss / d log(threshold): the pseudo-derivatives of a rectangle kernel of width
        ``self.eps`` around each threshold, for the reconstruction (``-theta/eps`` per unit of the
        feature's output gradient) and for the L0 penalty (``-coef / (B eps)`` per count)."""
        B, n = pre.shape
        theta = self.log_threshold.detach().exp()
        eps = self.eps
        rows, cols = ((pre - theta).abs() < eps / 2).nonzero(as_tuple=True)
        g = torch.zeros(n, device=pre.device)
        if rows.numel():
            ptr = torch.zeros(B + 1, dtype=torch.long, device=pre.device)
            ptr[1:] = torch.bincount(rows, minlength=B).cumsum(0)
            band = _csr(ptr, cols, torch.zeros(rows.shape[0], device=pre.device), (B, n))
            g_out = torch.sparse.sampled_addmm(band, g_recon, dec.T, beta=0.0).values()
            g.index_add_(0, cols, g_out * -(theta[cols] / eps))
            g.index_add_(0, cols, torch.full_like(g_out, -self.l0_coef / (B * eps)))
        return g * theta

    # -- the result -------------------------------------------------------------------------------
    def to_sae(self, metadata: dict[str, Any] | None = None) -> SAE:
        """The trained dictionary in raw units: the input/output scales folded into the weights
        (features come out in the output's units; decoder rows stay unit norm)."""
        s, ci, co = self.spec, self.c_in, self.c_out
        with torch.no_grad():
            thr = None
            if s.kind == "batchtopk":
                thr = torch.full((s.d_sae,), max(self.threshold, 0.0) / co)
            elif s.kind == "jumprelu":
                thr = self.log_threshold.exp() / co
            return SAE(
                s.d_in,
                s.d_sae,
                kind=s.kind,
                k=s.k,
                d_out=s.d_out,
                hook=s.hook,
                hook_out=s.hook_out if s.transcoder else None,
                W_enc=self.enc.T * (ci / co),
                b_enc=self.b_enc / co,
                W_dec=self.dec,
                b_dec=self.b_dec / co,
                threshold=thr,
                W_skip=None if self.skip is None else self.skip * (ci / co),
                center_input=not s.transcoder,
                metadata=metadata,
                device=self.device,
            )
