"""The dictionary module: sparse autoencoders and transcoders as plain torch modules.

One class, :class:`SAE`, covers the kinds in use (ReLU, TopK, BatchTopK, JumpReLU), SAEs
(read and write one hook) and transcoders (read one hook, write another, optionally with a skip
matrix). Weights follow the SAELens layout: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from ._hooknames import hook_layer, to_capture_name

KINDS = ("relu", "topk", "batchtopk", "jumprelu")


class SAEOutput(NamedTuple):
    """What :meth:`SAE.forward` returns.

    ``reconstruction + error == target`` holds exactly: the error is kept in float64 for
    float32 inputs (float32 for half-precision ones), where the difference of two inputs'
    floats is exact, so splicing ``reconstruction + error`` back into a model changes nothing.
    """

    reconstruction: torch.Tensor
    """The dictionary's output, in the SAE's dtype, ``[..., d_out]``."""
    error: torch.Tensor | None
    """``target - reconstruction`` (None for a transcoder called without a target)."""
    features: torch.Tensor
    """Feature activations ``[..., d_sae]`` (dense; zeros where a feature is off)."""


def _exact_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    # float32 - float32 is exact in float64; half - half is exact in float32 (MPS has no float64)
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return torch.float32 if device.type == "mps" else torch.float64


class SAE(nn.Module):
    """A sparse autoencoder or transcoder: ``features = encode(x)``, ``decode(features)``.

    Parameters
    ----------
    d_in, d_sae : input width and number of features.
    kind : ``"relu"``, ``"topk"`` (the ``k`` largest pre-activations, ReLU'd), ``"batchtopk"``
        (trained with the ``k × batch`` largest over a batch; at inference a JumpReLU with its
        learned ``threshold``) or ``"jumprelu"`` (a feature is on where its pre-activation
        exceeds its own ``threshold``).
    k : features kept per token (topk, batchtopk).
    d_out : output width (a transcoder's; defaults to ``d_in``).
    hook, hook_out : where it reads and writes, as circuitboard capture names (TransformerLens
        spellings are mapped, see :func:`to_capture_name`); ``hook_out`` defaults to ``hook``
        (an SAE); a different one makes it a transcoder.
    W_skip : optional ``[d_out, d_in]`` skip matrix (skip transcoders): the output adds
        ``x @ W_skip.T`` (the layout SAELens, sparsify and circuit-tracer share).
    center_input : subtract ``b_dec`` from the input before encoding (SAELens'
        ``apply_b_dec_to_input``); default True for SAEs, False for transcoders.
    labels : one name per feature, saved with the dictionary (default ``"f0", "f1", ...``).
    metadata : free JSON-able dict (model, dataset, tokens, metrics), saved with it.
    seed : the random initialisation's seed when no weights are given (decoder rows unit norm,
        encoder its transpose, biases zero).

    Examples
    --------
    >>> import torch
    >>> from circuitboard.dictionaries import SAE
    >>> sae = SAE(16, 64, kind="topk", k=4, hook="blocks.2.hook_resid_post", seed=0)
    >>> x = torch.randn(3, 16)
    >>> f = sae.encode(x)
    >>> f.shape, int((f > 0).sum(-1).max())
    (torch.Size([3, 64]), 4)
    >>> out = sae(x)
    >>> bool(((out.reconstruction + out.error) == x).all())
    True
    >>> sae.feature(5).shape, sae.layer, sae.is_transcoder
    (torch.Size([16]), 2, False)
    """

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        kind: str = "relu",
        k: int | None = None,
        d_out: int | None = None,
        hook: str | None = None,
        hook_out: str | None = None,
        W_enc: torch.Tensor | None = None,
        b_enc: torch.Tensor | None = None,
        W_dec: torch.Tensor | None = None,
        b_dec: torch.Tensor | None = None,
        threshold: torch.Tensor | float | None = None,
        W_skip: torch.Tensor | None = None,
        center_input: bool | None = None,
        labels: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, v in (("d_in", d_in), ("d_sae", d_sae), ("d_out", d_out)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name} must be a positive int; got {v!r}.")
        if kind not in KINDS:
            raise ValueError(
                f"unknown SAE kind {kind!r}; expected one of {KINDS}. (SAELens 'standard' and "
                "'gated'-free ReLU SAEs are 'relu'; sparsify SAEs are 'topk'.)"
            )
        if kind in ("topk", "batchtopk"):
            if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= d_sae:
                raise ValueError(f"kind={kind!r} needs k, an int in [1, d_sae={d_sae}]; got {k!r}.")
        self.d_in, self.d_sae = d_in, d_sae
        self.d_out = d_in if d_out is None else d_out
        self.kind, self.k = kind, k
        self.hook = to_capture_name(hook) if hook is not None else None
        self.hook_out = to_capture_name(hook_out, output=True) if hook_out is not None else None
        if self.hook_out is None:
            self.hook_out = self.hook
        if self.d_out != d_in and self.hook is not None and self.hook_out == self.hook:
            raise ValueError(
                f"d_out={self.d_out} differs from d_in={d_in}, so this is a transcoder: pass "
                "hook_out, the capture name it writes (e.g. 'blocks.6.hook_mlp_out')."
            )
        self.center_input = (
            (not self.is_transcoder and self.d_out == d_in)
            if center_input is None
            else center_input
        )
        if self.center_input and self.d_out != d_in:
            raise ValueError(
                f"center_input=True subtracts b_dec [{self.d_out}] from the input [{d_in}]; their "
                "widths differ. Pass center_input=False for a transcoder."
            )
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._labels = None if labels is None else [str(s) for s in labels]
        if self._labels is not None and len(self._labels) != d_sae:
            raise ValueError(f"labels has {len(self._labels)} names; expected d_sae={d_sae}.")

        factory = {"dtype": dtype, "device": device}
        if W_dec is None:
            gen = torch.Generator().manual_seed(seed)
            w = torch.randn(d_sae, self.d_out, generator=gen, dtype=torch.float32)
            w = w / w.norm(dim=-1, keepdim=True)
            W_dec = w
            if W_enc is None:
                W_enc = w.T.clone() if self.d_out == d_in else _rand_enc(d_in, d_sae, gen)
        if W_enc is None:
            W_enc = _rand_enc(d_in, d_sae, torch.Generator().manual_seed(seed))
        self.W_enc = nn.Parameter(_checked("W_enc", W_enc, (d_in, d_sae), **factory))
        self.W_dec = nn.Parameter(_checked("W_dec", W_dec, (d_sae, self.d_out), **factory))
        self.b_enc = nn.Parameter(_checked("b_enc", _or_zeros(b_enc, d_sae), (d_sae,), **factory))
        self.b_dec = nn.Parameter(
            _checked("b_dec", _or_zeros(b_dec, self.d_out), (self.d_out,), **factory)
        )
        self.W_skip = (
            None
            if W_skip is None
            else nn.Parameter(_checked("W_skip", W_skip, (self.d_out, d_in), **factory))
        )
        if kind in ("jumprelu", "batchtopk") and threshold is None:
            threshold = 0.0
        if threshold is not None:
            t = torch.as_tensor(threshold, dtype=torch.float32)
            t = t.expand(d_sae).clone() if t.ndim == 0 else t
            self.register_buffer("threshold", _checked("threshold", t, (d_sae,), **factory))
        else:
            self.threshold = None

    # -- what it is ------------------------------------------------------------------------
    @property
    def is_transcoder(self) -> bool:
        """True when it writes somewhere else than it reads (``hook_out != hook``) or its
        output width differs from its input's."""
        return self.hook_out != self.hook or self.d_out != self.d_in

    @property
    def layer(self) -> int | None:
        """The block its input hook belongs to (None without a hook)."""
        return hook_layer(self.hook)

    @property
    def labels(self) -> list[str]:
        """One name per feature (saved with the dictionary)."""
        return (
            list(self._labels) if self._labels is not None else [f"f{i}" for i in range(self.d_sae)]
        )

    @labels.setter
    def labels(self, names: Sequence[str]) -> None:
        names = [str(s) for s in names]
        if len(names) != self.d_sae:
            raise ValueError(f"labels has {len(names)} names; expected d_sae={self.d_sae}.")
        self._labels = names

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def __repr__(self) -> str:
        what = "transcoder" if self.is_transcoder else "SAE"
        k = f", k={self.k}" if self.k is not None else ""
        skip = ", skip" if self.W_skip is not None else ""
        io = f"{self.hook}" + (f" -> {self.hook_out}" if self.hook_out != self.hook else "")
        shape = f"{self.d_in} -> {self.d_sae}" + (
            f" -> {self.d_out}" if self.d_out != self.d_in else ""
        )
        return f"SAE({what}, {self.kind}{k}{skip}, {shape}, {io}, {self.dtype}, {self.device})"

    # -- the maps --------------------------------------------------------------------------
    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor [..., {self.d_in}]; got {type(x).__name__}.")
        if x.shape[-1] != self.d_in:
            raise ValueError(
                f"input has width {x.shape[-1]} (shape {tuple(x.shape)}); this dictionary reads "
                f"d_in={self.d_in} at {self.hook}. Pass activations of that hook."
            )
        if x.device != self.device:
            raise ValueError(
                f"input is on {x.device}, the dictionary on {self.device}; move one of them "
                f"(sae.to({str(x.device)!r}) or x.to({str(self.device)!r}))."
            )
        return x.to(self.dtype)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``(x − b_dec) @ W_enc + b_enc`` (``b_dec`` subtracted only when ``center_input``)."""
        x = self._input(x)
        if self.center_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Feature activations from pre-activations, by ``kind`` (inference rules: BatchTopK
        acts as a JumpReLU with its threshold)."""
        if self.kind == "relu":
            return torch.relu(pre)
        if self.kind == "topk":
            vals, idx = pre.topk(self.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))
        return torch.relu(pre) * (pre > self.threshold)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., d_sae]`` of ``x [..., d_in]`` (cast to the SAE's dtype).

        >>> import torch
        >>> sae = SAE(8, 32, kind="jumprelu", threshold=0.5, seed=1)
        >>> f = sae.encode(torch.randn(5, 8))
        >>> bool(((f == 0) | (f > 0.5)).all())
        True
        """
        return self.activate(self.pre_activations(x))

    def decode(self, features: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """``features @ W_dec + b_dec`` ``[..., d_out]``; a skip transcoder also needs its input
        ``x`` (adds ``x @ W_skip.T``)."""
        out = features.to(self.dtype) @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise ValueError(
                    "this transcoder has a skip matrix: decode(features, x) needs its input x "
                    "too (the output adds x @ W_skip.T)."
                )
            out = out + self._input(x) @ self.W_skip.T
        return out

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> SAEOutput:
        """Encode, decode and the error: :class:`SAEOutput` ``(reconstruction, error,
        features)``. The target defaults to ``x`` for an SAE; a transcoder's error needs the
        real output of ``hook_out`` as ``target``."""
        features = self.encode(x)
        recon = self.decode(features, x if self.W_skip is not None else None)
        if target is None and not self.is_transcoder:
            target = x
        error = None
        if target is not None:
            if target.shape[-1] != self.d_out:
                raise ValueError(
                    f"target has width {target.shape[-1]}; expected d_out={self.d_out} "
                    f"(the activations of {self.hook_out})."
                )
            wide = _exact_dtype(target.dtype, recon.device)
            error = target.to(wide) - recon.to(wide)
        return SAEOutput(recon, error, features)

    def feature(self, i: int) -> torch.Tensor:
        """Feature ``i``'s decoder direction ``W_dec[i]`` ``[d_out]`` (a copy, no grad): what
        it writes per unit of activation — the vector to steer with."""
        if not isinstance(i, int) or isinstance(i, bool) or not -self.d_sae <= i < self.d_sae:
            raise IndexError(f"feature index {i!r} out of range for d_sae={self.d_sae}.")
        return self.W_dec[i].detach().clone()

    # -- models ----------------------------------------------------------------------------
    def check_fits(self, model: Any) -> None:
        """Raise a ValueError when ``d_in`` / ``d_out`` or the hook's layer does not fit
        ``model`` (a Hugging Face model; read from its config)."""
        from ._fit import check_fits

        check_fits(self, model)

    # -- files -------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Any, **kwargs: Any) -> Any:
        """Load a dictionary from disk, detecting its format (SAELens, sparsify,
        circuit-tracer, circuitboard) — see :func:`circuitboard.dictionaries.load_sae`."""
        from ._formats import load_sae

        return load_sae(path, **kwargs)

    def save(self, folder: Any) -> Any:
        """Write the SAELens layout (``cfg.json`` + ``sae_weights.safetensors``) and
        ``labels.json`` into ``folder``; returns its path."""
        from ._formats import save_sae

        return save_sae(self, folder)


class TranscoderSet(nn.Module):
    """Per-layer transcoders, one per block, as circuit-tracer uses them (a replacement for
    every MLP). Indexable by layer, iterable in layer order.

    Examples
    --------
    >>> from circuitboard.dictionaries import SAE, TranscoderSet
    >>> ts = TranscoderSet([
    ...     SAE(8, 16, d_out=8, hook=f"blocks.{i}.mlp.hook_in",
    ...         hook_out=f"blocks.{i}.hook_mlp_out", seed=i) for i in range(3)])
    >>> len(ts), ts.layers, ts[1].hook_out
    (3, [0, 1, 2], 'blocks.1.hook_mlp_out')
    """

    def __init__(self, transcoders: Sequence[SAE], metadata: dict[str, Any] | None = None):
        super().__init__()
        items = list(transcoders)
        if not items:
            raise ValueError("a TranscoderSet needs at least one transcoder.")
        layers = [t.layer for t in items]
        if any(ly is None for ly in layers) or len(set(layers)) != len(layers):
            raise ValueError(
                f"each transcoder needs its own layer (a hook 'blocks.L....'); got layers {layers}."
            )
        order = sorted(range(len(items)), key=lambda i: layers[i])
        self._by_layer = nn.ModuleDict({str(layers[i]): items[i] for i in order})
        self.metadata = dict(metadata or {})

    @property
    def layers(self) -> list[int]:
        return [int(k) for k in self._by_layer]

    def __getitem__(self, layer: int) -> SAE:
        key = str(layer)
        if key not in self._by_layer:
            raise KeyError(f"no transcoder for layer {layer}; this set has layers {self.layers}.")
        return self._by_layer[key]

    def __len__(self) -> int:
        return len(self._by_layer)

    def __iter__(self):  # type: ignore[override]
        return iter(self._by_layer.values())

    def __repr__(self) -> str:
        first = next(iter(self))
        return (
            f"TranscoderSet({len(self)} transcoders, layers {self.layers}, {first.kind}, "
            f"{first.d_in} -> {first.d_sae} -> {first.d_out})"
        )


class CrossLayerTranscoder(nn.Module):
    """A cross-layer transcoder: features read at layer ``i`` write into the outputs of every
    layer ``j >= i`` (circuit-tracer's CLT).

    ``W_enc [n_layers, d_in, d_sae]``, ``b_enc [n_layers, d_sae]``, ``W_dec[i]
    [d_sae, n_layers - i, d_out]``, ``b_dec [n_layers, d_out]``, ``threshold [n_layers, d_sae]``
    for JumpReLU. Output at layer ``j`` is ``b_dec[j] + Σ_{i<=j} f_i @ W_dec[i][:, j - i]``.

    Examples
    --------
    >>> import torch
    >>> from circuitboard.dictionaries import CrossLayerTranscoder
    >>> clt = CrossLayerTranscoder(3, 8, 16, seed=0)
    >>> xs = [torch.randn(4, 8) for _ in range(3)]
    >>> feats = [clt.encode(x, i) for i, x in enumerate(xs)]
    >>> outs = clt.decode(feats)
    >>> len(outs), outs[2].shape, clt.feature(1, 0).shape
    (3, torch.Size([4, 8]), torch.Size([2, 8]))
    """

    def __init__(
        self,
        n_layers: int,
        d_in: int,
        d_sae: int,
        *,
        d_out: int | None = None,
        kind: str = "relu",
        k: int | None = None,
        W_enc: torch.Tensor | None = None,
        b_enc: torch.Tensor | None = None,
        W_dec: Sequence[torch.Tensor] | None = None,
        b_dec: torch.Tensor | None = None,
        threshold: torch.Tensor | None = None,
        hook: str = "blocks.{layer}.hook_resid_mid",
        hook_out: str = "blocks.{layer}.hook_mlp_out",
        metadata: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}.")
        self.n_layers, self.d_in, self.d_sae = n_layers, d_in, d_sae
        self.d_out = d_in if d_out is None else d_out
        self.kind, self.k = kind, k
        self.hook_template, self.hook_out_template = hook, hook_out
        self.metadata = dict(metadata or {})
        f = {"dtype": dtype, "device": device}
        gen = torch.Generator().manual_seed(seed)
        if W_enc is None:
            W_enc = torch.stack([_rand_enc(d_in, d_sae, gen) for _ in range(n_layers)])
        if W_dec is None:
            W_dec = [
                torch.randn(d_sae, n_layers - i, self.d_out, generator=gen)
                / math.sqrt(self.d_out * (n_layers - i))
                for i in range(n_layers)
            ]
        self.W_enc = nn.Parameter(_checked("W_enc", W_enc, (n_layers, d_in, d_sae), **f))
        self.b_enc = nn.Parameter(
            _checked("b_enc", _or_zeros(b_enc, n_layers, d_sae), (n_layers, d_sae), **f)
        )
        if len(W_dec) != n_layers:
            raise ValueError(f"W_dec has {len(W_dec)} layers; expected n_layers={n_layers}.")
        self.W_dec = nn.ParameterList(
            nn.Parameter(_checked(f"W_dec_{i}", w, (d_sae, n_layers - i, self.d_out), **f))
            for i, w in enumerate(W_dec)
        )
        self.b_dec = nn.Parameter(
            _checked("b_dec", _or_zeros(b_dec, n_layers, self.d_out), (n_layers, self.d_out), **f)
        )
        if threshold is None and kind in ("jumprelu", "batchtopk"):
            threshold = torch.zeros(n_layers, d_sae)
        if threshold is not None:
            self.register_buffer(
                "threshold", _checked("threshold", threshold, (n_layers, d_sae), **f)
            )
        else:
            self.threshold = None

    def hook(self, layer: int) -> str:
        """The capture name layer ``layer``'s encoder reads."""
        return to_capture_name(self.hook_template, layer)

    def hook_out(self, layer: int) -> str:
        """The capture name layer ``layer``'s output is added to."""
        return to_capture_name(self.hook_out_template, layer, output=True)

    def encode(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Features of layer ``layer`` from its input ``x [..., d_in]``."""
        if x.shape[-1] != self.d_in:
            raise ValueError(f"input has width {x.shape[-1]}; expected d_in={self.d_in}.")
        pre = x.to(self.W_enc.dtype) @ self.W_enc[layer] + self.b_enc[layer]
        if self.kind == "relu":
            return torch.relu(pre)
        if self.kind == "topk":
            vals, idx = pre.topk(self.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))
        return torch.relu(pre) * (pre > self.threshold[layer])

    def decode(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Outputs of every layer from the features of layers ``0 .. len(features) - 1``."""
        n = len(features)
        outs = []
        for j in range(n):
            out = self.b_dec[j].expand(*features[j].shape[:-1], self.d_out)
            for i in range(j + 1):
                out = out + features[i].to(self.W_enc.dtype) @ self.W_dec[i][:, j - i]
            outs.append(out)
        return outs

    def feature(self, layer: int, i: int) -> torch.Tensor:
        """Feature ``i`` of layer ``layer``: its decoder ``[n_layers - layer, d_out]``, one row
        per layer it writes to (``layer``, ``layer + 1``, ...)."""
        return self.W_dec[layer][i].detach().clone()

    def __repr__(self) -> str:
        return (
            f"CrossLayerTranscoder({self.n_layers} layers, {self.kind}, {self.d_in} -> "
            f"{self.d_sae} -> {self.d_out}, {self.hook_template} -> {self.hook_out_template})"
        )


def _rand_enc(d_in: int, d_sae: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(d_in, d_sae, generator=gen) / math.sqrt(d_in)


def _or_zeros(t: torch.Tensor | None, *shape: int) -> torch.Tensor:
    return torch.zeros(*shape) if t is None else t


def _checked(
    name: str,
    t: Any,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> torch.Tensor:
    t = torch.as_tensor(t)
    if tuple(t.shape) != shape:
        raise ValueError(
            f"{name} has shape {tuple(t.shape)}; expected {shape}. If it is the transpose, the "
            "file follows another layout: load it with SAE.load(folder), which detects it."
        )
    if t.is_floating_point() and not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{name} holds {bad} NaN/inf values; the file is corrupt or was saved mid-divergence. "
            "Re-download or retrain it."
        )
    return t.detach().to(dtype=dtype, device=device).clone(memory_format=torch.contiguous_format)
