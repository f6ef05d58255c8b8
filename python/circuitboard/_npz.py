"""Write ``.npz`` files byte for byte reproducibly (numpy's own writer stamps the time)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold


def save_npz(path: str | os.PathLike[str] | Any, arrays: dict[str, Any]) -> None:
    """Compressed ``.npz`` of ``arrays`` (in order) that ``np.load`` reads; the same arrays
    always give the same bytes, so saved results can be compared with a file hash.

    >>> import io; a, b = io.BytesIO(), io.BytesIO()
    >>> save_npz(a, {"x": np.arange(3)}); save_npz(b, {"x": np.arange(3)})
    >>> a.getvalue() == b.getvalue(), np.load(io.BytesIO(a.getvalue()))["x"].tolist()
    (True, [0, 1, 2])
    """
    target = path if hasattr(path, "write") else Path(path)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
