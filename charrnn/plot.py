"""Training curves from metrics.jsonl: loss and learning rate against step and wall time.

matplotlib is an optional extra (`pip install 'charrnn[plot]'`), imported here only when a
figure is drawn. The figure is rendered by the Agg backend straight into a file: no display is
needed, and pyplot's global state and the user's backend setting are left alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from charrnn import fileio, outputs
from charrnn.errors import CharRNNError, UsageError
from charrnn.memory import check_fits
from charrnn.metrics import METRICS_FILE, read_metrics

DPI = 100  # pixels per inch, so --width and --height in pixels give the figure size exactly
MIN_PIXELS = {"--width": 300, "--height": 200}  # room for the four panels and their labels
MAX_PIXELS = 10_000  # a side; Agg refuses 2**16, and 10,000 x 10,000 is 400 MB of canvas
BITS_PER_NAT = 1 / math.log(2)
# Values beyond this leave a gap: no loss, rate or time is near it, and matplotlib's tick
# arithmetic overflows close to the float limit (a forged lr of 1e308 printed its warning).
LARGEST_PLOTTED = 1e100


@dataclass
class Curves:
    """One run's metrics as the series the figure draws; times in seconds."""

    label: str
    train_step: list[float] = field(default_factory=list)
    train_time: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)  # nats/char
    lr: list[float] = field(default_factory=list)
    val_step: list[float] = field(default_factory=list)
    val_time: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)  # nats/char


def load_curves(run_dir: Path, label: str) -> Curves:
    run_dir = Path(run_dir).expanduser()
    path = run_dir / METRICS_FILE
    kind = fileio.file_kind(path)
    if kind == "missing":
        raise CharRNNError(f"{path} not found; pass a run directory written by `charrnn train`")
    if kind != "file":
        raise CharRNNError(f"cannot read {path}: {fileio.what_it_is(kind)}, not a regular "
                           "file; pass a run directory written by `charrnn train`")
    curves = Curves(label)
    for record in read_metrics(run_dir):
        if record.get("kind") == "train":
            curves.train_step.append(_number(record["step"]))
            curves.train_time.append(_number(record.get("elapsed")))
            curves.train_loss.append(_number(record.get("loss")))
            curves.lr.append(_number(record.get("lr")))
        elif record.get("kind") == "eval":
            curves.val_step.append(_number(record["step"]))
            curves.val_time.append(_number(record.get("elapsed")))
            curves.val_loss.append(_number(record.get("val_loss")))
    if not curves.train_step and not curves.val_step:
        raise CharRNNError(f"{path} holds no records yet; plot the run after its first log "
                           "interval (train.log_every)")
    return curves


def plot_runs(run_dirs: list[Path], output: Path, width: int = 1200, height: int = 800) -> None:
    """Draw every run into one 2x2 figure (loss and learning rate x step and wall time)."""
    Figure, FigureCanvasAgg, Line2D = _matplotlib()
    check_image_size(width, height)
    output = Path(output)
    # Standard output has no suffix to tell the type by: PNG, the default.
    image_type = "png" if outputs.names_stdout(output) else output.suffix.lower().lstrip(".")
    if image_type not in FigureCanvasAgg.get_supported_filetypes():
        raise UsageError(f"cannot write {output}: unknown image type {output.suffix!r}; "
                         "use .png, .svg or .pdf")
    labels = legend_labels(run_dirs)
    runs = [load_curves(run_dir, label) for run_dir, label in zip(run_dirs, labels, strict=True)]
    longest = max((t for run in runs for t in run.train_time + run.val_time
                   if not math.isnan(t)), default=0.0)
    unit, seconds_per_unit = _time_unit(longest)

    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    (loss_by_step, loss_by_time), (lr_by_step, lr_by_time) = figure.subplots(2, 2, sharex="col")
    for index, run in enumerate(runs):
        color = f"C{index % 10}"
        train_time = [t / seconds_per_unit for t in run.train_time]
        val_time = [t / seconds_per_unit for t in run.val_time]
        for axes, train_x, val_x in ((loss_by_step, run.train_step, run.val_step),
                                     (loss_by_time, train_time, val_time)):
            axes.plot(train_x, run.train_loss, color=color, linewidth=1.2)
            axes.plot(val_x, run.val_loss, color=color, linestyle="--", marker="o", markersize=3)
        lr_by_step.plot(run.train_step, run.lr, color=color, linewidth=1.2)
        lr_by_time.plot(train_time, run.lr, color=color, linewidth=1.2)

    for axes, against in ((loss_by_step, "step"), (loss_by_time, "wall time")):
        axes.set_title(f"loss against {against}")
        axes.set_ylabel("loss (nats/char)")
        bits = axes.secondary_yaxis("right", functions=(lambda n: n * BITS_PER_NAT,
                                                        lambda b: b / BITS_PER_NAT))
        bits.set_ylabel("bits/char")
    for axes, against in ((lr_by_step, "step"), (lr_by_time, "wall time")):
        axes.set_title(f"learning rate against {against}")
        axes.set_ylabel("learning rate")
        axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    lr_by_step.set_xlabel("step")
    lr_by_time.set_xlabel(f"wall time ({unit})")
    for axes in (loss_by_step, loss_by_time, lr_by_step, lr_by_time):
        axes.grid(alpha=0.3)

    # One entry per run (its colour) plus what solid and dashed lines mean.
    handles = [Line2D([], [], color=f"C{i % 10}", label=run.label) for i, run in enumerate(runs)]
    handles += [Line2D([], [], color="grey", label="train"),
                Line2D([], [], color="grey", linestyle="--", marker="o", markersize=3,
                       label="validation")]
    loss_by_step.legend(handles=handles, fontsize="small")
    outputs.write_output_with(output, lambda f: figure.savefig(f, format=image_type, dpi=DPI))


def check_image_size(width: int, height: int) -> None:
    """Refuse a figure too big to draw: past MAX_PIXELS a side, or more than memory holds."""
    for name, value in (("--width", width), ("--height", height)):
        if not MIN_PIXELS[name] <= value <= MAX_PIXELS:
            raise UsageError(f"{name} must be between {MIN_PIXELS[name]} and {MAX_PIXELS:,} "
                             f"pixels, not {value:,}")
    # The canvas holds 4 bytes a pixel; rendering and encoding need about as much again.
    check_fits(8 * width * height, f"a {width:,} x {height:,} pixel figure",
               "lower --width and --height")


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError:
        raise CharRNNError("charrnn plot needs matplotlib, which is not installed: "
                           "pip install 'charrnn[plot]'") from None
    return Figure, FigureCanvasAgg, Line2D


def legend_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's directory name, or the whole path where two names would be the same."""
    names = [Path(d).resolve().name or str(d) for d in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [str(d) for d in run_dirs]


def _time_unit(longest_seconds: float) -> tuple[str, float]:
    if longest_seconds < 300:
        return "s", 1.0
    if longest_seconds < 3 * 3600:
        return "min", 60.0
    return "h", 3600.0


def _number(value: object) -> float:
    # Non-finite values are logged as null, and an edited log may hold anything: what is not
    # a number that a float can hold leaves a gap in the line instead (NaN).
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return math.nan
    try:
        number = float(value)
    except OverflowError:
        return math.nan
    return number if abs(number) <= LARGEST_PLOTTED else math.nan  # NaN fails the test too
