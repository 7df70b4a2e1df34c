"""Shared fixtures: a small offline corpus, tiny configs and the real corpora when present."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Tests are short: one thread avoids oversubscribing CI's two cores when tests run the CLI.
torch.set_num_threads(1)

POEM = """The quick brown fox jumps over the lazy dog.
Pack my box with five dozen liquor jugs!
How vexingly quick daft zebras jump; 0123456789.
Sphinx of black quartz, judge my vow?
"""


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """About 20 kB of English-like text with a small alphabet."""
    return write_corpus(tmp_path)


def write_corpus(directory: Path) -> Path:
    path = directory / "corpus.txt"
    path.write_text(POEM * 120, encoding="utf-8")
    return path


@pytest.fixture
def chinese_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "hlm.txt"
    text = "第一回　甄士隐梦幻识通灵\n此开卷第一回也。作者自云：曾历过一番梦幻之后。\n"
    path.write_text("\ufeff" + text * 200, encoding="utf-8")  # a BOM, as 红楼梦.txt has
    return path


def tiny_overrides(corpus: Path, out_dir: Path, **extra: object) -> list[str]:
    """--set arguments for a model that trains in well under a second."""
    values = {
        "data.path": str(corpus), "data.seq_len": 32, "data.batch_size": 8,
        "model.hidden_size": 32, "model.embedding_dim": 16, "model.num_layers": 2,
        "train.max_steps": 30, "train.eval_every": 15, "train.log_every": 5,
        "train.out_dir": str(out_dir), "train.device": "cpu", "train.precision": "fp32",
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is not available (needs the shared corpora)")
    return path


@pytest.fixture(autouse=True)
def _no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    os.environ.pop("FORCE_COLOR", None)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with a briefly trained tiny LSTM (best.pt, last.pt, metrics)."""
    from charrnn.config import load_config
    from charrnn.train import train

    root = tmp_path_factory.mktemp("tiny_run")
    corpus = root / "corpus.txt"
    corpus.write_text(POEM * 120, encoding="utf-8")
    run_dir = root / "run"
    config = load_config(None, tiny_overrides(corpus, run_dir))
    train(config)
    return run_dir


def set_args(corpus: Path, out_dir: Path, **extra: object) -> list[str]:
    """tiny_overrides as command-line arguments: --set KEY=VALUE --set ..."""
    return [arg for kv in tiny_overrides(corpus, out_dir, **extra) for arg in ("--set", kv)]


def assert_clean_error(result, code: int, *fragments: str, one_line: bool = False) -> None:
    """What a user must see for a problem they caused: an `error:` line first (the only line
    on stderr when `one_line`), that exit code, no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), result.stderr
    assert len(lines) == 1 or not one_line, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


class StopAfter:
    """Stands in for interrupts.StopRequest: a signal that arrives during the n-th step."""

    def __init__(self, steps: int, signum: int = signal.SIGINT):
        self.left, self.sent = steps, signum

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    @property
    def signum(self) -> int | None:  # asked once after every step
        self.left -= 1
        return self.sent if self.left <= 0 else None


# ---- torchrun -----------------------------------------------------------------------------------
def torchrun(*args: str, processes: int = 2, script: str | None = None,
             launcher: tuple[str, ...] = ("--standalone",)) -> list[str]:
    """The command line of `torchrun LAUNCHER --nproc_per_node=N -m charrnn train ARGS`."""
    # --standalone picks a free port: tests running side by side do not collide.
    program = [script] if script else ["-m", "charrnn"]
    return [sys.executable, "-m", "torch.distributed.run", *launcher,
            f"--nproc_per_node={processes}", *program, "train", *args]


def run_torchrun(*args: str, processes: int = 2, script: str | None = None
                 ) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun(*args, processes=processes, script=script),
                          capture_output=True, text=True, timeout=300)


def errors_in(stderr: str) -> list[str]:
    """charrnn's error lines. All processes share torchrun's stderr, and a line another
    process writes at the same moment may run into one: found anywhere in a line."""
    return [line[line.index("error:"):] for line in stderr.splitlines() if "error:" in line]
