"""Crash-safe file writing: a killed process leaves the previous version intact.

Every file charrnn writes goes to a temporary file in the same directory, is flushed and
fsynced, then renamed over the target (rename is atomic on POSIX and Windows). A failed write
(disk full, permission) removes the temporary file and raises `CharRNNError`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from charrnn.errors import CharRNNError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; on success, move it over `path`."""
    path = Path(path)
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise CharRNNError(f"cannot write {path}: {exc.strerror}; check the directory "
                           "permissions or choose another location") from None
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding, newline="" if encoding else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        _remove_quietly(tmp)
        raise CharRNNError(f"cannot write {path}: {exc.strerror or exc}; free some disk space "
                           "or choose another location") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_with(path: str | os.PathLike, writer: Callable[[IO], None]) -> None:
    """Atomically write `path` by handing a binary file object to `writer`."""
    with atomic_open(path, "wb") as f:
        writer(f)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line; an append of a short line is a single write, flushed to disk."""
    path = Path(path)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line.rstrip("\n") + "\n")
            f.flush()
    except OSError as exc:
        raise CharRNNError(f"cannot write {path}: {exc.strerror}") from None


def ensure_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CharRNNError(f"cannot create directory {directory}: {exc.strerror}; "
                           "choose a writable location") from None


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, harmless to skip.
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
