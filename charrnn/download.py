"""Fetching a named corpus: streamed, checked against its published size and SHA-256, atomic.

The bytes go to a hidden temporary file beside the target (`outputs.open_output`) and are
renamed into place only once the size and checksum match. Any failure (network, truncation,
wrong bytes, Ctrl-C, SIGTERM) deletes the temporary file, so nothing that looks finished is
left behind.
Only the standard library is used for HTTP. A mirror is a base URL or a local directory that
holds the same file names, for machines without access to the original hosts.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from charrnn import __version__, fileio, outputs
from charrnn.corpus import RemoteCorpus
from charrnn.errors import DownloadError, UsageError

CHUNK_BYTES = 1 << 20  # per read: frequent progress updates, negligible per-call overhead
TIMEOUT_S = 30.0  # seconds without progress before a connection counts as dead
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_USE_MIRROR = "fetch it from another copy with --mirror URL_OR_DIR"


@dataclass(frozen=True)
class Fetched:
    path: Path  # the verified file
    source: str  # the URL or file the bytes came from (the file itself when already present)
    downloaded: bool  # False: a verified copy was already there and nothing was fetched


def fetch(corpus: RemoteCorpus, dest: str | os.PathLike, *, mirror: str | None = None,
          on_progress: Callable[[int], None] | None = None,
          timeout: float = TIMEOUT_S) -> Fetched:
    """Make dest/corpus.filename a verified copy of `corpus`, downloading it unless it is."""
    dest = Path(dest).expanduser()
    target = dest / corpus.filename
    if target.exists():
        if is_verified(target, corpus):
            return Fetched(target, str(target), downloaded=False)
        raise DownloadError(f"{target} exists but is not {corpus.name} (its size or SHA-256 "
                            "differs); delete it to download again, or choose another --dest")
    location = source_location(corpus, mirror)
    _check_writable(dest)
    # The temporary file exists before the first byte arrives, so an unwritable disk fails fast.
    with outputs.open_output(target, "wb") as out, _open(location, corpus, timeout) as stream:
        _copy_verified(stream, out, corpus, str(location), on_progress)
    return Fetched(target, str(location), downloaded=True)


def source_location(corpus: RemoteCorpus, mirror: str | None) -> str | Path:
    """The corpus's URL, the same file name under a mirror URL, or a file in a mirror directory."""
    if not mirror:
        return corpus.url
    if _URL.match(mirror):
        return mirror.rstrip("/") + "/" + urllib.parse.quote(corpus.filename)
    directory = Path(mirror).expanduser()
    if not directory.is_dir():
        raise UsageError(f"--mirror {mirror} is neither a URL (http://, https://, file://) nor "
                         f"a directory; give a base URL or a directory holding {corpus.filename}")
    return directory / corpus.filename


def is_verified(path: Path, corpus: RemoteCorpus) -> bool:
    """Whether `path` holds exactly the published bytes of `corpus`."""
    try:
        return path.stat().st_size == corpus.size and file_sha256(path) == corpus.sha256
    except OSError:  # a directory in the way, or unreadable: not a verified copy
        return False


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _check_writable(dest: Path) -> None:
    kind = fileio.file_kind(dest)
    if kind not in ("directory", "missing"):
        raise DownloadError(f"--dest {dest} is {'a file' if kind == 'file' else kind}, not a "
                            "directory; choose a directory")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the directory {dest}: {exc.strerror or exc}; "
                            "choose a writable --dest") from None
    if not os.access(dest, os.W_OK | os.X_OK):
        raise DownloadError(f"cannot write to {dest}: permission denied; choose a writable "
                            "--dest or fix its permissions")


def _open(location: str | Path, corpus: RemoteCorpus, timeout: float) -> BinaryIO:
    """An open stream of the source bytes; every failure is a DownloadError, never an OSError.

    (An OSError escaping into `outputs.open_output` would be reported as a disk problem.)
    """
    if isinstance(location, Path):
        kind = fileio.file_kind(location)
        if kind not in ("file", "missing"):  # a FIFO would block the open
            raise DownloadError(f"cannot read {location}: {fileio.what_it_is(kind)}, not a "
                                "regular file; put the file there or leave out --mirror")
        try:
            return open(location, "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            raise DownloadError(f"the mirror directory {location.parent} has no "
                                f"{location.name}; put the file there or leave out --mirror"
                                ) from None
        except OSError as exc:
            raise DownloadError(f"cannot read {location}: {exc.strerror or exc}; fix its "
                                "permissions or leave out --mirror") from None
    request = urllib.request.Request(location, headers={"User-Agent": f"charrnn/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise DownloadError(f"{location} answered HTTP {exc.code} {exc.reason}; check the "
                            f"address, try again later, or {_USE_MIRROR}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(f"cannot download from {location} ({reason}); check the network "
                            f"connection, or {_USE_MIRROR}") from None
    announced = response.headers.get("Content-Length")
    if announced and announced.isdigit() and int(announced) != corpus.size:
        response.close()
        raise DownloadError(f"{location} offers {int(announced):,} bytes but {corpus.name} is "
                            f"{corpus.size:,} bytes, so the file there is not the published one;"
                            f" {_USE_MIRROR}")
    return response


def _copy_verified(stream: BinaryIO, out: IO[bytes], corpus: RemoteCorpus, source: str,
                   on_progress: Callable[[int], None] | None) -> None:
    """Copy `stream` to `out`, raising unless exactly the published bytes arrived."""
    digest = hashlib.sha256()
    received = 0
    # read1 returns what has arrived instead of waiting for a whole chunk, so a transfer that
    # stalls is reported with the bytes that did arrive (read() would drop a partial chunk).
    read = getattr(stream, "read1", stream.read)
    while True:
        try:
            # Asking for one byte past the expected end is how a longer file shows itself.
            chunk = read(min(CHUNK_BYTES, corpus.size + 1 - received))
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(f"the transfer from {source} broke off after {received:,} of "
                                f"{corpus.size:,} bytes ({exc}); nothing was saved: run the "
                                f"command again, or {_USE_MIRROR}") from None
        if not chunk:
            break
        received += len(chunk)
        if received > corpus.size:
            raise DownloadError(f"{source} holds more than the {corpus.size:,} bytes of "
                                f"{corpus.name}, so it is not the published file; nothing was "
                                f"saved; {_USE_MIRROR}")
        digest.update(chunk)
        out.write(chunk)
        if on_progress:
            on_progress(len(chunk))
    if received < corpus.size:
        # urllib does not raise when a server closes before its Content-Length: count instead.
        raise DownloadError(f"the transfer from {source} ended early, after {received:,} of "
                            f"{corpus.size:,} bytes; nothing was saved: run the command again, "
                            f"or {_USE_MIRROR}")
    got = digest.hexdigest()
    if got != corpus.sha256:
        raise DownloadError(f"checksum mismatch for {corpus.name} from {source}: SHA-256 "
                            f"{got[:16]}... but the published file has {corpus.sha256[:16]}...; "
                            f"the partial file was deleted. The copy there is damaged or has "
                            f"changed: try again, or {_USE_MIRROR}")
