"""A toy computation for the plan protocol: the sum of squares of numbers, cut into shards.

Nothing here touches a model or the MI code, which is the point: any plan runs on any engine.
Job functions live in a module (not a test) so that process and Ray workers import them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from circuitboard.scale import Job, Plan, cut


def square_sum(model: Any, tokenizer: Any, payload: dict[str, Any]) -> int:
    """One job: the sum of its numbers' squares, and (for the tests) a way to misbehave.

    ``die_once``: a file; the first worker to see it missing creates it and dies, as a worker
    killed by the system would; ``die``: every worker that runs it dies. ``fail``: raise, as
    a bug in a job would. ``sleep``: finish late, so that parts arrive out of plan order.
    """
    if model is not None or tokenizer is not None:
        raise AssertionError("a plan run without a model hands its jobs None")
    if payload.get("die"):
        os._exit(1)
    flag = payload.get("die_once")
    if flag is not None and not Path(flag).exists():
        Path(flag).write_text(str(os.getpid()))
        os._exit(1)
    if payload.get("fail"):
        raise ValueError(f"job over {payload['numbers']} failed on purpose")
    time.sleep(payload.get("sleep", 0.0))
    return sum(x * x for x in payload["numbers"])


def save_part(part: int, path: Path) -> None:
    with open(path, "wb") as f:
        np.save(f, np.array([part], np.int64))


def load_part(path: Path) -> int:
    with open(path, "rb") as f:
        return int(np.load(f, allow_pickle=False)[0])


def squares_plan(n: int = 20, shards: int = 7, misbehave: dict[int, Any] | None = None) -> Plan:
    """The plan: ``shards`` jobs over ``range(n)``; ``misbehave`` maps a job index to extra
    payload keys (``{3: {"fail": True}}``)."""
    misbehave = misbehave or {}
    numbers = list(range(n))
    groups = cut([1] * n, shards)
    jobs = []
    for i, g in enumerate(groups):
        payload = {"numbers": [numbers[j] for j in g], **misbehave.get(i, {})}
        jobs.append(Job(square_sum, payload, size=len(g)))
    return Plan(
        "sum of squares",
        jobs,
        merge=lambda a, b: a + b,
        save=save_part,
        load=load_part,
        key={"n": n},
        unit="number",
    )


def want(n: int = 20) -> int:
    return sum(x * x for x in range(n))


def numbers(model: Any, tokenizer: Any, payload: dict[str, Any]) -> list[int]:
    """One job of the order plan: its numbers as they are, late when asked to be."""
    time.sleep(payload.get("sleep", 0.0))
    return list(payload["numbers"])


def order_plan(shards: int = 6) -> Plan:
    """Concatenation is not commutative: the merged list shows the order parts were folded
    in. Earlier jobs sleep longer, so on a pool they finish last."""
    jobs = [
        Job(numbers, {"numbers": [2 * i, 2 * i + 1], "sleep": 0.05 * (shards - i)}, size=2)
        for i in range(shards)
    ]
    return Plan("order", jobs, merge=lambda a, b: a + b)
