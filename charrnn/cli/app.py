"""The `charrnn` application: every command group attached to one Typer app.

Where each command lives: `charrnn vocab` in vocab.py, `train` in train.py, `sample` (and its
interactive loop) in sample.py, `eval` in eval.py, `info` in info.py, `plot` in plot.py,
`serve` in serve.py (the server itself is the library's charrnn/serve/), `charrnn data` in
data.py. To add a command, write it in a module of its own and attach it here.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
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
    try:
        app(prog_name="charrnn")
        code = 0
    except SystemExit as finished:
        if not isinstance(finished.code, int | None):
            raise  # a message to print: Python's own exit does that
        code = finished.code or 0
    several = one_of_several_processes()
    if "torch" in sys.modules or several:
        _leave_without_teardown(code, several)
    sys.exit(code)


def _leave_without_teardown(code: int, several: bool) -> None:
    """Exit once everything is written, skipping the interpreter's teardown of its modules.

    With torch loaded, that teardown takes about a third of a second (more than generating
    5,000 characters), and nothing of charrnn's needs it: files are written and closed by the
    time a command returns, and the exit handlers (temporary files, logging) still run here.
    It is kept when a thread other than daemons is still running: Python would wait for it.

    One of several torchrun processes always leaves this way: DDP keeps the process group,
    and gloo's threads, alive past destroy_process_group (torch 2.13); one of them still
    dropping a finished collective's tensors while the interpreter shuts down aborts the
    process ("terminate called without an active exception") after a run that went well,
    and torchrun reports it failed.
    """
    others = [t for t in threading.enumerate()
              if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if others and not several:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with that descriptor closed
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader gone, or a stream already closed
            pass
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is not None and not several:  # torchrun's: as it always left
        run_exit_handlers()
    os._exit(code)
