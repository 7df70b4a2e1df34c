"""`charrnn info`: what a checkpoint holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charrnn.cli.common import handles_errors, out


@handles_errors
def info(
    checkpoint: Annotated[Path, typer.Argument(
        metavar="CHECKPOINT", help="A run directory (its best.pt) or a .pt file.",
        show_default=False)],
) -> None:
    """What a checkpoint holds: model, vocabulary, progress, losses, config, versions."""
    from charrnn.checkpoint import load, resolve
    from charrnn.cli.tables import checkpoint_table

    path = resolve(checkpoint)
    out.print(checkpoint_table(load(path), path))
