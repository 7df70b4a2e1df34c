"""Graceful stop on a signal: finish the step, save, exit with 128 + the signal's number.

Ctrl-C (SIGINT), SIGTERM (what schedulers, torchrun and `kill` send before killing),
SIGUSR1 (Slurm's warning before a time limit or preemption, `--signal=USR1@60`) and SIGHUP (a
closed terminal; not under nohup) only set a flag the training loop checks after each step.
From the first signal on the process has `grace` seconds: if it is still running then (a save
stuck on a slow disk, a peer that hangs), it exits anyway. Every file is written atomically,
so the last complete checkpoint stays.

A second Ctrl-C raises KeyboardInterrupt at once. A second SIGTERM or SIGUSR1 does not: a
cluster sends its signal to every process of a job and torchrun passes it on to its workers,
so each worker gets it twice, and the save it starts must not be cut short.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable

STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM]
if hasattr(signal, "SIGUSR1"):  # not on Windows
    # SIGHUP: a terminal closed, an SSH session dropped (torchrun passes it on when told to);
    # it ended training at once, losing the steps since the last save.
    STOP_SIGNALS += [signal.SIGUSR1, signal.SIGHUP]


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


class StopRequest:
    """The first stop signal this process received (`signum`, None until then).

    With `grace`, the process ends `grace` seconds after that signal if it has not left this
    context by then; `on_expiry` is told first, with the signal's name.
    """

    def __init__(self, grace: float | None = None,
                 on_expiry: Callable[[str], None] | None = None) -> None:
        self.signum: int | None = None
        self.grace, self.on_expiry = grace, on_expiry
        self._previous: dict[int, object] = {}
        self._deadline: Deadline | None = None

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now

    def _expire(self, signum: int) -> None:
        if self.on_expiry is not None:
            self.on_expiry(signal_name(signum))
        sys.stdout.flush()
        sys.stderr.flush()

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is signal.SIG_IGN and sig == getattr(signal, "SIGHUP",
                                                                              None):
                    continue  # `nohup charrnn train`: asked to outlive the terminal
                self._previous[sig] = signal.signal(sig, self._handle)
            if self.grace is not None:
                self._deadline = Deadline(self.grace, self._expire)
        return self

    def __exit__(self, *exc) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Deadline:
    """Ends the process `seconds` after the first stop signal, unless `cancel()` comes first.

    Python runs a signal handler only when the main thread is back in Python code, which one
    stuck in a collective or a write may never be. So the signal is watched where it arrives:
    the interpreter writes its number to a wakeup socket at once, and a thread waiting on that
    socket counts down and, at the end, exits the process whatever the main thread is doing.
    """

    def __init__(self, seconds: float, last_words: Callable[[int], None]) -> None:
        self.seconds, self.last_words = seconds, last_words
        self._cancelled = threading.Event()
        self._wake, self._signals = socket.socketpair()
        self._signals.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._signals.fileno(),
                                                 warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="charrnn-stop-deadline", daemon=True).start()

    def cancel(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        self._cancelled.set()
        with contextlib.suppress(OSError):
            self._signals.send(b"\0")  # wakes the watcher, which sees it cancelled

    def _watch(self) -> None:
        signum = 0
        while signum not in STOP_SIGNALS and not self._cancelled.is_set():
            received = self._wake.recv(1)
            signum = received[0] if received else 0
        if self._cancelled.wait(self.seconds):
            self._wake.close()
            self._signals.close()
            return
        # The last words get a moment of their own: a console the main thread holds must not
        # keep the process alive past its deadline.
        speaker = threading.Thread(target=self.last_words, args=(signum,), daemon=True)
        speaker.start()
        speaker.join(timeout=2)
        os._exit(exit_code(signum))
