"""Crash safety: a full disk or an interrupted write leaves the previous file intact.

Every file charrnn writes goes through `fileio.atomic_open` (temporary file, fsync, rename);
metrics.jsonl is appended one line at a time instead, and a partial last line is skipped.
"""

import contextlib
import errno
import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charrnn import checkpoint, fileio
from charrnn.cli import app
from charrnn.config import load_config
from charrnn.corpus import Normalization, resolve_sources
from charrnn.errors import CharRNNError
from charrnn.idcache import build_vocab_cached, encode_cached
from charrnn.metrics import JsonlLogger, read_metrics
from charrnn.vocab import Vocab
from conftest import POEM, assert_clean_error, set_args

PACKAGE = Path(__file__).resolve().parents[1] / "charrnn"


class FailingFile:
    """A file whose writes fail once `room` bytes are written: a full disk, or a Ctrl-C."""

    def __init__(self, f, room: int, error: BaseException):
        self.f, self.room, self.error = f, room, error

    def write(self, data):
        text = isinstance(data, str)
        size = len(data) if text else memoryview(data).nbytes
        if size > self.room:
            self.f.write(data[: self.room] if text else memoryview(data).cast("B")[: self.room])
            self.room = 0
            raise self.error
        self.room -= size
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.fixture
def failing_writes(monkeypatch):
    """failing_writes(name, error, after=n): the (n+1)-th atomic write of `name` fails."""
    real = fileio.atomic_open

    def arm(name: str, error: BaseException, room: int = 100, after: int = 0) -> None:
        writes = [0]

        @contextlib.contextmanager
        def atomic_open(path, mode="wb", **options):
            with real(path, mode, **options) as f:
                if Path(path).name == name:
                    writes[0] += 1
                    if writes[0] == after + 1:
                        f = FailingFile(f, room, error)
                yield f

        monkeypatch.setattr(fileio, "atomic_open", atomic_open)

    return arm


DISK_FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def write_checkpoint(path: Path, version: int, tiny_run: Path) -> None:
    payload = checkpoint.load(tiny_run / "best.pt")
    checkpoint.save({**payload, "step": version}, path)


def write_vocab(path: Path, version: int, tiny_run: Path) -> None:
    Vocab.build(["ab", "c" * version]).save(path)


def write_config(path: Path, version: int, tiny_run: Path) -> None:
    fileio.write_text(path, load_config(None, [f"train.max_steps={version}"]).to_yaml())


def write_ids(path: Path, version: int, tiny_run: Path) -> None:
    corpus = path.parent / "corpus.txt"
    corpus.write_text(POEM * version * 50, encoding="utf-8")
    vocab = Vocab.build([POEM])
    encode_cached(resolve_sources(str(corpus)), vocab, "", path.parent)


@pytest.mark.parametrize(("name", "write"), [
    ("last.pt", write_checkpoint), ("vocab.json", write_vocab), ("config.yaml", write_config),
    ("ids.bin", write_ids),
])
def test_a_full_disk_is_one_clear_error_and_the_previous_file_survives(
        tmp_path, tiny_run, failing_writes, name, write):
    path = tmp_path / name
    write(path, 1, tiny_run)
    before = path.read_bytes()
    failing_writes(name, DISK_FULL)
    with pytest.raises(CharRNNError) as info:
        write(path, 2, tiny_run)
    message = str(info.value)
    assert "\n" not in message
    assert re.match(rf"cannot write \S*{re.escape(name)}: No space left on device; free some "
                    "disk space", message), message
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_full_disk_during_training_is_one_line_and_keeps_the_last_checkpoint(
        tmp_path, corpus, failing_writes):
    run = tmp_path / "run"
    failing_writes("last.pt", DISK_FULL, after=1)  # saving step 15 works, step 30 does not
    result = CliRunner().invoke(app, ["train", *set_args(corpus, run)])
    assert_clean_error(result, 1, "last.pt: No space left on device; free some disk space")
    assert checkpoint.load(run / "last.pt")["step"] == 15
    assert not list(run.glob(".*.tmp"))


def test_a_full_disk_while_logging_metrics_keeps_the_earlier_records(tmp_path, monkeypatch):
    logger = JsonlLogger(tmp_path)
    logger.log({"kind": "train", "step": 1, "loss": 2.5})

    def full_disk_open(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio, "open", full_disk_open, raising=False)
    with pytest.raises(CharRNNError, match="metrics.jsonl: No space left on device; free"):
        logger.log({"kind": "train", "step": 2, "loss": 2.4})
    assert read_metrics(tmp_path) == [{"kind": "train", "step": 1, "loss": 2.5}]


def test_a_partial_last_metrics_line_from_a_killed_process_is_skipped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 2.5}\n'
                                            '{"kind": "eval", "step": 2, "val_lo')
    assert read_metrics(tmp_path) == [{"kind": "train", "step": 1, "loss": 2.5}]


def test_a_ctrl_c_while_saving_a_checkpoint_is_a_ctrl_c_and_leaves_the_old_one(
        tmp_path, tiny_run, failing_writes):
    path = tmp_path / "last.pt"
    write_checkpoint(path, 1, tiny_run)
    failing_writes("last.pt", KeyboardInterrupt(), room=5000)
    # torch.save would report it as "RuntimeError: unexpected pos"; the CLI exits 130 on this.
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(path, 2, tiny_run)
    assert checkpoint.load(path)["step"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_kill_between_a_cache_file_and_its_key_never_pairs_them_wrongly(
        tmp_path, failing_writes):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(POEM * 20, encoding="utf-8")
    sources = resolve_sources(str(corpus))
    cache = tmp_path / "cache"
    lower = Vocab.build([POEM.lower()], Normalization(lowercase=True))
    upper = Vocab.build([POEM.upper()], Normalization(lowercase=False))
    expected = encode_cached(sources, lower, "", cache).ids.copy()
    # The ids of another vocabulary are written, then the process dies before their key is.
    failing_writes("ids.json", KeyboardInterrupt(), room=0)
    with pytest.raises(KeyboardInterrupt):
        encode_cached(sources, upper, "", cache)
    assert (encode_cached(sources, lower, "", cache).ids == expected).all()

    first = build_vocab_cached(sources, Normalization(), 1, "", cache)
    failing_writes("vocab.meta.json", KeyboardInterrupt(), room=0)
    with pytest.raises(KeyboardInterrupt):
        build_vocab_cached(sources, Normalization(lowercase=True), 1, "", cache)
    assert build_vocab_cached(sources, Normalization(), 1, "", cache) == first


WRITES = re.compile(r"(?<!fileio)\.write_(text|bytes)\(|\bopen\([^)]*['\"][wax]b?\+?['\"]"
                    r"|torch\.save\(|np\.save|\.tofile\(")


def test_every_file_is_written_through_fileio():
    """Guard for new code: a direct write would not survive a crash or a full disk."""
    direct = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name in ("fileio.py", "outputs.py"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0]
            if WRITES.search(code) and "torch.save(payload, writer)" not in code:
                direct.append(f"{path.name}:{number}: {line.strip()}")
    assert not direct, ("write through charrnn.fileio (or outputs, for a file the user named) "
                        "instead:\n" + "\n".join(direct))


def test_config_and_checkpoint_are_readable_after_a_real_run(tiny_run):
    # The files a run leaves are complete: config.yaml is YAML, the checkpoints load.
    assert load_config(tiny_run / "config.yaml").train.max_steps == 30
    assert json.loads((tiny_run / "vocab.json").read_text(encoding="utf-8"))["chars"]
    for name in ("best.pt", "last.pt"):
        checkpoint.load_model(tiny_run / name)


# ---- a run directory the disk or its owner got in the way of (one line each, nothing lost) ----
def test_a_full_disk_when_locking_the_run_is_one_line(tmp_path, monkeypatch):
    from charrnn.rundir import RunLock

    def full(fd, length):  # noqa: ANN001, ANN202 - os.ftruncate's signature
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "ftruncate", full)
    with pytest.raises(CharRNNError, match="No space left on device; free some disk space"):
        RunLock(tmp_path).acquire()  # was a traceback from os.write


@pytest.mark.parametrize("name", ["metrics.jsonl", "step-00000001.pt", "best.pt"])
def test_overwrite_refuses_a_directory_in_its_way_before_removing_anything(tmp_path, tiny_run,
                                                                           name):
    """It removed last.pt and best.pt, then stopped with IsADirectoryError's traceback."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / name).unlink(missing_ok=True)
    (run / name).mkdir()
    config = load_config(run / "config.yaml")
    args = ["train", "--config", run / "config.yaml", "--overwrite",
            *set_args(Path(config.data.path), run, **{"train.max_steps": 2})]
    before = sorted(p.name for p in run.iterdir())
    assert_clean_error(CliRunner().invoke(app, [str(a) for a in args]), 1,
                       f"{run / name}: it is a directory", one_line=True)
    assert sorted(p.name for p in run.iterdir()) == before


def test_overwrite_where_a_file_cannot_be_removed_is_one_line(tmp_path, tiny_run, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    unlink = Path.unlink

    def refused(path, missing_ok=False):  # noqa: ANN001, ANN202 - a directory of mode 555
        if path.name == "last.pt":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refused)
    config = load_config(run / "config.yaml")
    args = ["train", "--config", run / "config.yaml", "--overwrite",
            *set_args(Path(config.data.path), run, **{"train.max_steps": 2})]
    assert_clean_error(CliRunner().invoke(app, [str(a) for a in args]), 1,
                       f"cannot remove {run / 'last.pt'}: Permission denied", one_line=True)


def test_an_unreadable_encoded_corpus_is_one_line(tiny_run, monkeypatch):
    import numpy as np

    def unreadable(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - mode 000, not root
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(np, "memmap", unreadable)
    assert_clean_error(CliRunner().invoke(app, ["eval", "--checkpoint", str(tiny_run)]), 1,
                       "ids.bin (the run's encoded corpus): Permission denied", one_line=True)


def test_what_stands_where_a_run_directory_or_checkpoint_goes_is_named(tmp_path, tiny_run):
    """A file or a broken link as train.out_dir said "File exists"; a directory as best.pt
    was found only at the first save, after a whole segment of training."""
    import shutil

    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    broken = tmp_path / "broken"
    broken.symlink_to(tmp_path / "nowhere" / "run")
    corpus = Path(load_config(tiny_run / "config.yaml").data.path)
    for out_dir, what in ((a_file, "a file is in its place"),
                          (broken, "a broken symbolic link is in its place")):
        args = ["train", *set_args(corpus, out_dir)]
        assert_clean_error(CliRunner().invoke(app, [str(a) for a in args]), 1,
                           f"cannot create directory {out_dir}: {what}", one_line=True)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "best.pt").unlink()
    (run / "best.pt").mkdir()
    resumed = CliRunner().invoke(app, ["train", "--resume", str(run), "--set",
                                       "train.max_steps=40"])
    assert_clean_error(resumed, 1, "best.pt: it is a directory, not a checkpoint", one_line=True)
    assert "step 31" not in resumed.output  # refused before training
