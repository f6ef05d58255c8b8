"""The base of every visual view: a shared selection and the chunk-fetch protocol."""

from __future__ import annotations

from typing import Any, ClassVar

from ipywidgets import widget_serialization
import traitlets

from ._bundle import Base
from ._link import Link


def pack(**fields: Any) -> tuple[dict[str, Any], list[bytes]]:
    """Move the bytes of encoded tensors in a reply into buffers (``data`` becomes an index).

    >>> from circuitboard.widgets import encode
    >>> fields, buffers = pack(pattern=encode([[1.0]]), layer=3)
    >>> fields["pattern"]["data"], len(buffers), fields["layer"]
    (0, 1, 3)
    """
    buffers: list[bytes] = []
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(value.get("data"), (bytes, memoryview)):
            out[key] = {**value, "data": len(buffers)}
            buffers.append(bytes(value["data"]))
        else:
            out[key] = value
    return out, buffers


class View(Base):
    """A visual view: holds a :class:`Link` and answers the browser's fetch requests.

    Subclasses register fetch handlers in ``_fetchers`` (message kind → method name). A
    handler gets the request and returns ``(reply_fields, buffers)``; the same handlers
    precompute the replies embedded in a static report (see ``export_requests``).
    """

    link = traitlets.Instance(Link).tag(sync=True, **widget_serialization)
    """The shared selection; pass the same Link to several views (or use ``cb.link``)."""
    theme = traitlets.Unicode("auto").tag(sync=True)
    """"auto" follows the host (JupyterLab, VS Code, marimo, OS); or "light" / "dark"."""

    _fetchers: ClassVar[dict[str, str]] = {}

    def __init__(self, *, link: Link | None = None, **kwargs: Any) -> None:
        super().__init__(link=link if link is not None else Link(), **kwargs)
        self.on_msg(self._on_custom_msg)

    # -- selection ---------------------------------------------------------------------
    @property
    def selection(self) -> dict[str, Any]:
        """The shared selection ``{layer, head, token, neuron, prompt}``; assign a dict to set it."""
        return self.link.selection

    @selection.setter
    def selection(self, values: dict[str, Any]) -> None:
        self.link.select(**values)

    # -- fetch protocol ------------------------------------------------------------------
    def answer(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        """Answer one fetch request (used live and by the exporter)."""
        kind = msg.get("kind")
        method = self._fetchers.get(kind) if isinstance(kind, str) else None
        if method is None:
            raise ValueError(f"{type(self).__name__} cannot answer {kind!r} requests.")
        return getattr(self, method)(msg)

    def _on_custom_msg(self, _widget: Any, msg: Any, _buffers: list[bytes]) -> None:
        if not isinstance(msg, dict) or "id" not in msg:
            return
        try:
            fields, buffers = self.answer(msg)
            self.send({"kind": "reply", "id": msg["id"], "ok": True, **fields}, buffers)
        except Exception as err:  # reported in the view, never a silent hang
            self.send({"kind": "reply", "id": msg["id"], "ok": False, "error": str(err)})

    def export_requests(self, budget_bytes: int) -> list[dict[str, Any]]:
        """Requests whose replies a static report embeds, within ``budget_bytes``."""
        return []

    def export_notes(self, budget_bytes: int) -> list[str]:
        """Lossy reductions made to fit the budget, shown in the report page."""
        return []
