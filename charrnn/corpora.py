"""Named corpora: built-in text that needs no download, and well-known files to download.

Built-in corpora ship with the running Python itself: `builtin:python-docs` is the language
reference and library topics behind `help()` (about 0.46 MB of English prose and code);
`builtin:python-stdlib` is the standard library's own Python source (about 12 MB, tests
excluded). Both exist on every Python installation, so the default config and `make demo` work
offline on a fresh clone.

Remote corpora are fetched by `charrnn data get NAME` (see download.py), which checks each
against the size and SHA-256 recorded here, so a changed or damaged file is never trained on.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

from charrnn.corpus import Source
from charrnn.errors import CorpusError, UsageError

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
