"""Corpora that need no download: text that ships with the running Python itself.

`builtin:python-docs` is the language reference and library topics behind `help()`
(about 0.46 MB of English prose and code); `builtin:python-stdlib` is the standard library's
own Python source (about 12 MB, tests excluded). Both exist on every Python installation, so
the default config and `make demo` work offline on a fresh clone.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

from charrnn.corpus import Source
from charrnn.errors import CorpusError

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

