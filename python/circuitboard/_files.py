"""Opening circuitboard's own files safely: the kind and version are checked, nothing is ever
unpickled, and anything else is refused with one error that says what was found.

Every ``.npz`` circuitboard writes carries a stamp (``__circuitboard__``: JSON with ``kind`` and
``version``). Files from before the stamp are recognised by the arrays their kind always has.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import CircuitboardFileError, MissingCircuitboardFile

STAMP = "__circuitboard__"

_MAGIC = {  # leading bytes → what a file most likely is, for the error message
    b"\x80": "a Python pickle (circuitboard never unpickles)",
    b"PK\x03\x04": "a zip archive",
    b"\x93NUMPY": "a single numpy array (.npy), not an archive of them",
    b"<!DOCTYPE": "an HTML page",
    b"<html": "an HTML page",
    b"{": "JSON text",
    b"\x89PNG": "a PNG image",
    b"\x1f\x8b": "a gzip stream",
}


def stamp(kind: str, version: int = 1) -> dict[str, np.ndarray]:
    """The array that marks an ``.npz`` as a circuitboard ``kind`` file of ``version``.

    >>> sorted(stamp("patching"))
    ['__circuitboard__']
    """
    text = json.dumps({"kind": kind, "version": version}, sort_keys=True)
    return {STAMP: np.frombuffer(text.encode(), np.uint8)}


def save_stamped(
    path: str | os.PathLike[str], kind: str, meta: dict[str, Any], arrays: dict[str, Any]
) -> Path:
    """Write a ``kind`` file: the :func:`stamp`, ``meta`` as JSON in ``__meta__``, then
    ``arrays``; byte-reproducible (the same contents, the same file). Returns the path.

    >>> import os, tempfile
    >>> p = save_stamped(os.path.join(tempfile.mkdtemp(), "d.npz"), "demo", {"n": 3}, {})
    >>> sorted(np.load(p).files)
    ['__circuitboard__', '__meta__']
    """
    from ._npz import save_npz

    out = Path(path)
    meta_array = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    save_npz(out, {**stamp(kind), "__meta__": meta_array, **arrays})
    return out


def not_a(path: Path, kind: str, found: str, writer: str) -> CircuitboardFileError:
    """The one error for a file that is not what a loader reads."""
    return CircuitboardFileError(
        f"{path} is not a circuitboard {kind} file ({found}); write one with {writer}."
    )


def check_file(path: str | os.PathLike[str], kind: str, writer: str) -> Path:
    """``path`` as a :class:`~pathlib.Path` if it is a non-empty file; the errors otherwise."""
    p = Path(path)
    if p.is_dir():
        raise not_a(p, kind, "it is a folder", writer)
    if not p.is_file():
        raise MissingCircuitboardFile(
            f"no {kind} file at {p} (no such file); write a circuitboard {kind} file with {writer}."
        )
    if p.stat().st_size == 0:
        raise not_a(p, kind, "the file is empty", writer)
    return p


def describe_start(p: Path) -> str:
    """What the first bytes of a file look like, in words."""
    with open(p, "rb") as f:
        head = f.read(16)
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return f"it looks like {what}"
    return f"it starts with bytes {head[:8].hex(' ')}"


def _refuse_objects(zf: zipfile.ZipFile, p: Path, kind: str, writer: str) -> None:
    """Read each member's .npy header only: an object array would need unpickling."""
    for name in zf.namelist():
        if not name.endswith(".npy"):
            raise not_a(p, kind, f"the archive holds {name!r}, which is not a numpy array", writer)
        with zf.open(name) as f:
            try:
                version = np.lib.format.read_magic(f)
                read = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                _, _, dtype = read(f)
            except Exception as e:  # noqa: BLE001 - any damage is the same answer
                raise not_a(p, kind, f"{name!r} has no valid array header ({e})", writer) from None
        if dtype.hasobject:
            raise not_a(
                p,
                kind,
                f"{name!r} holds pickled Python objects, which circuitboard never loads",
                writer,
            )


def read_npz(
    path: str | os.PathLike[str],
    kind: str,
    writer: str,
    *,
    required: tuple[str, ...] = (),
    versions: tuple[int, ...] = (1,),
) -> dict[str, np.ndarray]:
    """Every array of a circuitboard ``kind`` ``.npz`` (stamp removed), read without pickle.

    ``required`` names arrays a file of this kind always has (how a file from before the stamp
    is recognised). ``writer`` is the call that writes such a file, named in every error.

    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "x.npz"
    >>> np.savez(f, **stamp("demo"), a=np.arange(3))
    >>> read_npz(f, "demo", "Demo.save()")["a"].tolist()
    [0, 1, 2]
    >>> read_npz(f, "patching", "Patching.save()")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    circuitboard...CircuitboardFileError: ... is not a circuitboard patching file (it is a \
circuitboard demo file); write one with Patching.save().
    """
    p = check_file(path, kind, writer)
    if not zipfile.is_zipfile(p):
        raise not_a(p, kind, describe_start(p), writer)
    try:
        with zipfile.ZipFile(p) as zf:
            _refuse_objects(zf, p, kind, writer)
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except CircuitboardFileError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error, KeyError) as e:
        raise not_a(
            p, kind, f"it is truncated or damaged: {type(e).__name__}: {e}", writer
        ) from None
    if STAMP in arrays:
        try:
            meta = json.loads(arrays.pop(STAMP).tobytes().decode())
            found, version = meta["kind"], meta["version"]
        except Exception:  # noqa: BLE001
            raise not_a(p, kind, "its circuitboard stamp is damaged", writer) from None
        if found != kind:
            raise not_a(p, kind, f"it is a circuitboard {found} file", writer)
        if version not in versions:
            newer = isinstance(version, int) and version > max(versions)
            hint = "upgrade circuitboard to read it" if newer else "it is too old to read"
            raise not_a(
                p,
                kind,
                f"it is version {version!r} and this circuitboard reads "
                f"{', '.join(map(str, versions))}: {hint}",
                writer,
            )
    missing = [k for k in required if k not in arrays]
    if missing:
        held = ", ".join(sorted(arrays)[:6]) or "nothing"
        raise not_a(p, kind, f"it holds {held} but not {', '.join(missing)}", writer)
    return arrays


def json_array(arrays: dict[str, np.ndarray], key: str, p: Path, kind: str, writer: str) -> Any:
    """The JSON a file keeps as a uint8 (or unicode) array under ``key``, decoded."""
    try:
        value = arrays[key]
        text = str(value) if value.dtype.kind == "U" else value.tobytes().decode()
        return json.loads(text)
    except Exception as e:  # noqa: BLE001
        raise not_a(Path(p), kind, f"its {key!r} record does not decode ({e})", writer) from None


@contextmanager
def decoding(path: str | os.PathLike[str], kind: str, writer: str) -> Iterator[None]:
    """Inside: a record a file of ``kind`` must have but lacks (or of the wrong type) becomes
    the one error, not a ``KeyError`` from deep inside a loader."""
    try:
        yield
    except CircuitboardFileError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        found = f"its records do not fit a {kind} file ({type(e).__name__}: {e})"
        raise not_a(Path(path), kind, found, writer) from None
