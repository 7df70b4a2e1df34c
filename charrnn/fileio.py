"""Crash-safe file writing: a killed process leaves the previous version intact.

Every file charrnn writes goes to a temporary file in the same directory, is flushed and
fsynced, then renamed over the target (rename is atomic on POSIX and Windows). A failed write
(disk full, permission) removes the temporary file and raises `CharRNNError`.

Two kinds of file are written, each through its own door:

- **A file the user named** (`sample -o`, `vocab build -o`, `plot -o`, `data get`'s target):
  `open_output`. The path is the user's, and so is whatever it leads to: a symbolic link is
  written through (the link stays a link), an existing file keeps its permissions, owner and
  hard links, anything that is not a regular file (a FIFO, a device, a socket, a directory) is
  refused, and `-` or /dev/stdout means standard output. A run directory's own files, a
  checkpoint under any name, a read-only file and a link another user planted in a shared
  directory are refused. What a killed process (SIGKILL, a power cut) left there is removed
  by the next output written to the same directory.
- **A file of charrnn's own** (a run directory's checkpoints, config, caches): `atomic_open`.
  Its temporary name carries the file's name, so that the run directory's owner can find and
  remove what a killed process left (`remove_temporaries`).

The one exception is a log such as metrics.jsonl, appended one line at a time (rewriting it
whole at every record would cost time quadratic in its length): a killed process leaves at
most a partial last line, which readers skip and a resumed run rewrites away.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import hashlib
import io
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO

from charrnn.errors import CharRNNError, UsageError

STDOUT_NAMES = frozenset({"-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"})
# open_output's temporary files: .charrnn-HOST-PID-XXXXXXXX.tmp, HOST a digest of the host's
# name, so that the next output written to the same directory can remove what a killed
# process of this host left (`_remove_orphans`).
TEMP_PREFIX = ".charrnn-"
STDOUT_FIX = "redirect it somewhere writable (e.g. > file, on a disk with room)"
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
        _fsync_dir(path.parent)

    # mkstemp's 0600 would make checkpoints private
    mode_bits = None if exact else _mode_of(path)
    if mode_bits is None:
        mode_bits = _new_file_mode() if permissions is None else permissions
    with _through_temporary(fd, tmp, mode, path, lambda: os.fchmod(fd, mode_bits),
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
def _through_temporary(fd: int, tmp: str, mode: str, shown: Path, prepare: Callable[[], None],
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
        _remove_quietly(tmp)
        raise CharRNNError(write_problem(shown, exc)) from None
    except BaseException:
        _remove_quietly(tmp)
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
            raise CharRNNError(f"cannot write {path}: {_kind(mode)}, not a regular file; "
                               "remove it")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, _new_file_mode())
        try:
            with open(fd, "a", encoding="utf-8", closefd=False) as f:
                f.write(line.rstrip("\n") + "\n")
                f.flush()
        finally:
            os.close(fd)
    except OSError as exc:
        raise CharRNNError(write_problem(path, exc)) from None


# ---- files the user named ---------------------------------------------------------------------
def names_stdout(path: str | os.PathLike) -> bool:
    """Whether an output path means standard output: `-`, /dev/stdout and its aliases."""
    return str(path) in STDOUT_NAMES


@contextlib.contextmanager
def open_output(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a file the user named for writing (text as UTF-8); it is replaced once whole.

    `-` and /dev/stdout write to standard output instead, as the bytes a file would hold. A
    symbolic link is followed to the file it names. Anything but a regular file (a FIFO, a
    device node, a socket, a directory) is refused. An existing file keeps its permissions and,
    where this process may set it, its owner. The temporary file has a short name of its own
    in the same directory, so that any name valid for the target is valid here too.
    """
    if names_stdout(path):
        with _standard_output(mode) as f:
            yield f
        return
    shown = Path(path)
    target = _output_target(shown)
    _refuse_run_file(shown, target)
    existing = _existing_output(shown, target)
    ensure_dir(target.parent)
    _remove_orphans(target.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f"{_temp_prefix()}{os.getpid()}-",
                                   suffix=".tmp")
    except OSError as exc:
        raise CharRNNError(write_problem(shown, exc)) from None

    def put_in_place() -> None:
        if existing is not None and existing.st_nlink > 1:
            # A rename would give this name a new file and leave the other links with the
            # old one: the user linked them to share one file, so it is rewritten in place
            # (from the finished temporary file, so only the copy itself can be cut short).
            _copy_into(tmp, target)
            _remove_quietly(tmp)
        else:
            os.replace(tmp, target)
            _fsync_dir(target.parent)

    with _through_temporary(fd, tmp, mode, shown, lambda: _take_over_identity(fd, existing),
                            put_in_place) as f:
        yield f


@functools.cache
def _temp_prefix() -> str:
    """The start of the temporary names of this host's outputs: .charrnn-HOST-."""
    host = hashlib.sha256(socket.gethostname().encode(errors="replace")).hexdigest()[:8]
    return f"{TEMP_PREFIX}{host}-"


def _remove_orphans(directory: Path) -> None:
    """Delete the temporary outputs that processes of this host left when they were killed
    (SIGKILL, a power cut) while writing into `directory`: those whose process is gone.

    A download killed half-way left a hidden file as large as what it had read. Another
    host's files (a shared file system) are left alone: their processes cannot be asked.
    """
    if os.name != "posix":  # os.kill(pid, 0) asks only here; on Windows it would end it
        return
    prefix = _temp_prefix()
    for tmp in directory.glob(f"{prefix}*-*.tmp"):
        pid = tmp.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            _remove_quietly(str(tmp))


def _running(pid: int) -> bool:
    """Whether process `pid` of this host exists (True when that cannot be told)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process; a number no pid can have
        return True
    return True


def check_output(path: str | os.PathLike, reads: Mapping[Path, str] | None = None) -> None:
    """Refuse, before any work is done, an output the user named that `open_output` would
    refuse or could not create, or that is one of the files the command reads (`reads`: each
    file and what it is, e.g. "the checkpoint being read"): writing it would destroy its input.
    Nothing is created."""
    if names_stdout(path):
        return
    shown = Path(path)
    target = _output_target(shown)
    for read, what in (reads or {}).items():
        with contextlib.suppress(OSError):  # a file that is not there is not this one
            if os.path.samefile(target, read):
                raise UsageError(f"cannot write {shown}: it is {what}; name another file")
    _refuse_run_file(shown, target)
    _existing_output(shown, target)
    folder = target.parent
    while not folder.exists() and folder != folder.parent:  # the part that exists already
        folder = folder.parent
    if not folder.is_dir():
        raise CharRNNError(write_problem(shown, NotADirectoryError(
            errno.ENOTDIR, os.strerror(errno.ENOTDIR))))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CharRNNError(write_problem(shown, PermissionError(
            errno.EACCES, os.strerror(errno.EACCES))))


def _output_target(shown: Path) -> Path:
    """The file an output path leads to, through every symbolic link; a link the system
    itself would not follow for this user is refused (see `_foreign_link`)."""
    link = _foreign_link(shown.expanduser())
    if link is not None:
        raise CharRNNError(f"cannot write {shown}: {link} is a symbolic link another user "
                           f"made in the shared directory {link.parent}, which charrnn, like "
                           "the system, does not follow; remove it or name another file")
    return Path(os.path.realpath(shown.expanduser()))


def _foreign_link(path: Path) -> Path | None:
    """The first symbolic link on the way to `path` that Linux's protected_symlinks would
    refuse to follow: one in a sticky, world-writable directory (/tmp) owned neither by this
    user nor by the directory's owner. Resolving the path in Python and renaming over what it
    leads to never asks the kernel to follow the link, so its protection must be asked here:
    otherwise another user's `ln -s ~victim/.bashrc /tmp/out.txt` made `sample -o
    /tmp/out.txt` replace the victim's file."""
    if os.name != "posix":
        return None
    absolute = Path(os.path.abspath(path))
    walked, todo = Path(absolute.anchor), list(absolute.parts[1:])
    for _ in range(4096):  # links followed and names walked, at most (a loop ends here)
        if not todo:
            return None
        name = todo.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            walked = walked.parent
            continue
        step = walked / name
        try:
            info = os.lstat(step)
        except OSError:  # not there (yet): nothing further to follow
            return None
        if not stat.S_ISLNK(info.st_mode):
            walked = step
            continue
        folder = os.stat(walked)
        if folder.st_mode & stat.S_ISVTX and folder.st_mode & stat.S_IWOTH \
                and info.st_uid not in (os.geteuid(), folder.st_uid):
            return step
        target = Path(os.readlink(step))
        if target.is_absolute():
            walked = Path(target.anchor)
        todo[:0] = list(target.parts[1:] if target.is_absolute() else target.parts)
    return None


def _refuse_run_file(shown: Path, target: Path) -> None:
    if is_run_file(target):
        raise UsageError(f"cannot write {shown}: it is a file of a charrnn run directory (its "
                         "checkpoints, config, metrics and caches); name a file outside it, or "
                         "another name")


def _existing_output(shown: Path, target: Path) -> os.stat_result | None:
    """The output's file as it is (None: not there yet); a directory or anything but a
    regular file is refused."""
    try:
        existing = os.stat(target)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CharRNNError(write_problem(shown, exc)) from None
    if stat.S_ISDIR(existing.st_mode):
        raise CharRNNError(write_problem(shown, IsADirectoryError(
            errno.EISDIR, os.strerror(errno.EISDIR))))
    if not stat.S_ISREG(existing.st_mode):
        raise CharRNNError(f"cannot write {shown}: {_kind(existing.st_mode)}, not a regular "
                           "file; name a regular file, or - for standard output")
    if not os.access(target, os.W_OK):  # a rename would replace it all the same
        raise CharRNNError(f"cannot write {shown}: it is read-only; make it writable "
                           "(chmod u+w) or name another file")
    if _holds_a_checkpoint(target):  # another name (a hard link, a copy) of a model's file
        raise UsageError(f"cannot write {shown}: it holds a PyTorch checkpoint (a model's "
                         "weights); name another file")
    return existing


def _holds_a_checkpoint(path: Path) -> bool:
    """Whether a file starts as torch.save's archives do: a zip whose first entry is
    .../data.pkl."""
    with contextlib.suppress(OSError):
        with open(path, "rb") as f:
            head = f.read(96)
        if head[:4] == b"PK\x03\x04" and len(head) >= 30:
            size = int.from_bytes(head[26:28], "little")
            return head[30:30 + size].endswith(b"/data.pkl")
    return False


def write_output(path: str | os.PathLike, content: str | bytes) -> None:
    """Write `content` to a file the user named (see `open_output`)."""
    with open_output(path, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)


def write_output_with(path: str | os.PathLike, writer: Callable[[IO], None]) -> None:
    """Write a file the user named by handing a binary file object to `writer`."""
    with open_output(path, "wb") as f:
        writer(f)


def _take_over_identity(fd: int, existing: os.stat_result | None) -> None:
    """Give the temporary file the mode (and owner) of the file it replaces, or a new file's."""
    if existing is None:
        os.fchmod(fd, _new_file_mode())  # mkstemp's 0600 is not what a new file would get
        return
    if (existing.st_uid, existing.st_gid) != (os.geteuid(), os.getegid()):
        with contextlib.suppress(OSError):  # only root may give a file away
            os.fchown(fd, existing.st_uid, existing.st_gid)
    os.fchmod(fd, stat.S_IMODE(existing.st_mode))


def _copy_into(source: str, target: Path) -> None:
    with open(source, "rb") as src, open(target, "r+b") as dst:
        shutil.copyfileobj(src, dst)
        dst.truncate()
        dst.flush()
        os.fsync(dst.fileno())


@contextlib.contextmanager
def _standard_output(mode: str) -> Iterator[IO]:
    """Standard output as a file: the same bytes a file would get (UTF-8 text), not closed.

    A reader that went away (EPIPE) stays a BrokenPipeError, which the command line ends
    quietly as other Unix tools do; any other failure is a CharRNNError.
    """
    if sys.stdout is None:
        raise CharRNNError("cannot write to standard output: it is closed; redirect it "
                           "(e.g. > file) or name a file")
    try:
        sys.stdout.flush()  # whatever was printed before comes first
        raw = _Unclosed(sys.stdout.buffer)
        if "b" in mode:
            yield raw
            raw.flush()
            return
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="", write_through=True)
        try:
            yield text
            text.flush()
        finally:
            text.detach()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise CharRNNError(f"cannot write to standard output: {exc.strerror or exc}; "
                           f"{STDOUT_FIX}") from None


class _Unclosed(io.RawIOBase):
    """A binary stream that writes through to another and leaves it open when closed."""

    def __init__(self, stream: IO[bytes]):
        super().__init__()
        self.stream = stream

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.stream.write(data)
        return memoryview(data).nbytes

    def flush(self) -> None:
        self.stream.flush()


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
    return _kind(mode).removeprefix("it is ")


def _kind(mode: int) -> str:
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
    except FileExistsError:  # mkdir's "File exists" named neither the cause nor the fix
        kind = file_kind(directory)
        what = "a broken symbolic link" if directory.is_symlink() and kind == "missing" \
            else "a file" if kind == "file" else kind
        raise CharRNNError(f"cannot create directory {directory}: {what} is in its place; "
                           "move it away or choose another location") from None
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
