"""The plan protocol: a list of picklable jobs, run on an engine, merged in plan order.

A *job* is a picklable callable ``job(model, tokenizer) -> part``: it runs on a worker that
loaded the model once (from a :class:`ModelSpec`, a shipped copy of a loaded model, or nothing
at all). A :class:`Plan` is the list of jobs, the ``merge`` that folds their parts in plan
order, and (for checkpoints) how a part is saved and read back. :func:`run_plan` runs it on any
engine; the engines know nothing of what the jobs compute. Each computation (compare, top
activations, patching, circuits) builds its own plan next to its math.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._engines import Loaded, NoModel, get_engine
from ._spec import ModelSpec

MANIFEST = "manifest.json"
_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Job:
    """One unit of work: ``fn(model, tokenizer, payload)`` on a worker.

    ``payload`` must be picklable; ``fn`` travels by value where cloudpickle is installed (it
    comes with Ray), else it must be importable on the workers (a module-level function).
    ``size`` counts what the progress bar counts (prompts, pairs, texts); ``key`` names the
    job's checkpoint file (default: its position in the plan).

    >>> def square_sum(model, tokenizer, numbers):
    ...     return sum(x * x for x in numbers)
    >>> job = Job(square_sum, [1, 2, 3], size=3)
    >>> job(None, None)
    14
    """

    fn: Callable[[Any, Any, Any], Any]
    payload: Any = None
    size: int = 1
    key: str | None = None

    def __call__(self, model: Any, tokenizer: Any) -> Any:
        return self.fn(model, tokenizer, self.payload)


@dataclass
class Plan:
    """Jobs of one computation, how their parts combine, and how a part is checkpointed.

    Parameters
    ----------
    name
        What is computed (``"compare"``, ``"patch"``, ...): the progress bar's label and
        :attr:`RunInfo.job`.
    jobs
        :class:`Job` objects (or any picklable ``job(model, tokenizer)`` callable with a
        ``size``), in plan order.
    merge
        ``merge(a, b) -> part``, applied as a left fold in plan order (each part as soon as
        the ones before it are in), whichever worker finished first; so every engine gives the
        same result.
    save, load
        ``save(part, path)`` / ``load(path) -> part`` write a part to one checkpoint file and
        read it back exactly (needed only with ``checkpoint=``).
    key
        Everything the result depends on (inputs, options, model); a checkpoint folder written
        for another key is refused.
    unit
        What ``Job.size`` counts, for the progress bar.

    Examples
    --------
    A new computation owns its jobs and merge next to its math. The sum of squares of many
    numbers, cut into shards: each job sums its shard, the merge adds the partial sums.

    >>> def square_sum(model, tokenizer, numbers):  # one job's math (on a worker)
    ...     return sum(x * x for x in numbers)
    >>> numbers = list(range(10))
    >>> shards = cut([1] * len(numbers), 3)  # consecutive groups of similar size
    >>> plan = Plan(
    ...     "sum of squares",
    ...     [Job(square_sum, [numbers[i] for i in g], size=len(g)) for g in shards],
    ...     merge=lambda a, b: a + b,
    ... )
    >>> run_plan(plan, progress=False)
    285
    >>> last_run().shards, last_run().engine
    (3, 'serial')
    """

    name: str
    jobs: list[Any]
    merge: Callable[[Any, Any], Any]
    save: Callable[[Any, Path], Any] | None = None
    load: Callable[[Path], Any] | None = None
    key: dict[str, Any] = field(default_factory=dict)
    unit: str = "item"

    def sizes(self) -> list[int]:
        return [int(getattr(j, "size", 1)) for j in self.jobs]

    def keys(self) -> list[str]:
        """Each job's checkpoint key (its position when it names none), checked unique."""
        keys = []
        for i, j in enumerate(self.jobs):
            k = getattr(j, "key", None)
            k = f"{i:05d}" if k is None else str(k)
            if not _KEY.match(k):
                raise ValueError(
                    f"job {i} of plan {self.name!r} has checkpoint key {k!r}; use letters, "
                    "digits, '_', '-' and '.' only (it names a file)."
                )
            keys.append(k)
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise ValueError(
                f"plan {self.name!r} has jobs sharing checkpoint keys {dup}; give every job "
                "its own key (or none: its position in the plan)."
            )
        return keys


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
    """Facts about the latest plan run in this process (e.g. shards resumed, retries).

    >>> isinstance(last_run().job, str)
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


def digest(obj: Any) -> str:
    """A stable hash of ``obj`` (JSON, ``repr`` for the rest): for a plan's ``key``.

    >>> digest({"b": 1, "a": [2]}) == digest({"a": [2], "b": 1})
    True
    """
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()


class Checkpoint:
    """A folder with one file per finished job and a manifest naming the run."""

    def __init__(self, folder: Any, plan: Plan) -> None:
        if plan.save is None or plan.load is None:
            raise ValueError(
                f"plan {plan.name!r} has no save/load, so it cannot be checkpointed; give the "
                "Plan save= and load=, or leave checkpoint= out."
            )
        self.dir = Path(folder)
        self.plan = plan
        self.keys = plan.keys()
        self.digest = digest({"job": plan.name, "shards": len(plan.jobs), **plan.key})
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
                    {"job": plan.name, "shards": len(plan.jobs), "digest": self.digest}, indent=1
                )
            )
            os.replace(tmp, man)

    def path(self, i: int) -> Path:
        return self.dir / f"shard-{self.keys[i]}.npz"

    def done(self) -> dict[int, Any]:
        """Parts of the jobs finished before (read back exactly)."""
        load = self.plan.load
        return {i: load(self.path(i)) for i in range(len(self.keys)) if self.path(i).is_file()}

    def write(self, i: int, part: Any) -> None:
        tmp = self.dir / f".shard-{self.keys[i]}.tmp.npz"  # a killed run never leaves half a file
        self.plan.save(part, tmp)
        os.replace(tmp, self.path(i))


def model_source(model: Any, tokenizer: Any, what: str) -> Any:
    """What workers load their model from: a :class:`ModelSpec` (each worker loads its own) or
    a loaded ``(model, tokenizer)`` shipped to them; refused with the fix otherwise.

    >>> model_source(ModelSpec("default"), None, "my job")
    ModelSpec('default')
    """
    if isinstance(model, (ModelSpec, Loaded, NoModel)):
        if tokenizer is not None:
            raise ValueError(
                f"{what}: with a ModelSpec, pass tokenizer=None; each worker loads the spec's "
                "own tokenizer (set ModelSpec(..., tokenizer=...) for a different one)."
            )
        return model
    if isinstance(model, str):
        raise TypeError(
            f"{what}: model is the string {model!r}; wrap it: cb.ModelSpec({model!r}) so that "
            "workers load it, or pass a loaded model and its tokenizer."
        )
    if tokenizer is None:
        raise ValueError(
            f"{what}: tokenizer is None; pass the model's tokenizer, or pass "
            "cb.ModelSpec(name_or_path) as the model so that each worker loads both."
        )
    return Loaded(model, tokenizer)


def describe_source(source: Any) -> str:
    """What a checkpoint remembers of the model: the spec, or a loaded model's fingerprint
    (so a checkpoint of other weights is not resumed by mistake)."""
    if isinstance(source, (ModelSpec, NoModel)):
        return repr(source)
    m = source.model
    params = list(m.parameters())
    n = sum(p.numel() for p in params)
    tip = [float(p.detach().double().sum()) for p in (params[0], params[-1])] if params else []
    name = getattr(getattr(m, "config", None), "_name_or_path", "")
    return f"{type(m).__name__}({name!r}, {n} parameters, {tip})"


class Engine:
    """An open engine: workers holding the model, ready to run plans (see :func:`open_engine`).

    ``name`` is ``"serial"``, ``"processes"`` or ``"ray"``; ``workers`` how many run at once.
    """

    def __init__(self, impl: Any, source: Any) -> None:
        self.impl, self.source = impl, source
        self.name: str = impl.name
        self.workers: int = impl.workers

    def shards(self, shards: int | None) -> int:
        """``shards`` checked, or the default for this engine (1 serially, else 4 per worker)."""
        if shards is None:
            return 1 if self.name == "serial" else 4 * self.workers
        if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
            raise ValueError(f"shards must be a positive int or None; got {shards!r}.")
        return shards

    def __repr__(self) -> str:
        return f"Engine({self.name!r}, workers={self.workers})"


@contextmanager
def open_engine(
    model: Any = None,
    tokenizer: Any = None,
    *,
    engine: str = "serial",
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    ray_address: str | None = None,
    preload: Sequence[str] = (),
    what: str = "run_plan",
) -> Iterator[Engine]:
    """Workers that hold ``model``, for several plans in a row; closed on exit.

    ``preload`` names modules every process worker imports before its first job (the module of
    the job functions, so that a replacement worker starts at once). Workers loaded from a
    :class:`ModelSpec` stay warm after the block (a later call with the
    same spec reuses them; :func:`shutdown` ends them); a shipped model's workers end with it.

    >>> with open_engine(engine="serial") as eng:
    ...     eng.name, eng.workers, eng.shards(None)
    ('serial', 1, 1)
    """
    source = (
        NoModel() if model is None and tokenizer is None else model_source(model, tokenizer, what)
    )
    impl, owned = get_engine(
        engine,
        source,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        ray_address=ray_address,
        preload=preload,
    )
    try:
        yield Engine(impl, source)
    finally:
        if owned:
            impl.close()


@dataclass(frozen=True)
class Sharding:
    """How a computation's plan runs: the engine and its workers, the shards, the checkpoint.

    What ``engine=``, ``workers=``, ``gpus_per_worker=``, ``shards=``, ``checkpoint=`` and
    ``ray_address=`` of :func:`circuitboard.compare` (and the other sharded computations) say,
    carried as one value from the public function to the module that builds its plan.

    >>> def square_sum(model, tokenizer, numbers):
    ...     return sum(x * x for x in numbers)
    >>> run = Sharding(shards=2)
    >>> with run.open(None, __name__, "sum of squares") as eng:
    ...     groups = cut([1] * 4, eng.shards(run.shards))
    ...     jobs = [Job(square_sum, [g + 1 for g in group], size=len(group)) for group in groups]
    ...     run.run(Plan("sum of squares", jobs, merge=lambda a, b: a + b), eng, progress=False)
    30
    """

    engine: str = "serial"
    workers: int | None = None
    gpus_per_worker: float | None = None
    shards: int | None = None
    checkpoint: Any = None
    ray_address: str | None = None

    def open(self, source: Any, module: str, what: str) -> Any:
        """:func:`open_engine` on ``source`` (a :func:`model_source`, or None); every process
        worker imports ``module`` (the one that holds the job functions) before its first job."""
        return open_engine(
            source,
            engine=self.engine,
            workers=self.workers,
            gpus_per_worker=self.gpus_per_worker,
            ray_address=self.ray_address,
            preload=[module],
            what=what,
        )

    def run(self, plan: Plan, eng: Engine, *, progress: bool) -> Any:
        """:func:`run_plan` of ``plan`` on the open ``eng``, checkpointed where asked."""
        return run_plan(plan, engine=eng, checkpoint=self.checkpoint, progress=progress)


def plan_key(source: Any, inputs: Any, options: dict[str, Any], **more: Any) -> dict[str, Any]:
    """A plan's ``key``: the model (:func:`describe_source`), a :func:`digest` of the inputs,
    the options, and anything ``more`` the result depends on."""
    return {
        "model": describe_source(source),
        "inputs": digest(inputs),
        "options": repr(sorted(options.items())),
        **more,
    }


class _InOrder:
    """The left fold of the parts in plan order, done as soon as the next part is in: only the
    parts that arrived early wait in memory, and the result is the same whatever the order."""

    def __init__(self, merge: Callable[[Any, Any], Any]) -> None:
        self.merge = merge
        self.done: set[int] = set()
        self.waiting: dict[int, Any] = {}
        self.next = 0
        self.result: Any = None

    def add(self, i: int, part: Any) -> bool:
        """Take job ``i``'s part; False if it came before (a retried job answering twice)."""
        if i in self.done:
            return False
        self.done.add(i)
        self.waiting[i] = part
        while self.next in self.waiting:
            nxt = self.waiting.pop(self.next)
            self.result = nxt if self.next == 0 else self.merge(self.result, nxt)
            self.next += 1
        return True


def run_plan(
    plan: Plan,
    model: Any = None,
    tokenizer: Any = None,
    *,
    engine: str | Engine = "serial",
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    ray_address: str | None = None,
    checkpoint: Any = None,
    progress: bool = True,
    retries: int = 3,
) -> Any:
    """Run every job of ``plan`` not already in ``checkpoint``; the parts merged in plan order.

    Parameters
    ----------
    plan
        The jobs, their merge and how a part is saved (:class:`Plan`).
    model, tokenizer
        What every worker loads once and hands to each job: a :class:`ModelSpec` (with
        ``tokenizer=None``), a loaded model and its tokenizer (shipped to the workers), or
        nothing (``None``: jobs get ``None``). Ignored when ``engine`` is an open :class:`Engine`.
    engine
        ``"serial"`` (this process), ``"processes"`` (a local pool), ``"ray"``, or an engine
        from :func:`open_engine` (its workers already hold the model).
    workers, gpus_per_worker, ray_address
        How many workers, the GPUs each holds, which Ray cluster to join.
    checkpoint
        A folder: each finished job's part is written there, and a run with the same plan
        resumes from it, running only the jobs missing.
    progress
        One progress bar over the jobs' sizes.
    retries
        How often a job may lose its worker (killed, out of memory) before the run fails; an
        error raised by a job itself propagates at once.

    Returns
    -------
    The merged part: ``merge(...merge(merge(p0, p1), p2)..., pN)``, the same on every engine.

    Examples
    --------
    >>> def count_words(model, tokenizer, texts):
    ...     return sum(len(t.split()) for t in texts)
    >>> texts = ["a b", "c", "d e f", "g"]
    >>> plan = Plan("words", [Job(count_words, texts[:2]), Job(count_words, texts[2:])],
    ...             merge=lambda a, b: a + b)
    >>> run_plan(plan, engine="serial", progress=False)
    7

    Jobs that run the model get it from their worker (loaded once per worker; here a tiny
    model, shipped to two worker processes). Lists concatenate in plan order, so the parts
    come back as one pass would give them:

    >>> import torch
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> def last_logit_max(model, tokenizer, texts):  # one job's math
    ...     with torch.no_grad():
    ...         runs = [model(**tokenizer(t, return_tensors="pt")) for t in texts]
    ...     return [float(r.logits[0, -1].max()) for r in runs]
    >>> texts = ["the store", "a drink", "When Mary", "John went"]
    >>> jobs = [Job(last_logit_max, texts[i : i + 2], size=2) for i in (0, 2)]
    >>> plan = Plan("last logits", jobs, merge=lambda a, b: a + b, unit="text")
    >>> got = run_plan(plan, model, tok, engine="processes", workers=2, progress=False)
    >>> here = last_logit_max(model, tok, texts)  # equal up to the thread count's float order
    >>> all(abs(a - b) < 1e-5 for a, b in zip(got, here, strict=True)) and len(got) == 4
    True
    """
    global _LAST
    if not plan.jobs:
        raise ValueError(f"plan {plan.name!r} has no jobs; give it at least one.")
    t0 = time.perf_counter()
    ckpt = Checkpoint(checkpoint, plan) if checkpoint is not None else None
    fold = _InOrder(plan.merge)
    for i, part in (ckpt.done() if ckpt is not None else {}).items():
        fold.add(i, part)
    resumed = len(fold.done)
    todo = {i: j for i, j in enumerate(plan.jobs) if i not in fold.done}
    sizes = plan.sizes()
    opened = None
    eng = engine if isinstance(engine, Engine) else None
    if todo and eng is None:
        opened = open_engine(
            model,
            tokenizer,
            engine=str(engine),
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            ray_address=ray_address,
            what=plan.name,
        )
        eng = opened.__enter__()
    name = eng.name if eng is not None else str(engine)
    t_start = time.perf_counter() - t0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        label = f"circuitboard {plan.name} ({name}" + (
            f" × {eng.workers})" if eng is not None else ")"
        )
        bar = tqdm(
            total=sum(sizes), initial=sum(sizes[i] for i in fold.done), desc=label, unit=plan.unit
        )
    try:
        if todo:
            for i, part in eng.impl.run(todo, retries):
                if not fold.add(i, part):  # a retried job's second answer: counted once
                    continue
                if ckpt is not None:
                    ckpt.write(i, part)
                if bar is not None:
                    bar.update(sizes[i])
    finally:
        if bar is not None:
            bar.close()
        if opened is not None:
            opened.__exit__(None, None, None)
    _LAST = RunInfo(
        plan.name,
        name,
        eng.workers if eng is not None else 0,
        len(plan.jobs),
        resumed,
        getattr(eng.impl, "last_retried", 0) if eng is not None else 0,
        time.perf_counter() - t0,
        t_start,
    )
    return fold.result
