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
