"""The guard around all terminal output (cli/common.py): a broken, closed, full or narrow
standard output, or one whose encoding lacks the characters, ends cleanly.

Where a real stdout, stdin or signal is needed the CLI runs in a subprocess; a "full disk" is
a regular file under tmp_path with a file-size limit (RLIMIT_FSIZE), never a /dev node.
"""

import os
import resource
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from charrnn.cli import app
from charrnn.vocab import Vocab
from conftest import assert_clean_error

CHARRNN = [sys.executable, "-m", "charrnn"]


def run(*args, env=None, **options):
    return subprocess.run([*CHARRNN, *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "NO_COLOR": "1", **(env or {})},
                          **options)


def one_error_line(stderr: str, *fragments: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    for fragment in fragments:
        assert fragment in stderr, (fragment, stderr)


def test_a_full_standard_output_is_one_error_line(tmp_path, tiny_run):
    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))  # writes past 100 bytes: EFBIG

    with open(tmp_path / "out.txt", "wb") as stdout:
        child = subprocess.run([*CHARRNN, "sample", "-k", str(tiny_run), "-n", "5000"],
                               stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300,
                               preexec_fn=small_files)
    assert child.returncode == 1
    one_error_line(child.stderr, "cannot write to standard output: File too large")


def test_a_closed_standard_output_is_refused_before_anything_is_done(tmp_path, tiny_run):
    out = tmp_path / "s.txt"
    child = run("sample", "-k", tiny_run, "-n", "5", "-o", out, preexec_fn=lambda: os.close(1))
    assert child.returncode == 1
    one_error_line(child.stderr, "standard output is closed")
    assert not out.exists()


def test_a_closed_standard_error_does_not_fail_a_command_that_succeeds(tiny_run):
    # The command line leaves without Python's teardown; a stream that Python never opened
    # (None) must not turn success into exit 1 on the way out.
    child = subprocess.run([*CHARRNN, "sample", "-k", str(tiny_run), "-n", "20", "--seed", "1"],
                           stdout=subprocess.PIPE, text=True, timeout=300,
                           preexec_fn=lambda: os.close(2))
    assert child.returncode == 0
    assert len(child.stdout.rstrip("\n")) >= 20


@pytest.mark.parametrize("command", [
    ["sample", "-n", "100000"],  # streamed text
    ["plot", "-o", "-", "--width", "3000", "--height", "2000"],  # a PNG file on stdout
], ids=["sample", "plot -o -"])
def test_a_reader_that_goes_away_ends_the_command_quietly(command, tiny_run):
    args = [command[0], *(["-k"] if command[0] == "sample" else []), str(tiny_run), *command[1:]]
    # More than a pipe holds (64 kB), of which one byte is read: the writer must meet EPIPE.
    child = subprocess.Popen([*CHARRNN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(child.stdout.read(1)) == 1  # like `| head -c1`
    child.stdout.close()
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=300) == 141  # as a tool killed by SIGPIPE
    assert stderr == ""


def test_interactive_sampling_with_standard_input_closed(tiny_run):
    child = run("sample", "-k", tiny_run, "-i", preexec_fn=lambda: os.close(0))
    assert child.returncode == 2
    one_error_line(child.stderr, "standard input, which is closed")


def test_interactive_sampling_of_bytes_that_are_not_utf8(tiny_run):
    child = subprocess.run([*CHARRNN, "sample", "-k", str(tiny_run), "-i", "-n", "5"],
                           input=b"The\n\xff\xfe\nThe\n", capture_output=True, timeout=300,
                           env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    stderr = child.stderr.decode()
    # The bad line is reported as characters the model cannot write; the session goes on,
    # and ends with status 1 (read from a pipe) saying how many lines failed.
    assert child.returncode == 1, stderr
    assert "Traceback" not in stderr and stderr.count("error:") == 2 and "cannot write" in stderr
    assert "1 of 3 input lines could not be continued" in stderr
    assert child.stdout.decode().count("The") == 2


def test_an_encoding_without_the_characters_shows_escapes(tiny_run, tmp_path):
    # A real interpreter whose stdout is latin-1: the vocabulary preview has '␠'.
    child = run("info", tiny_run, env={"PYTHONIOENCODING": "latin-1"})
    assert child.returncode == 0, child.stderr
    assert "\\u2420" in child.stdout and "Traceback" not in child.stderr


@pytest.mark.parametrize(("encoding", "command"), [
    ("cp1252", "vocab show"), ("ascii", "sample"), ("ascii", "info"), ("latin-1", "data list")])
def test_characters_the_output_cannot_encode_are_escaped(encoding, command, tmp_path,
                                                         chinese_corpus):
    runner = CliRunner(charset=encoding)
    run_dir = tmp_path / "run"
    if command in ("sample", "info"):
        from charrnn.config import load_config
        from charrnn.train import train
        from conftest import tiny_overrides

        train(load_config(None, tiny_overrides(chinese_corpus, run_dir, **{
            "train.max_steps": 2, "train.eval_every": 0, "data.seq_len": 8})))
    args = {"vocab show": ["vocab", "show", tmp_path / "v.json"],
            "sample": ["sample", "-k", run_dir, "-p", "第一回", "-n", "5", "--seed", "1"],
            "info": ["info", run_dir], "data list": ["data", "list"]}[command]
    Vocab.build([chinese_corpus.read_text(encoding="utf-8")]).save(tmp_path / "v.json")
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "\\u" in result.stdout  # 第, 红 and their kin, escaped


def test_a_zero_or_tiny_terminal_width_still_shows_everything(tmp_path, tiny_run):
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from charrnn.cli import app\n"
        "run, vocab = sys.argv[1:]\n"
        "for args in (['info', run], ['eval', '-k', run], ['data', 'list'],\n"
        "             ['vocab', 'show', vocab]):\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "    assert len(result.stdout.strip()) > 40, (args, result.stdout)\n"
        "print('ok')\n")
    # The consoles read COLUMNS when they are made: a fresh interpreter.
    child = subprocess.run([sys.executable, "-c", script, str(tiny_run),
                            str(tiny_run / "vocab.json")], capture_output=True, text=True,
                           timeout=300, env={**os.environ, "COLUMNS": "0"})
    assert child.stdout.strip() == "ok", child.stderr
    help_page = run("--help", env={"COLUMNS": "0"})
    assert help_page.returncode == 0 and "sample" in help_page.stdout


def test_a_tiny_terminal_is_drawn_at_the_minimum_width(tiny_run, monkeypatch):
    from charrnn.cli import common

    monkeypatch.setattr(common.out, "width", 3)
    result = CliRunner().invoke(app, ["info", str(tiny_run)])
    assert result.exit_code == 0
    border = next(line for line in result.stdout.splitlines() if line.startswith("┌"))
    assert len(border) == common.MIN_WIDTH


def test_user_text_is_never_read_as_markup(tmp_path, corpus):
    from conftest import set_args

    for index, name in enumerate(("[draft]", "[/]", "[bold red]x")):
        run_dir = tmp_path / "runs" / name
        result = CliRunner().invoke(app, ["train", *set_args(corpus, run_dir, **{
            "train.max_steps": 2, "train.eval_every": 0})])
        assert result.exit_code == 0, result.output
        # A command a person can paste: the path quoted for the shell, shown as it is.
        assert f"charrnn sample --checkpoint '{run_dir}'" in result.stdout
        shown = CliRunner().invoke(app, ["info", str(run_dir)])
        assert shown.exit_code == 0, shown.output
        assert str(run_dir / "best.pt") in shown.stdout
        vocab = tmp_path / f"[red]v{index}.json"
        (run_dir / "vocab.json").rename(vocab)
        listed = CliRunner().invoke(app, ["vocab", "show", str(vocab)])
        assert listed.exit_code == 0 and str(vocab) in listed.stdout
        missing = CliRunner().invoke(app, ["eval", "-k", str(tmp_path / name / "none")])
        assert_clean_error(missing, 1, f"{tmp_path / name / 'none'}")


def test_sigterm_ends_a_command_like_ctrl_c(tmp_path, tiny_run):
    child = subprocess.Popen([*CHARRNN, "sample", "-k", str(tiny_run), "-n", "10000000"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.read(1)
    child.terminate()
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == 143
    assert "terminated" in stderr and "Traceback" not in stderr


def test_a_broken_pipe_in_interactive_mode_is_quiet(tiny_run):
    child = subprocess.Popen([*CHARRNN, "sample", "-k", str(tiny_run), "-i", "-n", "50000"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    child.stdin.write(b"The\n")
    child.stdin.flush()
    assert child.stdout.read(1)
    child.stdout.close()
    child.stdin.close()
    assert child.wait(timeout=300) == 141
    assert child.stderr.read() == b""



@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_torch_is_imported_ends_the_command_cleanly(tmp_path, tiny_run, signum):
    """Raised inside `import torch`, the exception left its modules half made: a traceback
    about numpy, an abort (134), or a lost signal and a run that went on to its end. Sent at
    moments spread over the start, every one ends the command as the signal asks."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for delay in (0.3, 0.5, 0.7, 0.9, 1.2):
        child = subprocess.Popen([*CHARRNN, "sample", "-k", str(tiny_run), "-n", "10000000",
                                  "-o", str(tmp_path / "out.txt")],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env)
        time.sleep(delay)
        child.send_signal(signum)
        _, stderr = child.communicate(timeout=300)
        # Before the command's handlers exist (the first few tenths of a second), Python's
        # own end it (-signum); never a run that goes on, an abort or an error.
        assert child.returncode in (128 + signum, -signum), (delay, child.returncode, stderr)
        if child.returncode == 128 + signum:
            assert "Traceback" not in stderr, (delay, stderr)
