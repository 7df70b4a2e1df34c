import codecs
import os
from pathlib import Path

import pytest

from charrnn.corpus import Normalization, iter_text, resolve_sources
from charrnn.errors import CorpusError


def read_all(spec, norm=Normalization(), block_bytes=7, separator=""):
    return "".join(iter_text(resolve_sources(spec), norm, separator, block_bytes=block_bytes))


def test_directory_is_walked_recursively_in_sorted_order_skipping_binaries(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("two")
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "img.bin").write_bytes(b"\x89PNG\0\0")
    (tmp_path / ".hidden").write_text("secret")
    sources = resolve_sources(str(tmp_path))
    assert [s.path.name for s in sources] == ["a.txt", "2.txt"]
    assert read_all(str(tmp_path), separator="|") == "one|two"


def test_glob_and_several_inputs(tmp_path):
    for name in ("x1.txt", "x2.txt", "y.md"):
        (tmp_path / name).write_text(name)
    assert read_all(str(tmp_path / "x*.txt")) == "x1.txtx2.txt"
    assert read_all([str(tmp_path / "y.md"), str(tmp_path / "x1.txt")]) == "y.mdx1.txt"


def test_missing_paths_empty_globs_and_empty_directories_are_errors(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        resolve_sources(str(tmp_path / "nope.txt"))
    with pytest.raises(CorpusError, match="matches no files"):
        resolve_sources(str(tmp_path / "*.nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="holds no text files"):
        resolve_sources(str(tmp_path / "empty"))


def test_invalid_utf8_names_file_and_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("héllo wörld".encode() + b" caf\xe9 ok")
    with pytest.raises(CorpusError, match=r"latin1.txt is not valid UTF-8 \(byte offset 17"):
        read_all(str(path), block_bytes=5)


def test_utf16_and_binary_files_are_refused(tmp_path):
    utf16 = tmp_path / "u16.txt"
    utf16.write_bytes(codecs.BOM_UTF16_LE + "hello".encode("utf-16-le"))
    with pytest.raises(CorpusError, match="UTF-16"):
        read_all(str(utf16))
    binary = tmp_path / "x.dat"
    binary.write_bytes(b"abc\0def")
    with pytest.raises(CorpusError, match="binary file .NUL byte at byte offset 3"):
        read_all(str(binary))


def test_multibyte_characters_split_across_blocks_decode_exactly(tmp_path):
    text = "红楼梦 dream 🀄 of the red chamber\n" * 5
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    for block in (1, 2, 3, 5, 64):
        assert read_all(str(path), block_bytes=block) == text


def test_bom_is_stripped_by_default_and_kept_when_asked(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(codecs.BOM_UTF8 + b"abc")
    assert read_all(str(path)) == "abc"
    assert read_all(str(path), Normalization(strip_bom=False)) == "\ufeffabc"


def test_crlf_and_nfc_normalisation_survive_block_boundaries(tmp_path):
    clean = "line one\nline two café\nlast\n" * 10
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(codecs.BOM_UTF8 + clean.replace("\n", "\r\n").replace(
        "café", "cafe\u0301").encode())
    norm = Normalization(newline="lf", unicode="nfc")
    for block in (1, 2, 3, 7, 1000):
        assert read_all(str(crlf), norm, block_bytes=block) == clean


def test_lowercase(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Hello WORLD")
    assert read_all(str(path), Normalization(lowercase=True)) == "hello world"


def test_builtin_python_docs_is_available_offline():
    text = read_all("builtin:python-docs", block_bytes=1 << 20)
    assert len(text) > 100_000 and "assert" in text


def test_unknown_builtin_is_an_error():
    with pytest.raises(CorpusError, match="unknown built-in corpus"):
        resolve_sources("builtin:nope")


def test_charrnn_run_directories_under_a_corpus_are_not_read(tmp_path):
    """A run kept under its corpus's directory (data.path: . with runs in ./runs) read its own
    files (config, metrics, the encoded corpus) as text."""
    (tmp_path / "a.txt").write_text("text\n", encoding="utf-8")
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / ".lock").write_text("")
    (run / "config.yaml").write_text("data: {}\n", encoding="utf-8")
    (run / "notes").mkdir()
    (run / "notes" / "n.txt").write_text("run notes\n", encoding="utf-8")
    assert [s.path.name for s in resolve_sources(str(tmp_path))] == ["a.txt"]
    assert [s.path.name for s in resolve_sources(str(tmp_path / "**" / "*"))] == ["a.txt"]
    # The run reading the corpus, before it has written its config: named by the caller.
    (run / "config.yaml").unlink()
    assert [s.path.name for s in resolve_sources(str(tmp_path))] == ["a.txt", "n.txt"]
    assert [s.path.name for s in resolve_sources(str(tmp_path), run_dir=run)] == ["a.txt"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="symbolic links")
def test_a_recursive_glob_does_not_follow_a_link_back_up_the_tree(tmp_path):
    """Each file was read 41 times through `sub/up -> ..`; with two such links the glob
    never ended."""
    root = tmp_path / "loop"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("hello world\n", encoding="utf-8")
    (root / "sub" / "b.txt").write_text("bye\n", encoding="utf-8")
    os.symlink("..", root / "sub" / "up1")
    os.symlink("..", root / "sub" / "up2")
    found = resolve_sources(str(root / "**" / "*.txt"))
    assert [Path(s.name).relative_to(root).as_posix() for s in found] == ["a.txt", "sub/b.txt"]


def test_a_glob_reads_the_directories_it_matches_as_a_directory_is_read(tmp_path):
    """'gl/d*' matched two directories and said it matched no files; 'gl/*' left them out,
    where the shell's own expansion of the same pattern read them."""
    for name in ("d1/x.txt", "d2/y.txt", "z.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(name + "\n", encoding="utf-8")
    names = [Path(s.name).relative_to(tmp_path).as_posix()
             for s in resolve_sources(str(tmp_path / "*"))]
    assert names == ["d1/x.txt", "d2/y.txt", "z.txt"]
    assert len(resolve_sources(str(tmp_path / "d*"))) == 2
    assert len(resolve_sources(str(tmp_path / "**"))) == 3  # each file once


def test_utf16_text_in_a_directory_is_named_not_skipped(tmp_path):
    """It was left out as binary without a word (named on its own: "is UTF-16 text")."""
    (tmp_path / "a.txt").write_text("hello\n", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes("hello\n".encode("utf-16"))
    with pytest.raises(CorpusError, match="b.txt is UTF-16 text, not UTF-8; convert it"):
        list(iter_text(resolve_sources(str(tmp_path)), Normalization()))


def test_a_separator_is_normalised_as_the_text_around_it(tmp_path):
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text("x\n", encoding="utf-8")
    norm = Normalization(lowercase=True, newline="lf")
    text = "".join(iter_text(resolve_sources(str(tmp_path)), norm, "\r\n=== END ===\r\n"))
    assert text == "x\n\n=== end ===\nx\n"


def test_a_long_run_of_carriage_returns_is_not_held_back_whole(tmp_path, monkeypatch):
    """Held back whole and joined again at every block: 60 million CRs took 40 s, 900 MB.
    At most MAX_HELD_CHARS wait for the next block, and the text is the same."""
    from charrnn import corpus

    monkeypatch.setattr(corpus, "MAX_HELD_CHARS", 1000)
    held = []
    real_cut = corpus._safe_cut
    monkeypatch.setattr(corpus, "_safe_cut", lambda text: held.append(
        len(text) - real_cut(text)) or real_cut(text))
    path = tmp_path / "crs.txt"
    path.write_bytes(b"ab" + b"\r" * 100_000 + b"\ncd")
    text = "".join(iter_text(resolve_sources(str(path)), Normalization(newline="lf"),
                             block_bytes=4096))
    assert text == "ab" + "\n" * 100_000 + "cd"  # the last CR with its LF: one line break
    assert max(held) <= 1000


def test_an_unreadable_file_in_a_directory_is_named_not_left_out(tmp_path, monkeypatch):
    """It was left out without a word: another corpus than the one named."""
    (tmp_path / "a.txt").write_text("hello\n", encoding="utf-8")
    (tmp_path / "secret.txt").write_text("hidden\n", encoding="utf-8")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: real_access(path, mode)
                        and Path(path).name != "secret.txt")
    with pytest.raises(CorpusError, match="cannot read .*secret.txt: permission denied"):
        resolve_sources(str(tmp_path))
