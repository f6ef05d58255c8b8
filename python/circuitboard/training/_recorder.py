"""`TrainingRecorder`: record a network's internals while it trains, by step and by category."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from itertools import compress
from typing import Any

import numpy as np
import torch

from .._threads import busy
from . import _probes
from ._background import BackgroundWriter
from ._categories import Masks, category_masks, select
from ._sites import is_tensor, resolve_modules, resolve_params
from ._stats import N_SUMS, STATS, RowSumBatch, finish, many_sums_later, merge
from ._store import FORMAT_VERSION, Store, pack

Key = tuple[str, str, str]  # (category, tensor, kind)


class TrainingRecorder:
    """Record outputs of named modules, parameters and the gradients of both while a model trains.

    Every ``every``-th step, per category and per tensor, the recorder keeps the KPIs of
    :data:`~circuitboard.training.STATS` (mean, mean |x|, std, max |x|, fraction zero, L2 norm),
    the same KPIs of a few kept samples (batch rows), the loss, and every ``probe_every`` steps
    the attention patterns and head scores of a fixed probe batch. Each recorded step is written
    to ``path`` (SQLite) in one transaction, by a background thread while the next step runs
    (:meth:`flush` waits for it; :meth:`run`, :meth:`close` and a step that raises wait by
    themselves): an interrupted run keeps every step it finished, a killed process at most
    loses the step being written, and a recorder opened later on the same path and trial
    continues it. Recording never changes training: statistics are read from detached tensors
    and nothing consumes random numbers.

    Parameters
    ----------
    model : torch.nn.Module
        Any PyTorch module. For a Hugging Face model with a circuitboard adapter, module names
        may be capture names (``blocks.0.hook_resid_post``, ``blocks.0.attn.hook_z``...).
    modules : list of str, optional
        Tensors to record: capture names or ``model.named_modules()`` paths (their outputs).
        Default: each block's attention output, MLP output and residual stream for
        adapter-backed models; for models with hook points (modules named ``hook_*``, as in
        TransformerLens) every hook point except attention patterns (the probes keep those);
        every leaf module otherwise. ``[]`` records none.
    params : list of str or "all", optional
        Parameters to record (values at the start of the step, gradients at its end). Default:
        every trainable parameter. ``[]`` records none.
    every : int
        Record steps whose number is a multiple of ``every``; other steps cost nothing.
    categories : callable, optional
        ``categories(batch)`` → a dict ``{name: bool mask}`` with masks ``[batch]`` (per sample)
        or ``[batch, pos]`` (per token), or an array of labels of one of those shapes. ``batch``
        is the model's first input (or ``rec.step(..., batch=...)``). Per-batch categories are
        given with ``rec.step(step, category="name")`` instead. Category ``"all"`` is always
        recorded.
    stats : sequence of str
        KPIs to keep (a subset of ``STATS``).
    grads : bool
        Record gradients of the module outputs and parameters (needs ``loss.backward()`` inside
        the step).
    probes : tensor or list of str, optional
        A fixed probe batch of token ids ``[batch, pos]`` (strings need ``tokenizer``); needs a
        model with attention patterns (an adapter-backed transformer, or modules named
        ``...attn.hook_pattern``).
    probe_every : int, optional
        Probe every this many steps (default: ``every``; must be a multiple of it).
    samples : sequence of int
        Batch rows whose per-sample KPIs (and loss) are kept.
    path : str or path, optional
        The SQLite file to write (default: a new temporary file).
    trial : str
        Name of this run inside the file; several trials in one file can be compared.
    tokenizer : optional
        Tokenizes string probes.

    Examples
    --------
    >>> import torch
    >>> import circuitboard as cb
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> rec = cb.TrainingRecorder(model, every=2)
    >>> for step in range(4):
    ...     x = torch.randn(16, 4)
    ...     with rec.step(step, category="even" if step % 4 == 0 else "odd"):
    ...         loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
    ...         rec.loss(loss)
    ...         loss.backward()
    ...     opt.step(); opt.zero_grad()
    >>> run = rec.close()
    >>> run.steps.tolist(), run.categories
    ([0, 2], ['all', 'even', 'odd'])
    """

    def __init__(
        self,
        model: Any,
        *,
        modules: Sequence[str] | None = None,
        params: Sequence[str] | str | None = None,
        every: int = 10,
        categories: Callable[[Any], Any] | None = None,
        stats: Sequence[str] = STATS,
        grads: bool = True,
        probes: Any = None,
        probe_every: int | None = None,
        samples: Sequence[int] = (0, 1, 2, 3),
        path: str | os.PathLike[str] | None = None,
        trial: str = "run",
        tokenizer: Any = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module; got {type(model).__name__}. "
                "Pass the module you train."
            )
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int; got {every!r}. Use every=1 for all.")
        bad = [s for s in stats if s not in STATS]
        if bad:
            raise ValueError(f"unknown stats {bad}; choose from {list(STATS)}.")
        if categories is not None and not callable(categories):
            raise TypeError(
                f"categories must be a function of the batch; got {type(categories).__name__}. "
                "For one category per batch use rec.step(step, category='name')."
            )
        self.model = model
        self.sites = resolve_modules(model, modules)
        self.params = resolve_params(model, params)
        self.every = every
        self.categories = categories
        self.stats = tuple(stats)
        self.grads = grads
        self.samples = [int(i) for i in samples]
        self.trial = trial
        self.probe_ids = _probe_ids(probes, tokenizer)
        self.probe_every = probe_every or every
        if self.probe_ids is not None:
            self._probe_weights = _probes.weights(self.probe_ids)
            if self.probe_every % every:
                raise ValueError(
                    f"probe_every={self.probe_every} must be a multiple of every={every} "
                    "(probes run on recorded steps)."
                )
            if not _probes.can_probe(model):
                raise ValueError(
                    f"probes need attention patterns, but {type(model).__name__} has no "
                    "circuitboard adapter and no modules named '...attn.hook_pattern'. Add "
                    "such a hook module (an nn.Identity on the pattern) or pass probes=None."
                )
        if path is None:
            path = os.path.join(tempfile.mkdtemp(prefix="circuitboard-run-"), "run.sqlite")
        self.path = os.fspath(path)
        self.store = Store(self.path)
        self._handles: list[Any] = []
        self._auto: list[Any] = []  # attach(): the persistent hooks
        self._auto_step = 0
        self._probing = False
        self._active: dict[str, Any] | None = None
        self._batch = RowSumBatch()  # the recorded tensors of the step
        self._writer = BackgroundWriter()  # the step's numpy work and its write
        self._stored_probes: list[int] = []  # steps whose patterns are not compressed yet
        self._write_meta()

    # -- public API ----------------------------------------------------------------------------

    def records(self, step: int) -> bool:
        """Whether ``step`` is recorded (a multiple of ``every``)."""
        return step % self.every == 0

    @contextlib.contextmanager
    def step(self, step: int, *, category: str | None = None, batch: Any = None) -> Iterator[None]:
        """Record the forward and backward passes run inside this block as step ``step``.

        ``category`` names the whole batch's category; ``batch`` is passed to the categories
        function (default: the model's first input). Hooks exist only inside the block and are
        removed on every exit path; a step that raises is not written.
        """
        self._writer.release()  # the last recorded step's write runs beside this step
        try:
            if not self.records(step):
                yield
                return
            try:
                self._begin(step, category, batch)
                yield
                self._end()
            finally:
                self._remove()
                self._active = None
        except BaseException:
            self._writer.flush(raise_error=False)  # every finished step is on disk now
            raise

    def attach(self, optimizer: Any, *, start: int = 0) -> TrainingRecorder:
        """Record without touching the loop: steps are counted by ``optimizer.step()``.

        A hook on the model's forward opens a recorded step (the first forward after an
        update whose step number is a multiple of ``every``); a hook before the optimizer's
        update records the parameters' gradients and writes the step; a hook after it counts
        the step (from ``start``). ``rec.loss(...)`` still logs losses. The hooks stay until
        :meth:`close` (or the end of a ``with rec:`` block); a forward that raises leaves its
        step unwritten.

        Examples
        --------
        >>> import torch
        >>> import circuitboard as cb
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 1))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> rec = cb.TrainingRecorder(model, every=2).attach(opt)
        >>> for _ in range(4):
        ...     model(torch.ones(2, 3)).sum().backward()
        ...     opt.step(); opt.zero_grad()
        >>> rec.close().steps.tolist()
        [0, 2]
        """
        self._auto_step = int(start)
        self._auto = [
            self.model.register_forward_pre_hook(self._auto_open, with_kwargs=True, prepend=True),
            optimizer.register_step_pre_hook(lambda opt, args, kwargs: self._auto_close()),
            optimizer.register_step_post_hook(lambda opt, args, kwargs: self._auto_count()),
        ]
        return self

    def _auto_open(self, mod: Any, args: tuple, kwargs: dict) -> None:
        if self._active is not None or self._probing or not self.records(self._auto_step):
            return
        self._begin(self._auto_step, None, None)
        self._on_root(mod, args, kwargs)  # hooks added now do not run for this very call

    def _auto_close(self) -> None:
        if self._active is None:
            return
        try:
            self._end()
        finally:
            self._remove()
            self._active = None

    def _auto_count(self) -> None:
        self._auto_step += 1
        self._writer.release()

    def _begin(self, step: int, category: str | None, batch: Any) -> None:
        if self.store is None:
            raise RuntimeError("this TrainingRecorder is closed; create a new one to record.")
        if self.grads and not torch.is_grad_enabled():
            raise RuntimeError(
                f"step {step}: gradients were asked for (grads=True) but gradients are disabled "
                "(torch.no_grad() or inference_mode). Record inside the training step with "
                "gradients on, or pass grads=False to record activations only."
            )
        act: dict[str, Any] = {
            "step": step,
            "category": category,
            "batch": batch,
            # KPI sums as chunks (keys, sums [len(keys), 6]), one per recorded tensor: no
            # per-key work inside the step; _collect merges them when the step is written
            "sums": [],
            "sample_sums": [],
            "later": [],  # (keys, function giving their sums), called by the writer
            "acts": False,  # whether any activation was recorded (for the gradient check)
            "loss": {},
            "sample_loss": {},
            "losses": [],  # (per-sample or per-token losses, masks) to split by category
            "probes": None,
            "masks": None,
            "grad_seen": False,
        }
        if self.probe_ids is not None and step % self.probe_every == 0:
            self._probing = True
            try:
                act["probes"] = self._probe()
            finally:
                self._probing = False
        self._active = act
        self._batch.reset()  # what a step that raised left
        self._batch.busy = busy()
        base = category or "all"
        if self.params:
            keys = [(base, name, "param") for name, _ in self.params]
            act["later"].append((keys, many_sums_later([p for _, p in self.params])))
        self._install()

    def _end(self) -> None:
        """Read what the step needs from its tensors now; the rest (numpy sums by category,
        quantized patterns, the SQLite write) runs on the writer thread while training goes
        on."""
        act = self._active
        if self.grads:
            self._check_grads(act)
            have = [(name, p.grad) for name, p in self.params if p.grad is not None]
            base = act["category"] or "all"
            if have:
                keys = [(base, name, "param_grad") for name, _ in have]
                act["later"].append((keys, many_sums_later([g for _, g in have])))
        act["tensors"] = self._batch.take()
        act["batch"] = None  # not needed past the step: do not hold the user's batch
        self._writer.submit(lambda: self._write(act), hold=True)

    def flush(self) -> None:
        """Wait until every recorded step is on disk (steps are written on a background
        thread a few milliseconds after they end; :meth:`run`, :meth:`close` and a step
        that raises wait by themselves)."""
        self._writer.flush()

    def loss(self, value: Any) -> None:
        """Log the loss of the current step: a scalar, or per-sample ``[batch]`` / per-token
        ``[batch, pos]`` losses (then split by category: each category's loss is the mean over
        its samples or tokens). NaN marks positions without a loss (e.g. the last token)."""
        act = self._active
        if act is None:
            return
        t = torch.as_tensor(value).detach().to(torch.float64, copy=True).cpu()
        if t.ndim == 0:
            key = act["category"] or "all"
            s, n = act["loss"].get(key, (0.0, 0))
            act["loss"][key] = (s + float(t), n + 1)
            return
        masks = act["masks"] or self._masks_for(None, t.shape[0])
        if t.ndim <= 2:
            act["losses"].append((t.numpy(), masks))  # split by category by the writer
            return
        for cat, mask in masks:
            x = select(t, mask)
            if x is not None:
                self._add_loss(act["loss"], cat, x)
            for i in self.samples:
                if i < t.shape[0]:
                    xi = select(t[i : i + 1], None if mask is None else mask[i : i + 1])
                    if xi is not None:
                        self._add_loss(act["sample_loss"], (i, cat), xi)

    def _loss_by_category(self, act: dict, x: np.ndarray, masks: Masks) -> None:
        """Per-sample ``[batch]`` or per-token ``[batch, pos]`` losses summed per category and
        kept sample in one vectorized step (NaN marks a position without a loss)."""
        cats, w = _mask_weights(act, masks, x.shape)
        if not cats:
            return
        valid = ~np.isnan(x)
        b = x.shape[0]
        sums = (w * np.where(valid, x, 0.0)).reshape(len(cats), b, -1).sum(2)  # [cats, batch]
        counts = (w * valid).reshape(len(cats), b, -1).sum(2)
        rows = [i for i in self.samples if i < b]
        for k, cat in enumerate(cats):
            self._sum_loss(act["loss"], cat, sums[k].sum(), counts[k].sum())
            for i in rows:
                self._sum_loss(act["sample_loss"], (i, cat), sums[k, i], counts[k, i])

    @staticmethod
    def _sum_loss(table: dict, key: Any, s: float, n: float) -> None:
        if n > 0:
            s0, n0 = table.get(key, (0.0, 0))
            table[key] = (s0 + float(s), n0 + int(n))

    @staticmethod
    def _add_loss(table: dict, key: Any, x: torch.Tensor) -> None:
        x = x[~torch.isnan(x)]  # NaN marks a position without a loss
        if x.numel():
            s, n = table.get(key, (0.0, 0))
            table[key] = (s + float(x.sum()), n + x.numel())

    def run(self) -> Any:
        """The :class:`~circuitboard.training.TrainingRun` recorded so far (read from disk)."""
        from ._run import load_training_run

        self._writer.flush()
        return load_training_run(self.path, trial=self.trial)

    def close(self) -> Any:
        """Remove every hook, finish the pending writes, compress the probe patterns stored
        while training, close the file and return the recorded run."""
        self._shut()
        return self.run()

    def __enter__(self) -> TrainingRecorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._shut()

    def _shut(self) -> None:
        self._detach()
        self._remove()
        try:
            self._writer.close()
            if self.store is not None:
                self.store.compress_probes(self.trial, self._stored_probes, "patterns")
                self._stored_probes = []
        finally:
            if self.store is not None:
                self.store.close()
                self.store = None

    def __repr__(self) -> str:
        return (
            f"TrainingRecorder({type(self.model).__name__}, {len(self.sites)} modules, "
            f"{len(self.params)} params, every={self.every}, trial={self.trial!r}, "
            f"path={self.path!r})"
        )

    # -- hooks ----------------------------------------------------------------------------------

    def _install(self) -> None:
        self._handles.append(
            self.model.register_forward_pre_hook(self._on_root, with_kwargs=True, prepend=True)
        )
        for site in self.sites:
            if site.where == "in":

                def pre(mod: Any, args: tuple, kwargs: dict, site: Any = site) -> None:
                    self._on_tensor(site.name, site.pick(args, kwargs))

                self._handles.append(site.module.register_forward_pre_hook(pre, with_kwargs=True))
            else:

                def post(mod: Any, args: tuple, out: Any, site: Any = site) -> None:
                    self._on_tensor(site.name, site.pick(args, {}, out))

                self._handles.append(site.module.register_forward_hook(post))

    def _detach(self) -> None:
        for h in self._auto:
            h.remove()
        self._auto.clear()
        self._active = None

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def hook_count(self) -> int:
        """Hooks this recorder holds right now (0 outside a recorded step unless attached)."""
        return len(self._handles) + len(self._auto)

    def _on_root(self, mod: Any, args: tuple, kwargs: dict) -> None:
        act = self._active
        batch = act["batch"]
        if batch is None:
            batch = args[0] if args else kwargs.get("input_ids", next(iter(kwargs.values()), None))
        n = batch.shape[0] if isinstance(batch, torch.Tensor) and batch.ndim else None
        act["masks"] = self._masks_for(batch, n)

    def _masks_for(self, batch: Any, n: int | None) -> Masks:
        act = self._active
        if act["category"] is not None or self.categories is None:
            return [(act["category"] or "all", None)]
        return [("all", None), *category_masks(self.categories, batch, n)]

    def _on_tensor(self, name: str, x: Any) -> None:
        act = self._active
        if act is None or not is_tensor(x):
            return
        masks = act["masks"] or [(act["category"] or "all", None)]
        self._accumulate(act, name, "act", x, masks)
        if self.grads:
            if not x.requires_grad:
                mode = "in eval() mode with " if not self.model.training else "with "
                raise RuntimeError(
                    f"step {act['step']}: gradients were asked for (grads=True) but {name!r} "
                    f"does not require grad: the model runs {mode}no trainable parameters "
                    "upstream or without autograd. Call model.train() and train it with "
                    "requires_grad parameters, or pass grads=False to record activations only."
                )
            x.register_hook(lambda g, name=name, masks=masks: self._on_grad(name, g, masks))

    def _on_grad(self, name: str, g: torch.Tensor, masks: Masks) -> None:
        act = self._active
        if act is not None:
            act["grad_seen"] = True
            self._accumulate(act, name, "grad", g, masks)

    def _accumulate(self, act: dict, name: str, kind: str, x: torch.Tensor, masks: Masks) -> None:
        # Sums per batch row, or per token when a token category lines up with the tensor,
        # reduced now; all categories and kept samples come from those rows after the step.
        lead = 0
        if x.ndim >= 1:
            lead = 1
            for _, m in masks:
                if m is not None and m.ndim == 2 and x.ndim >= 2 and x.shape[:2] == m.shape:
                    lead = 2
        self._batch.add(x, lead, (name, kind, masks))
        act["acts"] |= kind == "act"

    def _add_sums(self, act: dict) -> None:
        """The category and kept-sample sums of every tensor the step recorded, computed in
        one vectorized step per run of tensors that share masks and leading shape."""
        for tag_lists, per in act["tensors"]():
            by_masks: dict[int, tuple[Masks, list, list]] = {}
            for i, tags in enumerate(tag_lists):
                for name, kind, masks in tags:
                    _, labels, rows = by_masks.setdefault(id(masks), (masks, [], []))
                    labels.append((name, kind))
                    rows.append(i)
            for masks, labels, rows in by_masks.values():
                self._add_category_sums(act, masks, labels, per, rows)

    def _add_category_sums(
        self, act: dict, masks: Masks, labels: list, per: np.ndarray, rows: list[int]
    ) -> None:
        """Sums per category, and per kept sample, of tensors ``labels`` (name, kind) from
        the sums per batch row (or token) ``per[:, rows]`` (``per``: ``[6, tensors, *lead]``;
        a tensor reported under two names appears twice in ``rows``)."""
        if per.ndim == 2:  # 0-d tensors: only the categories without a mask
            cats = [cat for cat, mask in masks if mask is None]
            keys = [(c, name, kind) for name, kind in labels for c in cats]
            if keys:
                act["sums"].append((keys, np.repeat(per[:, rows].T, len(cats), 0)))
            return
        cats, weights = _mask_weights(act, masks, per.shape[2:])
        if not cats:
            return
        # each tensor once (usually all of them, read in place), then repeated per name
        once = sorted(set(rows))
        by_row = _row_sums_in(per if len(once) == per.shape[1] else per[:, once], weights)
        if rows != once:
            by_row = by_row[:, [once.index(r) for r in rows]]
        # by_row: [6, tensors, categories, batch]
        totals = by_row.sum(3)
        totals[4] = by_row[4].max(2)
        totals = totals.reshape(N_SUMS, -1).T  # [tensors * categories, 6]
        full = totals[:, 0] > 0  # a category with no element of a tensor gets no row
        keys = [(c, name, kind) for name, kind in labels for c in cats]
        act["sums"].append((list(compress(keys, full)), totals[full]))
        kept_rows = [i for i in self.samples if i < per.shape[2]]
        if kept_rows:
            kept = by_row[..., kept_rows].reshape(N_SUMS, -1).T  # tensor, category, kept row
            full = kept[:, 0] > 0
            keys = [(i, c, name, kind) for name, kind in labels for c in cats for i in kept_rows]
            act["sample_sums"].append((list(compress(keys, full)), kept[full]))

    def _check_grads(self, act: dict) -> None:
        if self.sites and not act["grad_seen"] and act["acts"]:
            raise RuntimeError(
                f"step {act['step']}: gradients were asked for (grads=True) but no gradient "
                "reached the recorded modules inside the step. Call loss.backward() inside "
                "`with rec.step(...)`, or pass grads=False to record activations only."
            )

    def _probe(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Head scores and patterns of the probe batch (quantized later, by the writer)."""
        pats = _probes.probe_patterns(self.model, self.probe_ids)
        return _probes.scores(pats, self._probe_weights), pats

    # -- writing --------------------------------------------------------------------------------

    def _write(self, act: dict) -> None:
        """Rows of a finished step, written in one transaction (on the writer thread)."""
        self._add_sums(act)
        act["sums"] += [(keys, sums()) for keys, sums in act["later"]]
        for x, masks in act["losses"]:
            self._loss_by_category(act, x, masks)
        probes = []
        if act["probes"] is not None:
            scores, patterns = act["probes"]
            codes = _probes.quantize(patterns)
            # deflated when the recorder closes: ~2 ms of CPU per probe step, measured,
            # that would compete with training
            probes = [
                ("scores", pack(scores)),
                ("patterns", pack({"codes": codes}, compress=False)),
            ]
            self._stored_probes.append(act["step"])
        keys, sums = _collect(act["sums"])
        sample_keys, sample_sums = _collect(act["sample_sums"])
        keys = [(None, *k) for k in keys] + sample_keys
        kpis = finish(np.concatenate([sums, sample_sums]))  # all KPIs of the step at once
        kpis[:, [s not in self.stats for s in STATS]] = np.nan  # not kept
        losses = [(c, s / n) for c, (s, n) in act["loss"].items()]
        sample_losses = [(i, c, s / n) for (i, c), (s, n) in act["sample_loss"].items()]
        if act["category"] not in (None, "all"):
            # a per-batch category is also part of "all", so every run has one full series
            keys += [(i, "all", *k[1:]) for i, *k in keys]
            kpis = np.concatenate([kpis, kpis])
            losses += [("all", v) for _, v in losses]
            sample_losses += [(i, "all", v) for i, _, v in sample_losses]
        self.store.write_step(self.trial, act["step"], keys, kpis, losses, sample_losses, probes)

    def _write_meta(self) -> None:
        meta = {
            "format_version": FORMAT_VERSION,
            "model": type(self.model).__name__,
            "modules": [s.name for s in self.sites],
            "params": [n for n, _ in self.params],
            "every": self.every,
            "probe_every": self.probe_every if self.probe_ids is not None else None,
            "stats": list(self.stats),
            "samples": self.samples,
            "grads": self.grads,
            "source": "recorder",
        }
        if self.probe_ids is not None:
            meta["probe_tokens"] = self.probe_ids.tolist()
        self.store.set_meta(self.trial, meta)


def _probe_ids(probes: Any, tokenizer: Any) -> torch.Tensor | None:
    if probes is None:
        return None
    if isinstance(probes, str):
        probes = [probes]
    if isinstance(probes, list | tuple) and probes and isinstance(probes[0], str):
        if tokenizer is None:
            raise ValueError(
                "probes are strings but no tokenizer was given; pass tokenizer=... or token "
                "ids [batch, pos]."
            )
        rows = [tokenizer(p, return_tensors="pt")["input_ids"][0] for p in probes]
        if len({len(r) for r in rows}) != 1:
            raise ValueError(
                f"probe prompts tokenize to different lengths {[len(r) for r in rows]}; pass "
                "prompts of equal token length (or token ids [batch, pos])."
            )
        return torch.stack(rows)
    ids = torch.as_tensor(probes)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.dtype.is_floating_point:
        raise ValueError(
            f"probes must be integer token ids [batch, pos] or a list of strings; got "
            f"{ids.dtype} of shape {tuple(ids.shape)}."
        )
    return ids.long()


def _mask_weights(act: dict, masks: Masks, lead_shape: tuple) -> tuple[list[str], np.ndarray]:
    """The categories whose masks line up with a tensor's leading dims ``lead_shape``
    (``[batch]`` or ``[batch, pos]``) and their masks as 0/1 weights ``[categories,
    *lead_shape]``; cached for the step, since every recorded tensor asks again."""
    cache = act.setdefault("weights", {})
    key = (id(masks), lead_shape)
    if key not in cache:
        cats, rows = [], []
        for cat, mask in masks:
            if mask is None:
                w = np.ones(lead_shape)
            else:
                m = mask.cpu().numpy()
                if len(lead_shape) < m.ndim or lead_shape[: m.ndim] != m.shape:
                    continue  # this tensor's dims do not line up with the category's mask
                w = np.broadcast_to(
                    m.reshape(m.shape + (1,) * (len(lead_shape) - m.ndim)), lead_shape
                )
            cats.append(cat)
            rows.append(w.astype(np.float64))
        cache[key] = (cats, np.stack(rows) if rows else np.zeros((0, *lead_shape)), masks)
    cats, weights, _ = cache[key]  # masks kept alive with the cache: id() stays unique
    return cats, weights


def _collect(chunks: list[tuple[list, np.ndarray]]) -> tuple[list, np.ndarray]:
    """The keys and sums ``[keys, 6]`` of a step's chunks; a key met more than once (a module
    called several times in the step, e.g. micro-batches) gets the merge of its pieces."""
    if not chunks:
        return [], np.zeros((0, N_SUMS))
    keys = [k for ks, _ in chunks for k in ks]
    sums = np.concatenate([v for _, v in chunks])
    if len(set(keys)) == len(keys):
        return keys, sums
    index: dict = {}
    out: list[np.ndarray] = []
    for k, v in zip(keys, sums, strict=True):
        j = index.get(k)
        if j is None:
            index[k] = len(out)
            out.append(v)
        else:
            out[j] = merge(out[j], v)
    return list(index), np.stack(out)


def _row_sums_in(per: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Sums ``[6, tensors, categories, batch]`` of each batch row's elements inside each
    category, from per-row ``[6, tensors, batch]`` or per-token ``[6, tensors, batch, pos]``
    sums and 0/1 ``weights`` ``[categories, batch]`` or ``[categories, batch, pos]``."""
    if per.ndim == 3:
        return per[:, :, None] * weights  # an excluded row's max |x| becomes 0
    _, k, b, t = per.shape
    # per batch row, one matrix product: [6 * tensors, pos] @ [pos, categories]
    out = np.matmul(per.reshape(-1, b, t).transpose(1, 0, 2), weights.transpose(1, 2, 0))
    out = out.transpose(1, 2, 0).reshape(N_SUMS, k, len(weights), b)
    for c, w in enumerate(weights):  # max |x| ≥ 0: excluded tokens give 0
        top = per[4] if w.all() else np.where(w > 0, per[4], 0.0)
        out[4, :, c] = top.max(-1)
    return out
