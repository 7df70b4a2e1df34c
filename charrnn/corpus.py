"""Where text comes from: corpus files, the named corpora, and streaming them normalised.

Data flows text -> vocab -> ids: this module is the first step. Inputs are files,
directories (walked recursively, sorted), globs or `builtin:NAME` corpora. Text is decoded as
strict UTF-8 in fixed-size blocks, so a corpus is never held in memory as one string.

Named corpora come in two kinds. Built-in ones ship with the running Python itself:
`builtin:python-docs` is the language reference and library topics behind `help()` (about
0.46 MB of English prose and code); `builtin:python-stdlib` is the standard library's own
source (about 12 MB, tests excluded). Both exist on every Python installation, so the default
config and `make demo` work offline on a fresh clone. Remote ones are fetched by
`charrnn data get NAME` (see download.py), which checks each against the size and SHA-256
recorded here, so a changed or damaged file is never trained on.
"""

from __future__ import annotations

import codecs
import contextlib
import glob
import io
import os
import re
import shlex
import sysconfig
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from charrnn import fileio
from charrnn.errors import CorpusError, UsageError

BLOCK_BYTES = 4 << 20  # read size: large enough for vectorised work, small enough for memory
MAX_HELD_CHARS = 1 << 20  # longest partial line held back for newline/unicode normalisation
SNIFF_BYTES = 8192  # how much of a file is checked to decide "binary" when walking a directory
GLOB_CHARS = frozenset("*?[")
NEWLINE_MODES = ("keep", "lf")
UNICODE_MODES = ("keep", "nfc", "nfkc")
_UTF16_32_BOMS = {
    codecs.BOM_UTF32_LE: "UTF-32",
    codecs.BOM_UTF32_BE: "UTF-32",
    codecs.BOM_UTF16_LE: "UTF-16",
    codecs.BOM_UTF16_BE: "UTF-16",
}


@dataclass(frozen=True)
class Normalization:
    """How raw text is cleaned before it becomes characters; stored in every vocabulary."""

    lowercase: bool = False  # fold case, as the classic nietzsche example does
    newline: str = "keep"  # "lf" turns CRLF and lone CR into LF
    unicode: str = "keep"  # "nfc"/"nfkc": one code point sequence per visible character
    strip_bom: bool = True  # drop a byte-order mark (U+FEFF) at the start of each file

    def apply(self, text: str) -> str:
        """Normalise a complete piece of text (a prime string, a test string)."""
        if self.strip_bom and text.startswith("\ufeff"):
            text = text[1:]
        return self._transform(text)

    def _transform(self, text: str) -> str:
        if self.newline == "lf":
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if self.unicode != "keep":
            text = unicodedata.normalize(self.unicode.upper(), text)
        if self.lowercase:
            text = text.lower()
        return text

    @property
    def needs_line_boundaries(self) -> bool:
        # CRLF pairs and combining sequences must not be cut between two blocks, nor a word
        # being lowercased: a final capital sigma becomes ς only where no letter follows it.
        return self.newline != "keep" or self.unicode != "keep" or self.lowercase

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Normalization:
        norm = cls(**data)
        if norm.newline not in NEWLINE_MODES or norm.unicode not in UNICODE_MODES or not (
                isinstance(norm.lowercase, bool) and isinstance(norm.strip_bom, bool)):
            raise ValueError(f"unknown normalisation {data}")
        return norm


@dataclass(frozen=True)
class Source:
    """One document: a file on disk, or in-memory bytes for a built-in corpus."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    def open(self) -> BinaryIO:
        if self.data is not None:
            return io.BytesIO(self.data)
        try:
            return open(self.path, "rb")  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            raise CorpusError(_os_problem(self.name, exc)) from None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.path.stat().st_size

    def fingerprint(self) -> list:
        """Cheap identity used to decide whether cached vocab/ids are still valid."""
        if self.data is not None:
            import hashlib

            return [self.name, len(self.data), hashlib.sha256(self.data).hexdigest()[:16]]
        st = self.path.stat()
        return [str(self.path.resolve()), st.st_size, st.st_mtime_ns]


def resolve_sources(specs: str | Sequence[str], run_dir: Path | None = None) -> list[Source]:
    """Turn files, directories, globs and builtin:NAME into an ordered list of sources.

    Directories and globs leave out charrnn's run directories (`run_dir`, the run reading
    them, and any other holding a run's lock and config): a run kept under its corpus's
    directory (data.path: . with runs in ./runs) read its own files as text."""
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise UsageError("no input given; pass a file, directory, glob or builtin:NAME")
    skipped = _RunDirectories(run_dir)
    sources: list[Source] = []
    for spec in specs:
        sources.extend(_resolve_one(str(spec), skipped))
    return sources


class _RunDirectories:
    def __init__(self, run_dir: Path | None):
        self.own = os.path.realpath(run_dir) if run_dir is not None else None
        self._seen: dict[str, bool] = {}  # a glob's files share their parents

    def __contains__(self, directory: str | os.PathLike) -> bool:
        key = os.fspath(directory)
        if key not in self._seen:
            self._seen[key] = (self.own is not None and os.path.realpath(key) == self.own) \
                or fileio.is_run_directory(key)
        return self._seen[key]


def _resolve_one(spec: str, skipped: _RunDirectories) -> list[Source]:
    if spec.startswith("builtin:"):
        return builtin_sources(spec.removeprefix("builtin:"))
    if not spec.strip():
        raise UsageError("an empty path was given as input; pass a file, directory, glob or "
                         "builtin:NAME")
    path = Path(spec).expanduser()
    try:
        is_file, is_dir = path.is_file(), path.is_dir()
        # A FIFO, a device or a socket: refused without opening it (a FIFO would block).
        other = not (is_file or is_dir) and path.exists()
    except PermissionError:  # a directory on the way cannot be entered
        raise CorpusError(f"cannot read {spec}: permission denied on a directory in its path; "
                          "fix the permissions or choose another location") from None
    if other:
        what = fileio.what_it_is(fileio.file_kind(path))
        raise CorpusError(f"cannot read {spec}: {what}, not a regular file; point at text "
                          "files or a directory of them")
    if is_file:
        _check_readable(path)
        return [Source(str(path), path=path)]
    if is_dir:
        if not os.access(path, os.R_OK | os.X_OK):
            raise CorpusError(f"cannot read the directory {path}: permission denied; fix its "
                              f"permissions (chmod u+rx {shlex.quote(str(path))})")
        return _walk_directory(path, skipped)
    if GLOB_CHARS & set(spec):
        sources = []
        for match in _glob_matches(os.path.expanduser(spec)):
            if any(parent in skipped for parent in match.parents):
                continue  # (a run directory matched itself is left out by its walk)
            if match.is_dir():  # read as a directory named on its own would be
                sources += _walk_directory(match, skipped, required=False)
            else:
                _check_readable(match)
                sources.append(Source(str(match), path=match))
        if not sources:
            raise CorpusError(f"the pattern {spec!r} matches no files; check the pattern "
                              "(quote it so the shell does not expand it)")
        once = {os.path.realpath(source.path): source for source in reversed(sources)}
        return [source for source in sources if once[os.path.realpath(source.path)] is source]
    raise CorpusError(f"no such file or directory: {spec}; check the path")


def _glob_matches(pattern: str) -> list[Path]:
    """The files and directories a pattern matches, sorted, each once. `**` does not go
    through symbolic links to directories: glob's own recursion followed a link back up the
    tree (each file read 41 times; with two such links, a number of paths that grows without
    end)."""
    if "**" in pattern:
        head, _, _ = pattern.partition("**")
        root = head.rstrip("/") or "."
        candidates = [os.path.join(folder, name)
                      for folder, _, names in os.walk(root) for name in names]
        if head.endswith("/") or not head:  # `**` matches zero directories too
            candidates += [os.path.join(root, name) for name in os.listdir(root)] \
                if os.path.isdir(root) else []
        matched = [c for c in candidates if _matches(c, pattern, head)]
    else:
        matched = glob.glob(pattern)
    seen, found = set(), []
    for match in sorted(Path(p) for p in matched):
        key = os.path.realpath(match)
        if (match.is_file() or match.is_dir()) and key not in seen:
            seen.add(key)
            found.append(match)
    return found


def _matches(path: str, pattern: str, head: str) -> bool:
    """Whether `path` (found under the pattern's fixed head) matches `pattern` as glob would:
    `**/` any number of directories, `*` and `?` within one name, hidden names only where
    the pattern names them."""
    if head in ("", "./") and path.startswith("./") and not pattern.startswith("./"):
        path = path[2:]
    hidden = any(name.startswith(".") and name not in (".", "..")
                 for name in path[len(head):].split("/"))
    if hidden:
        return False
    regex = "".join("(?:[^/]+/)*" if part == "**/" else ".*" if part == "**"
                    else _name_regex(part) for part in re.split(r"(\*\*/|\*\*)", pattern)
                    if part)
    return re.fullmatch(regex, path) is not None


def _name_regex(part: str) -> str:
    """A glob pattern without `**` as a regular expression: no wildcard crosses a `/`."""
    out, i = [], 0
    while i < len(part):
        char = part[i]
        end = part.find("]", i + 2) if char == "[" else -1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif end > 0:
            body = part[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def _walk_directory(root: Path, run_directories: _RunDirectories,
                    required: bool = True) -> list[Source]:
    """The text files under `root`; none is an error when `required` (a directory named,
    rather than one of those a glob matched)."""
    sources, skipped = [], 0

    def unreadable(exc: OSError) -> None:  # os.walk left such a directory out silently
        raise CorpusError(f"cannot read the directory {exc.filename}: {exc.strerror}; fix its "
                          "permissions, or move it out of the corpus")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        # Sorted, hidden entries (.git, .venv) skipped: the same tree always gives the same text.
        if dirpath in run_directories:
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") or not path.is_file():
                continue
            _check_readable(path)  # a file left out without a word made another corpus
            if _looks_binary(path):
                skipped += 1
                continue
            sources.append(Source(str(path), path=path))
    if not sources and required:
        extra = f" ({skipped} binary file{'s' if skipped != 1 else ''} skipped)" if skipped else ""
        raise CorpusError(f"the directory {root} holds no text files{extra}; "
                          "point at UTF-8 text files")
    return sources


def _looks_binary(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return True
    # UTF-16 and UTF-32 text is full of NUL bytes, but is text: kept, so that reading it
    # says to convert it rather than leaving it out of a directory without a word.
    return b"\0" in head and not any(head.startswith(bom) for bom in _UTF16_32_BOMS)


def _check_readable(path: Path) -> None:
    if not os.access(path, os.R_OK):
        raise CorpusError(f"cannot read {path}: permission denied; fix its permissions "
                          f"(chmod u+r {shlex.quote(str(path))})")


def _os_problem(name: str, exc: OSError) -> str:
    return f"cannot read {name}: {exc.strerror or exc}"


def iter_text(sources: Iterable[Source], normalization: Normalization,
              separator: str = "", block_bytes: int = BLOCK_BYTES) -> Iterator[str]:
    """Yield the corpus as normalised text pieces, documents joined by `separator`."""
    for index, source in enumerate(sources):
        if index and separator:
            # As the text around it: a separator's own CR or capitals were learnt as
            # characters the normalisation says never occur.
            yield normalization.apply(separator)
        yield from _iter_source(source, normalization, block_bytes)


def _iter_source(source: Source, norm: Normalization, block_bytes: int) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    held = ""  # text after the last line break, kept until the next block completes the line
    offset = 0  # bytes of this file fed to the decoder so far
    first = True
    with source.open() as f:
        while True:
            try:
                block = f.read(block_bytes)
            except OSError as exc:
                raise CorpusError(_os_problem(source.name, exc)) from None
            final = not block
            if first:
                _check_first_block(source, block)
            _check_no_nul(source, block, offset)
            try:
                text = decoder.decode(block, final=final)
            except UnicodeDecodeError as exc:
                pending = len(decoder.getstate()[0])
                raise CorpusError(
                    f"{source.name} is not valid UTF-8 (byte offset {offset - pending + exc.start}"
                    f": {exc.reason}); convert it to UTF-8 into a new file, e.g. iconv -f "
                    f"LATIN1 -t UTF-8 {shlex.quote(source.name)} > converted.txt, if it is "
                    "Latin-1 text (a UTF-8 file with one stray byte is better mended by "
                    "hand)") from None
            offset += len(block)
            if first and text:
                if norm.strip_bom and text.startswith("\ufeff"):
                    text = text[1:]
                first = False
            text = held + text
            held = ""
            if not final and norm.needs_line_boundaries:
                cut = _safe_cut(text)
                text, held = text[:cut], text[cut:]
            if text:
                yield norm._transform(text)
            if final:
                return


def _safe_cut(text: str) -> int:
    """Where text can be cut so that no CRLF pair or combining sequence is split."""
    cut = text.rfind("\n") + 1
    if cut or len(text) < MAX_HELD_CHARS:
        return cut  # 0: no line break yet, wait for more text
    # A line longer than MAX_HELD_CHARS: cut before trailing CRs and combining marks instead.
    cut = len(text)
    while cut > 0 and (text[cut - 1] == "\r" or unicodedata.combining(text[cut - 1])):
        cut -= 1
    # The base character of a combining sequence waits too; but never more than
    # MAX_HELD_CHARS, or a run of 60 million CRs was held and joined again at every block
    # (quadratic: 40 s and 900 MB; only the last CR can pair with a coming LF).
    return max(cut - 1, len(text) - MAX_HELD_CHARS, 0)


def _check_first_block(source: Source, block: bytes) -> None:
    for bom, name in _UTF16_32_BOMS.items():
        if block.startswith(bom) and not block.startswith(codecs.BOM_UTF8):
            raise CorpusError(f"{source.name} is {name} text, not UTF-8; convert it, e.g. "
                              f"iconv -f {name} -t UTF-8 {shlex.quote(source.name)} > out.txt")


def _check_no_nul(source: Source, block: bytes, offset: int) -> None:
    nul = block.find(b"\0")
    if nul >= 0:
        raise CorpusError(f"{source.name} looks like a binary file (NUL byte at byte offset "
                          f"{offset + nul}); give UTF-8 text files only")


def total_bytes(sources: Iterable[Source]) -> int:
    """The sources' bytes as they are now (a file removed since it was read counts 0)."""
    total = 0
    for source in sources:
        with contextlib.suppress(OSError):
            total += source.size
    return total


# ---- named corpora ----------------------------------------------------------------------
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "lib2to3",
                "__pycache__"}


def _python_docs() -> list[Source]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions split pydoc_data into a separate package
        raise CorpusError("this Python has no pydoc topics (pydoc_data); use "
                          "builtin:python-stdlib or a file of your own") from None
    text = "\n\n".join(topics[key].strip("\n") for key in sorted(topics)) + "\n"
    return [Source("builtin:python-docs", data=text.encode("utf-8"))]


def _python_stdlib() -> list[Source]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if not _STDLIB_SKIP.intersection(p.relative_to(root).parts))
    if not files:
        raise CorpusError(f"found no standard-library sources under {root}; "
                          "use builtin:python-docs or a file of your own")
    return [Source(str(p), path=p) for p in files]


BUILTIN_CORPORA = {
    "python-docs": ("Python's help() topics: English prose and code, ~0.46 MB", _python_docs),
    "python-stdlib": ("Python's standard-library source code, ~12 MB", _python_stdlib),
}


def builtin_sources(name: str) -> list[Source]:
    try:
        _, build = BUILTIN_CORPORA[name]
    except KeyError:
        known = ", ".join(f"builtin:{n}" for n in BUILTIN_CORPORA)
        raise CorpusError(f"unknown built-in corpus {name!r}; choose one of {known}") from None
    return build()


@dataclass(frozen=True)
class RemoteCorpus:
    """A published text file that `charrnn data get` downloads and verifies."""

    name: str  # what `charrnn data get` takes
    filename: str  # saved as DEST/filename; a --mirror holds it under the same name
    url: str
    size: int  # bytes
    sha256: str  # hex digest of the exact published bytes
    description: str


REMOTE_CORPORA = {corpus.name: corpus for corpus in (
    RemoteCorpus(
        name="tiny-shakespeare",
        filename="tinyshakespeare.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        size=1_115_394,
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        description="char-rnn's Shakespeare plays: ASCII, 65 distinct characters",
    ),
    RemoteCorpus(
        name="nietzsche",
        filename="nietzsche.txt",
        url="https://s3.amazonaws.com/text-datasets/nietzsche.txt",
        size=600_901,
        sha256="23cf69874ab69d3d256099ab530ea4be24d47d9675b673bcc67cbcd6298ec647",
        description="the Keras example: Nietzsche in English, mixed case, 84 distinct characters",
    ),
    RemoteCorpus(
        name="hongloumeng",
        filename="hongloumeng.txt",
        # Pinned to a commit: the repository has no releases to point at.
        url="https://raw.githubusercontent.com/xuyao0127/hongloumeng/"
            "b8624bd09fb1156e34ae0cdae89d35a313ce5946/hongloumeng.txt",
        size=2_649_413,
        sha256="78967a20e654c4bbef0498a0a475c44a8b0e93c410f12ab587d632e839a90b2f",
        description="红楼梦 (Dream of the Red Chamber), 120 chapters: 4,437 distinct characters",
    ),
)}


def remote_corpus(name: str) -> RemoteCorpus:
    """The downloadable corpus called `name`; built-in names get a pointer to builtin:NAME."""
    if name in REMOTE_CORPORA:
        return REMOTE_CORPORA[name]
    bare = name.removeprefix("builtin:")
    if bare in BUILTIN_CORPORA:
        raise UsageError(f"{bare} is built in and needs no download; use it wherever a path "
                         f"goes, e.g. --set data.path=builtin:{bare}")
    known = ", ".join(REMOTE_CORPORA)
    raise UsageError(f"unknown corpus {name!r}; choose one of {known} "
                     "(`charrnn data list` shows them all)")
