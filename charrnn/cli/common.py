"""What every command shares: the consoles, option types, and turning errors into one line.

Every `CharRNNError` becomes one red `error: ...` line on stderr and its exit code (1 runtime,
2 usage), never a traceback; usage errors from option parsing look the same.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from charrnn.errors import CharRNNError, ConfigError

try:  # typer >= 0.23 carries its own copy of click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer on top of click
    from click.exceptions import UsageError

    NoArgsIsHelpError = ()

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

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


def report(exc: CharRNNError) -> None:
    if isinstance(exc, ConfigError) and len(exc.problems) > 1:
        err.print(f"[bold red]error:[/] {escape(exc.source)}: {len(exc.problems)} problems")
        for problem in exc.problems:
            err.print(f"  - {escape(problem)}")
    else:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")


def warn(text: str) -> None:
    """A warning on stderr, for messages the library passes up."""
    err.print(f"[yellow]warning:[/] {escape(text)}")


def handles_errors(command):
    """Turn the errors users can cause into one red line and an exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CharRNNError as exc:
            # Under torchrun every process raises the error (see distributed.py): shown once.
            if speaks_for_the_run():
                report(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None
        except MemoryError:
            err.print("[bold red]error:[/] out of memory; lower data.batch_size, data.seq_len "
                      "or model.hidden_size")
            raise typer.Exit(1) from None
        except RuntimeError as exc:
            if "out of memory" not in str(exc).lower():
                raise
            err.print("[bold red]error:[/] the device ran out of memory; lower data.batch_size, "
                      "data.seq_len or model.hidden_size")
            raise typer.Exit(1) from None

    return wrapper
