import numpy as np
import pytest
import torch

from charrnn.batches import RandomBatches, StreamBatches, windows_to_tensors
from charrnn.config import DataConfig
from charrnn.corpus import Normalization, resolve_sources
from charrnn.data import load_dataset
from charrnn.errors import ConfigError, CorpusError
from charrnn.idcache import IDS_FILE, encode_cached
from charrnn.vocab import Vocab


def test_targets_are_inputs_shifted_by_one():
    ids = np.arange(100, dtype=np.uint8)
    x, y = windows_to_tensors(ids, np.array([0, 10, 50]), 8)
    assert x.shape == y.shape == (3, 8)
    assert x[1].tolist() == list(range(10, 18))
    assert y[1].tolist() == list(range(11, 19))


def test_streams_continue_where_the_previous_window_ended():
    ids = np.arange(10_000, dtype=np.uint32)
    batches = StreamBatches(ids, batch_size=4, seq_len=16, seed=0)
    x1, y1, reset1 = batches.next()
    x2, _, reset2 = batches.next()
    assert reset1.all() and not reset2.any()
    assert (x2[:, 0] == y1[:, -1]).all()  # window 2 starts right after window 1
    assert (x1[1, 0] - x1[0, 0]).item() == batches.stream_len  # streams are far apart


def test_an_epoch_covers_each_stream_once_then_resets():
    ids = np.arange(1_000, dtype=np.uint32)
    batches = StreamBatches(ids, batch_size=3, seq_len=10, seed=1)
    seen = []
    for _ in range(batches.windows):
        x, _, _ = batches.next()
        seen.append(x)
    assert batches.epoch == 1
    flat = np.concatenate([s.numpy().ravel() for s in seen])
    assert len(np.unique(flat)) == len(flat) == batches.chars_per_epoch
    _, _, reset = batches.next()
    assert reset.all()


def test_stream_batcher_state_round_trips():
    ids = np.arange(5_000, dtype=np.uint32)
    a = StreamBatches(ids, batch_size=4, seq_len=16, seed=3, reset_every=64)
    for _ in range(100):
        a.next()
    b = StreamBatches(ids, batch_size=4, seq_len=16, seed=99, reset_every=64)
    b.load_state_dict(a.state_dict())
    for _ in range(100):
        xa, _, ra = a.next()
        xb, _, rb = b.next()
        assert (xa == xb).all() and torch.equal(ra, rb)


def test_short_corpus_uses_fewer_streams_or_fails_clearly():
    ids = np.arange(100, dtype=np.uint8)
    assert StreamBatches(ids, batch_size=64, seq_len=20, seed=0).batch_size == 4
    with pytest.raises(CorpusError, match="fewer than one window"):
        StreamBatches(ids[:10], batch_size=4, seq_len=20, seed=0)


def test_random_batches_are_reproducible_windows():
    ids = np.arange(1_000, dtype=np.uint16)
    a, b = RandomBatches(ids, 5, 7, seed=4), RandomBatches(ids, 5, 7, seed=4)
    xa, ya, reset = a.next()
    xb, _, _ = b.next()
    assert reset.all() and (xa == xb).all() and (ya == xa + 1).all()


def test_encoding_is_cached_until_the_corpus_changes(tmp_path, corpus):
    sources = resolve_sources(str(corpus))
    vocab = Vocab.build([corpus.read_text()])
    first = encode_cached(sources, vocab, "", tmp_path)
    assert vocab.decode(first.ids.tolist()) == corpus.read_text()
    stamp = (tmp_path / IDS_FILE).stat().st_mtime_ns
    encode_cached(sources, vocab, "", tmp_path)
    assert (tmp_path / IDS_FILE).stat().st_mtime_ns == stamp
    corpus.write_text(corpus.read_text() + "more")
    again = encode_cached(resolve_sources(str(corpus)), vocab, "", tmp_path)
    assert len(again.ids) == len(first.ids) + 4


def test_split_is_contiguous_with_validation_last(tmp_path, corpus):
    data = load_dataset(DataConfig(path=str(corpus), seq_len=16), tmp_path)
    text = corpus.read_text()
    assert len(data.train) + len(data.val) == len(text)
    assert len(data.val) == len(text) - int(len(text) * 0.9)
    assert data.vocab.decode(data.val.tolist()) == text[int(len(text) * 0.9):]


def test_nanogpt_split_of_tiny_shakespeare(tmp_path):
    from conftest import shared_file

    data = load_dataset(DataConfig(path=str(shared_file("tinyshakespeare.txt"))), tmp_path)
    assert len(data.val) == 111_540
    assert data.vocab.size == 66


def test_validation_split_shorter_than_a_window_is_an_error(tmp_path, corpus):
    with pytest.raises(CorpusError, match="validation split has .* fewer than one window"):
        load_dataset(DataConfig(path=str(corpus), seq_len=4000, val_fraction=0.1), tmp_path)


def test_given_vocabulary_counts_unknown_characters(tmp_path, corpus):
    vocab = Vocab.build(["The quick brown fox"])
    messages = []
    data = load_dataset(DataConfig(path=str(corpus), seq_len=16), tmp_path, vocab, messages.append)
    assert data.unknown > 0 and "became <unk>" in messages[0]
    with pytest.raises(CorpusError, match="not in the vocabulary"):
        load_dataset(DataConfig(path=str(corpus), seq_len=16, unknown="error"), tmp_path / "b",
                     vocab)


def test_normalisation_must_agree_with_a_given_vocabulary(tmp_path, corpus):
    vocab = Vocab.build([corpus.read_text().lower()], Normalization(lowercase=True))
    data = load_dataset(DataConfig(path=str(corpus), seq_len=16), tmp_path, vocab)
    assert data.unknown == 0  # the vocabulary's lowercasing was applied
    with pytest.raises(ConfigError, match="data.lowercase"):
        load_dataset(DataConfig(path=str(corpus), seq_len=16, lowercase=False), tmp_path, vocab)


def _all_ids(data) -> np.ndarray:
    return np.concatenate([data.train, data.val])


def test_separator_from_a_yaml_config_goes_between_documents(tmp_path):
    from charrnn.config import load_config

    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "b.txt").write_text("second document\n")
    (docs / "a.txt").write_text("first document\n")
    (docs / "sub" / "c.txt").write_text("third document\n")
    config = tmp_path / "config.yaml"
    config.write_text(f'data:\n  path: {docs}\n  separator: "\\n=====\\n"\n  seq_len: 4\n'
                      "  val_fraction: 0.2\n", encoding="utf-8")
    cfg = load_config(config).data
    data = load_dataset(cfg, tmp_path / "run")
    text = data.vocab.decode(_all_ids(data).tolist())
    assert text == ("first document\n\n=====\nsecond document\n\n=====\nthird document\n")
    # The separator is part of the cache key: changing it re-encodes.
    plain = load_dataset(load_config(config, ["data.separator="]).data, tmp_path / "run")
    assert plain.vocab.decode(_all_ids(plain).tolist()) == (
        "first document\nsecond document\nthird document\n")


def test_crlf_and_bom_files_encode_like_their_clean_twins(tmp_path):
    from charrnn.config import load_config

    clean = "First line of the play.\nSecond line, with café and 红楼梦.\n\nThe end.\n" * 40
    files = {"clean.txt": clean.encode(),
             "crlf.txt": clean.replace("\n", "\r\n").encode(),
             "bom.txt": b"\xef\xbb\xbf" + clean.encode(),
             "both.txt": b"\xef\xbb\xbf" + clean.replace("\n", "\r\n").encode()}
    encoded = {}
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
        cfg = load_config(None, [f"data.path={tmp_path / name}", "data.newline=lf",
                                 "data.seq_len=16"]).data
        data = load_dataset(cfg, tmp_path / f"run-{name}")
        encoded[name] = (data.vocab.chars, _all_ids(data))
    chars, ids = encoded["clean.txt"]
    assert data.vocab.decode(ids.tolist()) == clean
    for name in ("crlf.txt", "bom.txt", "both.txt"):
        assert encoded[name][0] == chars, name
        assert np.array_equal(encoded[name][1], ids), name


def test_streams_restart_from_a_blank_state_now_and_then():
    ids = np.arange(200_000, dtype=np.uint32)
    batches = StreamBatches(ids, batch_size=32, seq_len=16, seed=0, reset_every=160)
    batches.next()  # the epoch start: every stream
    resets = torch.stack([batches.next()[2] for _ in range(300)])
    assert 0.05 < resets.float().mean() < 0.15  # about seq_len / reset_every
    never = StreamBatches(ids, batch_size=32, seq_len=16, seed=0)
    never.next()
    assert not any(never.next()[2].any() for _ in range(100))


def test_a_corpus_is_told_apart_from_another_of_the_same_length():
    """A resumed run keeps its data position only on the corpus it was saved with: the data
    key holds a digest of sampled ids besides the length, at a cost that does not grow."""
    from charrnn.data import same_corpus, sampled_digest

    rng = np.random.default_rng(0)
    ids = rng.integers(1, 60, size=3_000_000, dtype=np.uint8)
    other = ids.copy()
    other[len(other) // 2:len(other) // 2 + 10] += 1  # a few characters in the middle
    assert sampled_digest(ids) == sampled_digest(ids.copy())
    assert sampled_digest(ids) != sampled_digest(other)
    assert sampled_digest(ids[:100]) != sampled_digest(ids[1:101])  # short: all of it
    key = {"length": 3, "vocab": "v", "val_fraction": 0.1, "sampled": "a"}
    assert same_corpus(dict(key), key) and not same_corpus({**key, "sampled": "b"}, key)
    old = {"length": 3, "vocab": "v", "val_fraction": 0.1}  # saved before the digest existed
    assert same_corpus(old, key) and not same_corpus(None, key)


def test_characters_added_while_the_corpus_is_read_are_said_to_become_unk(tmp_path,
                                                                          monkeypatch):
    """Appended between the counting pass and the encoding pass, they became <unk> without a
    word (warned only where a vocabulary was given); rare ones left out by data.min_count
    are no news."""
    from charrnn import data

    text = tmp_path / "corpus.txt"
    text.write_text("abcabc\n" * 2000 + "z", encoding="utf-8")
    cfg = DataConfig(path=str(text), seq_len=8, min_count=2)
    warned = []
    load_dataset(cfg, tmp_path / "quiet", warn=warned.append)
    assert warned == []  # the one 'z' is below min_count: left out as asked
    counted_before_the_change = Vocab.build(["abcabc\n" * 2000])
    monkeypatch.setattr(data, "build_vocab_cached", lambda *args: counted_before_the_change)
    load_dataset(cfg, tmp_path / "changed", warn=warned.append)
    assert warned == ["1 character of the corpus is not in the vocabulary counted from it "
                      "a moment before (a file changed while it was read) and became <unk>; "
                      "train again once the corpus has stopped changing"]
