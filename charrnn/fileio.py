"""Crash-safe file writing: a killed process leaves the previous version intact.

Every file charrnn writes goes to a temporary file in the same directory, is flushed and
fsynced, then renamed over the target (rename is atomic on POSIX and Windows). A failed write
(disk full, permission) removes the temporary file and raises `CharRNNError`.

The one exception is a log such as metrics.jsonl, appended one line at a time (rewriting it
whole at every record would cost time quadratic in its length): a killed process leaves at
most a partial last line, which readers skip and a resumed run rewrites away.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
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
        raise CharRNNError(_write_problem(path, exc)) from None
    try:
        os.chmod(tmp, _new_file_mode())  # mkstemp's 0600 would make checkpoints private
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding, newline="" if encoding else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        _remove_quietly(tmp)
        raise CharRNNError(_write_problem(path, exc)) from None
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
        raise CharRNNError(_write_problem(path, exc)) from None


def _write_problem(path: Path, exc: OSError) -> str:
    """One line naming a failed write and the fix that fits its cause."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "free some disk space or choose another location"
    elif exc.errno == errno.EISDIR:
        fix = "name a file inside it instead"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "check the permissions or choose a writable location"
    else:
        fix = "choose another location"
    return f"cannot write {path}: {exc.strerror or exc}; {fix}"


def remove_temporaries(directory: Path, names: Iterable[str]) -> None:
    """Delete the temporary files a killed process left while writing `names` (glob patterns).

    Only for files written by the holder of the directory's lock: another process may be
    writing any other temporary file at this very moment.
    """
    for name in names:
        for tmp in directory.glob(f".{name}.*.tmp"):
            _remove_quietly(str(tmp))


@functools.cache
def _new_file_mode() -> int:
    """0666 less the umask: the mode open() would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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
