"""Engines: where the shards of a plan run (this process, a local process pool, Ray actors).

An engine only decides where jobs run; what a job computes is the job's (a picklable
``job(model, tokenizer) -> part``) and how parts combine is the plan's. Each worker loads its
model once (from a :class:`ModelSpec`, a pickled copy of a loaded model, or nothing) and keeps
it for every job it runs. A job whose worker dies is run again on a fresh worker; an error
raised by the job itself is the caller's and propagates at once.
"""

from __future__ import annotations

import atexit
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import CircuitboardWarning
from ._spec import ModelSpec

ENGINES = ("serial", "processes", "ray")
RAY_HINT = 'pip install "circuitboard[ray]"'


@dataclass
class Loaded:
    """A model already in memory, shipped to workers by pickling (weights and all)."""

    model: Any
    tokenizer: Any

    def load(self, gpus: float | None = None) -> tuple[Any, Any]:
        import torch

        if gpus and torch.cuda.is_available():
            self.model.to("cuda")
        return self.model, self.tokenizer


@dataclass
class NoModel:
    """Jobs that need no model (they get ``model=None, tokenizer=None``)."""

    def load(self, gpus: float | None = None) -> tuple[Any, Any]:
        return None, None


# -- worker side ---------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(source: Any, gpus: float, threads: int | None) -> None:
    """Load the model once per worker process."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    _WORKER["model"], _WORKER["tokenizer"] = source.load(gpus)


@dataclass(frozen=True)
class _Packed:
    """A job pickled by value (cloudpickle): a function defined in a notebook travels too."""

    blob: bytes


def _pack(job: Any) -> Any:
    """``job`` as it travels to a process worker: cloudpickled where cloudpickle is installed
    (it comes with Ray), else as it is (plain pickle: functions travel by reference, so they
    must be importable on the worker)."""
    try:
        import cloudpickle
    except ImportError:
        return job
    return _Packed(cloudpickle.dumps(job))


def _call(job: Any) -> Any:
    if isinstance(job, _Packed):
        import pickle

        job = pickle.loads(job.blob)
    return job(_WORKER["model"], _WORKER["tokenizer"])


def _pid() -> int:
    return os.getpid()


# -- engines -------------------------------------------------------------------------------
class SerialEngine:
    """Every shard in this process, one after the other: the reference the others match."""

    name = "serial"

    def __init__(self, source: Any, *, threads: int | None = None) -> None:
        self.workers = 1
        self.model, self.tokenizer = source.load()

    def run(self, jobs: dict[int, Any], retries: int) -> Iterator[tuple[int, Any]]:
        for i in sorted(jobs):
            yield i, jobs[i](self.model, self.tokenizer)

    def close(self) -> None:
        self.model = self.tokenizer = None


_PRELOAD = [
    "torch",
    "transformers",
    "transformers.modeling_utils",  # most of what loading any model imports
]


def _mp_context(preload: Sequence[str] = ()) -> Any:
    """``forkserver`` with torch (and the modules the jobs name in ``preload``) imported once:
    workers fork from a server that imported them (a fresh worker after a crash starts in a
    fraction of a second, not the seconds an import takes) and never from this process's
    threads. ``spawn`` where there is no forkserver. The server starts on first use and keeps
    its first preload list."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([*_PRELOAD, *preload])
    return ctx


class ProcessEngine:
    """A pool of local worker processes, each with its own model."""

    name = "processes"

    def __init__(
        self,
        source: Any,
        *,
        workers: int,
        gpus: float = 0,
        threads: int | None = None,
        preload: Sequence[str] = (),
    ) -> None:
        self.source, self.workers, self.gpus, self.preload = source, workers, gpus, tuple(preload)
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self.pool = self._new_pool()

    def _new_pool(self) -> Any:
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=_mp_context(self.preload),
            initializer=_init_worker,
            initargs=(self.source, self.gpus, self.threads),
        )

    def worker_pids(self) -> list[int]:
        """Process ids of the pool's workers (started on first use)."""
        return sorted(p.pid for p in getattr(self.pool, "_processes", {}).values())

    def run(self, jobs: dict[int, Any], retries: int) -> Iterator[tuple[int, Any]]:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        pending = dict(jobs)
        attempts = dict.fromkeys(pending, 0)
        self.last_retried = 0
        if getattr(self.pool, "_broken", False):  # a warm pool that lost a worker while idle
            self.pool = self._new_pool()
        while pending:
            futures = {self.pool.submit(_call, _pack(pending[i])): i for i in sorted(pending)}
            lost: list[int] = []
            try:
                while futures:
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for fut in sorted(done, key=lambda f: futures[f]):
                        i = futures.pop(fut)
                        try:
                            result = fut.result()
                        except BrokenProcessPool:
                            lost.append(i)
                            continue
                        pending.pop(i)
                        yield i, result
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
            if lost:  # a worker died: every shard it or its pool held runs again
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = self._new_pool()
                self.last_retried += len(lost)
                for i in lost:
                    attempts[i] += 1
                    _check_attempts(i, attempts[i], retries)
                _warn_lost(lost, self.name)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(
            f'engine="ray" needs Ray, which is not installed. Install the extra: {RAY_HINT} '
            '(or use engine="processes" on one machine).'
        ) from None
    return ray


class RayEngine:
    """Ray core actors, each holding one model; joins ``ray_address`` or starts a local Ray."""

    name = "ray"

    def __init__(
        self,
        source: Any,
        *,
        workers: int | None,
        gpus: float = 0,
        threads: int | None = None,
        ray_address: str | None = None,
    ) -> None:
        ray = _import_ray()
        if not ray.is_initialized():
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
        elif ray_address not in (None, "auto"):
            ctx = ray.get_runtime_context()
            here = getattr(ctx, "gcs_address", None)
            if here and ray_address.removeprefix("ray://") != here:
                raise RuntimeError(
                    f"Ray is already connected to {here}, not ray_address={ray_address!r}; call "
                    "ray.shutdown() first, or leave ray_address out to use this cluster."
                )
        self.ray = ray
        if workers is None:  # one worker per GPU (or CPU) the cluster offers
            res = ray.cluster_resources()
            per = gpus if gpus else max(threads or 1, 1)
            have = res.get("GPU", 0) if gpus else res.get("CPU", 1)
            workers = max(1, int(have // per))
        self.workers, self.gpus, self.threads = workers, gpus, threads
        _check_fits(ray, workers, threads or 1, gpus)
        self.session = _ray_session(ray)
        self.actor_cls = ray.remote(_RayWorker)
        self.source = ray.put(source) if isinstance(source, Loaded) else source
        self.actors = [self._new_actor() for _ in range(workers)]
        try:
            # Wait for every model to load, so load errors surface here with their message.
            ray.get([a.ping.remote() for a in self.actors])
        except Exception:
            self.close()
            raise

    def _new_actor(self) -> Any:
        opts: dict[str, Any] = {"num_cpus": self.threads or 1}
        if self.gpus:
            opts["num_gpus"] = self.gpus
        return self.actor_cls.options(**opts).remote(self.source, self.gpus, self.threads)

    def worker_pids(self) -> list[int]:
        """Process ids of the actors (on their nodes)."""
        return self.ray.get([a.pid.remote() for a in self.actors])

    def run(self, jobs: dict[int, Any], retries: int) -> Iterator[tuple[int, Any]]:
        ray = self.ray
        import ray.exceptions as rex

        names = ("RayActorError", "ActorUnavailableError", "WorkerCrashedError")
        dead = tuple(getattr(rex, n) for n in names if hasattr(rex, n))
        queue = deque(sorted(jobs))
        attempts = dict.fromkeys(queue, 0)
        idle = deque(range(len(self.actors)))
        inflight: dict[Any, tuple[int, int]] = {}  # ref -> (shard, actor slot)
        self.last_retried = 0
        try:
            while queue or inflight:
                while queue and idle:
                    slot, i = idle.popleft(), queue.popleft()
                    ref = self.actors[slot].run.remote(jobs[i])
                    inflight[ref] = (i, slot)
                ready, _ = ray.wait(list(inflight), num_returns=1)
                i, slot = inflight.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except dead:
                    self.last_retried += 1
                    attempts[i] += 1
                    _check_attempts(i, attempts[i], retries)
                    _warn_lost([i], self.name)
                    self.actors[slot] = self._new_actor()
                    queue.appendleft(i)
                    idle.append(slot)
                    continue
                idle.append(slot)
                yield i, result
        except BaseException:
            for ref in inflight:
                ray.cancel(ref, force=False)
            raise

    def alive(self) -> bool:
        return self.ray.is_initialized() and _ray_session(self.ray) == self.session

    def close(self) -> None:
        if self.ray.is_initialized():
            for a in self.actors:
                self.ray.kill(a)
        self.actors = []


class _RayWorker:
    """One model per actor (decorated with ``ray.remote`` when the engine starts)."""

    def __init__(self, source: Any, gpus: float, threads: int | None) -> None:
        _init_worker(source, gpus, threads)

    def ping(self) -> bool:
        return True

    def pid(self) -> int:
        return os.getpid()

    def run(self, job: Callable[[Any, Any], Any]) -> Any:
        return _call(job)


def _check_fits(ray: Any, workers: int, cpus: float, gpus: float) -> None:
    """Refuse at once what the cluster can never hold (actors would wait for ever)."""
    have = ray.cluster_resources()
    need = {"CPU": workers * cpus, "GPU": workers * gpus}
    short = {k: v for k, v in need.items() if v and v > have.get(k, 0) + 1e-9}
    if short:
        got = {k: have.get(k, 0) for k in short}
        raise ValueError(
            f"{workers} Ray workers need {short} but the cluster has {got}; use fewer "
            "workers= (or gpus_per_worker=), or add nodes (ray start --address=...)."
        )


def _ray_session(ray: Any) -> str:
    ctx = ray.get_runtime_context()
    return f"{getattr(ctx, 'gcs_address', '')}/{ctx.get_job_id()}"


def _check_attempts(shard: int, attempts: int, retries: int) -> None:
    if attempts > retries:
        raise RuntimeError(
            f"shard {shard} lost its worker {attempts} times (retries={retries}); the workers "
            "keep dying: look for out-of-memory kills (a smaller batch_size, fewer workers) "
            "or raise retries=."
        )


def _warn_lost(shards: list[int], engine: str) -> None:
    warnings.warn(
        f"a {engine} worker died; running shard(s) {shards} again on a fresh worker (nothing "
        "it finished is lost or counted twice).",
        CircuitboardWarning,
        stacklevel=3,
    )


# -- warm workers ---------------------------------------------------------------------------
# Workers loaded from a ModelSpec are kept between calls (a notebook calling compare() again
# does not reload the model); `shutdown()` ends them. Loaded models are shipped anew each call,
# since their weights may have changed.
_WARM: dict[tuple[Any, ...], Any] = {}


def get_engine(
    engine: str,
    source: Any,
    *,
    workers: int | None,
    gpus_per_worker: float | None,
    ray_address: str | None,
    preload: Sequence[str] = (),
) -> tuple[Any, bool]:
    """An engine for ``source`` and whether the caller owns it (must close it after the run)."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not an engine; use one of {list(ENGINES)}.")
    if workers is not None and (
        not isinstance(workers, int) or isinstance(workers, bool) or workers < 1
    ):
        raise ValueError(f"workers must be a positive int or None; got {workers!r}.")
    spec = source if isinstance(source, ModelSpec) else None
    gpus = gpus_per_worker if gpus_per_worker is not None else (spec.gpus if spec else 0)
    if not isinstance(gpus, (int, float)) or isinstance(gpus, bool) or gpus < 0:
        raise ValueError(f"gpus_per_worker must be a number >= 0; got {gpus_per_worker!r}.")
    threads = spec.threads if spec else None
    if engine == "serial":
        if workers not in (None, 1):
            raise ValueError(
                f'engine="serial" runs in this process; workers={workers} needs '
                'engine="processes" or engine="ray".'
            )
        return SerialEngine(source, threads=threads), True
    if engine == "processes":
        n = workers or max(1, min(os.cpu_count() or 1, 8))
        key = ("processes", repr(spec), n, gpus)
        if key not in _WARM:
            _release("processes")  # one warm pool at a time: its workers hold memory
            eng = ProcessEngine(source, workers=n, gpus=gpus, threads=threads, preload=preload)
            if spec is None:
                return eng, True
            _WARM[key] = eng
        return _WARM[key], False
    key = ("ray", repr(spec), workers, gpus, ray_address)
    eng = _WARM.get(key)
    if eng is not None and not eng.alive():
        _WARM.pop(key)
        eng = None
    if eng is None:
        # Warm actors hold their CPUs and GPUs: free them, or the new actors may never start.
        _release("ray")
        eng = RayEngine(
            source, workers=workers, gpus=gpus, threads=threads, ray_address=ray_address
        )
        if spec is None:
            return eng, True
        _WARM[key] = eng
    return eng, False


def _release(kind: str) -> None:
    for key in [k for k in _WARM if k[0] == kind]:
        try:
            _WARM.pop(key).close()
        except Exception:  # a pool or cluster already gone
            pass


def shutdown() -> None:
    """End every warm worker (process pools and Ray actors) kept from earlier calls.

    >>> shutdown()
    """
    while _WARM:
        _, eng = _WARM.popitem()
        try:
            eng.close()
        except Exception:  # a pool or cluster already gone
            pass


atexit.register(shutdown)
