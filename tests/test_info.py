"""`charrnn info`: what a checkpoint holds, as a table a person can read."""

import io
import math
import re

import torch
from rich.console import Console
from typer.testing import CliRunner

from charrnn import __version__
from charrnn.checkpoint import load, load_model
from charrnn.cli import app
from charrnn.cli.tables import checkpoint_table

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_info_shows_model_vocab_progress_and_config(tiny_run):
    result = invoke("info", tiny_run)
    assert result.exit_code == 0, result.output
    shown = result.stdout
    model, vocab, payload = load_model(tiny_run)
    assert "best.pt" in shown
    assert "lstm, 2 layers x 32 hidden units, 16-dim embedding" in shown
    assert f"{model.num_parameters():,}" in shown
    assert f"{vocab.size:,} ids ({len(vocab.chars):,} characters + <unk>)" in shown
    assert "\\n" in shown and "(space)" in shown  # the preview escapes whitespace
    assert re.search(rf"step\W+{payload['step']:,}\b", shown)
    best = payload["best_val_loss"]
    assert f"{best:.4f} nats/char ({best / math.log(2):.4f} bits/char," in shown
    assert f"torch {torch.__version__}, charrnn {__version__}" in shown
    assert payload["saved_at"] in shown
    assert "hidden_size: 32" in shown and "max_steps: 30" in shown  # the config, as YAML
    assert "weights only" in shown


def test_info_on_last_checkpoint_says_it_can_resume(tiny_run):
    result = invoke("info", tiny_run / "last.pt")
    assert result.exit_code == 0, result.output
    assert "last.pt" in result.stdout and "resumable" in result.stdout
    assert "holds the optimizer" in result.stdout


def test_each_val_loss_says_how_many_characters_it_is_over(tiny_run):
    payload = load(tiny_run / "best.pt")
    payload.update(val_loss=1.5, val_chars=111_539, best_val_loss=1.25, best_val_chars=10_000)
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(checkpoint_table(payload, tiny_run / "best.pt", preview=5))
    text = console.export_text()
    assert "1.5000 nats/char (2.1640 bits/char, over 111,539 validation chars)" in text
    assert "1.2500 nats/char (1.8034 bits/char, over 10,000 validation chars)" in text


def test_a_checkpoint_never_evaluated(tiny_run):
    payload = load(tiny_run / "best.pt")
    payload.update(val_loss=None, best_val_loss=None, config={})
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(checkpoint_table(payload, tiny_run / "best.pt", preview=5))
    text = console.export_text()
    assert text.count("not evaluated") == 2
    assert "(none saved)" in text and "more" in text


def test_info_errors(tmp_path):
    result = invoke("info", tmp_path / "nope")
    assert result.exit_code == 1 and result.stderr.startswith("error:")
    assert "not found" in result.stderr and "Traceback" not in result.output
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    result = invoke("info", junk)
    assert result.exit_code == 1 and "junk.pt" in result.stderr
    assert invoke("info", tmp_path).exit_code == 1  # a folder without checkpoints


def test_values_no_training_writes_are_said_to_be_so(tiny_run, tmp_path):
    """A hand-edited or damaged checkpoint's negative training time or NaN loss was shown
    without a word."""
    payload = load(tiny_run / "last.pt")
    for key, value in (("elapsed", -5.0), ("best_val_loss", math.nan), ("val_loss", math.inf)):
        forged = tmp_path / f"{key}.pt"
        torch.save({**payload, key: value}, forged)
        text = " ".join(invoke("info", forged).stdout.split())
        assert "not a value charrnn writes: the file was edited or is damaged" in text, key
    assert "not a value charrnn writes" not in invoke("info", tiny_run).stdout
