"""The command line as a user meets it: exit codes, one-line errors, no tracebacks."""

import json

import pytest
from typer.testing import CliRunner

from charrnn import __version__
from charrnn.cli import app
from conftest import assert_clean_error, set_args, tiny_overrides

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])



EVERY_COMMAND = [("data", "get"), ("data", "list"), ("eval",), ("info",), ("plot",),
                 ("sample",), ("serve",), ("train",), ("vocab", "build"), ("vocab", "show")]


def command_paths() -> list[tuple[str, ...]]:
    """Every command the app has, sub-commands spelled out: ('vocab', 'build'), ..."""
    import typer.main

    def walk(group, prefix):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from walk(command, (*prefix, name))
            else:
                yield (*prefix, name)

    return sorted(walk(typer.main.get_command(app), ()))


def test_help_and_version_for_every_command():
    assert command_paths() == EVERY_COMMAND  # a new command joins the smoke tests below
    assert invoke("--help").exit_code == 0
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.stdout
    for group in ("vocab", "data"):
        assert invoke(group, "--help").exit_code == 0
    for path in EVERY_COMMAND:
        helped = invoke(*path, "--help")
        assert helped.exit_code == 0 and " ".join(path) + " [OPTIONS]" in helped.stdout


def test_every_command_runs_once(tmp_path, corpus, tiny_run):
    """The smoke loop: each command run for real, as the README shows it."""
    vocab, run, image = tmp_path / "vocab.json", tmp_path / "run", tmp_path / "loss.png"
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    runs = {
        ("vocab", "build"): (["vocab", "build", corpus, "-o", vocab], 0, "wrote"),
        ("vocab", "show"): (["vocab", "show", vocab], 0, "coverage"),
        ("train",): (["train", *set_args(corpus, run, **{"train.max_steps": 5,
                                                          "train.eval_every": 0})], 0, "done"),
        ("sample",): (["sample", "-k", run, "-n", "20", "--seed", "1"], 0, ""),
        ("eval",): (["eval", "-k", run], 0, "nats/char"),
        ("info",): (["info", run], 0, "parameters"),
        ("plot",): (["plot", tiny_run, "-o", image], 0, "wrote"),
        # A server runs until a signal (tests/test_serve_cli.py); here, a clean refusal.
        ("serve",): (["serve", "-k", tmp_path / "missing", "--port", "0"], 1,
                     "checkpoint not found"),
        ("data", "list"): (["data", "list"], 0, "tiny-shakespeare"),
        # Offline: a mirror without the file is a clean error naming it.
        ("data", "get"): (["data", "get", "nietzsche", "--mirror", mirror, "--dest", tmp_path],
                          1, "nietzsche.txt"),
    }
    assert sorted(runs) == EVERY_COMMAND
    for path, (args, code, expected) in runs.items():
        result = invoke(*args)
        assert result.exit_code == code, (path, result.output)
        assert "Traceback" not in result.output
        assert expected in result.output, (path, result.output)
    assert image.is_file() and vocab.is_file()


def test_vocab_build_and_show(tmp_path, corpus, chinese_corpus):
    out = tmp_path / "v.json"
    result = invoke("vocab", "build", corpus, chinese_corpus, "-o", out, "--min-count", "2")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout
    data = json.loads(out.read_text(encoding="utf-8"))
    assert "梦" in data["chars"] and "\ufeff" not in data["chars"]
    shown = invoke("vocab", "show", out, "--top", "30")
    assert shown.exit_code == 0
    assert "\\n" in shown.stdout and "(space)" in shown.stdout and "coverage" in shown.stdout


def test_vocab_build_lowercase(tmp_path, corpus):
    out = tmp_path / "v.json"
    assert invoke("vocab", "build", corpus, "-o", out, "--lowercase").exit_code == 0
    chars = json.loads(out.read_text())["chars"]
    assert "T" not in chars and "t" in chars


def test_vocab_build_errors(tmp_path):
    assert_clean_error(invoke("vocab", "build", tmp_path / "missing.txt"), 1, "no such file")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe nope")
    assert_clean_error(invoke("vocab", "build", bad, "-o", tmp_path / "v.json"), 1,
                       "not valid UTF-8", "byte offset 3")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_clean_error(invoke("vocab", "build", empty, "-o", tmp_path / "v.json"), 1, "empty")
    assert not (tmp_path / "v.json").exists()


def test_train_sample_eval_through_the_cli(tmp_path, corpus):
    run = tmp_path / "run"
    sets = [a for kv in tiny_overrides(corpus, run) for a in ("--set", kv)]
    result = invoke("train", *sets)
    assert result.exit_code == 0, result.output
    assert "device: cpu" in result.stdout and "done" in result.stdout
    for name in ("best.pt", "last.pt", "config.yaml", "metrics.jsonl"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals and all("val_loss" in r and "val_bpc" in r for r in evals)
    # An evaluation is timed after the step it follows (plots against wall time rely on it).
    trained_by = {r["step"]: r["elapsed"] for r in records if r["kind"] == "train"}
    assert all(r["elapsed"] >= trained_by[r["step"]] for r in evals if r["step"] in trained_by)

    sampled = invoke("sample", "--checkpoint", run, "--prime", "The ", "--length", "60",
                     "--seed", "1", "--temperature", "0.8")
    assert sampled.exit_code == 0, sampled.output
    assert sampled.stdout.startswith("The ") and len(sampled.stdout.rstrip("\n")) == 64
    again = invoke("sample", "--checkpoint", run, "--prime", "The ", "--length", "60",
                   "--seed", "1", "--temperature", "0.8")
    assert again.stdout == sampled.stdout

    many = invoke("sample", "-k", run / "last.pt", "-N", "3", "-n", "20", "--top-k", "5")
    assert many.exit_code == 0 and many.stdout.count("--- sample") == 3

    scored = invoke("eval", "--checkpoint", run)
    assert scored.exit_code == 0, scored.output
    assert "nats/char" in scored.stdout and "bits/char" in scored.stdout
    window = invoke("eval", "--checkpoint", run, "--window", "16", corpus)
    assert window.exit_code == 0 and "perplexity" in window.stdout

    refused = invoke("train", *sets)
    assert_clean_error(refused, 1, "already holds a run", "--resume")


@pytest.mark.parametrize(("args", "code", "fragment"), [
    (["--temperature", "-1"], 2, "temperature"),
    (["--temperature", "warm"], 2, "temperature"),
    (["--temperature", "nan"], 2, "temperature"),
    (["--top-k", "0"], 2, "--top-k"),
    (["--top-k", "9999"], 2, "--top-k"),
    (["--length", "-5"], 2, "--length"),
    (["--prime", "€uro"], 2, "'€'"),
])
def test_sample_usage_errors(tiny_run, args, code, fragment):
    assert_clean_error(invoke("sample", "--checkpoint", tiny_run, *args), code, fragment)


def test_sample_checkpoint_errors(tmp_path):
    assert_clean_error(invoke("sample", "--checkpoint", tmp_path / "nope"), 1, "not found")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    assert_clean_error(invoke("sample", "--checkpoint", junk), 1, "junk.pt")


def test_train_config_errors(tmp_path, corpus):
    assert_clean_error(invoke("train", "--config", tmp_path / "nope.yaml"), 2, "not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    assert_clean_error(invoke("train", "--config", bad), 2, "not valid YAML")
    many = invoke("train", "--set", "model.hidden_size=0", "--set", "model.cell=cnn",
                  "--set", "optim.lr=-1")
    assert many.exit_code == 2
    assert "3 problems" in many.stderr
    for key in ("model.hidden_size", "model.cell", "optim.lr"):
        assert key in many.stderr
    assert_clean_error(invoke("train", "--set", "hidden_size"), 2, "malformed --set")


def test_train_corpus_errors(tmp_path, corpus):
    run = tmp_path / "run"
    short = tmp_path / "short.txt"
    short.write_text("tiny text")
    sets = [a for kv in tiny_overrides(short, run) for a in ("--set", kv)]
    assert_clean_error(invoke("train", *sets), 1, "fewer than one window")
    sets = [a for kv in tiny_overrides(tmp_path / "missing.txt", run) for a in ("--set", kv)]
    assert_clean_error(invoke("train", *sets), 1, "no such file")


def test_a_new_run_keeps_the_files_it_would_replace_unless_told(tmp_path, corpus):
    """A folder with one's own config.yaml (passed as --config), notes of earlier runs and a
    hand-made vocabulary: a new run there replaced the config (comments lost), deleted
    metrics.jsonl and step checkpoints, and rebuilt vocab.json, all without --overwrite."""
    from charrnn.config import Config

    run = tmp_path / "exp"
    run.mkdir()
    own = {"config.yaml": Config().to_yaml() + "# my notes\n", "metrics.jsonl": "log\n",
           "step-00000001.pt": "mine", "vocab.json": "{}"}
    for name, text in own.items():
        (run / name).write_text(text)
    sets = [a for kv in tiny_overrides(corpus, run) for a in ("--set", kv)]
    for name in own:
        assert_clean_error(invoke("train", "--config", run / "config.yaml", *sets), 1,
                           f"{run} holds ", name, "--overwrite", one_line=True)
    assert {n: (run / n).read_text() for n in own} == own
    # A vocabulary the run reads is not in its way (nor replaced).
    for name in ("config.yaml", "metrics.jsonl", "step-00000001.pt"):
        (run / name).unlink()
    assert invoke("vocab", "build", corpus, "-o", run / "vocab.json").exit_code == 0
    built = (run / "vocab.json").read_bytes()
    reading = [a for kv in tiny_overrides(corpus, run, **{"data.vocab": run / "vocab.json"})
               for a in ("--set", kv)]
    assert invoke("train", *reading).exit_code == 0
    assert (run / "vocab.json").read_bytes() == built
    # Caches a failed start left are no obstacle: the same command, input fixed, runs.
    fresh = tmp_path / "fresh"
    short = tmp_path / "short.txt"
    short.write_text("tiny text")
    failed = [a for kv in tiny_overrides(short, fresh) for a in ("--set", kv)]
    assert invoke("train", *failed).exit_code == 1
    fixed = [a for kv in tiny_overrides(corpus, fresh) for a in ("--set", kv)]
    assert invoke("train", *fixed).exit_code == 0
    (run / "config.yaml").write_text(own["config.yaml"])
    assert invoke("train", *sets, "--overwrite").exit_code == 0  # told: replaced
    assert "# my notes" not in (run / "config.yaml").read_text()


def test_cuda_without_cuda_is_a_clean_error(corpus, tmp_path, tiny_run):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    sets = [a for kv in tiny_overrides(corpus, tmp_path / "r", **{"train.device": "cuda"})
            for a in ("--set", kv)]
    assert_clean_error(invoke("train", *sets), 2, "CUDA is not available",
                       "use --set train.device=auto or cpu")
    for command in ("sample", "eval"):  # these take --device, and the fix says so
        assert_clean_error(invoke(command, "-k", tiny_run, "--device", "cuda"), 2,
                           "CUDA is not available", "use --device=auto or cpu")


def test_unknown_option_is_one_line(tiny_run):
    assert_clean_error(invoke("sample", "--checkpoint", tiny_run, "--tempreature", "1"), 2,
                       "--tempreature")


def test_train_without_a_config_says_what_it_trains(tmp_path, corpus):
    """A bare `charrnn train` trained a default 2,000-step model for minutes without a word."""
    result = invoke("train", *set_args(corpus, tmp_path / "run", **{"train.max_steps": 2}))
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first.startswith("no --config: built-in defaults and --set") and "2 steps" in first
    assert str(tmp_path / "run") in first
    with_config = tmp_path / "c.yaml"
    with_config.write_text("train:\n  max_steps: 2\n", encoding="utf-8")
    again = invoke("train", "--config", with_config,
                   *set_args(corpus, tmp_path / "run2", **{"train.max_steps": 2}))
    assert "no --config" not in again.stdout


def test_train_without_a_config_says_when_auto_sizes_the_model(tmp_path, corpus):
    """It named the default 1x512 and 2,000 steps, neither of which auto then trained."""
    result = invoke("train", "--set", f"data.path={corpus}", "--set",
                    f"train.out_dir={tmp_path / 'run'}", "--set", "model.size=auto", "--set",
                    "train.max_time=2", "--set", "model.embedding_dim=8", "--set",
                    "train.eval_chars=200")
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert "lstm sized to the budget, 2 s)" in first and "steps" not in first


def test_the_done_line_says_when_best_pt_is_better_than_the_end(tmp_path):
    """A small corpus learnt by heart ended at 4.77 with 2.42 in best.pt, and said only 4.77."""
    from charrnn.cli.train import scores_text
    from charrnn.evaluate import Score
    from charrnn.train import RunResult

    end = Score(nats=4.77 * 299, chars=299)
    text = scores_text(RunResult(tmp_path, 1668, 30.0, end, 2.4212, 299))
    assert text.endswith("(299 chars); best.pt holds an earlier, better model: val 2.4212")
    assert "best.pt" not in scores_text(RunResult(tmp_path, 9, 1.0, end, 4.77, 299))
    # Scored on other text (a part of the validation split): not compared.
    assert "best.pt" not in scores_text(RunResult(tmp_path, 9, 1.0, end, 2.0, 100))
