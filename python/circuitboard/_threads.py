"""Small torch work on one thread."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

# read once: os.cpu_count() reads a sysfs file each call (~30 µs here), and busy() runs
# inside recorded training steps
_CORES = os.cpu_count() or 1


def busy() -> bool:
    """Whether more work is runnable than there are cores (the 1-minute load average)."""
    try:
        return os.getloadavg()[0] > _CORES
    except OSError:  # no load average on this platform
        return False


@contextlib.contextmanager
def one_thread(*, when_busy: bool = False) -> Iterator[None]:
    """Run the torch operations inside on one intra-op thread, then restore the setting.

    For the many small operations of a view (one head's softmax, a tile, a thumbnail) a second
    thread gains nothing, and when other processes hold the cores every operation waits for
    the slower thread: exporting a 527-token attention view took 9-18 s on two threads and
    1 s on one, on a loaded 2-core machine. ``when_busy``: only while the machine is
    :func:`busy`, for work that does gain from threads on an idle machine. Imports nothing:
    without torch loaded, a no-op.
    """
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else 1
    if threads == 1 or (when_busy and not busy()):
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
