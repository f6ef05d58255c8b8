"""The fallback for decoder-only models without an adapter: infer the layout, then prove it.

:func:`infer_adapter` reads the module tree and one short forward pass: the list of blocks (the
``ModuleList`` with one entry per layer), the attention module and its output projection (the
linear map from ``n_heads * d_head`` to ``d_model``), the MLP and its down projection (the linear
map into ``d_model``), the final norm (the module whose output the unembedding reads) and the
unembedding (``get_output_embeddings()``). It then runs circuitboard's own capture hooks on a test
input and checks, in the model's dtype:

- the logits with hooks installed equal a plain forward;
- the last residual through the final norm and the unembedding reproduces the logits, and the
  frozen-scale formula (LayerNorm or RMSNorm) reproduces the final norm;
- per-head writes ``z_h @ W_O[h]`` (plus ``b_O``) sum to the attention output, and the MLP's
  neurons times ``W_out`` (plus ``b_out``) to the MLP output;
- the block adds them to the residual stream as the inferred layout says.

Only then is the adapter used (with a :class:`~circuitboard.CircuitboardWarning` that prints the
layout and how to register it); otherwise a ValueError names exactly what could not be inferred
or which check failed.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from ..._errors import CircuitboardWarning
from ._base import Adapter, bias, get_module

NORM_WORDS = ("norm",)
ATTN_WORDS = ("attention", "attn")
MLP_WORDS = ("mlp", "feedforward", "feed_forward", "ffn")
QKV_NAMES = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("wq", "wk", "wv"))

_CACHE: weakref.WeakKeyDictionary[Any, Adapter] = weakref.WeakKeyDictionary()


class LayoutError(ValueError):
    """The fallback could not infer or could not prove a model's layout (a ValueError)."""


@dataclass
class _Found:
    """What the module tree and a traced forward told us, before any proof."""

    blocks: str = ""
    attn: str = ""
    o_proj: str = ""
    mlp: str = ""
    down: str = ""
    mid: str | None = None
    final_norm: str = ""
    unembed: str = ""
    embed: str = ""
    pos_embed: str | None = None
    norm: str = ""
    qkv: tuple[str, str, str] | None = None
    eps: float | None = None


# -- shapes of projections --------------------------------------------------------------------
def proj_matrix(module: Any) -> torch.Tensor | None:
    """A projection's weight as ``[out, in]`` (``nn.Linear``; GPT-2's ``Conv1D`` stores
    ``[in, out]``); None for anything else."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        return None
    if type(module).__name__ == "Conv1D":
        return w.T
    if isinstance(module, torch.nn.Linear):
        return w
    return None


def _name_has(name: str, words: tuple[str, ...]) -> bool:
    low = name.lower().replace("_", "")
    return any(w.replace("_", "") in low for w in words)


def _dims_from_config(config: Any) -> dict[str, Any]:
    from ._base import cfg_get

    n_layers = cfg_get(config, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    n_heads = cfg_get(config, "num_attention_heads", "n_head", "num_heads", "n_heads")
    d_model = cfg_get(config, "hidden_size", "n_embd", "d_model", "dim")
    d_vocab = cfg_get(config, "vocab_size")
    missing = [
        n
        for n, v in (
            ("number of layers", n_layers),
            ("number of attention heads", n_heads),
            ("hidden size", d_model),
            ("vocabulary size", d_vocab),
        )
        if not isinstance(v, int)
    ]
    if missing:
        raise LayoutError(f"the config does not say the {', '.join(missing)}")
    return {
        "n_layers": n_layers,
        "n_heads": n_heads,
        "n_kv_heads": cfg_get(config, "num_key_value_heads", "n_kv_heads", default=n_heads),
        "d_model": d_model,
        "d_head": cfg_get(config, "head_dim", default=d_model // n_heads),
        "d_vocab": d_vocab,
    }


def _path_of(model: Any, target: Any) -> str | None:
    for name, mod in model.named_modules():
        if mod is target:
            return name
    return None


# -- inference from the module tree ------------------------------------------------------------
def _find_blocks(model: Any, n_layers: int) -> str:
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n_layers:
            if len({type(b) for b in mod}) == 1 and any(True for _ in mod[0].parameters()):
                size = sum(p.numel() for p in mod.parameters())
                if best is None or size > best[0]:
                    best = (size, name)
    if best is None:
        raise LayoutError(
            f"the list of blocks: no ModuleList of {n_layers} identical modules (the config's "
            "number of layers) exists in the module tree"
        )
    return best[1]


def _find_in_block(block: Any, dims: dict[str, Any]) -> tuple[str, str, str, str]:
    """``(attn, o_proj, mlp, down)`` paths relative to a block."""
    D, H, dh = dims["d_model"], dims["n_heads"], dims["d_head"]
    problems = []
    attn = o_proj = mlp = down = None
    children = list(block.named_children())
    for name, mod in children:
        cls = type(mod).__name__
        if attn is None and (_name_has(cls, ("attention",)) or _name_has(name, ATTN_WORDS)):
            outs = [
                (n, m)
                for n, m in mod.named_modules()
                if (w := proj_matrix(m)) is not None and tuple(w.shape) == (D, H * dh)
            ]
            if len(outs) >= 1:
                attn, o_proj = name, f"{name}.{outs[-1][0]}"
        elif mlp is None and (_name_has(cls, MLP_WORDS) or _name_has(name, MLP_WORDS)):
            downs = [
                (n, m)
                for n, m in mod.named_modules()
                if (w := proj_matrix(m)) is not None and w.shape[0] == D and w.shape[1] != D
            ]
            if len(downs) == 1:
                mlp, down = name, f"{name}.{downs[0][0]}"
            elif len(downs) > 1:
                problems.append(
                    f"the MLP down projection: {name} ({cls}) has {len(downs)} linear maps into "
                    f"d_model={D} ({', '.join(n for n, _ in downs)}), so which one holds the "
                    "neurons is ambiguous (a mixture of experts or a shared expert?)"
                )
                mlp = name
    if attn is None:
        problems.append(
            f"the attention output projection: no child of the block named like attention holds "
            f"a linear map from n_heads * d_head = {H * dh} to d_model = {D}"
        )
    if mlp is None:
        problems.append(
            "the MLP: no child of the block is named like an MLP / feed-forward module "
            f"(children: {', '.join(n for n, _ in children)})"
        )
    elif down is None and not problems:
        problems.append(f"the MLP down projection: no linear map into d_model={D} in {mlp}")
    if problems:
        raise LayoutError("; ".join(problems))
    return attn, o_proj, mlp, down  # type: ignore[return-value]


def _find_qkv(block: Any, attn: str) -> tuple[str, str, str] | None:
    mod = get_module(block, attn)
    names = dict(mod.named_children())
    for trio in QKV_NAMES:
        if all(n in names and proj_matrix(names[n]) is not None for n in trio):
            return tuple(f"{attn}.{n}" for n in trio)  # type: ignore[return-value]
    return None


def _trace(model: Any, ids: torch.Tensor, modules: dict[str, Any]) -> dict[str, tuple]:
    """One plain forward recording ``(first input, output)`` of the named modules."""
    seen: dict[str, tuple] = {}
    handles = []

    def hook(name: str):
        def fn(mod: Any, args: tuple, kwargs: dict, out: Any) -> None:
            x = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()), None))
            seen.setdefault(name, (x, out))

        return fn

    try:
        for name, mod in modules.items():
            handles.append(mod.register_forward_hook(hook(name), with_kwargs=True))
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    seen["__logits__"] = (None, out.logits if hasattr(out, "logits") else out[0])
    return seen


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, tuple | list) else x


def _close(a: Any, b: Any, tol: float) -> bool:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape:
        return False
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm()) <= tol * max(float(b.norm()), 1e-12)


def _tolerance(model: Any) -> float:
    dtype = next(model.parameters()).dtype
    return 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4


def _norm_kind(
    module: Any, x: torch.Tensor, y: torch.Tensor, tol: float
) -> tuple[str, float | None] | None:
    """Which frozen-scale formula reproduces ``y = norm(x)``: ``(kind, eps)``, ``eps`` None
    when the module states its own (``eps`` / ``variance_epsilon``)."""
    from .._hooks import norm_scale

    w = getattr(module, "weight", None)
    b = getattr(module, "bias", None)
    own = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    for eps in [None] if own is not None else [1e-5, 1e-6, 1e-8, 1e-12, 0.0]:
        for kind in ("layernorm", "rmsnorm", "gemma_rmsnorm"):
            xc = x - x.mean(-1, keepdim=True) if kind == "layernorm" else x
            s = norm_scale(module, x, "layernorm" if kind == "layernorm" else "rmsnorm", eps)
            ww = 1.0 if w is None else (1.0 + w.float() if kind == "gemma_rmsnorm" else w.float())
            pred = xc.float() * s * ww + (0.0 if b is None else b.float())
            if _close(pred, y, tol):
                return kind, eps
    return None


def _infer(model: Any, ids: torch.Tensor) -> tuple[_Found, dict[str, Any]]:
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise LayoutError(
            "the layout: this is an encoder-decoder model (the fallback reads "
            "decoder-only causal language models)"
        )
    dims = _dims_from_config(config)
    f = _Found()
    f.blocks = _find_blocks(model, dims["n_layers"])
    blocks = get_module(model, f.blocks)
    f.attn, f.o_proj, f.mlp, f.down = _find_in_block(blocks[0], dims)
    f.qkv = _find_qkv(blocks[0], f.attn)
    unembed = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    f.unembed = _path_of(model, unembed) if unembed is not None else None  # type: ignore[assignment]
    if not f.unembed or proj_matrix(unembed) is None:
        raise LayoutError("the unembedding: get_output_embeddings() returns no linear layer")
    embed = model.get_input_embeddings()
    f.embed = _path_of(model, embed) or ""

    # Which module feeds the unembedding, and how the block wires its sublayers: one traced
    # forward over every module outside the blocks and every direct part of block 0.
    inside = {id(m) for m in blocks.modules()}
    outside = {n: m for n, m in model.named_modules() if id(m) not in inside and n}
    b0 = {f"b0.{n}": m for n, m in blocks[0].named_modules() if n}
    b0["b0"] = blocks[0]
    last = {"last": blocks[-1]}
    seen = _trace(model, ids, {**outside, **b0, **last})
    tol = _tolerance(model)

    u_in = seen[f.unembed][0]
    h_last = _first(seen["last"][1])
    cands = [
        n
        for n, m in outside.items()
        if n in seen
        and n != f.unembed
        and not list(m.children())
        and _close(_first(seen[n][1]), u_in, tol)
        and _close(seen[n][0], h_last, tol)
    ]
    if not cands:
        raise LayoutError(
            "the final norm: no module outside the blocks maps the last block's output to the "
            f"unembedding's input ({f.unembed}); the model transforms the residual stream in a "
            "way the fallback cannot name"
        )
    f.final_norm = cands[-1]
    kind = _norm_kind(outside[f.final_norm], h_last, u_in, tol)
    if kind is None:
        raise LayoutError(
            f"the final norm: {f.final_norm} ({type(outside[f.final_norm]).__name__}) is neither "
            "a LayerNorm nor an RMSNorm of its input"
        )
    f.norm, f.eps = kind

    pre, post = seen["b0"][0], _first(seen["b0"][1])
    attn_in, attn_out = seen[f"b0.{f.attn}"][0], _first(seen[f"b0.{f.attn}"][1])
    mlp_in, mlp_out = seen[f"b0.{f.mlp}"][0], _first(seen[f"b0.{f.mlp}"][1])
    if _close(mlp_in, attn_in, tol) and _close(pre + attn_out + mlp_out, post, tol):
        f.mid = None  # parallel attention + MLP
    elif _close(pre + attn_out + mlp_out, post, tol):
        mid = pre + attn_out
        norms = [
            n[3:]
            for n, m in b0.items()
            if n != "b0"
            and n in seen
            and _name_has(type(m).__name__, NORM_WORDS)
            and _close(seen[n][0], mid, tol)
        ]
        if norms:
            f.mid = norms[0]
        elif _close(mlp_in, mid, tol):
            f.mid = f.mlp
        else:
            raise LayoutError(
                "the residual after attention: no module of the block reads "
                "resid_pre + attn_out (neither a norm nor the MLP)"
            )
    else:
        raise LayoutError(
            f"the residual additions: block 0's output is not its input plus the outputs of "
            f"{f.attn} and {f.mlp}; the block scales or normalizes the sublayer outputs before "
            "adding them (as Gemma 2 / OLMo 2 post-norms or Granite's residual_multiplier do), "
            "so per-component writes cannot be read off these modules"
        )

    embed_out = _first(seen[f.embed][1]) if f.embed in seen else None
    pos_cands = [
        n
        for n, m in outside.items()
        if isinstance(m, torch.nn.Embedding) and n != f.embed and n in seen
    ]
    for n in pos_cands:
        pos_out = _first(seen[n][1])
        if embed_out is not None and _close(embed_out + pos_out, pre, tol):
            f.pos_embed = n
    dims["d_mlp"] = proj_matrix(get_module(blocks[0], f.down)).shape[1]  # type: ignore[union-attr]
    dims["parallel_attn_mlp"] = f.mid is None
    return f, dims


# -- weights of an inferred layout -------------------------------------------------------------
def inferred_weights(model: Any, adapter: Adapter, info: Any) -> dict[str, torch.Tensor]:
    """TransformerLens-named views read through an inferred (or registered) layout: any
    ``nn.Linear`` / ``Conv1D`` output and down projections; ``W_Q`` / ``W_K`` / ``W_V`` when the
    attention has separate ``q_proj`` / ``k_proj`` / ``v_proj`` (or ``query`` / ``key`` /
    ``value``) projections."""
    H, KV, dh, D = info.n_heads, info.n_kv_heads, info.d_head, info.d_model
    out: dict[str, torch.Tensor] = {}
    for layer in range(info.n_layers):
        blk = adapter.block(model, layer)
        p = f"blocks.{layer}."
        o = get_module(blk, adapter.block_o_proj)
        out[p + "attn.W_O"] = proj_matrix(o).T.reshape(H, dh, D)  # type: ignore[union-attr]
        out[p + "attn.b_O"] = bias(o, D)
        d = get_module(blk, adapter.block_mlp_down)
        w = proj_matrix(d)
        out[p + "mlp.W_out"] = w.T  # type: ignore[union-attr]
        out[p + "mlp.b_out"] = bias(d, D)
        qkv = _find_qkv(blk, adapter.block_attn.split(".")[0])
        if qkv is not None:
            for name, path, heads in zip("QKV", qkv, (H, KV, KV), strict=True):
                lin = get_module(blk, path)
                wq = proj_matrix(lin)
                if wq is None or wq.shape[0] != heads * dh:
                    break
                out[p + f"attn.W_{name}"] = wq.reshape(heads, dh, D).transpose(1, 2)
                out[p + f"attn.b_{name}"] = bias(lin, heads * dh).view(heads, dh)
    emb = get_module(model, adapter.embed)
    norm = get_module(model, adapter.final_norm)
    lm = get_module(model, adapter.unembed)
    W_U = proj_matrix(lm)
    w = getattr(norm, "weight", None)
    out.update(
        {
            "embed.W_E": emb.weight,
            "ln_final.w": w if w is not None else torch.ones(D, dtype=W_U.dtype, device=W_U.device),  # type: ignore[union-attr]
            "ln_final.b": getattr(norm, "bias", None)
            if getattr(norm, "bias", None) is not None
            else torch.zeros(D, dtype=W_U.dtype, device=W_U.device),  # type: ignore[union-attr]
            "unembed.W_U": W_U.T,  # type: ignore[union-attr]
            "unembed.b_U": bias(lm, W_U.shape[0]),  # type: ignore[union-attr]
        }
    )
    if adapter.pos_embed:
        out["pos_embed.W_pos"] = get_module(model, adapter.pos_embed).weight
    return out


def _adapter(model: Any, f: _Found, dims: dict[str, Any]) -> Adapter:
    mt = model.config.model_type
    explanation: Any = True
    if f.qkv is None:
        explanation = (
            "no separate q/k/v projections were found (fused or unusual names), so W_Q / W_K / "
            "W_V are not known"
        )
    return Adapter(
        name=f"inferred:{mt}",
        model_types=(mt,),
        blocks=f.blocks,
        block_attn=f.attn,
        block_o_proj=f.o_proj,
        block_mlp_down=f.down,
        block_mid=f.mid,
        block_attn_out=(f.attn, 0),
        block_mlp_out=(f.mlp, None),
        embed=f.embed,
        pos_embed=f.pos_embed,
        final_norm=f.final_norm,
        unembed=f.unembed,
        norm=f.norm,
        final_norm_eps=f.eps,
        weights=inferred_weights,
        dims=lambda config, dims=dims: dict(dims),
        supports={"capture": True, "dla": True, "patching": True, "explanation": explanation},
        notes="inferred from the module tree and proven on a test input",
    )


# -- the proof ---------------------------------------------------------------------------------
def prove(model: Any, adapter: Adapter, ids: torch.Tensor) -> None:
    """Run circuitboard's capture hooks with ``adapter`` on ``ids`` and check every identity
    analyses rely on; raise :class:`LayoutError` naming the first that fails."""
    from .._attn_interface import interface_status
    from .._hooks import Recorder
    from .._run import _capture_mode, model_info

    info = model_info(model, adapter)
    tol = _tolerance(model)
    dtype = next(model.parameters()).dtype
    # Patterns: through the attention interface capture needs nothing of the layout; without
    # it they come from the attention module's eager weights, which the proof then checks.
    eager = not interface_status(model)[0]
    what = ("embed", "resid_pre", "z", "attn_out", "resid_mid", "mlp_post", "mlp_out",
            "resid_post", "scale") + (("pattern",) if eager else ())  # fmt: skip
    layers = list(range(info.n_layers))
    with torch.no_grad(), _capture_mode(model, eager=eager):
        ref = model(input_ids=ids, use_cache=False).logits
        rec = Recorder(model, adapter, info, layers, what, 1, dtype)
        try:
            rec.rows = [(0, ids.shape[1])]
            got = model(input_ids=ids, use_cache=False).logits
        except RuntimeError as err:
            if "returned no attention weights" not in str(err):
                raise
            raise LayoutError(f"the attention pattern: {err}") from None
        finally:
            rec.close()
    with torch.no_grad():
        # the checks run on CPU in float64; the model's own modules on its device and dtype
        cap = {k: v.double() for k, v in rec.store[0].items()}
        weights = {
            k: v.detach().to("cpu", torch.float64)
            for k, v in adapter.weights(model, adapter, info).items()
        }
        device = ids.device
        failures = []
        if not _close(got, ref, tol):
            failures.append("the logits with capture hooks installed differ from a plain forward")
        last = cap[f"blocks.{info.n_layers - 1}.hook_resid_post"]
        last_model = rec.store[0][f"blocks.{info.n_layers - 1}.hook_resid_post"].to(device)
        if not _close(adapter.logits_from_resid(model, last_model).cpu(), ref[0].cpu(), tol):
            failures.append(
                f"the last residual through {adapter.final_norm} and {adapter.unembed} does not "
                "reproduce the logits (the model rescales or caps them after the unembedding)"
            )
        x = last - last.mean(-1, keepdim=True) if info.norm == "layernorm" else last
        w = weights["ln_final.w"]
        w = 1 + w if info.norm == "gemma_rmsnorm" else w
        norm = get_module(model, adapter.final_norm)
        frozen = x * cap["ln_final.hook_scale"] * w + weights["ln_final.b"]
        if not _close(frozen, norm(last_model).cpu(), tol):
            failures.append(f"the frozen-scale {info.norm} formula does not reproduce "
                            f"{adapter.final_norm}")  # fmt: skip
        for layer in layers:
            p = f"blocks.{layer}."
            z, W_O = cap[p + "attn.hook_z"], weights[p + "attn.W_O"]
            heads = torch.einsum("phd,hdm->pm", z, W_O) + weights[p + "attn.b_O"]
            if not _close(heads, cap[p + "hook_attn_out"], tol):
                failures.append(
                    f"layer {layer}: per-head writes do not sum to the attention output"
                )
            mlp = cap[p + "mlp.hook_post"] @ weights[p + "mlp.W_out"] + weights[p + "mlp.b_out"]
            if not _close(mlp, cap[p + "hook_mlp_out"], tol):
                failures.append(f"layer {layer}: neurons times W_out do not give the MLP output")
            pat = cap.get(p + "attn.hook_pattern")
            n = ids.shape[1]
            rows = pat.sum(-1) if pat is not None else torch.ones(info.n_heads, n)
            if (pat is not None and pat.shape != (info.n_heads, n, n)) or not _close(
                rows, torch.ones_like(rows), tol
            ):
                failures.append(
                    f"layer {layer}: {adapter.block_attn} returns weights of shape "
                    f"{tuple(pat.shape)}, not [n_heads={info.n_heads}, {n}, {n}] rows of "
                    "probabilities"
                )
            total = cap[p + "hook_resid_pre"] + cap[p + "hook_attn_out"] + cap[p + "hook_mlp_out"]
            if not _close(total, cap[p + "hook_resid_post"], tol):
                failures.append(f"layer {layer}: resid_post is not resid_pre + attn_out + mlp_out")
    if failures:
        raise LayoutError("the proof: " + "; ".join(dict.fromkeys(failures)))


def _test_ids(model: Any) -> torch.Tensor:
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    device = model.get_input_embeddings().weight.device
    return torch.randint(3, max(vocab, 4), (1, 7), generator=g).to(device)


def layout_text(adapter: Adapter) -> str:
    """The adapter as code to paste, registering it for its model type."""
    fields = ("name", "model_types", "blocks", "block_attn", "block_o_proj", "block_mlp_down",
              "block_mid", "block_attn_out", "block_mlp_out", "embed", "pos_embed",
              "final_norm", "unembed", "norm", "final_norm_eps")  # fmt: skip
    args = ",\n".join(
        f"    {k}={getattr(adapter, k)!r}"
        for k in fields
        if getattr(adapter, k) is not None or k == "block_mid"
    ).replace("name='inferred:", "name='")
    return (
        "from circuitboard.capture.adapters import Adapter, register\n"
        "from circuitboard.capture.adapters._fallback import inferred_weights, inferred_dims\n"
        "register(Adapter(\n"
        f"{args},\n"
        "    weights=inferred_weights,\n"
        "    dims=inferred_dims,\n"
        "))"
    )


def inferred_dims(config: Any) -> dict[str, Any]:
    """Shapes from common config names (for an adapter registered from :func:`layout_text`)."""
    dims = _dims_from_config(config)
    from ._base import cfg_get

    dims["d_mlp"] = cfg_get(config, "intermediate_size", "n_inner", "ffn_dim", "d_ff", default=0)
    return dims


def infer_adapter(model: Any) -> Adapter:
    """Infer ``model``'s layout and prove it (see the module docstring); cached per model.

    Raises :class:`LayoutError` (a ValueError) naming what could not be inferred or proven.

    Examples
    --------
    >>> import warnings
    >>> from transformers import AutoConfig, AutoModelForCausalLM
    >>> cfg = AutoConfig.for_model("starcoder2", vocab_size=64, hidden_size=16,
    ...     intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
    ...     num_key_value_heads=1)
    >>> with warnings.catch_warnings(record=True) as said:  # it says what it inferred
    ...     warnings.simplefilter("always")
    ...     adapter = infer_adapter(AutoModelForCausalLM.from_config(cfg).eval())
    >>> "register(" in str(said[0].message)
    True
    >>> adapter.blocks, adapter.block_o_proj, adapter.block_mlp_down, adapter.final_norm
    ('model.layers', 'self_attn.o_proj', 'mlp.c_proj', 'model.norm')
    """
    if model in _CACHE:
        return _CACHE[model]
    was_training = model.training
    model.eval()
    try:
        ids = _test_ids(model)
        found, dims = _infer(model, ids)
        adapter = _adapter(model, found, dims)
        prove(model, adapter, ids)
    finally:
        model.train(was_training)
    _CACHE[model] = adapter
    warnings.warn(
        f"circuitboard has no adapter for model_type {model.config.model_type!r} "
        f"({type(model).__name__}); it inferred this layout and proved it on a test input "
        "(logits with hooks equal a plain forward, the last residual through the final norm "
        "and unembedding reproduces them, per-head writes sum to the attention output, neurons "
        f"times W_out to the MLP output):\n{layout_text(adapter)}\nRun the code above once "
        "to register it as an adapter (this warning then stops).",
        CircuitboardWarning,
        stacklevel=4,
    )
    return adapter
