"""The training view: everything a person watches for, in a terminal and in a log."""

import io

from rich.console import Console

from charrnn.cli.progress import LiveView, PlainView, format_duration, make_view

FIELDS = {"loss": 1.5, "val_loss": 1.6, "val_bpc": 2.308, "chars_per_sec": 12345.0,
          "epoch": 0.5, "lr": 1e-3, "device": "cpu (2 threads)"}


def test_live_view_shows_step_losses_speed_epoch_device_and_eta():
    console = Console(file=io.StringIO(), force_terminal=True, width=250, color_system=None)
    view = make_view(console)
    assert isinstance(view, LiveView)
    with view:
        view.update(40, 0.5, FIELDS)
    shown = console.file.getvalue().rsplit("\x1b[2K", 1)[-1]  # the bar's last frame
    for part in ("step 40", "loss 1.5000 nats/char", "val 1.6000 nats (2.308 bits/char)",
                 "12,345 chars/s", "epoch 0.50", "cpu (2 threads)", "ETA"):
        assert part in shown, part


def test_plain_lines_when_not_a_terminal():
    console = Console(file=io.StringIO(), force_terminal=False, width=250)
    view = make_view(console)
    assert type(view) is PlainView
    with view:
        view.update(40, 0.5, FIELDS)
    line = console.file.getvalue()
    assert "\x1b[" not in line and line.count("\n") == 1
    assert "step      40" in line and "epoch 0.50" in line and "ETA" in line


def test_messages_are_labelled_by_kind_and_never_read_as_markup():
    console = Console(file=io.StringIO(), force_terminal=False, width=250)
    view = make_view(console)
    view.message("a run in runs/[draft] and [/] closing nothing", "info")
    view.message("20 characters became <unk>", "warning")
    view.message("fine-tuning keeps the checkpoint's architecture", "note")
    view.message("--- sample at step 5 ---\n[bold]text[/bold]", "sample")
    lines = console.file.getvalue().splitlines()
    assert lines == ["a run in runs/[draft] and [/] closing nothing",
                     "warning: 20 characters became <unk>",
                     "note: fine-tuning keeps the checkpoint's architecture",
                     "--- sample at step 5 ---", "[bold]text[/bold]"]


def test_quiet_shows_only_results():
    console = Console(file=io.StringIO(), force_terminal=True, width=250)
    view = make_view(console, quiet=True)
    assert type(view) is PlainView  # no live bar when quiet, even in a terminal
    with view:
        view.update(40, 0.5, FIELDS)
        view.message("device: cpu", "info")
        view.message("a warning", "warning")
        view.message("step 40: val 1.6", "result")
    assert console.file.getvalue().strip() == "step 40: val 1.6"


def test_durations_read_as_clock_times_and_absurd_ones_stay_short():
    assert format_duration(59.9) == "00:59"
    assert format_duration(3 * 3600 + 61) == "3:01:01"
    assert format_duration(float("inf")) == "?"
    assert format_duration(1e300) == "over 10 years"  # max_time 1e300: 300 digits before
