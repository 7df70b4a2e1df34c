"""What every command shares: the consoles, option types, and the guard around each command.

`handles_errors` is the one guard every command runs inside. It turns every `CharRNNError`
into one red `error: ...` line on stderr and its exit code (1 runtime, 2 usage), never a
traceback (usage errors from option parsing look the same), and it owns the terminal:

- **standard output that fails** (a full disk, a closed descriptor) is one `error:` line; a
  reader that went away (`charrnn sample | head -c1`) ends the command quietly with exit code
  141, as a Unix tool killed by SIGPIPE does. Standard output closed before the command
  starts is refused before anything is done.
- **characters the output encoding cannot show** (PYTHONIOENCODING=ascii, a cp1252 console)
  are written as backslash escapes (`\u5b9d`), on stdout as Python already does on stderr;
  files written with --output are always UTF-8.
- **a terminal narrower than MIN_WIDTH** (or COLUMNS=0) is drawn as MIN_WIDTH columns wide
  rather than as nothing.
- **SIGTERM** unwinds like Ctrl-C, so a half-written temporary file is removed (exit 143).
- **running out of memory** is one line with advice that fits the command.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from charrnn import outputs
from charrnn.errors import REPORTED, CharRNNError, ConfigError, TrainingInterrupted

try:  # typer >= 0.23 carries its own copy of click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer on top of click
    from click.exceptions import UsageError

    NoArgsIsHelpError = ()

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
MIN_WIDTH = 40  # columns: narrower, a table cannot show a word per cell
MEMORY_HINT = "close other programs or use a machine with more memory"

# Options several commands take, declared once.
CheckpointOption = Annotated[Path, typer.Option(
    "--checkpoint", "-k", help="A run directory (its best.pt) or a .pt file.",
    show_default=False)]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")]


def _optional_resume_value(args: list[str]) -> list[str]:
    """Let `--resume` stand alone (meaning the config's out_dir) or take a RUN_DIR."""
    fixed = []
    for i, arg in enumerate(args):
        alone = i + 1 == len(args) or args[i + 1].startswith("-")
        fixed.append("--resume=" if arg == "--resume" and alone else arg)
    return fixed


class CommandGroup(typer.core.TyperGroup):
    """Usage errors (bad option values, unknown options) as one line, like every other error."""

    def make_context(self, info_name, args, parent=None, **extra):
        with _usage_errors_as_one_line():
            return super().make_context(info_name, _optional_resume_value(list(args)),
                                        parent=parent, **extra)

    def invoke(self, ctx):
        with _usage_errors_as_one_line():
            return super().invoke(ctx)


class _usage_errors_as_one_line:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, UsageError) and not isinstance(exc, NoArgsIsHelpError):
            command = exc.ctx.command_path if exc.ctx else "charrnn"
            err.print(f"[bold red]error:[/] {escape(exc.format_message())} "
                      f"(see `{command} --help`)")
            raise typer.Exit(2) from None
        return False


def one_of_several_processes() -> bool:
    """True in a process torchrun started with others (a world of more than one).

    Read from torchrun's variables rather than charrnn.distributed, which would import torch.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def speaks_for_the_run() -> bool:
    """False in the processes torchrun starts besides rank 0, which reports for all of them."""
    return not one_of_several_processes() or os.environ.get("RANK", "0") == "0"


def report(exc: CharRNNError | TrainingInterrupted) -> None:
    if isinstance(exc, ConfigError) and len(exc.problems) > 1:
        err.print(f"[bold red]error:[/] {escape(exc.source)}: {len(exc.problems)} problems")
        for problem in exc.problems:
            err.print(f"  - {escape(problem)}")
    else:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")


def sane_terminal_width() -> None:
    """A width set in the environment below MIN_WIDTH is raised to it: with COLUMNS=0 every
    table and help page would be drawn as nothing. (Rich ignores a COLUMNS that is not a
    number; Typer fails on such a TERMINAL_WIDTH, so that one is replaced.)"""
    for name in ("COLUMNS", "TERMINAL_WIDTH"):
        value = os.environ.get(name)
        if value is None or (name == "COLUMNS" and not value.strip().isdigit()):
            continue
        if not value.strip().isdigit() or int(value) < MIN_WIDTH:
            os.environ[name] = str(MIN_WIDTH)


def report_written(path: Path, what: str) -> None:
    """'wrote PATH: WHAT', on stderr when PATH was standard output (which holds the content)."""
    console = err if outputs.names_stdout(path) else out
    console.print(f"wrote {escape(str(path))}: {escape(what)}")


def warn(text: str) -> None:
    """A warning on stderr, for messages the library passes up."""
    err.print(f"[yellow]warning:[/] {escape(text)}")


def handles_errors(command: Callable | None = None, *, memory_hint: str = MEMORY_HINT):
    """Run a command inside the guard described above; `memory_hint` is the advice given
    when it runs out of memory (`@handles_errors(memory_hint="lower --width")`)."""
    if command is None:
        return functools.partial(handles_errors, memory_hint=memory_hint)

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with _guarded_terminal():
                return command(*args, **kwargs)
        except _OutputFailed as failure:
            _report_output_failure(failure.error)
        except BrokenPipeError as exc:  # standard output as a file (--output -) lost its reader
            _report_output_failure(exc)
        except REPORTED as exc:
            # Under torchrun every process raises the error (see distributed.py): shown once.
            if speaks_for_the_run():
                _quietly(report, exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _quietly(err.print, "[bold red]interrupted[/]")
            raise typer.Exit(130) from None
        except _Terminated:
            _quietly(err.print, "[bold red]terminated[/]")
            raise typer.Exit(143) from None
        except MemoryError:
            _quietly(err.print, f"[bold red]error:[/] out of memory; {escape(memory_hint)}")
            raise typer.Exit(1) from None
        except RuntimeError as exc:
            message = str(exc).lower()
            if "out of memory" not in message and "can't allocate memory" not in message:
                raise
            what = "the device ran out of memory" if "cuda" in message or "mps" in message \
                else "out of memory"
            _quietly(err.print, f"[bold red]error:[/] {what}; {escape(memory_hint)}")
            raise typer.Exit(1) from None

    return wrapper


class _OutputFailed(Exception):
    """Writing to standard output failed with `error` (an OSError)."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


class _Terminated(BaseException):
    """SIGTERM, raised where the program is, so that everything unwinds as for Ctrl-C."""


class _GuardedOutput:
    """sys.stdout while a command runs: a failed write is known to be standard output's."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise _OutputFailed(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise _OutputFailed(exc) from None

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _guarded_terminal():
    if sys.stdout is None:  # started with its descriptor closed (`>&-`)
        raise CharRNNError("standard output is closed; redirect it instead (e.g. > /dev/null "
                           "or > file)")
    for stream in (sys.stdout, sys.stderr):
        # Characters the encoding lacks become \u escapes instead of a UnicodeEncodeError.
        if getattr(stream, "errors", None) == "strict":
            with contextlib.suppress(AttributeError, ValueError, OSError):
                stream.reconfigure(errors="backslashreplace")
    for console in (out, err):
        if console.width < MIN_WIDTH:
            console.width = MIN_WIDTH
    stdout = sys.stdout
    sys.stdout = _GuardedOutput(stdout)
    previous = {signum: _on_signal(signum, _raise_outside_imports(exception))
                for signum, exception in ((signal.SIGTERM, _Terminated),
                                          (signal.SIGINT, KeyboardInterrupt))}
    try:
        yield
        sys.stdout.flush()  # a last buffered write that fails, fails here and not at exit
    finally:
        for signum, handler in previous.items():
            _on_signal(signum, handler)
        sys.stdout = stdout


# An exception raised inside an import (torch's takes a second) leaves its modules half made:
# numpy swallowed it and torch then failed on a missing attribute, pybind11 aborted the
# process (exit 134), or the signal was lost and a run went on to its end. Inside an import
# the signal is sent again this much later, until the import is done.
REDELIVER_SECONDS = 0.05


def _raise_outside_imports(exception: type[BaseException]) -> Callable:
    def handle(signum, frame) -> None:
        if _importing(frame):
            timer = threading.Timer(REDELIVER_SECONDS, os.kill, (os.getpid(), signum))
            timer.daemon = True
            timer.start()
            return
        raise exception

    return handle


def _importing(frame) -> bool:
    """Whether `frame` runs inside an import (the import machinery is on its stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _on_signal(signum: int, handler):
    """Install `handler` for `signum` (main thread only); the one it replaces."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signum, handler)


def _report_output_failure(error: OSError) -> None:
    _silence_stdout()
    if error.errno == errno.EPIPE:
        raise typer.Exit(141)  # the reader has all it wanted: nothing to report
    _quietly(err.print, f"[bold red]error:[/] cannot write to standard output: "
                        f"{escape(error.strerror or str(error))}; {outputs.STDOUT_FIX}")
    raise typer.Exit(1)


def _silence_stdout() -> None:
    """Point the real standard output at /dev/null, so that the interpreter's last flush of
    what could not be written fails no more (it would print a second error)."""
    with contextlib.suppress(AttributeError, ValueError, OSError):
        fd = sys.stdout.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)


def _quietly(show, *args) -> None:
    """Report on stderr; if stderr itself cannot be written, the exit code says it all."""
    with contextlib.suppress(OSError, ValueError):
        show(*args)
