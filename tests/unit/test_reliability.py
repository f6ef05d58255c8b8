"""Kernel traffic limits: fetch replies stay under the 10 MiB message cap or fail clearly."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

import circuitboard as cb
from circuitboard.widgets._view import MAX_REPLY_BYTES, View, pack


class Huge(View):
    _fetchers: ClassVar[dict[str, str]] = {"fetch-huge": "_fetch_huge"}

    def _fetch_huge(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        return pack(blob={"data": bytes(msg["n"])})


def sent(view: View, msg: dict[str, Any]) -> list[tuple[dict[str, Any], list[bytes]]]:
    out: list[tuple[dict[str, Any], list[bytes]]] = []
    view.send = lambda content, buffers=None: out.append((content, buffers or []))  # type: ignore[method-assign]
    view._on_custom_msg(view, msg, [])
    return out


def test_reply_over_the_message_cap_is_an_error_the_view_shows():
    ((reply, buffers),) = sent(Huge(), {"kind": "fetch-huge", "id": 7, "n": MAX_REPLY_BYTES + 1})
    assert reply["ok"] is False and reply["id"] == 7 and buffers == []
    assert "above the 10 MiB message limit" in reply["error"]
    assert "websocket_max_message_size" in reply["error"]


def test_reply_at_the_cap_is_sent():
    ((reply, buffers),) = sent(Huge(), {"kind": "fetch-huge", "id": 1, "n": MAX_REPLY_BYTES})
    assert reply["ok"] is True and len(buffers[0]) == MAX_REPLY_BYTES


def test_unknown_request_kind_is_answered_not_hung():
    view = cb.AttentionView(np.full((1, 1, 2, 2), 0.5), ["a", "b"])
    ((reply, _),) = sent(view, {"kind": "fetch-nothing", "id": 3})
    assert reply["ok"] is False and "cannot answer 'fetch-nothing'" in reply["error"]


def test_attention_head_at_4096_tokens_fits_one_message():
    n = 4096
    att = np.zeros((1, 1, n, n), dtype=np.float32)
    att[..., np.arange(n), np.arange(n)] = 1.0  # causal: the diagonal
    view = cb.AttentionView(att, ["t"] * n)
    ((reply, buffers),) = sent(view, {"kind": "fetch-head", "id": 1, "layer": 0, "head": 0})
    assert reply["ok"] is True, reply.get("error")
    size = sum(len(b) for b in buffers)
    assert size == n * (n + 1) // 2  # tril-packed uint8
    assert size < MAX_REPLY_BYTES
