"""`link()`: make several views share one selection."""

from __future__ import annotations

from ._link import Link
from ._view import View


def link(*views: View, selection: Link | None = None) -> Link:
    """Give ``views`` one shared :class:`Link`; returns it (read or set ``.selection``).

    Examples
    --------
    >>> import numpy as np
    >>> from circuitboard import AttentionView
    >>> a = AttentionView(np.full((1, 2, 2), 0.5), ["x", "y"])
    >>> b = AttentionView(np.full((1, 2, 2), 0.5), ["x", "y"])
    >>> shared = link(a, b)
    >>> shared.select(token=1)
    >>> a.selection["token"], b.selection["token"]
    (1, 1)
    """
    bad = [type(v).__name__ for v in views if not isinstance(v, View)]
    if bad:
        raise TypeError(f"link() takes circuitboard views; got {bad}.")
    shared = selection if selection is not None else Link()
    if views and selection is None:
        shared.select(**{k: v for k, v in views[0].link.selection.items() if v is not None})
    for v in views:
        v.link = shared
    return shared
