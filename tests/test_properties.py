"""Properties that must hold for any input, checked on many generated ones (hypothesis).

Any Unicode text a UTF-8 file can hold round-trips through the vocabulary, read whole or in
blocks of a few bytes; and whatever a config file or `--set` says, loading it gives a config
or a config error, never a crash.
"""

import json
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from charrnn.config import Config, load_config
from charrnn.corpus import Normalization, Source, iter_text
from charrnn.errors import UsageError
from charrnn.vocab import UNK_ID, Vocab, VocabError

# Surrogates cannot come out of a UTF-8 file; NUL marks a binary file and is refused by design.
FILE_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters=["\0"])
QUICK = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])


@QUICK
@given(st.text(st.characters(exclude_categories=["Cs"])))
def test_any_text_round_trips_through_its_vocabulary(text):
    vocab = Vocab.build([text, "ab"])  # "ab": every vocabulary needs two characters
    ids = vocab.encode(text)
    assert UNK_ID not in ids
    assert vocab.decode(ids.tolist()) == text


@QUICK
@given(text=st.text(FILE_CHARS), block_bytes=st.integers(1, 9))
def test_any_text_survives_a_file_read_in_tiny_blocks(text, block_bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.txt"
        path.write_bytes(text.encode("utf-8"))
        pieces = list(iter_text([Source(str(path), path=path)], Normalization(),
                                block_bytes=block_bytes))
    expected = text.removeprefix("\ufeff")  # a leading byte-order mark is dropped by default
    assert "".join(pieces) == expected
    vocab = Vocab.build([*pieces, "ab"])
    assert "".join(vocab.decode(vocab.encode(p).tolist()) for p in pieces) == expected


@QUICK
@given(text=st.text(FILE_CHARS), block_bytes=st.integers(1, 9),
       norm=st.builds(Normalization, lowercase=st.booleans(),
                      newline=st.sampled_from(["keep", "lf"]),
                      unicode=st.sampled_from(["keep", "nfc", "nfkc"])))
@example(text="ΑΣΒ", block_bytes=4, norm=Normalization(lowercase=True))  # a final sigma
def test_normalising_in_blocks_equals_normalising_the_whole_text(text, block_bytes, norm):
    source = Source("t.txt", data=text.encode("utf-8"))
    streamed = "".join(iter_text([source], norm, block_bytes=block_bytes))
    assert streamed == norm.apply(text)


# ---- the config loader ------------------------------------------------------------------------
SECTIONS = {"data": ["path", "seq_len", "val_fraction", "lowercase", "newline"],
            "model": ["cell", "hidden_size", "dropout", "num_layers"],
            "optim": ["lr", "warmup", "schedule"],
            "train": ["max_steps", "max_time", "out_dir", "device", "keep_last"]}
SCALARS = (st.none() | st.booleans() | st.integers() | st.just(10**400) | st.floats()
           | st.text(max_size=12)
           | st.sampled_from(["1e-3", "nan", "-.inf", "lstm", "0", "1e999"]))
YAML_DATA = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=12)
# Real section and key names with arbitrary values reach the validators, not just the first check.
NEAR_CONFIG = st.dictionaries(
    st.sampled_from([*SECTIONS, "extra"]),
    st.one_of(YAML_DATA, st.dictionaries(
        st.sampled_from([k for keys in SECTIONS.values() for k in keys] + ["hiden"]),
        YAML_DATA, max_size=4)),
    max_size=4)


def load_text(text: str) -> Config | None:
    """Load `text` as a config file: a Config, or None when it was refused with a clean error."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            return load_config(path)
        except UsageError:  # ConfigError included
            return None


@QUICK
@given(st.one_of(YAML_DATA, NEAR_CONFIG))
@example({"optim": {"lr": 10**400}})  # an integer no float can hold
def test_any_yaml_data_gives_a_config_or_a_config_error(data):
    config = load_text(yaml.safe_dump(data, allow_unicode=True))
    assert config is None or isinstance(config, Config)


@QUICK
@given(st.text(st.characters(exclude_categories=["Cs"])))
def test_any_text_as_a_config_file_gives_a_config_or_a_config_error(text):
    config = load_text(text)
    assert config is None or isinstance(config, Config)


@QUICK
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=30))
def test_any_set_override_gives_a_config_or_a_usage_error(override):
    try:
        config = load_config(None, [override])
    except UsageError:
        return
    assert isinstance(config, Config)


# ---- vocabulary files ---------------------------------------------------------------------------
JSON_DATA = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                         | st.text(max_size=4),
                         lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=10)
VALID_VOCAB = Vocab.build(["hello world"]).to_dict()


@QUICK
@given(key=st.sampled_from(sorted(VALID_VOCAB)), value=JSON_DATA)
def test_a_vocab_file_with_any_field_changed_loads_or_is_a_vocab_error(key, value):
    data = json.loads(json.dumps({**VALID_VOCAB, key: value}))
    try:
        vocab = Vocab.from_dict(data)
    except VocabError:
        return
    known = "".join(vocab.chars)
    assert vocab.decode(vocab.encode(known).tolist()) == known


@pytest.mark.parametrize("key", ["lowercase", "strip_bom", "newline", "unicode"])
def test_a_mistyped_normalisation_is_a_vocab_error(key):
    data = {**VALID_VOCAB, "normalization": {**VALID_VOCAB["normalization"], key: 1}}
    with pytest.raises(VocabError, match="'normalization' is malformed"):
        Vocab.from_dict(data)


# ---- the command line, whatever it is given ---------------------------------------------------
# Every run below goes through the real CLI (CliRunner) and must end in success or in a clean
# error: an `error:` line first on stderr, exit code 1 or 2, no traceback. What the run
# directory holds must be unchanged after an error (the .lock file, rewritten with the pid of
# whoever last held it, and the encoded caches, which are derived and rebuilt on demand, aside).
CLI = settings(max_examples=25, deadline=None,
               suppress_health_check=[HealthCheck.too_slow,
                                      HealthCheck.function_scoped_fixture])
RECORDS = ("best.pt", "last.pt", "config.yaml", "metrics.jsonl")


def run_cli(*args):
    from typer.testing import CliRunner

    from charrnn.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clean(result) -> None:
    """Success, or one clean error; never a traceback."""
    if result.exit_code == 0:
        return
    assert result.exit_code in (1, 2), (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), result.stderr


def records(run: Path) -> dict:
    return {name: (run / name).read_bytes() for name in RECORDS if (run / name).exists()}


@pytest.fixture(scope="module")
def run_copy(tiny_run, tmp_path_factory):
    """copy(): a fresh copy of the tiny run, for a test that changes it."""
    root = tmp_path_factory.mktemp("copies")
    counter = [0]

    def copy() -> Path:
        counter[0] += 1
        target = root / f"run{counter[0]}"
        target.mkdir()
        for path in tiny_run.iterdir():
            if path.is_file():
                (target / path.name).write_bytes(path.read_bytes())
        return target

    return copy


CONFIG_TEXT = st.one_of(
    YAML_DATA.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    NEAR_CONFIG.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=60),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")))


@CLI
@given(text=CONFIG_TEXT, raw=st.binary(max_size=20))
def test_resuming_with_any_config_yaml_is_clean_and_an_error_changes_nothing(text, raw,
                                                                             run_copy):
    run = run_copy()
    (run / "config.yaml").write_bytes(text.encode("utf-8", "surrogateescape") + raw)
    before = records(run)
    # Bounded, should the config be valid: one more step, a short final evaluation.
    result = run_cli("train", "--resume", run, "--quiet", "--set", "train.max_steps=31",
                     "--set", "train.final_eval_chars=200", "--set", "train.eval_every=0")
    assert_clean(result)
    if result.exit_code != 0:
        assert records(run) == before


VOCAB_FIELD = st.sampled_from(sorted(VALID_VOCAB))


@CLI
@given(data=st.one_of(JSON_DATA, st.builds(lambda k, v: {**VALID_VOCAB, k: v}, VOCAB_FIELD,
                                           JSON_DATA)),
       top=st.integers(-3, 30) | st.integers(min_value=10**7))
def test_any_json_vocabulary_is_shown_or_a_clean_error(data, top, tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "v.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert_clean(run_cli("vocab", "show", path, "--top", top))


METRICS_LINE = st.one_of(
    JSON_DATA.map(json.dumps),
    st.fixed_dictionaries({"kind": st.sampled_from(["train", "eval", "x"])},
                          optional={"step": JSON_DATA, "loss": JSON_DATA, "val_loss": JSON_DATA,
                                    "elapsed": JSON_DATA, "lr": JSON_DATA,
                                    "final": JSON_DATA}).map(json.dumps),
    st.text(max_size=40))


@settings(CLI, max_examples=15)  # a plot and a resume each
@given(lines=st.lists(METRICS_LINE, max_size=6), raw=st.binary(max_size=12))
def test_any_metrics_lines_plot_and_resume_cleanly(lines, raw, run_copy):
    run = run_copy()
    with open(run / "metrics.jsonl", "ab") as f:
        f.write("\n".join(lines).encode("utf-8", "surrogateescape") + b"\n" + raw)
    before = records(run)
    image = run.parent / f"{run.name}.png"
    assert_clean(run_cli("plot", run, "-o", image, "--width", 300, "--height", 200))
    assert records(run) == before  # plotting only reads
    resumed = run_cli("train", "--resume", run, "--quiet", "--set", "train.max_steps=31",
                      "--set", "train.final_eval_chars=200")
    assert resumed.exit_code == 0, resumed.output  # a damaged log never stops a run


# Numbers as a careless user types them: small, negative, past every bound, not numbers.
SMALL = st.integers(-3, 40)
HUGE = st.integers(min_value=10**9, max_value=10**40) | st.integers(max_value=-(10**9))
NUMBER = SMALL | HUGE | st.sampled_from(["1e9", "nan", "", "0x10", "١٢"])
# Any float a user may type, float32's range and beyond (1e39, 1e-300) included.
FLOAT = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    ["nan", "inf", "-inf", "0", "1e-3", "x", "0.5,1.5", ",", ""])


@CLI
@given(length=NUMBER, samples=NUMBER, top_k=NUMBER, seed=NUMBER, top_p=FLOAT,
       temperature=FLOAT, stop=st.text(max_size=4), prime=st.text(max_size=6),
       as_json=st.booleans())
def test_any_sample_options_are_clean(length, samples, top_k, seed, top_p, temperature, stop,
                                      prime, as_json, tiny_run):
    before = records(tiny_run)
    args = ["sample", "-k", tiny_run, "--length", length, "--num-samples", samples, "--top-k",
            top_k, "--seed", seed, "--top-p", top_p, "--temperature", temperature, "--prime",
            prime, "--format", "json" if as_json else "text"]
    if stop:
        args += ["--stop", stop]
    assert_clean(run_cli(*args))
    assert records(tiny_run) == before


@CLI
@given(window=st.none() | NUMBER, streams=st.none() | NUMBER,
       device=st.sampled_from(["cpu", "auto", "tpu", ""]))
def test_any_eval_options_are_clean_and_write_nothing(window, streams, device, tiny_run):
    before = {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.name != ".lock"}
    args = ["eval", "-k", tiny_run, "--device", device]
    args += [] if window is None else ["--window", window]
    args += [] if streams is None else ["--streams", streams]
    assert_clean(run_cli(*args))
    assert {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.name != ".lock"} == before


@CLI
@given(width=st.sampled_from([299, 300, 1000, 10_000, 10_001, -1, 10**30, "wide"]),
       height=st.sampled_from([199, 200, 10_001, 0, "tall"]),
       output=st.sampled_from(["p.png", "p.svg", "p.gif", "p", "-", "sub/p.pdf"]))
def test_any_plot_options_are_clean(width, height, output, tiny_run, tmp_path_factory):
    out = output if output == "-" else tmp_path_factory.mktemp("plot") / output
    assert_clean(run_cli("plot", tiny_run, "-o", out, "--width", width, "--height", height))
