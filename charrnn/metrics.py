"""Where training reports to: metric loggers, and the view of a person watching.

Loggers share one small interface, `log(record)` and `close()`. Records are flat dicts such as
{"kind": "train", "step": 100, "loss": 1.52, ...}; every number carries its unit in its key or
in the README's table (loss in nats/char, bpc in bits/char).

A `TrainingView` is what a person sees: progress updates and messages. The library never
prints; the command line supplies a view that draws (cli/progress.py), a notebook or a server
its own, and without one training is silent.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from pathlib import Path
from typing import Protocol

from charrnn import fileio, safeload
from charrnn.errors import CharRNNError, CharRNNWarning, UsageError
from charrnn.memory import check_fits

METRICS_FILE = "metrics.jsonl"


class MetricsLogger(Protocol):
    def log(self, record: dict) -> None: ...

    def close(self) -> None: ...


# What a message is, so that a view can style it or leave it out (a quiet view shows results).
MESSAGE_KINDS = ("info", "note", "warning", "result", "sample")


class TrainingView(Protocol):
    """What a person watching training sees; entered around the training loop when it has
    __enter__ and __exit__ (a view with update and message alone will do)."""

    def __enter__(self) -> TrainingView: ...

    def __exit__(self, *exc) -> None: ...

    def update(self, step: int, fraction: float, fields: dict) -> None:
        """Progress: `fraction` of the budget used; `fields` the latest train record, with
        "val_loss"/"val_bpc" of the last evaluation and "device" added."""

    def message(self, text: str, kind: str = "info") -> None:
        """A line of plain text (never markup) of one of MESSAGE_KINDS."""


class SilentView:
    """The view of nobody: training without a terminal, or on processes other than rank 0."""

    def __enter__(self) -> SilentView:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, step: int, fraction: float, fields: dict) -> None:
        pass

    def message(self, text: str, kind: str = "info") -> None:
        pass


class WarningsView(SilentView):
    """The view of a caller that gave none (a notebook, a script): no progress, but warnings
    (characters that became <unk>, a corpus changed since the checkpoint) go to Python's
    `warnings`, where the caller's filters decide what is shown. Silent, they were lost."""

    def message(self, text: str, kind: str = "info") -> None:
        if kind == "warning":
            warnings.warn(text, CharRNNWarning, stacklevel=2)


class JsonlLogger:
    """One JSON object per line in run_dir/metrics.jsonl, appended (resumed runs continue it)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS_FILE

    def log(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}
        fileio.append_line(self.path, json.dumps(clean))

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Scalars under train/ and eval/ for TensorBoard (optional dependency)."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError("train.tensorboard needs the tensorboard package: "
                             "pip install 'charrnn[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, record: dict) -> None:
        kind, step = record.get("kind", "train"), record.get("step", 0)
        for key, value in record.items():
            if key not in ("kind", "step") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{kind}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MultiLogger:
    def __init__(self, loggers: list[MetricsLogger]):
        self.loggers = loggers

    def log(self, record: dict) -> None:
        for logger in self.loggers:
            logger.log(record)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The well-formed records of a run's metrics.jsonl, in order.

    A record is a JSON object whose "step" is an integer; anything else (a partly written last
    line, a damaged or edited line, bytes that are not UTF-8) is skipped, so that resuming or
    plotting a run never trips over its log.
    """
    path = Path(run_dir) / METRICS_FILE
    with contextlib.suppress(OSError):
        # Parsed records take about ten times the bytes of their lines.
        check_fits(12 * path.stat().st_size, f"reading {path}", "plot a shorter log")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CharRNNError(f"cannot read {path}: {exc.strerror or exc}; fix its permissions, "
                           "or remove it to start the log afresh") from None
    records = []
    for line in data.splitlines():
        try:
            record = safeload.load_json(line.decode("utf-8"))
        except ValueError:  # JSON, UTF-8 and nesting errors alike
            continue
        if isinstance(record, dict) and type(record.get("step")) is int:
            records.append(record)
    return records
