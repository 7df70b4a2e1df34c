"""`charrnn plot`: training curves of one or more runs, drawn into an image file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charrnn.cli.common import handles_errors, report_written
from charrnn.plot import MAX_PIXELS, MIN_PIXELS  # light: matplotlib is imported when drawing


@handles_errors(memory_hint="lower --width and --height")
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(
        metavar="RUN_DIR", help="Run directories (their metrics.jsonl); several are "
        "compared in one figure.", show_default=False)],
    output: Annotated[Path, typer.Option(
        "--output", "-o", dir_okay=False, help="Image to write; .png, .svg or .pdf (- is a "
        "PNG on standard output).")] = Path("loss.png"),
    width: Annotated[int, typer.Option(min=MIN_PIXELS["--width"], max=MAX_PIXELS,
                                       help="Image width in pixels.")] = 1200,
    height: Annotated[int, typer.Option(min=MIN_PIXELS["--height"], max=MAX_PIXELS,
                                        help="Image height in pixels.")] = 800,
) -> None:
    """Loss (nats and bits per char) and learning rate against step and wall time."""
    from charrnn.plot import DPI, plot_runs

    plot_runs(run_dirs, output, width=width, height=height)
    vector = output.suffix.lower() in (".svg", ".pdf")  # sized in inches, not pixels
    report_written(output, f"{width / DPI:g} x {height / DPI:g} inches" if vector
                   else f"{width} x {height} pixels")
