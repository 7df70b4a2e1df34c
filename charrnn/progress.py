"""What a person watching training sees: a live rich bar in a terminal, plain lines elsewhere.

Both views take the same calls, so the trainer never asks which one it has.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

TICKS = 10_000  # the bar's resolution; progress is a fraction of the step or time budget


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def describe_fields(fields: dict) -> str:
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


class PlainView:
    """One line per log interval: readable in CI logs and files."""

    def __init__(self, console: Console, quiet: bool = False):
        self.console, self.quiet = console, quiet
        self.started = time.monotonic()

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, step: int, fraction: float, fields: dict, log: bool = True) -> None:
        if self.quiet or not log:
            return
        elapsed = time.monotonic() - self.started
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else 0.0
        self.console.print(f"step {step:>7,} | {describe_fields(fields)} | "
                           f"{format_duration(elapsed)} elapsed, ETA {format_duration(eta)}",
                           highlight=False, soft_wrap=True)

    def message(self, text: str, important: bool = False) -> None:
        if important or not self.quiet:
            self.console.print(text, highlight=False, soft_wrap=True)


class LiveView(PlainView):
    """A rich progress bar with step, losses, speed, device and ETA; messages print above it."""

    def __init__(self, console: Console, device: str):
        super().__init__(console)
        self.device = device  # shown on the bar: the plain view prints it once at the start
        self.progress = Progress(
            TextColumn("[bold]step {task.fields[step]:,}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[info]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console, transient=False, refresh_per_second=4)
        self.task = self.progress.add_task("train", total=TICKS, step=0,
                                           info=f"starting on {device}")

    def __enter__(self) -> LiveView:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, step: int, fraction: float, fields: dict, log: bool = True) -> None:
        self.progress.update(self.task, completed=int(TICKS * min(fraction, 1.0)), step=step,
                             info=f"{describe_fields(fields)} | {self.device}")

    def message(self, text: str, important: bool = False) -> None:
        self.progress.console.print(text, highlight=False, soft_wrap=True)


def make_view(console: Console, device: str, quiet: bool = False) -> PlainView:
    if console.is_terminal and not quiet:
        return LiveView(console, device)
    return PlainView(console, quiet)
