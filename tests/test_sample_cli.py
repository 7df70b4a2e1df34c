"""`charrnn sample` for people: temperature sweeps, top-p, stop text, files, JSON, a prompt."""

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from charrnn.checkpoint import load_model
from charrnn.cli import app
from charrnn.sample import FLUSH_EVERY, Sampler, SampleSettings, parse_stop
from conftest import assert_clean_error, set_args

runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def sample(run, *args, input=None):
    result = invoke("sample", "-k", run, "--seed", 1, *args, input=input)
    assert result.exit_code == 0, result.output
    return result.stdout



@pytest.fixture
def sampler(tiny_run):
    model, vocab, _ = load_model(tiny_run)
    return Sampler(model, vocab)


# ---- several temperatures, top-p ---------------------------------------------------------------
def test_one_labelled_sample_per_temperature(tiny_run):
    temperatures = ["0.2", "0.5", "1.0", "1.2"]
    swept = sample(tiny_run, "-t", ",".join(temperatures), "-n", 40, "-p", "The ")
    blocks = swept.split("--- temperature ")[1:]
    assert [b.split(" ---\n")[0] for b in blocks] == ["0.2", "0.5", "1", "1.2"]
    for temp, block in zip(temperatures, blocks, strict=True):
        alone = sample(tiny_run, "-t", temp, "-n", 40, "-p", "The ")
        assert block.split(" ---\n", 1)[1] == alone  # same seed, same text as asked alone
        assert alone.startswith("The ")


def test_several_temperatures_and_samples_are_labelled_together(tiny_run):
    text = sample(tiny_run, "-t", "0.5,1", "-N", 2, "-n", 20)
    labels = [line for line in text.splitlines() if line.startswith("---")]
    assert labels == ["--- temperature 0.5, sample 1/2 ---", "--- temperature 0.5, sample 2/2 ---",
                      "--- temperature 1, sample 1/2 ---", "--- temperature 1, sample 2/2 ---"]


def test_top_p(tiny_run):
    greedy = sample(tiny_run, "-t", 0, "-n", 50, "-p", "How")
    # A tiny nucleus holds only the most likely character: the same as greedy decoding.
    assert sample(tiny_run, "--top-p", 1e-6, "-n", 50, "-p", "How") == greedy
    assert sample(tiny_run, "--top-p", 0.9, "-n", 50, "-p", "How").startswith("How")
    for bad in ("0", "1.5", "-0.2"):
        assert_clean_error(invoke("sample", "-k", tiny_run, "--top-p", bad), 2, "--top-p")


# ---- stop text ----------------------------------------------------------------------------------
def test_stop_ends_each_sample_at_the_stop_text(tiny_run):
    full = sample(tiny_run, "-n", 300, "-p", "The")
    stopped = sample(tiny_run, "-n", 300, "-p", "The", "--stop", " ")
    generated = stopped.removeprefix("The").removesuffix("\n")
    assert generated.endswith(" ") and " " not in generated[:-1]
    assert full.startswith("The" + generated)  # stopping does not change what came before

    many = sample(tiny_run, "-N", 3, "-n", 300, "--stop", " ")
    bodies = [b.split(" ---\n", 1)[1] for b in many.split("--- sample ")[1:]]
    assert len(bodies) == 3
    assert all(b.endswith(" \n") and " " not in b[:-2] for b in bodies)


def test_stop_understands_escapes():
    assert parse_stop(r"\n\n") == "\n\n"
    assert parse_stop(r"a\tb") == "a\tb"
    assert parse_stop(r"\\n") == "\\n"  # an escaped backslash stays a backslash
    assert parse_stop("END") == "END"


def test_stop_matches_across_chunks_and_from_the_prime(sampler):
    # Two-character stop texts, checked against a plain search of the unstopped text.
    for seed in range(6):
        settings = SampleSettings(length=4 * FLUSH_EVERY, temperature=1.0, seed=seed,
                                  num_samples=3)
        full = sampler.sample_text(settings, "Th")
        for stop in ("e ", "o", "h?", "hT"):
            got = sampler.samples(settings, "Th", stop)
            for text, drawn in zip(full, got, strict=True):
                context = "h" + text  # the prime's last character may start a match
                found = context.find(stop)
                expected = text if found < 0 else text[:found + len(stop) - 1]
                assert drawn.text == expected, (seed, stop)
        # A stop text made of the prime's last character and the first one generated.
        one = SampleSettings(length=50, temperature=1.0, seed=seed)
        first = sampler.sample_text(one, "Th")[0][0]
        assert sampler.samples(one, "Th", "h" + first)[0].text == first


def test_generation_stops_once_every_sample_has_stopped(sampler):
    steps = 0
    step = sampler.stepper()

    class CountingStep:
        def __call__(self, *args):
            nonlocal steps
            steps += 1
            return step(*args)

        def __getattr__(self, name):  # everything else is the real stepper's
            return getattr(step, name)

    counting_step = CountingStep()

    sampler.threads_for(step, 2)  # measured once per batch size: not counted below
    sampler.stepper = lambda: counting_step
    settings = SampleSettings(length=10_000, temperature=1.0, seed=0, num_samples=2)
    drawn = sampler.samples(settings, "The", stop=" ")
    assert all(s.text.endswith(" ") for s in drawn)
    longest = max(len(s.text) for s in drawn)
    assert steps < longest + FLUSH_EVERY  # at most one chunk past the last stop


def test_stop_errors(tiny_run):
    assert_clean_error(invoke("sample", "-k", tiny_run, "--stop", "€"), 2, "stop text", "'€'")
    assert_clean_error(invoke("sample", "-k", tiny_run, "--stop", ""), 2, "--stop")


# ---- files and JSON -----------------------------------------------------------------------------
def test_output_file_holds_what_would_be_printed(tiny_run, tmp_path):
    args = ("-t", "0.5,1", "-n", 40, "-p", "The ")
    printed = sample(tiny_run, *args)
    target = tmp_path / "out" / "samples.txt"
    result = invoke("sample", "-k", tiny_run, "--seed", 1, *args, "-o", target)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {target}: 2 samples")
    assert target.read_text(encoding="utf-8") == printed
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]


def test_json_samples_with_logprobs(tiny_run, tmp_path):
    args = ("-t", "0,1.0", "-N", 2, "-n", 30, "-p", "The ")
    data = json.loads(sample(tiny_run, *args, "--format", "json"))
    assert [d["temperature"] for d in data] == [0.0, 0.0, 1.0, 1.0]
    for item in data:
        assert set(item) == {"temperature", "prime", "text", "logprobs"}
        assert item["prime"] == "The " and len(item["text"]) == 30
        assert len(item["logprobs"]) == 30 and all(lp <= 0 for lp in item["logprobs"])
    text = sample(tiny_run, *args)
    for item in data:  # the same seed gives the same text in either format
        assert item["prime"] + item["text"] in text

    target = tmp_path / "samples.json"
    result = invoke("sample", "-k", tiny_run, "--seed", 1, *args, "--format", "json",
                    "-o", target)
    assert result.exit_code == 0, result.output
    assert json.loads(target.read_text(encoding="utf-8")) == data


def test_json_with_stop_cuts_the_logprobs_too(tiny_run):
    data = json.loads(sample(tiny_run, "-N", 3, "-n", 200, "--stop", " ", "--format", "json"))
    for item in data:
        assert item["text"].endswith(" ") and len(item["logprobs"]) == len(item["text"])


def test_bad_format_is_a_usage_error(tiny_run):
    assert_clean_error(invoke("sample", "-k", tiny_run, "--format", "xml"), 2, "--format")


# ---- interactive --------------------------------------------------------------------------------
def test_interactive_continues_each_piped_line(tiny_run):
    args = ("-n", 25, "-t", 0.8)
    replies = sample(tiny_run, "--interactive", *args, input="The\n\nHow vex\n")
    expected = "".join(sample(tiny_run, *args, "-p", prime) for prime in ("The", "", "How vex"))
    assert replies == expected
    assert "> " not in replies  # no prompt when stdin is not a terminal


def test_interactive_reports_a_bad_line_and_goes_on(tiny_run, monkeypatch):
    """Each bad line is reported and the others are continued; from a pipe, the command
    then ends with status 1 so that a script notices."""
    from charrnn import sample as sample_module

    monkeypatch.setattr(sample_module, "MAX_PRIME_BYTES", 100)
    result = invoke("sample", "-k", tiny_run, "--seed", 1, "-n", 10, "-i",
                    input="The €\nThe\n" + "e" * 101 + "\n")
    assert result.exit_code == 1, result.output
    errors = result.stderr.splitlines()
    assert len(errors) == 3 and all(line.startswith("error:") for line in errors)
    assert "'€'" in errors[0] and "too long a prime" in errors[1]
    assert "2 of 3 input lines could not be continued" in errors[2]
    assert "Traceback" not in result.output
    assert result.stdout == sample(tiny_run, "-n", 10, "-p", "The")


def test_interactive_json_is_one_line_per_prompt(tiny_run):
    out = sample(tiny_run, "-i", "--format", "json", "-n", 10, "-t", "0,1",
                 input="The\nHow\n")
    lines = out.splitlines()
    assert len(lines) == 2
    assert [[d["prime"] for d in json.loads(line)] for line in lines] == [["The"] * 2,
                                                                          ["How"] * 2]


def test_interactive_refuses_prime_and_output(tiny_run, tmp_path):
    assert_clean_error(invoke("sample", "-k", tiny_run, "-i", "-p", "x"), 2, "--interactive")
    assert_clean_error(invoke("sample", "-k", tiny_run, "-i", "-o", tmp_path / "x.txt"), 2,
                       "--interactive")


def _read_until(fd: int, wanted: bytes, seen: bytearray, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"waited {timeout} s for {wanted!r}; got {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the other side closed: the program ended
                chunk = b""
            assert chunk, f"the program ended before printing {wanted!r}: {bytes(seen)!r}"
            seen += chunk


def test_interactive_through_a_terminal(tiny_run):
    args = ["-n", "25", "--seed", "1", "--device", "cpu"]
    expected = sample(tiny_run, *args, "-p", "The")  # "The" and 25 characters
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "dumb", "NO_COLOR": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "charrnn", "sample", "-k", str(tiny_run), "--interactive", *args],
        stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    seen = bytearray()
    try:
        _read_until(master, b"> ", seen)  # the prompt: the model is loaded
        os.write(master, b"The\n")
        # The terminal turns each line break into CR LF.
        _read_until(master, expected.replace("\n", "\r\n").encode() + b"> ", seen)
        os.write(master, b"\x04")  # Ctrl-D on an empty line: end of input
        assert process.wait(timeout=60) == 0, bytes(seen)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    assert b"Ctrl-D quits" in seen and b"Traceback" not in seen


# ---- a prime from a file, beam search ------------------------------------------------------------
def test_prime_file_is_the_same_as_the_prime_it_holds(tiny_run, tmp_path):
    prime = "The quick\nbrown fox\n"
    path = tmp_path / "prime.txt"
    path.write_text(prime, encoding="utf-8")
    from_file = sample(tiny_run, "--prime-file", path, "-n", 40)
    assert from_file == sample(tiny_run, "--prime", prime, "-n", 40)
    assert from_file.startswith(prime)


def test_a_prime_files_line_endings_are_kept_for_a_model_that_writes_them(tiny_run,
                                                                            tmp_path, corpus):
    crlf = tmp_path / "prime.txt"
    crlf.write_bytes(b"The quick\r\nbrown fox\r\n")
    # The tiny run never saw \r: the file's CRLF is read as LF.
    assert sample(tiny_run, "--prime-file", crlf, "-n", 20) == \
        sample(tiny_run, "--prime", "The quick\nbrown fox\n", "-n", 20)
    # A model trained on CRLF text (newline: keep) reads the prime as --prime would give it.
    text = tmp_path / "crlf.txt"
    text.write_bytes(corpus.read_bytes().replace(b"\n", b"\r\n"))
    result = invoke("train", *set_args(text, tmp_path / "run", **{"train.max_steps": 2}))
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    options = ("-n", 5, "--seed", 1, "--format", "json")
    from_file = json.loads(invoke("sample", "-k", run, "--prime-file", crlf, *options).stdout)
    given = json.loads(invoke("sample", "-k", run, "-p", "The quick\r\nbrown fox\r\n",
                              *options).stdout)
    assert from_file[0]["prime"] == "The quick\r\nbrown fox\r\n" and from_file == given


def test_prime_file_errors(tiny_run, tmp_path):
    assert_clean_error(invoke("sample", "-k", tiny_run, "--prime-file", tmp_path / "none.txt"),
                       2, "--prime-file", "no such file")
    assert_clean_error(invoke("sample", "-k", tiny_run, "--prime-file", tmp_path), 2,
                       "it is a directory")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    assert_clean_error(invoke("sample", "-k", tiny_run, "--prime-file", latin), 2, "not UTF-8")
    both = tmp_path / "p.txt"
    both.write_text("The", encoding="utf-8")
    assert_clean_error(invoke("sample", "-k", tiny_run, "--prime-file", both, "-p", "x"), 2,
                       "--prime TEXT or --prime-file FILE")
    assert_clean_error(invoke("sample", "-k", tiny_run, "-i", "--prime-file", both), 2,
                       "--interactive")


def test_beam_from_the_command_line(tiny_run):
    best = sample(tiny_run, "--beam", 4, "-n", 30, "-p", "The ")
    assert best == sample(tiny_run, "--beam", 4, "-n", 30, "-p", "The ", "--seed", 9)
    data = json.loads(sample(tiny_run, "--beam", 4, "-N", 3, "-n", 30, "-p", "The ",
                             "--format", "json"))
    totals = [sum(item["logprobs"]) for item in data]
    assert len(data) == 3 and totals == sorted(totals, reverse=True)
    assert "The " + data[0]["text"] + "\n" == best
    assert_clean_error(invoke("sample", "-k", tiny_run, "--beam", 2, "-t", "0.5"), 2,
                       "--beam", "--temperature")
    replies = sample(tiny_run, "-i", "--beam", 3, "-n", 20, input="The \n")
    assert replies == sample(tiny_run, "--beam", 3, "-n", 20, "-p", "The ")


def test_the_command_line_and_the_library_accept_the_same_seeds():
    from charrnn import sample as library
    from charrnn.cli import sample as command
    from charrnn.serve.app import SEED_RANGE

    assert command.MAX_SEED == library.MAX_SEED and SEED_RANGE == (0, library.MAX_SEED)


def test_interactive_counts_an_overlong_line_without_holding_it(tiny_run, monkeypatch):
    """From a pipe a line is read a prime's length at a time: a 500 MB line held 1.2 GB
    before it was refused, and /dev/zero all of memory. The next line is continued."""
    from charrnn import sample as sample_module

    monkeypatch.setattr(sample_module, "MAX_PRIME_BYTES", 100)
    result = invoke("sample", "-k", tiny_run, "--seed", 1, "-n", 10, "-i",
                    input="e" * 1000 + "\nThe\n" + "e" * 101)
    assert result.exit_code == 1, result.output
    errors = result.stderr.splitlines()
    assert errors[0].startswith("error: a line of 1,000 characters is too long a prime")
    assert errors[1].startswith("error: a line of 101 characters is too long a prime")
    assert result.stdout == sample(tiny_run, "-n", 10, "-p", "The")


def test_interactive_names_bytes_that_are_not_utf8(tiny_run):
    """Under a C.UTF-8 locale they came through as surrogates: "a character the model
    cannot write: '\\udcff'"."""
    result = subprocess.run([sys.executable, "-m", "charrnn", "sample", "-k", str(tiny_run),
                             "-n", "5", "-i"], input=b"The \xff\n", capture_output=True,
                            env={**os.environ, "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": ""},
                            timeout=120)
    assert "'\ufffd'".encode() in result.stderr and b"udcff" not in result.stderr, result.stderr
