"""The README's journey: build a vocabulary, train a few steps, sample, score."""

import json

import pytest
from typer.testing import CliRunner

from charrnn.cli import app
from conftest import shared_file, tiny_overrides

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def sets(pairs):
    return [a for kv in pairs for a in ("--set", kv)]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_vocab_train_sample_for_every_cell(tmp_path, corpus, cell):
    vocab = tmp_path / "vocab.json"
    run("vocab", "build", corpus, "-o", vocab)
    out = tmp_path / "run"
    run("train", *sets(tiny_overrides(corpus, out, **{"data.vocab": vocab, "model.cell": cell})))
    text = run("sample", "--checkpoint", out, "--length", "200", "--seed", "0").stdout
    allowed = set(json.loads(vocab.read_text())["chars"])
    assert set(text.rstrip("\n")) <= allowed
    assert len(text.rstrip("\n")) == 200


def test_training_learns_the_tiny_corpus(tmp_path, corpus):
    out = tmp_path / "run"
    run("train", *sets(tiny_overrides(corpus, out, **{
        "train.max_steps": 150, "train.eval_every": 150, "model.hidden_size": 64,
        "optim.lr": 0.01})))
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert train_losses[-1] < 0.5 * train_losses[0]  # from ~3.3 (uniform) to well under half
    final = [r for r in records if r["kind"] == "eval"][-1]
    assert final["val_loss"] < 1.5


def test_chinese_corpus_end_to_end(tmp_path, chinese_corpus):
    out = tmp_path / "run"
    run("train", *sets(tiny_overrides(chinese_corpus, out)))
    text = run("sample", "-k", out, "--prime", "第一回", "-n", "30", "--seed", "2").stdout
    assert text.startswith("第一回")
    assert "\ufeff" not in text


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tinyshakespeare.txt", "hongloumeng.txt"])
def test_real_corpora_train_and_sample(tmp_path, name):
    corpus = shared_file(name)
    out = tmp_path / "run"
    run("train", *sets(tiny_overrides(corpus, out, **{
        "train.max_steps": 40, "train.eval_every": 0, "model.hidden_size": 64,
        "data.batch_size": 16, "train.eval_chars": 5000})))
    text = run("sample", "-k", out, "-n", "100", "--seed", "1").stdout
    assert len(text.rstrip("\n")) == 100
    scored = run("eval", "-k", out, "--window", "64").stdout
    assert "bits/char" in scored


def test_best_checkpoint_compares_scores_of_the_same_text(tmp_path, corpus):
    """Periodic evaluations read 300 characters, the final one all: best.pt compares like
    with like, judging the final weights on the same 300 characters."""
    out = tmp_path / "run"
    run("train", *sets(tiny_overrides(corpus, out, **{"train.eval_chars": 300})))
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    periodic = [r for r in records if r["kind"] == "eval" and not r["final"]]
    final = [r for r in records if r["kind"] == "eval" and r["final"]][-1]
    assert all(r["val_chars"] == 300 for r in periodic) and final["val_chars"] > 300

    import torch

    from charrnn import checkpoint
    from charrnn.config import config_from_dict
    from charrnn.data import load_dataset
    from charrnn.evaluate import score_stream

    model, vocab, payload = checkpoint.load_model(out / "last.pt")
    val = load_dataset(config_from_dict(payload["config"]).data, out, vocab).val
    on_the_same_text = score_stream(model, val[:301], torch.device("cpu")).loss
    best = min([r["val_loss"] for r in periodic] + [on_the_same_text])
    assert payload["best_val_loss"] == pytest.approx(best)


def test_the_readmes_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """README.md, "Using charrnn from Python": the library without the command line."""
    import re
    import shutil
    from pathlib import Path

    root = Path(__file__).parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Using charrnn from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "configs").mkdir()
    shutil.copy(root / "configs" / "default.yaml", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102 - our own
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("60 ") and len(printed) >= 3
    assert (tmp_path / "runs" / "nb" / "best.pt").is_file()
