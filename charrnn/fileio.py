"""Crash-safe file writing: a killed process leaves the previous version intact.

Every file charrnn writes goes to a temporary file in the same directory, is flushed and
fsynced, then renamed over the target (rename is atomic on POSIX and Windows). A failed write
(disk full, permission) removes the temporary file and raises `CharRNNError`.

This module writes charrnn's own files (a run directory's checkpoints, config, caches):
`atomic_open`. Their temporary names carry the file's name, so that the run directory's owner
can find and remove what a killed process left (`remove_temporaries`). Files the user named
(`sample -o` and the like) have rules of their own, in `outputs`, on the same temporary-file
writing (`through_temporary`).

The one exception is a log such as metrics.jsonl, appended one line at a time (rewriting it
whole at every record would cost time quadratic in its length): a killed process leaves at
most a partial last line, which readers skip and a resumed run rewrites away.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from charrnn.errors import CharRNNError

# A run directory's lock and config (rundir.py): reading a corpus skips directories holding
# both, so a run kept under its corpus's directory (data.path: . with runs in ./runs) never
# reads itself. A lock alone is no sign: pytest's temporary directories hold one too.
RUN_LOCK_FILE, RUN_CONFIG_FILE = ".lock", "config.yaml"
# The files a run directory keeps of its own (checkpoint.py, metrics.py, idcache.py and
# rundir.py name them; a test holds them to this list): no output a user names may replace
# one, in any run directory (`sample -k runs/a -o runs/b/last.pt` lost run b's checkpoint).
RUN_OWN_FILES = ("*.pt", RUN_CONFIG_FILE, RUN_LOCK_FILE, ".launch.json", "metrics.jsonl",
                 "ids.bin", "ids.json", "vocab.json", "vocab.meta.json")


def is_run_directory(path: str | os.PathLike) -> bool:
    return all((Path(path) / name).is_file() for name in (RUN_LOCK_FILE, RUN_CONFIG_FILE))


def is_run_file(path: Path) -> bool:
    """Whether `path` (its links already resolved) names one of a run directory's own files."""
    return any(fnmatch.fnmatchcase(path.name, pattern) for pattern in RUN_OWN_FILES) \
        and is_run_directory(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *,
                permissions: int | None = None, exact: bool = False) -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; on success, move it over `path`.

    For charrnn's own files. A new file gets `permissions` (default: what open() would give
    it), which keeps a checkpoint or cache no more readable than the corpus it was made from;
    a file replaced keeps the permissions its owner may have given it, unless `exact` (a
    cache, whose permissions follow its corpus's as they are now).
    """
    path = Path(path)
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise CharRNNError(write_problem(path, exc)) from None

    def put_in_place() -> None:
        os.replace(tmp, path)
        fsync_dir(path.parent)

    # mkstemp's 0600 would make checkpoints private
    mode_bits = None if exact else _mode_of(path)
    if mode_bits is None:
        mode_bits = new_file_mode() if permissions is None else permissions
    with through_temporary(fd, tmp, mode, path, lambda: os.fchmod(fd, mode_bits),
                            put_in_place) as f:
        yield f


def _mode_of(path: Path) -> int | None:
    """The permissions of the regular file at `path` (not followed if a link); None if none."""
    with contextlib.suppress(OSError):
        info = os.lstat(path)
        if stat.S_ISREG(info.st_mode):
            return stat.S_IMODE(info.st_mode)
    return None


@contextlib.contextmanager
def through_temporary(fd: int, tmp: str, mode: str, shown: Path, prepare: Callable[[], None],
                       put_in_place: Callable[[], None]) -> Iterator[IO]:
    """Write the temporary file `tmp` (open as `fd`): `prepare` it, hand it out, sync it to
    disk, then `put_in_place`. Any failure removes it; an OSError becomes a CharRNNError."""
    try:
        prepare()
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding, newline="" if encoding else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        put_in_place()
    except OSError as exc:
        remove_quietly(tmp)
        raise CharRNNError(write_problem(shown, exc)) from None
    except BaseException:
        remove_quietly(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_with(path: str | os.PathLike, writer: Callable[[IO], None], *,
               permissions: int | None = None, exact: bool = False) -> None:
    """Atomically write `path` by handing a binary file object to `writer` (see atomic_open
    for `permissions` and `exact`)."""
    with atomic_open(path, "wb", permissions=permissions, exact=exact) as f:
        writer(f)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line; an append of a short line is a single write, flushed to disk.

    Only to a regular file of the run directory itself: a symbolic link or a FIFO planted
    under that name is refused rather than followed (or waited on).
    """
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            raise CharRNNError(f"cannot write {path}: it is a symbolic link, which charrnn does "
                               "not follow inside a run directory; remove it")
        if not stat.S_ISREG(mode):
            raise CharRNNError(f"cannot write {path}: {mode_in_words(mode)}, not a regular file; "
                               "remove it")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, new_file_mode())
        try:
            with open(fd, "a", encoding="utf-8", closefd=False) as f:
                f.write(line.rstrip("\n") + "\n")
                f.flush()
        finally:
            os.close(fd)
    except OSError as exc:
        raise CharRNNError(write_problem(path, exc)) from None


def what_it_is(kind: str) -> str:
    """`file_kind`'s answer in words: "it is a directory", "it is a FIFO (named pipe)"."""
    return "it is a directory" if kind == "directory" else f"it is {kind}"


def file_kind(path: str | os.PathLike) -> str:
    """What is at `path` (following links): "file", "missing", "directory", or what else,
    worded for an error message ("a FIFO (named pipe)"), without opening it."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    return mode_in_words(mode).removeprefix("it is ")


def mode_in_words(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character "
                       "device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return f"it is {name}"
    return "it is not a regular file"


def write_problem(path: Path, exc: OSError) -> str:
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
            remove_quietly(str(tmp))


def new_file_mode() -> int:
    """0666 less the umask: the mode open() would give a new file now."""
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read where the system shows it (Linux 4.7 and later): asking
    os.umask sets it, and a file another thread creates in that moment gets the wrong mode."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    return _umask_by_setting_it()


@functools.cache
def _umask_by_setting_it() -> int:
    """Elsewhere: set for a moment, to a safe value, and put back; once per process."""
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def ensure_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # mkdir's "File exists" named neither the cause nor the fix
        kind = file_kind(directory)
        what = "a broken symbolic link" if directory.is_symlink() and kind == "missing" \
            else "a file" if kind == "file" else kind
        raise CharRNNError(f"cannot create directory {directory}: {what} is in its place; "
                           "move it away or choose another location") from None
    except OSError as exc:
        raise CharRNNError(f"cannot create directory {directory}: {exc.strerror}; "
                           "choose a writable location") from None


def fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, harmless to skip.
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
