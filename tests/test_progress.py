"""The training view: everything a person watches for, in a terminal and in a log."""

import io

from rich.console import Console

from charrnn.progress import LiveView, PlainView, make_view

FIELDS = {"loss": 1.5, "val_loss": 1.6, "val_bpc": 2.308, "chars_per_sec": 12345.0,
          "epoch": 0.5, "lr": 1e-3}


def test_live_view_shows_step_losses_speed_epoch_device_and_eta():
    console = Console(file=io.StringIO(), force_terminal=True, width=250, color_system=None)
    view = make_view(console, "cpu (2 threads)")
    assert isinstance(view, LiveView)
    with view:
        view.update(40, 0.5, FIELDS)
    shown = console.file.getvalue().rsplit("\x1b[2K", 1)[-1]  # the bar's last frame
    for part in ("step 40", "loss 1.5000 nats/char", "val 1.6000 nats (2.308 bits/char)",
                 "12,345 chars/s", "epoch 0.50", "cpu (2 threads)", "ETA"):
        assert part in shown, part


def test_plain_lines_when_not_a_terminal():
    console = Console(file=io.StringIO(), force_terminal=False, width=250)
    view = make_view(console, "cpu (2 threads)")
    assert type(view) is PlainView
    with view:
        view.update(40, 0.5, FIELDS)
    line = console.file.getvalue()
    assert "\x1b[" not in line and line.count("\n") == 1
    assert "step      40" in line and "epoch 0.50" in line and "ETA" in line
