"""One background thread that runs a recorder's writes in order, off the training thread."""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any


class BackgroundWriter:
    """Runs submitted jobs one at a time, in order, on a thread of its own.

    A recorded step hands its numpy work (category sums, quantized patterns) and its SQLite write
    here, so the training step does not wait for them. A job submitted with ``hold=True``
    waits for :meth:`release` (or ``HOLD_S`` seconds): the recorder releases it when the
    next step begins, so that it does not run beside the optimizer's update, whose Python
    loop needs the GIL as much as the job does (measured: the update took 3.3 ms instead of
    1.1 ms). Jobs must not run torch operations: a second thread's parallel regions would
    compete with training's, and changing the thread count from here could change
    training's results. The next :meth:`submit` or :meth:`flush` raises the error of a job
    that failed; the jobs queued after it are dropped until then. The thread starts with
    the first job, ends after ``IDLE_S`` seconds without one, and pending jobs are finished
    when the interpreter exits normally.
    """

    IDLE_S = 60.0
    HOLD_S = 0.1

    def __init__(self, name: str = "circuitboard-writer") -> None:
        self.name = name
        self._jobs: queue.Queue[Callable[[], Any] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._go = threading.Event()
        self._go.set()  # nothing held
        ref = weakref.ref(self)
        self._at_exit = lambda: (w := ref()) is not None and w.flush(raise_error=False)
        atexit.register(self._at_exit)

    def submit(self, job: Callable[[], Any], *, hold: bool = False) -> None:
        self._raise()
        with self._lock:
            if hold:
                self._go.clear()
                self._jobs.put(lambda: (self._go.wait(self.HOLD_S), job()))
            else:
                self._jobs.put(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def release(self) -> None:
        """Let held jobs run now."""
        self._go.set()

    def flush(self, *, raise_error: bool = True) -> None:
        """Wait until every submitted job has run; raise the error of one that failed."""
        self._go.set()
        self._jobs.join()
        if raise_error:
            self._raise()

    def close(self) -> None:
        """Finish the pending jobs and end the thread."""
        try:
            self.flush()
        finally:
            atexit.unregister(self._at_exit)
            with self._lock:
                thread, self._thread = self._thread, None
            if thread is not None and thread.is_alive():
                self._jobs.put(None)
                thread.join()

    def _run(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():  # a job submitted meanwhile starts no new thread
                        self._thread = None
                        return
                continue
            try:
                if job is None:
                    return
                if self._error is None:  # after a failure the rest are dropped, not run
                    job()
            except BaseException as e:  # noqa: BLE001 - handed to the training thread
                self._error = e
            finally:
                self._jobs.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(
                f"writing a recorded step failed in the background: {err!r}. The steps "
                "before it are on disk; fix the cause (e.g. free disk space) and record again."
            ) from err
