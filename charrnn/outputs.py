"""Files the user named: `sample -o`, `vocab build -o`, `plot -o`, `data get`'s target.

The path is the user's, and so is whatever it leads to: a symbolic link is written through
(the link stays a link), an existing file keeps its permissions, owner and hard links,
anything that is not a regular file (a FIFO, a device, a socket, a directory) is refused, and
`-` or /dev/stdout means standard output. A run directory's own files, a checkpoint under any
name, a read-only file and a link another user planted in a shared directory are refused.
The file is written whole to a temporary file beside it and then put in place
(`fileio.through_temporary`); what a killed process (SIGKILL, a power cut) left there is
removed by the next output written to the same directory.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO

from charrnn import fileio
from charrnn.errors import CharRNNError, UsageError

STDOUT_NAMES = frozenset({"-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"})
# open_output's temporary files: .charrnn-HOST-PID-XXXXXXXX.tmp, HOST a digest of the host's
# name, so that the next output written to the same directory can remove what a killed
# process of this host left (`_remove_orphans`).
TEMP_PREFIX = ".charrnn-"
STDOUT_FIX = "redirect it somewhere writable (e.g. > file, on a disk with room)"


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
    fileio.ensure_dir(target.parent)
    _remove_orphans(target.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f"{_temp_prefix()}{os.getpid()}-",
                                   suffix=".tmp")
    except OSError as exc:
        raise CharRNNError(fileio.write_problem(shown, exc)) from None

    def put_in_place() -> None:
        if existing is not None and existing.st_nlink > 1:
            # A rename would give this name a new file and leave the other links with the
            # old one: the user linked them to share one file, so it is rewritten in place
            # (from the finished temporary file, so only the copy itself can be cut short).
            _copy_into(tmp, target)
            fileio.remove_quietly(tmp)
        else:
            os.replace(tmp, target)
            fileio.fsync_dir(target.parent)

    with fileio.through_temporary(fd, tmp, mode, shown, lambda: _take_over_identity(fd, existing),
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
            fileio.remove_quietly(str(tmp))


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
        raise CharRNNError(fileio.write_problem(shown, NotADirectoryError(
            errno.ENOTDIR, os.strerror(errno.ENOTDIR))))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CharRNNError(fileio.write_problem(shown, PermissionError(
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
    if fileio.is_run_file(target):
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
        raise CharRNNError(fileio.write_problem(shown, exc)) from None
    if stat.S_ISDIR(existing.st_mode):
        raise CharRNNError(fileio.write_problem(shown, IsADirectoryError(
            errno.EISDIR, os.strerror(errno.EISDIR))))
    if not stat.S_ISREG(existing.st_mode):
        raise CharRNNError(f"cannot write {shown}: {fileio.mode_in_words(existing.st_mode)}, "
                           "not a regular file; name a regular file, or - for standard output")
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
        os.fchmod(fd, fileio.new_file_mode())  # mkstemp's 0600 is not what a new file would get
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
