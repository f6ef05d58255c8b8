"""Activations for training and evaluating dictionaries: token windows from texts, a forward
stopped after the last layer needed, and splicing a dictionary's output back into the model.

The module paths come from capture's architecture adapters, imported inside the functions that
run a model (this package sits below capture and never imports it at module level).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ._hooknames import hook_layer, to_capture_name

# site -> (module path attribute of the adapter or None for the block, "in" | "out")
_READABLE = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_mlp_out")
_READABLE += ("hook_attn_out", "mlp.hook_in", "mlp.hook_post")
_WRITABLE = ("hook_resid_pre", "hook_resid_post", "hook_mlp_out", "hook_attn_out", "mlp.hook_in")


class _Stop(Exception):
    """Raised in a hook after the last layer a pass needs, to skip the rest of the model."""


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, tuple | list) else x


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    return next(v for v in kwargs.values() if isinstance(v, torch.Tensor))


def _site(model: Any, name: str) -> tuple[Any, str, int | None]:
    """``(module, "pre" | "post", tuple index)`` where capture name ``name`` lives."""
    from circuitboard.capture.adapters import get_adapter
    from circuitboard.capture.adapters._base import get_module

    adapter = get_adapter(model)
    name = to_capture_name(name)
    layer = hook_layer(name)
    site = name.split(".", 2)[2]
    n = adapter.n_blocks(model)
    if layer is None or not 0 <= layer < n:
        raise ValueError(f"hook {name!r}: the model has blocks 0..{n - 1}.")
    if site not in _READABLE:
        raise ValueError(
            f"hook {name!r}: dictionaries read one of {', '.join(_READABLE)}; got {site!r}."
        )
    blk = adapter.block(model, layer)
    if site == "hook_resid_pre":
        return blk, "pre", None
    if site == "hook_resid_post":
        return blk, "post", 0
    if site == "hook_resid_mid":
        if adapter.block_mid is None:
            raise ValueError(f"{name}: this model's blocks are parallel (no resid_mid module).")
        return get_module(blk, adapter.block_mid), "pre", None
    if site == "hook_mlp_out":
        path, idx = adapter.block_mlp_out
        return get_module(blk, path), "post", idx
    if site == "hook_attn_out":
        path, idx = adapter.block_attn_out
        return get_module(blk, path), "post", idx
    if site == "mlp.hook_post":
        return get_module(blk, adapter.block_mlp_down), "pre", None
    path, _ = adapter.block_mlp_out  # mlp.hook_in: what the MLP module receives
    return get_module(blk, path), "pre", None


def token_windows(
    tokenizer: Any, texts: Sequence[str], seq_len: int, *, max_windows: int | None = None
) -> torch.Tensor:
    """Texts tokenized, joined with the EOS token and cut into ``[n, seq_len]`` windows (the
    last partial window dropped)."""
    if not texts:
        raise ValueError("texts is empty; pass a list of strings (e.g. cb.load_corpus()).")
    eos = getattr(tokenizer, "eos_token_id", None)
    ids: list[int] = []
    need = None if max_windows is None else max_windows * seq_len
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings; got {type(text).__name__}.")
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if need is not None and len(ids) >= need:
            break
    n = len(ids) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(
            f"the texts hold {len(ids)} tokens, fewer than one window of seq_len={seq_len}; "
            "pass more text or a smaller seq_len."
        )
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


@torch.no_grad()
def run_to_hooks(
    model: Any, windows: torch.Tensor, hooks: Sequence[str], *, skip_first: int = 1
) -> dict[str, torch.Tensor]:
    """One forward of ``windows [b, t]`` stopped after the last hook needed; each hook's
    activations ``[b * (t - skip_first), d]`` in float32 (positions before ``skip_first``
    dropped: a window's first token carries the attention-sink outlier norm)."""
    got: dict[str, torch.Tensor] = {}
    handles = []
    names = [to_capture_name(h) for h in hooks]
    sites = [_site(model, h) for h in names]
    try:
        for name, (mod, when, idx) in zip(names, sites, strict=True):

            def keep(x: torch.Tensor, name: str = name) -> None:
                got[name] = x[:, skip_first:].reshape(-1, x.shape[-1]).float()
                if len(got) == len(names):
                    raise _Stop  # nothing after this point is needed

            if when == "pre":
                handles.append(
                    mod.register_forward_pre_hook(
                        lambda m, a, kw, keep=keep: keep(_hidden(a, kw)), with_kwargs=True
                    )
                )
            else:
                handles.append(
                    mod.register_forward_hook(
                        lambda m, a, out, keep=keep, idx=idx: keep(
                            out[idx] if idx is not None and isinstance(out, tuple) else _first(out)
                        )
                    )
                )
        device = next(model.parameters()).device
        with contextlib.suppress(_Stop):
            model(input_ids=windows.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in got]
    if missing:
        raise RuntimeError(f"the forward never reached hooks {missing}; check the hook names.")
    return got


@contextlib.contextmanager
def splice(model: Any, hook: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the block, the activation at ``hook`` is replaced by ``fn(activation)`` (same
    shape), e.g. a dictionary's reconstruction, or zeros."""
    name = to_capture_name(hook)
    site = name.split(".", 2)[2]
    if site not in _WRITABLE:
        raise ValueError(
            f"cannot splice at {name!r}: replacing {site} would not change what the rest of the "
            f"model reads (see INTERVENTIONS: resid_mid). Splice at one of {', '.join(_WRITABLE)}."
        )
    mod, when, idx = _site(model, name)
    if when == "pre":

        def pre(m: Any, args: tuple, kwargs: dict) -> Any:
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
            return args, {**kwargs, key: fn(kwargs[key])}

        handle = mod.register_forward_pre_hook(pre, with_kwargs=True)
    else:

        def post(m: Any, args: tuple, out: Any) -> Any:
            if isinstance(out, tuple):
                i = 0 if idx is None else idx
                return (*out[:i], fn(out[i]), *out[i + 1 :])
            return fn(out)

        handle = mod.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()
