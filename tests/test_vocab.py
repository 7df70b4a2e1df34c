import json

import numpy as np
import pytest

from charrnn.corpus import Normalization
from charrnn.vocab import UNK, UNK_ID, Vocab, VocabError


def test_round_trip_chinese_exactly():
    text = "第一回　甄士隐梦幻识通灵\n“宝玉”，黛玉。ㄠㄚ\ue84f"
    vocab = Vocab.build([text])
    ids = vocab.encode(text)
    assert vocab.decode(ids.tolist()) == text
    assert UNK_ID not in ids


def test_chars_are_sorted_code_points_and_unk_is_id_zero():
    vocab = Vocab.build(["banana\n", "cab"])
    assert vocab.chars == ("\n", "a", "b", "c", "n")
    assert vocab.itos[0] == UNK
    assert vocab.stoi["a"] == 2
    assert vocab.counts == (1, 4, 2, 1, 2)


def test_same_text_same_vocabulary_in_any_piece_order():
    assert Vocab.build(["ab", "cd"]).to_json() == Vocab.build(["c", "dab"]).to_json()


def test_unseen_characters_encode_to_unk():
    vocab = Vocab.build(["hello world"])
    ids = vocab.encode("hello, world!")
    assert ids[5] == UNK_ID and ids[-1] == UNK_ID
    assert vocab.decode(ids.tolist()) == f"hello{UNK} world{UNK}"
    assert vocab.unknown_chars("hello, world!?") == [",", "!", "?"]


def test_min_count_drops_rare_characters_to_unk():
    vocab = Vocab.build(["aaaa bbb c"], min_count=2)
    assert vocab.chars == (" ", "a", "b")
    assert vocab.unk_count == 1
    assert vocab.encode("c")[0] == UNK_ID


def test_json_round_trip_keeps_everything(tmp_path):
    norm = Normalization(lowercase=True, newline="lf")
    vocab = Vocab.build(["Hello\nWorld 红楼梦"], norm, min_count=1)
    path = tmp_path / "v.json"
    vocab.save(path)
    loaded = Vocab.load(path)
    assert loaded == vocab
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["unk"] == UNK and data["chars"] == sorted(data["chars"])
    assert "红" in path.read_text(encoding="utf-8")  # readable, not \\u-escaped


@pytest.mark.parametrize(("size", "dtype"), [(10, np.uint8), (300, np.uint16),
                                             (70_000, np.uint32)])
def test_id_dtype_grows_with_the_vocabulary(size, dtype):
    text = "".join(chr(0x4E00 + i) for i in range(size))
    vocab = Vocab.build([text])
    assert vocab.dtype == dtype
    assert vocab.decode(vocab.encode(text).tolist()) == text


@pytest.mark.parametrize("payload", [
    [], {"format": "other"}, {"format": "charrnn-vocab", "version": 1, "chars": ["a", "a"],
                              "counts": [1, 1]},
    {"format": "charrnn-vocab", "version": 1, "chars": ["b", "a"], "counts": [1, 1]},
    {"format": "charrnn-vocab", "version": 1, "chars": ["ab"], "counts": [1]},
    {"format": "charrnn-vocab", "version": 1, "chars": ["a", "b"], "counts": [1]},
])
def test_malformed_vocab_files_are_clear_errors(tmp_path, payload):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(VocabError, match="not a valid charrnn vocabulary"):
        Vocab.load(path)


def test_not_json_and_missing_file_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(VocabError, match="cannot read vocabulary"):
        Vocab.load(bad)
    with pytest.raises(VocabError, match="vocab build"):
        Vocab.load(tmp_path / "missing.json")


def test_empty_and_single_character_corpora_are_refused():
    with pytest.raises(VocabError, match="empty"):
        Vocab.build([""])
    with pytest.raises(VocabError, match="at least two"):
        Vocab.build(["aaaa"])


def test_prime_text_gets_the_vocabularys_normalisation():
    vocab = Vocab.build(["hello\n"], Normalization(lowercase=True, newline="lf"))
    assert vocab.normalize("HeLLo\r\n") == "hello\n"


def test_a_lone_surrogate_in_a_hand_edited_vocabulary_is_refused(tmp_path):
    """It was taken, and sampling from the model then ended in a UnicodeEncodeError."""
    data = Vocab.build(["abc"]).to_dict()
    data["chars"] = sorted([*data["chars"], "\ud800"])
    data["counts"] = [1] * len(data["chars"])
    with pytest.raises(VocabError, match="lone surrogate"):
        Vocab.from_dict(data)


def test_a_vocabulary_saved_with_a_bom_is_read(tmp_path):
    """Notepad writes one: "Unexpected UTF-8 BOM ... rebuild it"."""
    vocab = Vocab.build(["hello"])
    path = tmp_path / "vocab.json"
    path.write_bytes(b"\xef\xbb\xbf" + vocab.to_json().encode())
    assert Vocab.load(path).chars == vocab.chars
