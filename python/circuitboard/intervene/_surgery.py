"""`surgery`: delete, reorder or replace a model's transformer blocks for the length of a block.

Inside ``with cb.surgery(model) as s:`` the model *is* the edited model: its block list holds
the blocks that run, in order, and the config says how many there are, so every capture,
analysis, patching or generation call works unchanged. On exit (also after an exception) the
original block list, config values and per-layer indices come back; no parameter is ever
copied or written, so the weights are the same tensors before, during and after.

Conventions
-----------
- **Layer names follow the edited model.** Inside the block, ``blocks.{i}`` (and ``layer=i``
  everywhere) is the ``i``-th block that runs. :attr:`Surgery.layer_map` maps each position to
  the original layer it holds (``None`` for a replacement module), so a capture made inside can
  be read against one made outside.
- Operations compose: each one acts on the current (already edited) list, indices included.
- What is kept consistent per position: ``config.num_hidden_layers`` (the forward loops over
  ``layers[:num_hidden_layers]``), ``config.layer_types`` (sliding-window vs full attention:
  it travels with the block), and every ``layer_idx`` attribute inside a block (the KV cache is
  addressed by it), so generation with a cache works in the edited model too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from ..capture.adapters import get_adapter
from ..capture.adapters._base import get_module

_COUNT_KEYS = ("num_hidden_layers",)
"""Config attributes holding the number of blocks (GPT-2's ``n_layer`` is an alias of it)."""


def _layer_idx_owners(block: Any) -> list[tuple[Any, int]]:
    """Every submodule of ``block`` with an int ``layer_idx`` (attention, the block itself)."""
    return [
        (m, m.layer_idx)
        for m in block.modules()
        if isinstance(getattr(m, "layer_idx", None), int) and not isinstance(m.layer_idx, bool)
    ]


class Surgery:
    """The handle ``cb.surgery(model)`` yields: edits the block list (see the module).

    Attributes
    ----------
    model
        The model being edited.
    layer_map
        For each current position, the original layer index it holds, or None for a module
        put in with :meth:`replace_layer`.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.adapter = get_adapter(model)
        self._blocks = get_module(model, self.adapter.blocks)
        self._original = list(self._blocks)
        self._types = list(getattr(model.config, "layer_types", None) or []) or None
        self.layer_map: list[int | None] = list(range(len(self._original)))
        self._modules: list[Any] = list(self._original)
        self._original_types = list(self._types) if self._types is not None else None
        # id(module) -> (module, layer_idx before the surgery touched it), for every module whose
        # layer_idx is rewritten, replacement modules included.
        self._saved_idx = {id(m): (m, i) for b in self._original for m, i in _layer_idx_owners(b)}
        self._saved_cfg = {k: getattr(model.config, k) for k in _COUNT_KEYS}
        self._active = True

    @property
    def n_layers(self) -> int:
        """Blocks in the edited model."""
        return len(self._modules)

    def _check_open(self, what: str) -> None:
        if not self._active:
            raise RuntimeError(
                f"surgery.{what}() was called after the `with cb.surgery(model)` block ended; "
                "the model is restored. Edit it inside the block."
            )

    def _index(self, i: Any, what: str) -> int:
        n = self.n_layers
        if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
            raise ValueError(
                f"surgery.{what}() got layer {i!r}; the model has {n} layers now, so use ints in "
                f"[{-n}, {n - 1}] (indices count the current, already edited, layers)."
            )
        return i % n

    def delete_layers(self, layers: Sequence[int]) -> Surgery:
        """Remove these layers (current indices); the rest keep their order.

        >>> from circuitboard.testing import tiny_model
        >>> model, _ = tiny_model("llama")
        >>> with surgery(model) as s:
        ...     _ = s.delete_layers([0])
        ...     s.layer_map, model.config.num_hidden_layers
        ([1], 1)
        >>> model.config.num_hidden_layers
        2
        """
        self._check_open("delete_layers")
        drop = {self._index(i, "delete_layers") for i in layers}
        if len(drop) == self.n_layers and drop:
            raise ValueError(
                f"surgery.delete_layers({list(layers)}) would delete all {self.n_layers} layers; "
                "keep at least one (the final norm and unembedding need a block before them)."
            )
        keep = [i for i in range(self.n_layers) if i not in drop]
        return self._set(keep)

    def permute_layers(self, order: Sequence[int]) -> Surgery:
        """Run the current layers in ``order`` (a permutation of ``range(n_layers)``).

        >>> from circuitboard.testing import tiny_model
        >>> model, _ = tiny_model("llama")
        >>> with surgery(model) as s:
        ...     s.permute_layers([1, 0]).layer_map
        [1, 0]
        """
        self._check_open("permute_layers")
        idx = [self._index(i, "permute_layers") for i in order]
        if sorted(idx) != list(range(self.n_layers)):
            raise ValueError(
                f"surgery.permute_layers() needs a permutation of range({self.n_layers}) (each "
                f"current layer once); got {list(order)}. To drop layers use delete_layers()."
            )
        return self._set(idx)

    def replace_layer(self, layer: int, module: Any) -> Surgery:
        """Put ``module`` (called like a block: same arguments, same outputs) at ``layer``.

        >>> import copy
        >>> from circuitboard.testing import tiny_model
        >>> model, _ = tiny_model("llama")
        >>> twin = copy.deepcopy(model.model.layers[0])
        >>> with surgery(model) as s:
        ...     s.replace_layer(1, twin).layer_map
        [0, None]
        """
        import torch

        self._check_open("replace_layer")
        i = self._index(layer, "replace_layer")
        if not isinstance(module, torch.nn.Module):
            raise TypeError(
                f"surgery.replace_layer() needs a torch.nn.Module called like a block; got "
                f"{type(module).__name__}. Wrap a function in a Module whose forward takes and "
                "returns what the model's blocks do."
            )
        self._modules[i] = module
        self.layer_map[i] = None
        self._apply()
        return self

    def _set(self, picks: list[int]) -> Surgery:
        self._modules = [self._modules[i] for i in picks]
        self.layer_map = [self.layer_map[i] for i in picks]
        if self._types is not None:
            self._types = [self._types[i] for i in picks]
        self._apply()
        return self

    def _apply(self) -> None:
        blocks, cfg = self._blocks, self.model.config
        for _ in range(len(blocks)):
            del blocks[0]
        for i, mod in enumerate(self._modules):
            blocks.append(mod)
            for owner, old in _layer_idx_owners(mod):
                self._saved_idx.setdefault(id(owner), (owner, old))
                owner.layer_idx = i
        for k in _COUNT_KEYS:
            setattr(cfg, k, len(self._modules))
        if self._types is not None:
            cfg.layer_types = list(self._types)

    def _restore(self) -> None:
        blocks, cfg = self._blocks, self.model.config
        for _ in range(len(blocks)):
            del blocks[0]
        for mod in self._original:
            blocks.append(mod)
        for owner, idx in self._saved_idx.values():
            owner.layer_idx = idx
        for k, v in self._saved_cfg.items():
            setattr(cfg, k, v)
        if self._original_types is not None:
            cfg.layer_types = list(self._original_types)
        self._active = False


@contextlib.contextmanager
def surgery(model: Any) -> Iterator[Surgery]:
    """Edit the blocks of ``model`` for the length of a ``with`` block (delete, reorder, replace).

    Works for any model a capture adapter serves. Inside the block, layer ``i`` is the ``i``-th
    block that runs (see :attr:`Surgery.layer_map` for where it came from); every circuitboard
    call works on the edited model. The original blocks, config and layer indices come back on
    exit, also when the block raises; parameters are never copied or written.

    Parameters
    ----------
    model
        A Hugging Face model served by a capture adapter.

    Examples
    --------
    >>> import torch
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> ids = torch.tensor([tok("the store")["input_ids"]])
    >>> with surgery(model) as s:
    ...     _ = s.delete_layers([1])
    ...     short = model(input_ids=ids).logits
    >>> len(model.model.layers), bool((model(input_ids=ids).logits != short).any())
    (2, True)
    """
    s = Surgery(model)
    try:
        yield s
    finally:
        s._restore()


__all__ = ["Surgery", "surgery"]
