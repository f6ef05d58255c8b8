"""The base of every visual view: a shared selection and the chunk-fetch protocol."""

from __future__ import annotations

import math
import os
from concurrent.futures import Future
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import traitlets
from ipywidgets import widget_serialization

from .._threads import one_thread
from ._bundle import Base
from ._codec import encode, to_numpy
from ._link import SELECTION_KEYS, Link

_MIRRORED = (*SELECTION_KEYS, "hover_token")


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) as ``None``: JSON has no NaN, and a
    browser's ``JSON.parse`` rejects the whole message if one slips in.

    >>> json_safe({"v": [1.0, float("nan"), float("inf")], "n": 2})
    {'v': [1.0, None, None], 'n': 2}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def image_state(image: Any) -> dict[str, Any]:
    """The patch grid a view draws for an image capture: grid, patch side and the pixels
    (``[C, H, W]`` in [0, 1], 8-bit); ``{}`` for a text capture (``image`` None).

    >>> import numpy as np
    >>> state = image_state({"grid": [2, 2], "patch": 4, "pixels": np.zeros((1, 8, 8))})
    >>> state["grid"], state["pixels"]["shape"]
    ([2, 2], [1, 8, 8])
    """
    if not image:
        return {}
    return {
        "grid": [int(g) for g in image["grid"]],
        "patch": int(image["patch"]),
        "pixels": encode(to_numpy(image["pixels"]).astype(np.float32), "uint8"),
    }


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
            out[key] = json_safe(value)
    return out, buffers


MAX_REPLY_BYTES = 10 * 1024 * 1024
"""Largest fetch reply: Jupyter servers drop websocket messages above 10 MiB by default."""


def check_reply_size(msg: dict[str, Any], buffers: list[bytes]) -> None:
    """Refuse a reply the message cap would drop (the view shows the error instead of hanging).

    >>> check_reply_size({"kind": "fetch-head"}, [bytes(MAX_REPLY_BYTES + 1)])
    Traceback (most recent call last):
    ...
    ValueError: the fetch-head reply is 10.0 MiB, above the 10 MiB message limit ...
    """
    size = sum(len(b) for b in buffers)
    if size > MAX_REPLY_BYTES:
        raise ValueError(
            f"the {msg.get('kind')} reply is {size / 2**20:.1f} MiB, above the 10 MiB message "
            "limit of Jupyter servers; view fewer tokens (a shorter prompt) or a saved report "
            "(cb.report), or raise the server's limit (ServerApp.tornado_settings "
            "websocket_max_message_size)."
        )


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

    provenance = traitlets.Dict().tag(sync=True)
    """Where the numbers came from (model, weights hash, dtype, versions, prompt, tensor hash);
    set by the ``cb.*`` shortcuts that build a view from a capture. Reports show it."""

    _sel = traitlets.Dict().tag(sync=True)  # the link mirrored, only where the host isolates cells

    _fetchers: ClassVar[dict[str, str]] = {}

    def __init__(self, *, link: Link | None = None, **kwargs: Any) -> None:
        super().__init__(link=link if link is not None else Link(), **kwargs)
        self._via_kernel = False
        self._figures: dict[int, tuple[Future, Path]] = {}
        self._next_figure = 1
        self.on_msg(self._on_custom_msg)
        self.observe(self._on_sel, names="_sel")
        self.observe(self._on_link_swap, names="link")

    # -- linking through the kernel (hosts that cannot share a model between cells) ---------
    def _start_mirror(self) -> None:
        """Mirror the link into ``_sel`` and back (the browser asked: it cannot reach the link)."""
        if not self._via_kernel:
            self._via_kernel = True
            self.link.observe(self._push_sel, names=list(_MIRRORED))
        self._push_sel()

    def _push_sel(self, _change: Any = None) -> None:
        self._sel = {k: getattr(self.link, k) for k in _MIRRORED}

    def _on_sel(self, change: Any) -> None:
        values = change["new"] or {}
        with self.link.hold_sync():
            for k in _MIRRORED:
                if k in values and getattr(self.link, k) != values[k]:
                    v = values[k]
                    # the dictionary of a feature selection is a hook name, the rest ints
                    setattr(self.link, k, v if v is None or k == "dictionary" else int(v))

    def _on_link_swap(self, change: Any) -> None:
        if self._via_kernel:
            if change["old"] is not None:
                change["old"].unobserve(self._push_sel, names=list(_MIRRORED))
            change["new"].observe(self._push_sel, names=list(_MIRRORED))
            self._push_sel()

    # -- selection ---------------------------------------------------------------------
    @property
    def selection(self) -> dict[str, Any]:
        """The shared selection ``{layer, head, token, neuron, prompt}``; assign a dict to set."""
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
        with one_thread():  # small work: a second thread only waits (see one_thread)
            return getattr(self, method)(msg)

    def _on_custom_msg(self, _widget: Any, msg: Any, buffers: list[bytes]) -> None:
        if not isinstance(msg, dict):
            return
        if msg.get("kind") == "link-fallback":
            self._start_mirror()
            return
        if msg.get("kind") == "figure-reply":
            self._on_figure_reply(msg, buffers)
            return
        if "id" not in msg:
            return
        try:
            fields, buffers = self.answer(msg)
            check_reply_size(msg, buffers)
            self.send({"kind": "reply", "id": msg["id"], "ok": True, **fields}, buffers)
        except Exception as err:  # reported in the view, never a silent hang
            self.send({"kind": "reply", "id": msg["id"], "ok": False, "error": str(err)})

    def export_requests(self, budget_bytes: int) -> list[dict[str, Any]]:
        """Requests whose replies a static report embeds, within ``budget_bytes``."""
        return []

    def export_notes(self, budget_bytes: int) -> list[str]:
        """Lossy reductions made to fit the budget, shown in the report page."""
        return []

    def export_pointers(self) -> list[dict[str, int]]:
        """Selections this view offers to click (``{"layer", "head"}`` or ``{"layer",
        "neuron"}``): a report keeps them openable in the other views of the page."""
        return []

    def export_wanted(self, pointers: list[dict[str, int]]) -> None:
        """Told, before ``export_requests``, what the page's other views point to."""

    # -- figures ---------------------------------------------------------------------------
    def save_png(
        self,
        path: str | os.PathLike[str],
        *,
        scale: float = 2.0,
        theme: str | None = None,
        via: str = "headless",
    ) -> Path | Future:
        """Save the view as a PNG figure (``scale`` × its CSS size, default 2 for print).

        ``via="headless"`` (default) renders the view in headless Chromium (Playwright and a
        Chromium are needed) and works in scripts and notebooks alike; it shows the current
        selection. ``via="browser"`` asks the front end where the view is displayed and
        returns a ``Future`` resolved with the path once the browser answered (the cell must
        finish first). The ⤓ button in the view's header saves the same figure by hand.

        Examples
        --------
        >>> import numpy as np, circuitboard as cb
        >>> view = cb.AttentionView(np.full((1, 2, 2), 0.5), ["a", "b"])
        >>> view.save_png(tmp_path / "attention.png")  # doctest: +SKIP
        PosixPath('.../attention.png')
        """
        return self._save_figure(path, "png", scale=scale, theme=theme, via=via)

    def save_svg(
        self, path: str | os.PathLike[str], *, theme: str | None = None, via: str = "headless"
    ) -> Path | Future:
        """Save the view as an SVG figure: text as SVG text, canvases as embedded images.

        See :meth:`save_png` for ``via``.

        Examples
        --------
        >>> view.save_svg(tmp_path / "attention.svg")  # doctest: +SKIP
        PosixPath('.../attention.svg')
        """
        return self._save_figure(path, "svg", scale=1.0, theme=theme, via=via)

    def _save_figure(
        self, path: Any, fmt: str, *, scale: float, theme: str | None, via: str
    ) -> Path | Future:
        out = Path(path)
        if theme not in (None, "light", "dark"):
            raise ValueError(f"theme must be None, 'light' or 'dark'; got {theme!r}.")
        if via == "browser":
            fid = self._next_figure
            self._next_figure += 1
            fut: Future = Future()
            self._figures[fid] = (fut, out)
            self.send({"kind": "figure", "id": fid, "format": fmt, "scale": float(scale)})
            return fut
        if via != "headless":
            raise ValueError(f"via must be 'headless' or 'browser'; got {via!r}.")
        from ..export._figure import render_figure

        data = render_figure(self, fmt, scale=scale, theme=theme)
        _write_atomic(out, data)
        return out

    def _on_figure_reply(self, msg: dict[str, Any], buffers: list[bytes]) -> None:
        entry = self._figures.pop(msg.get("id"), None)
        if entry is None:
            return
        fut, out = entry
        if not msg.get("ok") or not buffers:
            fut.set_exception(
                RuntimeError(f"the browser could not draw the figure: {msg.get('error')}")
            )
            return
        _write_atomic(out, bytes(buffers[0]))
        fut.set_result(out)


def _write_atomic(out: Path, data: bytes) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
