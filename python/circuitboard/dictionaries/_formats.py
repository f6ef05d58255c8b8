"""Reading and writing dictionaries in the layouts people have on disk.

* SAELens: ``cfg.json`` + ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``); what
  :meth:`SAE.save` writes, plus circuitboard's ``labels.json``.
* EleutherAI sparsify: ``cfg.json`` + ``sae.safetensors`` (``encoder.weight [d_sae, d_in]``);
  a folder of hookpoint folders loads as a list.
* circuit-tracer: ``config.yaml`` listing per-layer files, or a folder of ``layer_{i}``
  files (``W_enc [d_t, d_model]``); cross-layer transcoders as ``W_enc_{i}`` / ``W_dec_{i}``.
* ``sae_lens`` objects, duck-typed.

Nothing here unpickles: safetensors, JSON and YAML through ``yaml.safe_load`` only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ._hooknames import to_capture_name
from ._sae import SAE, CrossLayerTranscoder, TranscoderSet

_SAELENS_WEIGHTS, _SAELENS_CFG = "sae_weights.safetensors", "cfg.json"
_SPARSIFY_WEIGHTS = "sae.safetensors"
# SAELens architecture -> (kind, transcoder)
_SAELENS_ARCH = {
    "standard": ("relu", False),
    "relu": ("relu", False),
    "topk": ("topk", False),
    "batchtopk": ("batchtopk", False),
    "jumprelu": ("jumprelu", False),
    "transcoder": ("relu", True),
    "skip_transcoder": ("relu", True),
    "jumprelu_transcoder": ("jumprelu", True),
    "topk_transcoder": ("topk", True),
}


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected a safetensors weights file.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"could not read {path} ({path.stat().st_size} bytes) as safetensors: {err}. The file "
            "is truncated or not safetensors; download or copy it again."
        ) from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); the file is truncated or corrupt."
        ) from None


def _need(tensors: dict[str, torch.Tensor], name: str, where: Path, fmt: str) -> torch.Tensor:
    if name not in tensors:
        raise ValueError(
            f"{where} has no tensor {name!r} (found: {', '.join(sorted(tensors)) or 'none'}); "
            f"a {fmt} dictionary needs it. The file is incomplete or of another format."
        )
    return tensors[name]


def _orient(
    W: torch.Tensor, d_sae: int, rows_are_features: bool, name: str, where: Path
) -> tuple[torch.Tensor, str]:
    """``W`` as ``[other, d_sae]`` (encoder layout), and which way round the file had it.
    ``rows_are_features`` is the format's documented layout, used when ``W`` is square."""
    if W.ndim != 2 or d_sae not in W.shape:
        raise ValueError(
            f"{where}: {name} has shape {tuple(W.shape)}, which has no axis of the "
            f"{d_sae} features that b_enc implies; the file is corrupt or of another format."
        )
    if W.shape[0] == d_sae and (W.shape[1] != d_sae or rows_are_features):
        return W.T, f"{name} [d_sae, d] (transposed on load)"
    return W, f"{name} [d, d_sae]"


# -- format detection -----------------------------------------------------------------------
def detect_format(path: Path) -> str:
    """``"saelens"``, ``"sparsify"``, ``"sparsify-many"``, ``"circuit-tracer"`` or
    ``"circuit-tracer-clt"`` for ``path`` (a folder, or a config file)."""
    if path.is_file():
        if path.suffix in (".yaml", ".yml"):
            return "circuit-tracer"
        if path.name == _SAELENS_CFG:
            return detect_format(path.parent)
        raise ValueError(
            f"{path} is a file; expected a dictionary folder (SAELens: cfg.json + "
            "sae_weights.safetensors; sparsify: cfg.json + sae.safetensors) or a circuit-tracer "
            "config.yaml."
        )
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist; expected a dictionary folder or file.")
    names = {p.name for p in path.iterdir()}
    if _SAELENS_WEIGHTS in names:
        return "saelens"
    if _SPARSIFY_WEIGHTS in names:
        return "sparsify"
    if "config.yaml" in names:
        return "circuit-tracer"
    if any(re.fullmatch(r"W_enc_\d+\.safetensors", n) for n in names):
        return "circuit-tracer-clt"
    if any(re.fullmatch(r"layer_?\d+\.safetensors", n) for n in names):
        return "circuit-tracer"
    if any((path / n / _SPARSIFY_WEIGHTS).is_file() for n in names):
        return "sparsify-many"
    raise ValueError(
        f"{path} holds no dictionary circuitboard recognises (found: "
        f"{', '.join(sorted(names)[:8]) or 'nothing'}). Expected SAELens (cfg.json + "
        "sae_weights.safetensors), sparsify (cfg.json + sae.safetensors), or circuit-tracer "
        "(config.yaml, layer_{i}.safetensors, or W_enc_{i}/W_dec_{i}.safetensors)."
    )


def load_sae(
    path: Any,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    hook: str | None = None,
) -> Any:
    """Load a dictionary, detecting its format.

    Parameters
    ----------
    path : a folder (SAELens, sparsify, circuit-tracer), a circuit-tracer ``config.yaml``, or
        a ``sae_lens`` SAE object (converted as it is).
    device, dtype : where and in what precision to put it (default: CPU, the file's dtype).
    hook : override the hook it reads (a capture or TransformerLens name), for files that do
        not say.

    Returns
    -------
    An :class:`SAE`; a :class:`TranscoderSet` for a circuit-tracer set; a
    :class:`CrossLayerTranscoder`; or a list of SAEs for a sparsify folder of hookpoints.

    Examples
    --------
    >>> import tempfile
    >>> from circuitboard.dictionaries import SAE, load_sae
    >>> sae = SAE(8, 32, kind="topk", k=4, hook="blocks.1.hook_resid_post")
    >>> folder = sae.save(tempfile.mkdtemp())
    >>> load_sae(folder)
    SAE(SAE, topk, k=4, 8 -> 32, blocks.1.hook_resid_post, torch.float32, cpu)
    """
    if not isinstance(path, str | Path):
        if hasattr(path, "cfg") and hasattr(path, "W_enc"):
            return from_sae_lens(path)
        raise TypeError(
            f"expected a folder path, a config file or a sae_lens SAE; got {type(path).__name__}."
        )
    path = Path(path).expanduser()
    fmt = detect_format(path)
    if fmt == "saelens":
        out: Any = _load_saelens(path if path.is_dir() else path.parent, hook)
    elif fmt == "sparsify":
        out = _load_sparsify(path, hook)
    elif fmt == "sparsify-many":
        subs = sorted(
            (p for p in path.iterdir() if (p / _SPARSIFY_WEIGHTS).is_file()),
            key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)],
        )
        out = [_load_sparsify(p, None) for p in subs]
    elif fmt == "circuit-tracer":
        out = _load_circuit_tracer(path)
    else:
        out = _load_clt(path)
    if device is not None or dtype is not None:
        items = out if isinstance(out, list) else [out]
        for m in items:
            m.to(device=device, dtype=dtype)
    return out


# -- SAELens --------------------------------------------------------------------------------
def _load_saelens(folder: Path, hook: str | None) -> SAE:
    cfg = _read_json(folder / _SAELENS_CFG)
    t = _read_tensors(folder / _SAELENS_WEIGHTS)
    meta = dict(cfg.get("metadata") or {})
    ours = meta.pop("circuitboard", {}) or {}
    arch = cfg.get("architecture", "standard")
    act = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    if arch == "standard" and act == "topk":  # pre-6.0 TopK SAEs
        arch = "topk"
    if arch not in _SAELENS_ARCH:
        raise ValueError(
            f"{folder / _SAELENS_CFG}: unknown architecture {arch!r}; circuitboard reads "
            f"{', '.join(sorted(_SAELENS_ARCH))}. Gated SAEs are not supported: convert it "
            "to JumpReLU in SAELens first."
        )
    kind, transcoder = _SAELENS_ARCH[arch]
    kind = ours.get("kind", kind)
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None, False):
        raise ValueError(
            f"{folder / _SAELENS_CFG}: normalize_activations={norm!r}; circuitboard reads SAEs "
            "whose scaling is folded into the weights. Fold it in SAELens "
            "(sae.fold_activation_norm_scaling_factor(...)) and save again."
        )
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    W_enc = _need(t, "W_enc", folder, "SAELens")
    b_enc = _need(t, "b_enc", folder, "SAELens")
    d_sae = b_enc.shape[0]
    W_enc, _ = _orient(W_enc, d_sae, rows_are_features=False, name="W_enc", where=folder)
    threshold = t.get("threshold")
    if threshold is None and "log_threshold" in t:
        threshold = t["log_threshold"].exp()
    if threshold is None and "topk_threshold" in t:
        threshold = t["topk_threshold"]
    if kind == "jumprelu" and threshold is None:
        raise ValueError(f"{folder}: a JumpReLU SAE needs a 'threshold' tensor; none found.")
    hook_in = hook or meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    hook_out = meta.get("hook_name_out") or cfg.get("hook_name_out")
    W_dec = _need(t, "W_dec", folder, "SAELens")
    d_out = W_dec.shape[1] if W_dec.ndim == 2 else None
    if transcoder and hook_out is None and hook_in is not None:
        hook_out = _default_out(hook_in)
    labels = _read_labels(folder, d_sae)
    meta.pop("hook_name", None)
    meta.pop("hook_name_out", None)
    return SAE(
        W_enc.shape[0],
        d_sae,
        kind=kind,
        k=k if kind in ("topk", "batchtopk") else None,
        d_out=d_out,
        hook=hook_in,
        hook_out=hook_out,
        W_enc=W_enc,
        b_enc=b_enc,
        W_dec=W_dec,
        b_dec=_need(t, "b_dec", folder, "SAELens"),
        threshold=threshold if kind in ("jumprelu", "batchtopk") else None,
        W_skip=t.get("W_skip"),
        center_input=bool(cfg.get("apply_b_dec_to_input", not transcoder)),
        labels=labels,
        metadata={**meta, "format": "saelens", "path": str(folder)},
        dtype=W_enc.dtype if W_enc.is_floating_point() else torch.float32,
    )


def _default_out(hook_in: str) -> str:
    layer = to_capture_name(hook_in).split(".")[1]
    return f"blocks.{layer}.hook_mlp_out"


def _read_labels(folder: Path, d_sae: int) -> list[str] | None:
    p = folder / "labels.json"
    if not p.is_file():
        return None
    labels = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(labels, list) or len(labels) != d_sae:
        raise ValueError(f"{p} holds {len(labels)} labels; expected one per feature ({d_sae}).")
    return [str(s) for s in labels]


def save_sae(sae: SAE, folder: Any) -> Path:
    """Write ``sae`` in the SAELens layout (loadable by ``sae_lens.SAE.load_from_disk``) plus
    ``labels.json``. BatchTopK SAEs are written as SAELens JumpReLU with their threshold (that
    is what they compute at inference); circuitboard reads the kind back from the metadata."""
    from safetensors.torch import save_file

    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    if sae.is_transcoder:
        arch = {"relu": "transcoder", "jumprelu": "jumprelu_transcoder", "topk": "topk_transcoder"}
        arch = arch.get(sae.kind, "jumprelu_transcoder")
        if sae.W_skip is not None and sae.kind == "relu":
            arch = "skip_transcoder"
    else:
        arch = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}
        arch = arch[sae.kind]
    tensors = {
        "W_enc": sae.W_enc,
        "b_enc": sae.b_enc,
        "W_dec": sae.W_dec,
        "b_dec": sae.b_dec,
    }
    if sae.threshold is not None and sae.kind in ("jumprelu", "batchtopk"):
        tensors["threshold"] = sae.threshold
    if sae.W_skip is not None:
        tensors["W_skip"] = sae.W_skip
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, folder / _SAELENS_WEIGHTS
    )
    meta = {k: v for k, v in sae.metadata.items() if k not in ("path", "format")}
    meta.update({"hook_name": sae.hook, "sae_lens_version": "6.5.0"})
    if sae.is_transcoder:
        meta["hook_name_out"] = sae.hook_out
    meta["circuitboard"] = {"kind": sae.kind, "version": 1}
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": str(sae.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": sae.center_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": meta,
    }
    if sae.is_transcoder:
        cfg["d_out"] = sae.d_out
    if sae.k is not None:
        cfg["k"] = sae.k
    (folder / _SAELENS_CFG).write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    (folder / "labels.json").write_text(json.dumps(sae.labels), encoding="utf-8")
    return folder


# -- sparsify -------------------------------------------------------------------------------
def _load_sparsify(folder: Path, hook: str | None) -> SAE:
    cfg = _read_json(folder / _SAELENS_CFG) if (folder / _SAELENS_CFG).is_file() else {}
    t = _read_tensors(folder / _SPARSIFY_WEIGHTS)
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise ValueError(
            f"{folder}: sparsify activation {activation!r}; circuitboard reads 'topk' sparse "
            "coders only."
        )
    b_enc = _need(t, "encoder.bias", folder, "sparsify")
    d_sae = b_enc.shape[0]
    W_enc, how = _orient(
        _need(t, "encoder.weight", folder, "sparsify"), d_sae, True, "encoder.weight", folder
    )
    W_dec = _need(t, "W_dec", folder, "sparsify")
    if W_dec.shape[0] != d_sae:
        raise ValueError(
            f"{folder}: W_dec has shape {tuple(W_dec.shape)}; sparsify stores it [d_sae={d_sae}, "
            "d_in]. The file is of another format."
        )
    transcode = bool(cfg.get("transcode", False))
    k = cfg.get("k")
    if not isinstance(k, int):
        raise ValueError(f"{folder / _SAELENS_CFG}: needs an int 'k' (sparsify TopK); got {k!r}.")
    name = hook or folder.name
    hook_in = to_capture_name(name)
    hook_out = to_capture_name(name, output=True) if transcode else None
    return SAE(
        W_enc.shape[0],
        d_sae,
        kind="topk",
        k=k,
        d_out=W_dec.shape[1],
        hook=hook_in,
        hook_out=hook_out,
        W_enc=W_enc,
        b_enc=b_enc,
        W_dec=W_dec,
        b_dec=_need(t, "b_dec", folder, "sparsify"),
        W_skip=t.get("W_skip"),
        center_input=not transcode,
        labels=_read_labels(folder, d_sae),
        metadata={"format": "sparsify", "layout": how, "path": str(folder), "sparsify_cfg": cfg},
        dtype=W_enc.dtype,
    )


# -- circuit-tracer -------------------------------------------------------------------------
def _yaml(path: Path) -> dict[str, Any]:
    import yaml  # a dependency of transformers (the capture extra)

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML ({err}); the file is truncated.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping; got {type(data).__name__}.")
    return data


def _load_circuit_tracer(path: Path) -> TranscoderSet | CrossLayerTranscoder:
    folder = path.parent if path.is_file() else path
    cfg_path = path if path.is_file() else folder / "config.yaml"
    cfg = _yaml(cfg_path) if cfg_path.is_file() else {}
    if cfg.get("model_kind") == "cross_layer_transcoder" or (
        not cfg.get("transcoders") and any(folder.glob("W_enc_*.safetensors"))
    ):
        return _load_clt(folder, cfg)
    hook_in = cfg.get("feature_input_hook", "mlp.hook_in")
    hook_out = cfg.get("feature_output_hook", "mlp.hook_out")
    entries: list[tuple[int, Path]] = []
    for i, item in enumerate(cfg.get("transcoders") or []):
        if isinstance(item, dict):
            layer, fp = item.get("layer", i), str(item.get("filepath", item.get("path", "")))
        else:
            fp = str(item)
            m = re.search(r"layer_?(\d+)", Path(fp).name)
            layer = int(m.group(1)) if m else i
        if fp.startswith("hf://"):
            raise ValueError(
                f"{cfg_path}: transcoder {fp!r} is on the Hugging Face hub; circuitboard loads "
                "from disk only. Download it and point 'filepath' at the local file."
            )
        p = Path(fp)
        entries.append((int(layer), p if p.is_absolute() else folder / p))
    if not entries:
        for p in folder.glob("layer*.safetensors"):
            m = re.fullmatch(r"layer_?(\d+)\.safetensors", p.name)
            if m:
                entries.append((int(m.group(1)), p))
    if not entries:
        raise ValueError(
            f"{cfg_path}: lists no transcoders and {folder} has no layer_*.safetensors."
        )
    saes = []
    for layer, p in sorted(entries):
        t = _read_tensors(p)
        b_enc = _need(t, "b_enc", p, "circuit-tracer")
        d_sae = b_enc.shape[0]
        W_enc, how = _orient(_need(t, "W_enc", p, "circuit-tracer"), d_sae, True, "W_enc", p)
        W_dec, _ = _orient(_need(t, "W_dec", p, "circuit-tracer"), d_sae, False, "W_dec", p)
        threshold = t.get("threshold", t.get("activation_function.threshold"))
        k = cfg.get("k")
        kind = "jumprelu" if threshold is not None else ("topk" if k else "relu")
        saes.append(
            SAE(
                W_enc.shape[0],
                d_sae,
                kind=kind,
                k=k if kind == "topk" else None,
                d_out=W_dec.shape[0],
                hook=to_capture_name(hook_in, layer),
                hook_out=to_capture_name(hook_out, layer, output=True),
                W_enc=W_enc,
                b_enc=b_enc,
                W_dec=W_dec.T,
                b_dec=_need(t, "b_dec", p, "circuit-tracer"),
                threshold=None if threshold is None else threshold.reshape(-1),
                W_skip=t.get("W_skip"),
                center_input=False,
                metadata={"format": "circuit-tracer", "layout": how, "path": str(p)},
                dtype=W_enc.dtype,
            )
        )
    meta = {k: v for k, v in cfg.items() if k != "transcoders"}
    return TranscoderSet(saes, metadata={**meta, "format": "circuit-tracer", "path": str(folder)})


def _load_clt(folder: Path, cfg: dict[str, Any] | None = None) -> CrossLayerTranscoder:
    cfg = (
        cfg
        if cfg is not None
        else (_yaml(folder / "config.yaml") if (folder / "config.yaml").is_file() else {})
    )
    layers = sorted(
        int(m.group(1))
        for p in folder.glob("W_enc_*.safetensors")
        if (m := re.fullmatch(r"W_enc_(\d+)\.safetensors", p.name))
    )
    n = len(layers)
    if layers != list(range(n)) or n == 0:
        raise ValueError(
            f"{folder}: a cross-layer transcoder needs W_enc_0 .. W_enc_{{n-1}}.safetensors; "
            f"found layers {layers}."
        )
    W_enc, b_enc, b_dec, thr, W_dec = [], [], [], [], []
    for i in range(n):
        enc_p, dec_p = folder / f"W_enc_{i}.safetensors", folder / f"W_dec_{i}.safetensors"
        e, d = _read_tensors(enc_p), _read_tensors(dec_p)
        w = _need(e, f"W_enc_{i}", enc_p, "circuit-tracer CLT")  # [d_t, d_model]
        W_enc.append(w.T)
        b_enc.append(_need(e, f"b_enc_{i}", enc_p, "circuit-tracer CLT"))
        b_dec.append(_need(e, f"b_dec_{i}", enc_p, "circuit-tracer CLT"))
        if f"threshold_{i}" in e:
            thr.append(e[f"threshold_{i}"].reshape(-1))
        wd = _need(d, f"W_dec_{i}", dec_p, "circuit-tracer CLT")
        if wd.ndim != 3 or wd.shape[1] != n - i:
            raise ValueError(
                f"{dec_p}: W_dec_{i} has shape {tuple(wd.shape)}; expected [d_t, {n - i}, d_model] "
                f"(layer {i} writes to layers {i}..{n - 1})."
            )
        W_dec.append(wd)
    d_model, d_t = W_enc[0].shape
    kind = "jumprelu" if thr else "relu"
    return CrossLayerTranscoder(
        n,
        d_model,
        d_t,
        d_out=W_dec[0].shape[2],
        kind=kind,
        W_enc=torch.stack(W_enc),
        b_enc=torch.stack(b_enc),
        W_dec=W_dec,
        b_dec=torch.stack(b_dec),
        threshold=torch.stack(thr) if thr else None,
        hook="blocks.{layer}."
        + to_capture_name(cfg.get("feature_input_hook", "hook_resid_mid"), 0).split(".", 2)[2],
        hook_out="blocks.{layer}."
        + to_capture_name(cfg.get("feature_output_hook", "hook_mlp_out"), 0, output=True).split(
            ".", 2
        )[2],
        metadata={**cfg, "format": "circuit-tracer-clt", "path": str(folder)},
        dtype=W_enc[0].dtype,
    )


# -- sae_lens objects -------------------------------------------------------------------------
def from_sae_lens(obj: Any) -> SAE:
    """Convert a ``sae_lens`` SAE object (duck-typed: ``.cfg``, ``.W_enc``, ...) to an
    :class:`SAE` with the same weights."""
    cfg = obj.cfg
    arch = (
        cfg.architecture()
        if callable(getattr(cfg, "architecture", None))
        else getattr(cfg, "architecture", "standard")
    )
    if arch not in _SAELENS_ARCH:
        raise ValueError(
            f"sae_lens architecture {arch!r} is not supported; expected one of "
            f"{', '.join(sorted(_SAELENS_ARCH))}."
        )
    kind, transcoder = _SAELENS_ARCH[arch]
    norm = getattr(cfg, "normalize_activations", "none")
    if norm not in ("none", None):
        raise ValueError(
            f"this sae_lens SAE normalizes activations ({norm!r}); fold the scaling into its "
            "weights first (sae.fold_activation_norm_scaling_factor(...))."
        )
    meta = getattr(cfg, "metadata", None)
    hook = getattr(meta, "hook_name", None) if meta is not None else None
    hook = hook or getattr(cfg, "hook_name", None)
    hook_out = getattr(meta, "hook_name_out", None) if meta is not None else None
    if transcoder and hook_out is None and hook is not None:
        hook_out = _default_out(hook)
    thr = getattr(obj, "threshold", None)
    if thr is None and getattr(obj, "log_threshold", None) is not None:
        thr = obj.log_threshold.exp()
    return SAE(
        cfg.d_in,
        cfg.d_sae,
        kind=kind,
        k=getattr(cfg, "k", None) if kind in ("topk", "batchtopk") else None,
        d_out=getattr(cfg, "d_out", None),
        hook=hook,
        hook_out=hook_out,
        W_enc=obj.W_enc.detach().float(),
        b_enc=obj.b_enc.detach().float(),
        W_dec=obj.W_dec.detach().float(),
        b_dec=obj.b_dec.detach().float(),
        threshold=None if thr is None or kind not in ("jumprelu", "batchtopk") else thr.detach(),
        W_skip=None if getattr(obj, "W_skip", None) is None else obj.W_skip.detach().float(),
        center_input=bool(getattr(cfg, "apply_b_dec_to_input", not transcoder)),
        metadata={"format": "sae_lens object"},
    )
