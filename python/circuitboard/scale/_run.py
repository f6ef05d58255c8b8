"""Run a plan: shards on an engine, results checkpointed, merged in plan order, one progress bar."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._engines import get_engine

MANIFEST = "manifest.json"


@dataclass
class Plan:
    """Shards of one job and how their states are saved and combined.

    ``fn(model, tokenizer, payload) -> state`` computes one shard; ``merge(a, b)`` combines two
    states (applied as a left fold in plan order, whatever order the shards finished in);
    ``save(state, path)`` / ``load(path)`` write a state to a checkpoint file and back exactly.
    ``key`` describes everything the result depends on (inputs, options, model); a checkpoint
    folder made for another key is refused.
    """

    job: str
    fn: Callable[..., Any]
    payloads: list[Any]
    sizes: list[int]
    merge: Callable[[Any, Any], Any]
    save: Callable[[Any, Path], Any]
    load: Callable[[Path], Any]
    key: dict[str, Any] = field(default_factory=dict)
    unit: str = "prompt"


@dataclass
class RunInfo:
    """What the last run did: engine, workers, shards, retries, shards resumed, seconds."""

    job: str = ""
    engine: str = ""
    workers: int = 0
    shards: int = 0
    resumed: int = 0
    retried: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0


_LAST = RunInfo()


def last_run() -> RunInfo:
    """Facts about the latest sharded run in this process (e.g. shards resumed, retries).

    >>> last_run().job in ("", "compare", "top_activations", "patch", "circuit")
    True
    """
    return _LAST


def cut(sizes: list[int], shards: int) -> list[list[int]]:
    """Cut consecutive units (``sizes``: prompts per unit) into up to ``shards`` groups of
    similar total size, never empty; boundaries fall between units, never inside one.

    >>> cut([4, 4, 4, 2, 4], 2)
    [[0, 1, 2], [3, 4]]
    """
    n = len(sizes)
    shards = max(1, min(int(shards), n))
    cum = [0]
    for s in sizes:
        cum.append(cum[-1] + s)
    bounds = [0]
    for g in range(1, shards):
        j = bounds[-1] + 1
        while j < n - (shards - g) and cum[j] < cum[-1] * g / shards:
            j += 1
        bounds.append(j)
    bounds.append(n)
    return [list(range(lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def _digest(key: dict[str, Any]) -> str:
    blob = json.dumps(key, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()


class Checkpoint:
    """A folder with one file per finished shard and a manifest naming the run."""

    def __init__(self, folder: Any, plan: Plan) -> None:
        self.dir = Path(folder)
        self.plan = plan
        self.digest = _digest({"job": plan.job, "shards": len(plan.payloads), **plan.key})
        self.dir.mkdir(parents=True, exist_ok=True)
        man = self.dir / MANIFEST
        if man.is_file():
            have = json.loads(man.read_text())
            if have.get("digest") != self.digest:
                raise ValueError(
                    f"checkpoint folder {str(self.dir)!r} holds another run ({have.get('job')}, "
                    f"{have.get('shards')} shards, made with other inputs or options); use a new "
                    "folder, or delete this one to start over."
                )
        else:
            tmp = man.with_suffix(".tmp")
            tmp.write_text(
                json.dumps(
                    {"job": plan.job, "shards": len(plan.payloads), "digest": self.digest},
                    indent=1,
                )
            )
            os.replace(tmp, man)

    def path(self, i: int) -> Path:
        return self.dir / f"shard-{i:05d}.npz"

    def done(self) -> dict[int, Any]:
        """States of the shards finished before (read back exactly)."""
        return {
            i: self.plan.load(self.path(i))
            for i in range(len(self.plan.payloads))
            if self.path(i).is_file()
        }

    def write(self, i: int, state: Any) -> None:
        tmp = self.dir / f".shard-{i:05d}.tmp.npz"  # rename: a killed run never leaves half a file
        self.plan.save(state, tmp)
        os.replace(tmp, self.path(i))


def execute(
    plan: Plan,
    source: Any,
    *,
    engine: str = "serial",
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    ray_address: str | None = None,
    checkpoint: Any = None,
    progress: bool = True,
    retries: int = 3,
    engine_obj: Any = None,
) -> Any:
    """Run every shard of ``plan`` not already in ``checkpoint``; the merged state.

    States are merged as a left fold in plan order once all are in, so the result does not
    depend on which worker finished first; with the same shards every engine gives the same
    numbers.
    """
    global _LAST
    t0 = time.perf_counter()
    ckpt = Checkpoint(checkpoint, plan) if checkpoint is not None else None
    states: dict[int, Any] = ckpt.done() if ckpt is not None else {}
    resumed = len(states)
    todo = {i: p for i, p in enumerate(plan.payloads) if i not in states}
    owned = False
    eng = engine_obj
    if todo and eng is None:
        eng, owned = get_engine(
            engine,
            source,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            ray_address=ray_address,
        )
    t_start = time.perf_counter() - t0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        label = f"circuitboard {plan.job} ({engine}" + (
            f" × {eng.workers})" if eng is not None else ")"
        )
        bar = tqdm(
            total=sum(plan.sizes),
            initial=sum(plan.sizes[i] for i in states),
            desc=label,
            unit=plan.unit,
        )
    try:
        if todo:
            for i, state in eng.run(plan.fn, todo, retries):
                if i in states:  # a retried shard's second answer: counted once
                    continue
                states[i] = state
                if ckpt is not None:
                    ckpt.write(i, state)
                if bar is not None:
                    bar.update(plan.sizes[i])
    finally:
        if bar is not None:
            bar.close()
        if owned and eng is not None:
            eng.close()
    result = None
    for i in range(len(plan.payloads)):
        result = states[i] if result is None else plan.merge(result, states[i])
    _LAST = RunInfo(
        plan.job,
        engine,
        eng.workers if eng is not None else 0,
        len(plan.payloads),
        resumed,
        getattr(eng, "last_retried", 0),
        time.perf_counter() - t0,
        t_start,
    )
    return result
