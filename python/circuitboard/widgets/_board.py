"""`board()`: several views laid out as one widget that shares one selection."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import ipywidgets
import traitlets

from ._link import SELECTION_KEYS, Link
from ._linking import link as link_views
from ._view import View


class Board(ipywidgets.VBox):
    """Views laid out in a grid, all holding one :class:`Link`.

    Display it in a notebook like any widget; pass it to :func:`circuitboard.report` to write
    the same linked views to an offline page.

    Parameters
    ----------
    *views : View
        The views, in reading order.
    title : str, optional
        A heading above the views.
    columns : int
        Views per row (default 1; 2 suits wide notebooks).
    selection : Link, optional
        An existing link to join instead of a new one.

    Examples
    --------
    >>> import numpy as np
    >>> from circuitboard import AttentionView
    >>> a = AttentionView(np.full((1, 2, 2), 0.5), ["x", "y"])
    >>> b = AttentionView(np.full((1, 2, 2), 0.5), ["x", "y"])
    >>> board = Board(a, b, title="Two heads")
    >>> board.selection["layer"], a.link is b.link is board.link
    (0, True)
    """

    selection = traitlets.Dict()
    """The shared selection ``{layer, head, token, neuron, prompt}``; assign a dict to move
    every view, ``board.observe(f, names="selection")`` to hear every change (clicks too)."""

    def __init__(
        self,
        *views: View,
        title: str | None = None,
        columns: int = 1,
        selection: Link | None = None,
    ) -> None:
        if not views:
            raise ValueError("board() needs at least one view; e.g. cb.board(cb.attention(cap)).")
        bad = [type(v).__name__ for v in views if not isinstance(v, View)]
        if bad:
            raise TypeError(
                f"board() takes circuitboard views; got {bad}. Put Markdown text in "
                "cb.report(...) instead, next to the board."
            )
        if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
            raise ValueError(f"columns must be a positive int; got {columns!r}.")
        if title is not None and not isinstance(title, str):
            raise TypeError(f"title must be a string; got {type(title).__name__}.")
        self.views = tuple(views)
        self.title = title
        self._syncing = False
        self.link = link_views(*views, selection=selection)
        grid = ipywidgets.GridBox(
            list(views),
            layout=ipywidgets.Layout(
                grid_template_columns=f"repeat({columns}, minmax(0, 1fr))", grid_gap="8px"
            ),
        )
        children: list[Any] = []
        if title:
            children.append(ipywidgets.HTML(f"<h3 style='margin:4px 0'>{html.escape(title)}</h3>"))
        children.append(grid)
        super().__init__(children)
        self._from_link()
        self.link.observe(self._from_link, names=list(SELECTION_KEYS))

    def _from_link(self, _change: Any = None) -> None:
        # The link is the truth: a click in any view (or link.select) lands here as one change.
        self._syncing = True
        try:
            self.selection = self.link.selection
        finally:
            self._syncing = False

    @traitlets.validate("selection")
    def _to_link(self, proposal: Any) -> dict[str, Any]:
        if self._syncing:
            return dict(proposal["value"])
        self.link.select(**proposal["value"])  # validates; its change is observed above
        return self.link.selection

    def save_png(self, path: Any, *, scale: float = 2.0, theme: str | None = None) -> Any:
        """Save the board as one PNG (its views as laid out in a report page, ``scale``×).

        Rendered in headless Chromium like :meth:`View.save_png`.

        Examples
        --------
        >>> board.save_png("figure.png")  # doctest: +SKIP
        PosixPath('figure.png')
        """
        return self._save(path, "png", scale, theme)

    def save_svg(self, path: Any, *, theme: str | None = None) -> Any:
        """Save the board as one SVG: each view's SVG, one under the other.

        Examples
        --------
        >>> board.save_svg("figure.svg")  # doctest: +SKIP
        PosixPath('figure.svg')
        """
        return self._save(path, "svg", 1.0, theme)

    def _save(self, path: Any, fmt: str, scale: float, theme: str | None) -> Any:
        from ..export._figure import render_figure
        from ._view import _write_atomic

        out = Path(path)
        _write_atomic(out, render_figure(self, fmt, scale=scale, theme=theme))
        return out

    def report_items(self) -> list[Any]:
        """What :func:`circuitboard.report` writes for this board: the title, then the views."""
        return ([f"## {self.title}"] if self.title else []) + list(self.views)


def board(
    *views: View, title: str | None = None, columns: int = 1, selection: Link | None = None
) -> Board:
    """Lay out ``views`` as one widget sharing one selection; see :class:`Board`.

    Examples
    --------
    >>> import numpy as np, circuitboard as cb
    >>> att = np.full((1, 2, 3, 3), 1 / 3)
    >>> b = cb.board(cb.AttentionView(att, list("abc")), cb.AttentionView(att, list("abc")))
    >>> b.selection = {"head": 1}
    >>> [v.selection["head"] for v in b.views]
    [1, 1]
    """
    return Board(*views, title=title, columns=columns, selection=selection)
