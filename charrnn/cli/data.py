"""`charrnn data list` and `charrnn data get`: the named corpora, downloaded and verified.

Nothing here imports torch, so both commands start at once. The download itself lives in
download.py; this module only parses, shows a progress bar on stderr and prints the result.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from charrnn.cli.common import CommandGroup, err, handles_errors, out

app = typer.Typer(cls=CommandGroup, no_args_is_help=True,
                  help="List the named corpora and download them, verified.")


@app.command("list")
@handles_errors
def list_corpora() -> None:
    """Corpora that `data get` downloads, and the built-in ones (use as builtin:NAME)."""
    out.print(corpora_table())


@app.command("get")
@handles_errors
def get(
    name: Annotated[str, typer.Argument(metavar="NAME", show_default=False,
                                        help="A corpus from `charrnn data list`.")],
    dest: Annotated[Path, typer.Option(help="Directory to save the file in.")] = Path("data"),
    mirror: Annotated[str | None, typer.Option(
        metavar="URL_OR_DIR", show_default=False,
        help="Fetch from this base URL or local directory (same file names) instead.")] = None,
) -> None:
    """Download a named corpus, check its size and SHA-256, and save it atomically."""
    from charrnn.corpus import remote_corpus
    from charrnn.download import fetch

    corpus = remote_corpus(name)
    with _DownloadBar(corpus.name, corpus.size) as bar:
        fetched = fetch(corpus, dest, mirror=mirror, on_progress=bar.advance)
    path = escape(str(fetched.path))
    if fetched.downloaded:
        out.print(f"saved {path} ({corpus.size:,} bytes, SHA-256 verified) from "
                  f"{escape(fetched.source)}")
    else:
        out.print(f"{path} is already here and verified ({corpus.size:,} bytes, SHA-256 "
                  f"{corpus.sha256[:12]}); nothing to do")
    quoted = escape(shlex.quote(f"data.path={fetched.path}"))  # a command to paste
    out.print(f"train on it with: charrnn train --set {quoted}")


def corpora_table() -> Table:
    from charrnn.corpus import BUILTIN_CORPORA, REMOTE_CORPORA, builtin_sources, total_bytes
    from charrnn.errors import CorpusError

    table = Table(title="corpora", caption="download one with `charrnn data get NAME`; "
                  "built-in ones need no download: data.path: builtin:NAME")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("size (bytes)", justify="right", no_wrap=True)
    table.add_column("sha256", no_wrap=True)
    table.add_column("source", overflow="fold")  # folded, never cut: a cut URL is useless
    for corpus in REMOTE_CORPORA.values():
        table.add_row(corpus.name, f"{corpus.size:,}", corpus.sha256[:12],
                      f"{escape(corpus.url)}\n[dim]{escape(corpus.description)}[/]")
    for name, (description, _) in BUILTIN_CORPORA.items():
        try:  # measured, not quoted: it depends on the Python version
            size = f"{total_bytes(builtin_sources(name)):,}"
        except CorpusError:
            size = "unavailable"
        table.add_row(f"builtin:{name}", size, "-",
                      f"this Python installation, no download\n[dim]{escape(description)}[/]")
    return table


class _DownloadBar:
    """A transfer bar on stderr, started by the first bytes (so never shown for a no-op)."""

    def __init__(self, label: str, total: int):
        self.label, self.total = label, total
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                                 console=err, transient=True)
        self.task = None

    def __enter__(self) -> _DownloadBar:
        return self

    def __exit__(self, *exc) -> None:
        if self.task is not None:
            self.progress.stop()

    def advance(self, nbytes: int) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=self.total)
        self.progress.advance(self.task, nbytes)
