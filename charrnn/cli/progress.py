"""What a person watching `charrnn train` sees: a live rich bar in a terminal, plain lines
elsewhere. Both are a `TrainingView` (metrics.py), so the trainer never asks which one it has.
"""

from __future__ import annotations

import math
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

TICKS = 10_000  # the bar's resolution; progress is a fraction of the step or time budget
LABELS = {"note": "[yellow]note:[/] ", "warning": "[yellow]warning:[/] "}


LONGEST_SHOWN = 10 * 365 * 86400  # seconds: longer estimates are shown as "over 10 years"


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds >= LONGEST_SHOWN:  # max_time 1e300 printed an estimate 300 digits long
        return "over 10 years"
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def format_fields(fields: dict) -> str:
    """'loss 1.5 nats/char | val ... | 12,000 chars/s | epoch 0.50 | lr 1.00e-03'."""
    parts = []
    if fields.get("loss") is not None:
        parts.append(f"loss {fields['loss']:.4f} nats/char")
    if fields.get("val_loss") is not None:
        parts.append(f"val {fields['val_loss']:.4f} nats ({fields['val_bpc']:.3f} bits/char)")
    if fields.get("chars_per_sec") is not None:
        parts.append(f"{fields['chars_per_sec']:,.0f} chars/s")
    if fields.get("epoch") is not None:
        parts.append(f"epoch {fields['epoch']:.2f}")
    if fields.get("lr") is not None:
        parts.append(f"lr {fields['lr']:.2e}")
    return " | ".join(parts)


def styled(text: str, kind: str) -> str:
    """A message as rich markup: the user's text escaped, its kind labelled."""
    if kind == "sample":
        header, _, body = text.partition("\n")
        return f"[dim]{escape(header)}[/]\n{escape(body)}"
    return LABELS.get(kind, "") + escape(text)


class PlainView:
    """One line per log interval: readable in CI logs and files. Quiet: results only."""

    def __init__(self, console: Console, quiet: bool = False):
        self.console, self.quiet = console, quiet
        self.started = time.monotonic()

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, step: int, fraction: float, fields: dict) -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self.started
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else 0.0
        self.console.print(f"step {step:>7,} | {format_fields(fields)} | "
                           f"{format_duration(elapsed)} elapsed, ETA {format_duration(eta)}",
                           highlight=False, soft_wrap=True)

    def message(self, text: str, kind: str = "info") -> None:
        if kind == "result" or not self.quiet:
            self.console.print(styled(text, kind), highlight=False, soft_wrap=True)


class LiveView(PlainView):
    """A rich progress bar with step, losses, speed, device and ETA; messages print above it."""

    def __init__(self, console: Console):
        super().__init__(console)
        self.progress = Progress(
            TextColumn("[bold]step {task.fields[step]:,}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[info]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console, transient=False, refresh_per_second=4)
        self.task = self.progress.add_task("train", total=TICKS, step=0, info="starting")

    def __enter__(self) -> LiveView:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, step: int, fraction: float, fields: dict) -> None:
        device = fields.get("device")
        info = format_fields(fields) + (f" | {device}" if device else "")
        self.progress.update(self.task, completed=int(TICKS * min(fraction, 1.0)), step=step,
                             info=escape(info))

    def message(self, text: str, kind: str = "info") -> None:
        self.progress.console.print(styled(text, kind), highlight=False, soft_wrap=True)


def make_view(console: Console, quiet: bool = False) -> PlainView:
    if console.is_terminal and not quiet:
        return LiveView(console)
    return PlainView(console, quiet)
