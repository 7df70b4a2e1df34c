"""The `charrnn` application: every command group attached to one Typer app.

Where each command lives: `charrnn vocab` in vocab.py, `train` in train.py, `sample` (and its
interactive loop) in sample.py, `eval` in eval.py, `info` in info.py, `plot` in plot.py,
`serve` in serve.py (the server itself is the library's charrnn/serve/), `charrnn data` in
data.py. To add a command, write it in a module of its own and attach it here.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

# Each command module by its full name: importing them through the package (`from
# charrnn.cli import ...`) would make the package and this module import each other.
import charrnn.cli.data as data
import charrnn.cli.eval as eval
import charrnn.cli.info as info
import charrnn.cli.plot as plot
import charrnn.cli.sample as sample
import charrnn.cli.serve as serve
import charrnn.cli.train as train
import charrnn.cli.vocab as vocab
from charrnn import __version__
from charrnn.cli.common import CommandGroup, one_of_several_processes, out, sane_terminal_width

app = typer.Typer(cls=CommandGroup, no_args_is_help=True, rich_markup_mode="rich",
                  pretty_exceptions_enable=False, context_settings={"help_option_names":
                                                                    ["-h", "--help"]},
                  help="Character-level RNN/LSTM/GRU language models: build a vocabulary, "
                       "train from a YAML config, sample text.")
app.add_typer(vocab.app, name="vocab")
app.add_typer(data.app, name="data")
app.command()(train.train)
app.command()(sample.sample)
app.command("eval")(eval.evaluate)
app.command()(info.info)
app.command()(plot.plot)
app.command()(serve.serve)


def _version(value: bool) -> None:
    if value:
        out.print(f"charrnn {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version and exit.")]
        = False) -> None:
    """Character-level RNN/LSTM/GRU language models."""


def main() -> None:
    sane_terminal_width()  # before Typer draws help with a console of its own
    if not one_of_several_processes():
        app(prog_name="charrnn")
        return
    # One of several torchrun processes leaves without Python's teardown. DDP keeps the process
    # group, and gloo's threads, alive past destroy_process_group (torch 2.13); one of them
    # still dropping a finished collective's tensors while the interpreter shuts down aborts
    # the process ("terminate called without an active exception") after a run that went
    # well, and torchrun reports it failed. Everything is written and left by now.
    try:
        app(prog_name="charrnn")
        code = 0
    except SystemExit as finished:
        code = finished.code if isinstance(finished.code, int) else int(bool(finished.code))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
