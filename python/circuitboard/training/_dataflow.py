"""The data flow between recorded tensors, read from autograd's graph of one forward pass.

A recorder watches module outputs (or inputs); which of them feeds which is not in their
names for an arbitrary PyTorch module. One forward with gradients on builds autograd's graph:
each recorded tensor's ``grad_fn`` is a node of it, and walking ``next_functions`` back from
a recorded tensor until another recorded tensor is met gives the recorded tensors it is
computed from, with nothing recorded in between (a skip connection is an edge of its own).
Tensors that are one value under two names (an identity hook after another module) form a
chain in execution order. The result is stored once in the run file's meta, under
``"dataflow"``, and the training view draws it as a graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from ._flow import META_KEY, DataFlow
from ._sites import Site, is_tensor, resolve_modules


@contextlib.contextmanager
def _traced(model: Any) -> Any:
    """Eval mode (no dropout draws, no batch-norm statistics updated) with autograd on, the
    training mode restored after: the forward changes nothing the training run depends on."""
    was = model.training
    try:
        model.eval()
        with torch.enable_grad():
            yield
    finally:
        model.train(was)


def _trace(model: Any, sites: Sequence[Site], args: tuple, kwargs: dict) -> list[tuple[str, Any]]:
    """``(site name, grad_fn)`` of each recorded tensor, in execution order (None: no graph)."""
    seen: list[tuple[str, Any]] = []
    handles = []

    def note(name: str, x: Any) -> None:
        if is_tensor(x):
            seen.append((name, x.grad_fn))

    for site in sites:
        if site.where == "in":

            def pre(mod: Any, a: tuple, kw: dict, site: Site = site) -> None:
                note(site.name, site.pick(a, kw))

            handles.append(site.module.register_forward_pre_hook(pre, with_kwargs=True))
        else:

            def post(mod: Any, a: tuple, out: Any, site: Site = site) -> None:
                note(site.name, site.pick(a, {}, out))

            handles.append(site.module.register_forward_hook(post))
    try:
        with _traced(model):
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _edges(seen: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    # which recorded tensors each autograd node is (several names: one value, identity hooks)
    owners: dict[Any, list[int]] = {}
    for i, (_, fn) in enumerate(seen):
        if fn is not None:
            owners.setdefault(fn, []).append(i)
    edges: dict[tuple[str, str], None] = {}  # insertion-ordered set
    for i, (name, fn) in enumerate(seen):
        if fn is None:
            continue
        alias = owners[fn]
        at = alias.index(i)
        if at > 0:  # the same value, named earlier: the chain a → b
            edges[(seen[alias[at - 1]][0], name)] = None
            continue
        stack = [g for g, _ in fn.next_functions if g is not None]
        visited: set[Any] = set()
        while stack:
            g = stack.pop()
            if g in visited:
                continue
            visited.add(g)
            if g in owners:
                # the value's last name given before this tensor was made (else its first)
                names = [j for j in owners[g] if j < i] or owners[g][:1]
                edges[(seen[names[-1]][0], name)] = None
                continue
            stack.extend(h for h, _ in g.next_functions if h is not None)
    return [(a, b) for a, b in edges if a != b]


def dataflow(
    model: Any, *args: Any, modules: Sequence[str] | None = None, **kwargs: Any
) -> DataFlow:
    """Which recorded tensors feed which, from one forward of ``model(*args, **kwargs)``.

    ``modules`` names the tensors as :class:`TrainingRecorder` does (default: the recorder's
    default set). The forward runs in eval mode with autograd on and no backward, so the
    model, its gradients and the random number generator are left as they were.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    >>> dataflow(model, torch.ones(2, 3)).edges
    [('0', '1'), ('1', '2')]
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    return _flow(model, resolve_modules(model, modules), args, kwargs)


def _flow(model: Any, sites: Sequence[Site], args: tuple, kwargs: dict) -> DataFlow:
    seen = _trace(model, sites, args, kwargs)
    order = list(dict.fromkeys(name for name, _ in seen))
    missing = [s.name for s in sites if s.name not in order]  # not run by this forward
    return DataFlow(order + missing, _edges(seen))


def record_dataflow(recorder: Any, *args: Any, **kwargs: Any) -> DataFlow:
    """:func:`dataflow` of a recorder's model and tensors, stored in its run file once (the
    run's ``dataflow``; the training view's graph draws it). Call it before
    ``recorder.attach(...)`` or between recorded steps, with one example batch.

    Examples
    --------
    >>> import torch
    >>> import circuitboard as cb
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    >>> rec = cb.TrainingRecorder(model, every=1)
    >>> record_dataflow(rec, torch.ones(2, 3)).edges
    [('0', '1')]
    >>> with rec.step(0):
    ...     model(torch.ones(2, 3)).sum().backward()
    >>> rec.close().dataflow.edges
    [('0', '1')]
    """
    sites = getattr(recorder, "sites", None)
    if sites is None or not hasattr(recorder, "store"):
        raise TypeError(
            f"record_dataflow needs a TrainingRecorder; got {type(recorder).__name__}. For any "
            "model use circuitboard.training.dataflow(model, batch) and pass it to "
            "cb.training_view(run, dataflow=...)."
        )
    if recorder.hook_count():
        raise RuntimeError(
            "the recorder's hooks are on (inside a recorded step, or after attach()), so this "
            "forward would be recorded as a training step. Call record_dataflow before "
            "rec.attach(...) or between steps."
        )
    flow = _flow(recorder.model, sites, args, kwargs)
    recorder.store.set_meta(recorder.trial, {META_KEY: flow.to_json()})
    return flow
