"""Files that may come from anyone: checkpoints, run directories, configs, metrics.

A checkpoint's stored paths are informational only: loading one never makes charrnn read a
path the user did not name. Structures that expand (YAML aliases, pickle's shared references)
are refused with bounded memory. A damaged config.yaml or metrics.jsonl is a clean error or is
skipped. Encoded caches are no more readable than the text they encode.
"""

import json
import os
import stat
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from charrnn import checkpoint, corpus, safeload
from charrnn.cli import app
from charrnn.config import load_config
from charrnn.data import load_dataset
from charrnn.errors import CheckpointError, UsageError
from charrnn.metrics import read_metrics
from conftest import POEM, assert_clean_error, set_args, tiny_overrides

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def copy_run(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        if path.is_file():
            (target / path.name).write_bytes(path.read_bytes())
    return target


def snapshot(root: Path) -> dict:
    return {p.name: p.read_bytes() for p in root.iterdir() if p.is_file() and p.name != ".lock"}


@pytest.fixture
def no_corpus_reads(monkeypatch):
    """Fails the test if any corpus file is resolved or read."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a corpus was read: {args}")

    monkeypatch.setattr(corpus, "resolve_sources", refuse)
    monkeypatch.setattr(corpus, "iter_text", refuse)
    import charrnn.data as data_module
    import charrnn.idcache as idcache_module

    monkeypatch.setattr(data_module, "resolve_sources", refuse)
    monkeypatch.setattr(data_module, "iter_text", refuse)
    monkeypatch.setattr(idcache_module, "iter_text", refuse)


# ---- a checkpoint's stored paths are informational only ---------------------------------------
def test_eval_without_file_scores_the_runs_own_encoded_text(tiny_run, no_corpus_reads):
    result = invoke("eval", "-k", tiny_run)
    assert result.exit_code == 0, result.output
    assert "nats/char" in result.stdout


def test_eval_without_file_gives_the_same_score_as_the_validation_split(tmp_path, tiny_run):
    from charrnn.evaluate import score_text

    model, vocab, payload = checkpoint.load_model(tiny_run)
    config = load_config(tiny_run / "config.yaml")
    val = load_dataset(config.data, tmp_path, vocab).val  # encoded afresh elsewhere
    expected = score_text(model, val, torch.device("cpu")).line()
    assert invoke("eval", "-k", tiny_run).stdout.strip() == expected


def test_a_planted_checkpoint_cannot_make_eval_read_or_write_a_path(tmp_path, tiny_run,
                                                                    no_corpus_reads):
    secret = tmp_path / "home" / ".ssh" / "id_rsa"
    secret.parent.mkdir(parents=True)
    secret.write_text(POEM * 50)  # readable text with the model's characters
    payload = checkpoint.load(tiny_run / "best.pt")
    payload["config"]["data"]["path"] = str(secret)
    shared = tmp_path / "shared"
    shared.mkdir()
    torch.save(payload, shared / "best.pt")
    assert_clean_error(invoke("eval", "-k", shared), 1, "name the text to score")
    assert sorted(p.name for p in shared.iterdir()) == ["best.pt"]  # no ids.bin written


def test_a_cache_of_another_vocabulary_or_damaged_is_not_scored(tmp_path, tiny_run):
    run = copy_run(tiny_run, tmp_path / "run")
    meta = json.loads((run / "ids.json").read_text())
    meta["key"]["vocab"] = "0" * 16
    (run / "ids.json").write_text(json.dumps(meta))
    assert_clean_error(invoke("eval", "-k", run), 1, "ids.bin is missing, from another run, "
                       "or damaged")
    run = copy_run(tiny_run, tmp_path / "run2")
    ids = np.fromfile(run / "ids.bin", dtype=np.uint8)
    ids[5] = 255  # past the vocabulary: would index past the embedding
    ids.tofile(run / "ids.bin")
    assert_clean_error(invoke("eval", "-k", run), 1, "name the text to score")
    run = copy_run(tiny_run, tmp_path / "run3")
    (run / "ids.json").write_text("[1, 2]")
    assert_clean_error(invoke("eval", "-k", run), 1, "name the text to score")


def test_a_linked_cache_is_not_followed(tmp_path, tiny_run):
    run = copy_run(tiny_run, tmp_path / "run")
    elsewhere = tmp_path / "elsewhere.bin"
    (run / "ids.bin").rename(elsewhere)
    (run / "ids.bin").symlink_to(elsewhere)
    assert_clean_error(invoke("eval", "-k", run), 1, "name the text to score")


def test_init_from_says_what_it_reads_and_resume_says_what_its_config_reads(tmp_path,
                                                                           tiny_run, corpus):
    tuned = invoke("train", *set_args(corpus, tmp_path / "tuned", **{
        "train.init_from": tiny_run / "best.pt", "train.max_steps": 2, "train.eval_every": 0}))
    assert tuned.exit_code == 0, tuned.output
    assert f"fine-tuning from {tiny_run / 'best.pt'}" in tuned.stdout
    run = copy_run(tiny_run, tmp_path / "run")
    resumed = invoke("train", "--resume", run, "--set", "train.max_steps=32")
    assert resumed.exit_code == 0, resumed.output
    trained_on = tiny_run.parent / "corpus.txt"
    assert f"resuming with {run / 'config.yaml'}: data.path {trained_on}" in resumed.stdout


def test_the_encoded_cache_is_no_more_readable_than_its_corpus(tmp_path):
    private = tmp_path / "diary.txt"
    private.write_text(POEM * 60, encoding="utf-8")
    private.chmod(0o600)
    run = tmp_path / "run"
    config = load_config(None, tiny_overrides(private, run, **{"train.max_steps": 1,
                                                               "train.eval_every": 0}))
    from charrnn.train import train

    old = os.umask(0o022)  # a umask that would make new files world-readable
    try:
        train(config)
    finally:
        os.umask(old)
    # The checkpoints too: they hold the corpus's characters with their counts, and weights
    # that can say its text again (they were 0644 with the caches 0600).
    for name in ("ids.bin", "vocab.json", "last.pt", "best.pt"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o600, name
    private.chmod(0o644)
    (run / "ids.json").unlink()
    old = os.umask(0o022)
    try:
        load_dataset(config.data, run)  # re-encoded: the corpus may be read by all now
    finally:
        os.umask(old)
    assert stat.S_IMODE((run / "ids.bin").stat().st_mode) == 0o644


def test_permissions_a_user_gave_a_runs_files_survive_its_next_save(tmp_path, tiny_run):
    """A resume wrote last.pt, best.pt and config.yaml back with the umask's 0644."""
    run = copy_run(tiny_run, tmp_path / "run")
    for name in ("last.pt", "best.pt", "config.yaml"):
        (run / name).chmod(0o640)
    old = os.umask(0o022)
    try:
        resumed = invoke("train", "--resume", run, "--set", "train.max_steps=32")
    finally:
        os.umask(old)
    assert resumed.exit_code == 0, resumed.output
    for name in ("last.pt", "best.pt", "config.yaml"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o640, name


# ---- structures that expand, refused with bounded memory ----------------------------------------
def peak_bytes(action) -> int:
    tracemalloc.start()
    try:
        action()
    except (UsageError, CheckpointError):
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_a_yaml_alias_bomb_is_refused_in_bounded_memory(tmp_path):
    from test_bad_input import YAML_ALIAS_BOMB

    path = tmp_path / "bomb.yaml"
    path.write_text(YAML_ALIAS_BOMB)
    assert len(YAML_ALIAS_BOMB) < 1000
    with pytest.raises(UsageError, match="YAML aliases"):
        load_config(path)
    assert peak_bytes(lambda: load_config(path)) < 20e6  # 9**9 leaves, never expanded


def test_a_checkpoint_alias_bomb_is_refused_in_bounded_memory(tmp_path, tiny_run,
                                                               monkeypatch):
    from test_bad_input import alias_bomb

    payload = checkpoint.load(tiny_run / "best.pt")
    payload["config"] = {"data": {"val_fraction": alias_bomb(60)}}  # 2**60 leaves
    path = tmp_path / "bomb.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="holds more than"):
        checkpoint.load(path)
    # Measured with a smaller budget: tracing every allocation of a walk of the full budget
    # (2.3 million values) would take half a minute; what is measured is that nothing expands.
    monkeypatch.setattr(checkpoint, "MAX_VALUES", 50_000)
    assert peak_bytes(lambda: checkpoint.load(path)) < 20e6


def test_the_size_check_counts_shared_references_each_time():
    shared = ["x" * 10]
    safeload.check_size([shared] * 10, max_nodes=100, max_chars=100, what="it")
    with pytest.raises(ValueError, match="more than 100 characters"):
        safeload.check_size([shared] * 11, max_nodes=100, max_chars=100, what="it")
    with pytest.raises(ValueError, match="more than 100 values"):
        safeload.check_size([[shared] * 10] * 10, max_nodes=100, max_chars=10**6, what="it")
    with pytest.raises(ValueError, match="nests more than"):
        nested: list = []
        for _ in range(300):
            nested = [nested]
        safeload.check_size(nested, max_nodes=10**6, max_chars=10**6, what="it")


# ---- damaged metrics.jsonl: skipped, never a traceback ------------------------------------------
DAMAGED_LINES = ["[1, 2]", '{"kind": "train", "step": "7", "loss": 1.0}',
                 '{"kind": "eval", "val_loss": 2.0}', '{"kind": "train", "step": 1e999}',
                 '"just a string"', "null", '{"kind": "train", "step": 3, "loss": "low", '
                 '"elapsed": {"a": 1}, "lr": [1]}',
                 '{"kind": "train", "step": 5, "loss": 1e400, "elapsed": 1' + "0" * 400 + "}",
                 "[" * 100_000, "\udcff"]


def test_read_metrics_keeps_only_well_formed_records(tmp_path):
    good = {"kind": "train", "step": 1, "loss": 2.5}
    with open(tmp_path / "metrics.jsonl", "wb") as f:
        f.write((json.dumps(good) + "\n").encode())
        for line in DAMAGED_LINES:
            f.write(line.encode("utf-8", "surrogateescape") + b"\n")
        f.write(b"\xff\xfe not utf-8\n")
    records = read_metrics(tmp_path)
    assert records[0] == good
    assert all(isinstance(r, dict) and type(r["step"]) is int for r in records)


@pytest.mark.parametrize("line", DAMAGED_LINES, ids=range(len(DAMAGED_LINES)))
def test_plot_and_resume_with_a_damaged_metrics_line(tmp_path, tiny_run, line):
    run = copy_run(tiny_run, tmp_path / "run")
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(line.encode("utf-8", "surrogateescape") + b"\n")
    plotted = invoke("plot", run, "-o", tmp_path / "p.png")
    assert plotted.exit_code == 0, plotted.output
    resumed = invoke("train", "--resume", run, "--set", "train.max_steps=31", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert all(type(r["step"]) is int for r in read_metrics(run))


def test_plot_of_a_log_without_records_is_a_clean_error(tmp_path, tiny_run):
    run = copy_run(tiny_run, tmp_path / "run")
    (run / "metrics.jsonl").write_text('{"kind": "train"}\n[1, 2]\n')
    assert_clean_error(invoke("plot", run, "-o", tmp_path / "p.png"), 1, "holds no records")


def test_run_directory_files_planted_as_links_or_fifos_are_refused(tmp_path, tiny_run):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in (".lock", "metrics.jsonl"):
        run = copy_run(tiny_run, tmp_path / f"run{name}")
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(victim)
        result = invoke("train", "--resume", run, "--set", "train.max_steps=31", "--quiet")
        if name == ".lock":
            assert_clean_error(result, 1, ".lock: a symbolic link")
        assert victim.read_text() == "precious"
    run = copy_run(tiny_run, tmp_path / "fifo_run")
    (run / ".lock").unlink(missing_ok=True)
    os.mkfifo(run / ".lock")
    assert_clean_error(invoke("train", "--resume", run, "--quiet"), 1, "not a regular file")
