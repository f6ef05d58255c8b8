"""Frames of an attention view: other patterns of the same prompt (e.g. a probe batch at each
training step) that the view switches between when another view on the page picks one.

Live, Python switches (``AttentionView.set_attention``). A report has no kernel: it embeds
each frame as one ``fetch-frame`` reply (the state ``set_attention`` would set, uint8 codes),
thinned to every k-th frame when they do not all fit the view's share of the byte budget,
and the page switches frames itself when the followed view's trait changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import traitlets

from ._validate import index_in
from ._view import View, pack

FRAMES_SHARE = 0.5  # of a view's report budget (raw bytes) that its frames may take


def thinned(n: int, fit: int, keep: int) -> list[int]:
    """Every k-th of ``n`` frames (k the smallest step with at most ``fit`` of them, at least
    one), plus the last and ``keep``.

    >>> thinned(10, 4, 0), thinned(10, 20, 3), thinned(10, 1, 4)
    ([0, 3, 6, 9], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [0, 4, 9])
    """
    if fit >= n:
        return list(range(n))
    k = -(-n // max(fit, 1))
    return sorted({*range(0, n, k), n - 1, keep} & set(range(n)))


class AttentionFrames(View):
    """The part of :class:`AttentionView` that embeds and follows frames (see module doc)."""

    _frame = traitlets.Int(-1).tag(sync=True)  # the frame shown (-1: the view has no frames)
    # {"model": the followed view, "trait", "key": where its frame index is, "steps": a label
    # per frame (e.g. the training step)}; {} when the view follows nothing
    _follow = traitlets.Dict().tag(sync=True)

    _fetchers: ClassVar[dict[str, str]] = {"fetch-frame": "_fetch_frame"}

    def _init_frames(self) -> None:
        self._frames: Callable[[int], np.ndarray] | None = None
        self._pending_frames: list[int] | None = None

    def follow_frames(
        self,
        source: View,
        frames: Callable[[int], Any],
        steps: list[int],
        *,
        trait: str,
        key: str,
        frame: int,
    ) -> None:
        """Let a report switch this view to ``frames(i)`` when ``source.<trait>[key]`` becomes
        ``i`` (live, the caller switches with ``set_attention`` and sets ``frame``).

        ``frames(i)`` returns patterns of the shown shape ``[layers, heads, query, key]``;
        ``steps`` labels each frame (the status line names it)."""
        self._frames = frames
        self._follow = {
            "model": f"IPY_MODEL_{source.model_id}",
            "trait": trait,
            "key": key,
            "steps": [int(s) for s in steps],
        }
        self._frame = index_in("frame", frame, len(steps))

    @property
    def n_frames(self) -> int:
        return len(self._follow.get("steps", [])) if self._frames is not None else 0

    def _fetch_frame(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        if self._frames is None:
            raise ValueError("this attention view has no frames (see follow_frames).")
        p = index_in("frame", msg.get("frame"), self.n_frames)  # type: ignore[arg-type]
        return pack(frame=p, **self._frame_fields(self._frames(p)))

    def _frame_fields(self, attention: Any) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _frame_bytes(self) -> int:
        """Raw bytes of one frame's reply (its buffers), measured on the shown frame."""
        fields = self._frame_fields(self._frames(max(self._frame, 0)))  # type: ignore[misc]
        return sum(len(v["data"]) for v in fields.values() if isinstance(v, dict) and "data" in v)

    def frames_plan(self, budget_bytes: int) -> list[int]:
        """Frames a report embeds within ``FRAMES_SHARE`` of ``budget_bytes`` (raw bytes):
        all when they fit, else every k-th (always the last and the shown one)."""
        if not self.n_frames:
            return []
        fit = int(budget_bytes * FRAMES_SHARE) // max(self._frame_bytes(), 1)
        return thinned(self.n_frames, fit, max(self._frame, 0))

    def frames_requests(self, budget_bytes: int) -> list[dict[str, Any]]:
        plan = self.frames_plan(budget_bytes)
        self._pending_frames = plan if self.n_frames else None  # told by fetch-included
        return [{"kind": "fetch-frame", "frame": p} for p in plan]

    def frames_notes(self, budget_bytes: int) -> list[str]:
        plan, n = self.frames_plan(budget_bytes), self.n_frames
        if len(plan) == n:
            return []
        steps = self._follow["steps"]
        k = plan[1] - plan[0] if len(plan) > 1 else n
        return [
            f"Attention: patterns of {len(plan)} of {n} probe steps in this report (one in "
            f"every {k} from step {steps[0]}, and the last, {steps[-1]}), to fit "
            f"{FRAMES_SHARE:.0%} of the view's share of budget_bytes; clicking another step "
            "shows the nearest kept one. Raise budget_bytes in cb.report to keep them all."
        ]

    def _frames_included(self) -> list[int] | None:
        plan, self._pending_frames = self._pending_frames, None
        return plan
