"""Files the user names with --output: whatever is at the path is the user's, and stays so.

Every command that writes a file the user named (`sample -o`, `vocab build -o`, `plot -o`,
`data get`) goes through `outputs.open_output`: a symbolic link is written through, a FIFO, a
device node, a socket or a directory is refused without being opened, an existing file keeps
its mode and its hard links, any valid file name works, and `-` or /dev/stdout is standard
output. Device nodes and FIFOs here are made under tmp_path, never the real /dev ones.
"""

import errno
import fnmatch
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charrnn import fileio, outputs
from charrnn.cli import app
from charrnn.errors import CharRNNError
from conftest import POEM, assert_clean_error

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def poem(tmp: Path) -> Path:
    path = tmp / "poem.txt"
    path.write_text(POEM * 40, encoding="utf-8")
    return path


# Each command that writes a file the user names, as arguments ending in the output path.
WRITERS = {
    "sample -o": lambda t, run, out: ["sample", "-k", run, "-n", "20", "--seed", "1", "-o", out],
    "vocab build -o": lambda t, run, out: ["vocab", "build", poem(t), "-o", out],
    "plot -o": lambda t, run, out: ["plot", run, "-o", out],
}


def made_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def made_socket(path: Path) -> Path:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.close()  # the socket file stays
    return path


def made_device(path: Path) -> Path:
    """A character device with /dev/null's numbers, under tmp_path: writing to it is harmless,
    and replacing it with a regular file would show."""
    if os.geteuid() != 0:
        pytest.skip("only root may create device nodes")
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return path


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_symbolic_link_is_written_through_and_stays_a_link(writer, tmp_path, tiny_run):
    real = tmp_path / "real.out.png" if "plot" in writer else tmp_path / "real.out"
    real.write_text("old")
    link = tmp_path / ("link.png" if "plot" in writer else "link.txt")
    link.symlink_to(real.name)
    result = invoke(*WRITERS[writer](tmp_path, tiny_run, link))
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == real.name
    assert real.read_bytes() != b"old" and real.stat().st_size > 0


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("make", [made_fifo, made_socket, made_device],
                         ids=["FIFO", "socket", "device"])
def test_what_is_not_a_regular_file_is_refused_and_left_alone(writer, make, tmp_path, tiny_run):
    target = make(tmp_path / "target.png")
    kind = stat.S_IFMT(target.lstat().st_mode)
    # A FIFO opened for writing would block until a reader came: the refusal must not open it.
    result = invoke(*WRITERS[writer](tmp_path, tiny_run, target))
    assert_clean_error(result, 1, "target.png", "not a regular file", one_line=True)
    assert stat.S_IFMT(target.lstat().st_mode) == kind
    assert not list(tmp_path.glob(".charrnn-*"))


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_link_to_what_is_not_a_regular_file_is_refused(writer, tmp_path, tiny_run):
    made_fifo(tmp_path / "fifo")
    link = tmp_path / "out.png"
    link.symlink_to("fifo")
    assert_clean_error(invoke(*WRITERS[writer](tmp_path, tiny_run, link)), 1,
                       "it is a FIFO (named pipe), not a regular file")
    assert link.is_symlink() and stat.S_ISFIFO((tmp_path / "fifo").stat().st_mode)


def test_a_directory_is_refused_with_a_hint(tmp_path):
    assert_clean_error(invoke("vocab", "build", poem(tmp_path), "-o", tmp_path), 1,
                       "Is a directory", "name a file inside it instead")


def test_an_existing_file_keeps_its_mode_and_owner(tmp_path, tiny_run):
    out = tmp_path / "private.txt"
    out.write_text("old")
    out.chmod(0o600)
    for args in (WRITERS["sample -o"](tmp_path, tiny_run, out),
                 WRITERS["vocab build -o"](tmp_path, tiny_run, out)):
        assert invoke(*args).exit_code == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.stat().st_uid == os.geteuid()


def test_a_new_file_gets_the_mode_open_would_give_it(tmp_path, tiny_run):
    out = tmp_path / "new.txt"
    assert invoke(*WRITERS["sample -o"](tmp_path, tiny_run, out)).exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_a_file_with_several_hard_links_is_rewritten_in_place(tmp_path, tiny_run):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text("old")
    os.link(first, second)
    assert invoke(*WRITERS["vocab build -o"](tmp_path, tiny_run, first)).exit_code == 0
    assert first.stat().st_ino == second.stat().st_ino and first.stat().st_nlink == 2
    assert second.read_text().startswith("{") and '"charrnn-vocab"' in second.read_text()
    assert not list(tmp_path.glob(".charrnn-*"))


def test_a_255_byte_file_name_works(tmp_path, tiny_run):
    out = tmp_path / ("n" * 251 + ".txt")
    assert len(out.name.encode()) == 255
    result = invoke(*WRITERS["vocab build -o"](tmp_path, tiny_run, out))
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("{")


def test_a_dangling_link_creates_the_file_it_names(tmp_path, tiny_run):
    link = tmp_path / "link.txt"
    link.symlink_to("made.txt")
    assert invoke(*WRITERS["sample -o"](tmp_path, tiny_run, link)).exit_code == 0
    assert link.is_symlink() and (tmp_path / "made.txt").is_file()


def test_a_link_loop_is_a_clean_error(tmp_path, tiny_run):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    assert_clean_error(invoke(*WRITERS["sample -o"](tmp_path, tiny_run, tmp_path / "a")), 1,
                       "cannot write", "symbolic links")


@pytest.mark.parametrize("name", ["-", "/dev/stdout"])
def test_dash_and_dev_stdout_are_standard_output(name, tmp_path, tiny_run):
    to_file = tmp_path / "vocab.json"
    assert invoke(*WRITERS["vocab build -o"](tmp_path, tiny_run, to_file)).exit_code == 0
    result = invoke(*WRITERS["vocab build -o"](tmp_path, tiny_run, name))
    assert result.exit_code == 0, result.output
    assert result.stdout == to_file.read_text(encoding="utf-8")  # exactly the file's bytes
    assert result.stderr.startswith(f"wrote {name}:")  # the summary keeps out of the way
    sampled = invoke(*WRITERS["sample -o"](tmp_path, tiny_run, name))
    assert sampled.exit_code == 0 and len(sampled.stdout.rstrip("\n")) == 20


def test_a_png_on_standard_output(tmp_path, tiny_run):
    result = invoke("plot", tiny_run, "-o", "-")
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes.startswith(b"\x89PNG")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "out.txt"
    out.write_text("old")

    def disk_full(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(CharRNNError, match="out.txt: No space left on device; free some"):
        outputs.write_output_with(out, disk_full)
    assert out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_the_run_directory_files_keep_their_own_named_temporaries(tmp_path):
    # A killed run's temporaries are found by the name of the file they were becoming.
    with pytest.raises(KeyboardInterrupt), fileio.atomic_open(tmp_path / "last.pt") as f:
        f.write(b"partial")
        (tmp_path / ".last.pt.x1y2.tmp").write_bytes(b"left by a kill")
        raise KeyboardInterrupt
    fileio.remove_temporaries(tmp_path, ("*.pt",))
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path):
    """The same door for every output: a SIGTERM unwinds it like Ctrl-C (exit 143)."""
    script = tmp_path / "slow_writer.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "from charrnn import outputs\n"
        "from charrnn.cli.common import handles_errors\n"
        "@handles_errors\n"
        "def main():\n"
        "    def writer(f):\n"
        "        f.write(b'partial')\n"
        "        f.flush()\n"
        "        print('writing', flush=True)\n"
        "        time.sleep(600)\n"
        "    outputs.write_output_with(sys.argv[1], writer)\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    raise\n"
        "except BaseException as exc:  # typer.Exit\n"
        "    sys.exit(getattr(exc, 'exit_code', 1))\n", encoding="utf-8")
    target = tmp_path / "out.bin"
    child = subprocess.Popen([sys.executable, str(script), str(target)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "writing\n"
    assert list(tmp_path.glob(".charrnn-*.tmp"))  # the temporary file exists now
    child.terminate()
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 143, stderr
    assert "terminated" in stderr and "Traceback" not in stderr
    assert not target.exists() and not list(tmp_path.glob(".charrnn-*"))


def test_what_a_killed_writer_left_is_removed_by_the_next_output_there(tmp_path):
    """A SIGKILL (or a power cut) cannot be unwound: `data get` killed half-way left a hidden
    file as large as what it had read. The next output written into that directory removes
    the temporary files of this host's processes that are gone, and only those."""
    script = tmp_path / "killed_writer.py"
    script.write_text(
        "import sys, time\n"
        "from charrnn import outputs\n"
        "def writer(f):\n"
        "    f.write(b'partial' * 1000)\n"
        "    f.flush()\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(600)\n"
        "outputs.write_output_with(sys.argv[1], writer)\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    child = subprocess.Popen([sys.executable, str(script), str(out / "corpus.txt")],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "writing\n"
    child.kill()
    child.communicate(timeout=60)
    [orphan] = out.glob(".charrnn-*.tmp")
    assert str(child.pid) in orphan.name
    live = out / f"{outputs._temp_prefix()}{os.getpid()}-abcd1234.tmp"  # being written now
    elsewhere = out / f"{outputs.TEMP_PREFIX}0123abcd-{child.pid}-abcd1234.tmp"  # another host
    for kept in (live, elsewhere):
        kept.write_bytes(b"kept")
    outputs.write_output(out / "samples.txt", "text")
    assert sorted(p.name for p in out.iterdir()) == sorted([live.name, elsewhere.name,
                                                            "samples.txt"])


# ---- an output that is one of the command's inputs, or cannot be written ------------------------
@pytest.mark.parametrize(("name", "says"), [
    ("best.pt", "it is the checkpoint being read"),
    ("last.pt", "it is a file of the run being read"),
    ("config.yaml", "it is a file of the run being read"),
    ("vocab.json", "it is a file of the run being read"),
])
def test_sample_refuses_to_write_over_the_run_it_reads(tmp_path, tiny_run, name, says):
    run = tmp_path / "run"
    run.mkdir()
    for part in tiny_run.iterdir():
        if part.is_file():
            (run / part.name).write_bytes(part.read_bytes())
    (run / "best.pt").write_bytes((tiny_run / "last.pt").read_bytes())
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert_clean_error(invoke("sample", "-k", run, "-n", "5", "-o", run / name), 2, says,
                       "name another file", one_line=True)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    result = invoke("sample", "-k", run, "-n", "5", "-o", run / "samples.txt")  # a new file
    assert result.exit_code == 0, result.output


def test_sample_refuses_to_write_over_its_prime_file(tmp_path, tiny_run):
    prime = tmp_path / "prime.txt"
    prime.write_text("The ", encoding="utf-8")
    link = tmp_path / "link.txt"
    link.symlink_to(prime)
    for output in (prime, link):  # the same file under another name too
        assert_clean_error(invoke("sample", "-k", tiny_run, "--prime-file", prime, "-o", output),
                           2, "it is the file the prime is read from", one_line=True)
    assert prime.read_text(encoding="utf-8") == "The "


def test_vocab_build_refuses_to_write_over_its_corpus(tmp_path):
    corpus = poem(tmp_path)
    before = corpus.read_bytes()
    assert_clean_error(invoke("vocab", "build", tmp_path, "-o", corpus), 2,
                       "it is a corpus file being read", one_line=True)
    assert corpus.read_bytes() == before


@pytest.mark.parametrize("writer", ["sample -o", "vocab build -o"])  # plot writes images only
@pytest.mark.parametrize("name", ["last.pt", "step-00000010.pt", "config.yaml", "vocab.json",
                                  "metrics.jsonl", "ids.bin"])
def test_no_output_replaces_a_file_of_another_run(writer, name, tmp_path, tiny_run):
    """`sample -k runs/a -o runs/b/last.pt` wrote samples over run b's checkpoint, which then
    could not resume; a file of its own name, or a run's file copied outside a run, may be."""
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    (other / name).write_bytes(b"kept")
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    assert_clean_error(invoke(*WRITERS[writer](tmp_path, tiny_run, other / name)), 2,
                       "it is a file of a charrnn run directory", one_line=True)
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before
    link = tmp_path / "link.pt"
    link.symlink_to(other / name)  # nor through a link
    assert invoke(*WRITERS[writer](tmp_path, tiny_run, link)).exit_code == 2
    assert (other / name).read_bytes() == b"kept"
    assert invoke(*WRITERS[writer](tmp_path, tiny_run, other / "mine.out")).exit_code == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    assert invoke(*WRITERS[writer](tmp_path, tiny_run, outside / name)).exit_code == 0


def test_the_list_of_a_runs_own_files_names_every_file_a_run_writes():
    from charrnn import checkpoint, idcache, metrics, rundir

    names = [checkpoint.LAST, checkpoint.BEST, "step-00000100.pt", metrics.METRICS_FILE,
             rundir.CONFIG_FILE, rundir.LOCK_FILE, rundir.LAUNCH_FILE, idcache.IDS_FILE,
             idcache.IDS_META,
             idcache.VOCAB_FILE, idcache.VOCAB_META]
    for name in names:
        assert any(fnmatch.fnmatchcase(name, p) for p in fileio.RUN_OWN_FILES), name


def test_an_output_that_cannot_be_made_is_refused_before_any_work(tmp_path, tiny_run,
                                                                  monkeypatch):
    from charrnn import sample

    def never(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("generated before checking the output")

    monkeypatch.setattr(sample.Sampler, "samples", never)
    monkeypatch.setattr(sample.Sampler, "generate", never)
    a_file = poem(tmp_path)
    assert_clean_error(invoke("sample", "-k", tiny_run, "-o", a_file / "out.txt"), 1,
                       "Not a directory", one_line=True)
    assert_clean_error(invoke("vocab", "build", a_file, "-o", a_file / "sub" / "v.json"), 1,
                       "Not a directory", one_line=True)


# ---- what the system itself protects, and other names of a model ------------------------------
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="making a link another user owns needs root")
def test_another_users_link_in_a_shared_directory_is_not_followed(tmp_path, tiny_run):
    """Linux does not follow, for you, a link another user made in a sticky world-writable
    directory such as /tmp (`> /tmp/out.txt` fails): a rename over the resolved path went
    round that, and `sample -o /tmp/out.txt` replaced the file the link pointed at."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    planted = shared / "out.txt"
    planted.symlink_to(victim)
    os.lchown(planted, 65534, 65534)  # nobody's link
    for args in (WRITERS["sample -o"](tmp_path, tiny_run, planted),
                 WRITERS["sample -o"](tmp_path, tiny_run, shared / "." / "out.txt")):
        assert_clean_error(invoke(*args), 1, "is a symbolic link another user made in the "
                           "shared directory", one_line=True)
    assert victim.read_text() == "precious"
    os.lchown(planted, os.geteuid(), os.getegid())  # one's own link is followed, as before
    assert invoke(*WRITERS["sample -o"](tmp_path, tiny_run, planted)).exit_code == 0
    assert victim.read_text() != "precious" and planted.is_symlink()


def test_a_read_only_file_is_not_replaced(tmp_path, tiny_run, monkeypatch):
    """`echo x > keep.txt` is refused for a 0444 file; a rename replaced it all the same.
    (Root may write anything, so the check is shown with os.access answering as for a user.)"""
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    keep.chmod(0o444)
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if (
        Path(path) == keep and mode & os.W_OK) else access(path, mode, **kw))
    for writer in ("sample -o", "vocab build -o"):
        assert_clean_error(invoke(*WRITERS[writer](tmp_path, tiny_run, keep)), 1,
                           "it is read-only; make it writable", one_line=True)
    assert keep.read_text() == "precious"


def test_another_name_of_a_checkpoint_is_not_written_over(tmp_path, tiny_run):
    """A hard link or a copy of a run's best.pt (outside any run directory) took sample text
    and the run could no longer load its model."""
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    backup = tmp_path / "backup.txt"
    os.link(other / "last.pt", backup)
    copied = tmp_path / "copied" / "best.pt"  # cp runs/x/*.pt leaves the hidden .lock out
    copied.parent.mkdir()
    shutil.copy(other / "last.pt", copied)
    before = (other / "last.pt").read_bytes()
    for target in (backup, copied):
        for writer in ("sample -o", "vocab build -o"):
            assert_clean_error(invoke(*WRITERS[writer](tmp_path, tiny_run, target)), 2,
                               "it holds a PyTorch checkpoint", one_line=True)
    assert (other / "last.pt").read_bytes() == before == copied.read_bytes()


def test_new_files_follow_the_umask_as_it_is_when_they_are_written(tmp_path):
    """The umask was read once per process (a notebook's later os.umask was ignored), and by
    setting it, in which moment another thread's new file got the wrong mode."""
    before = os.umask(0o077)
    try:
        fileio.write_text(tmp_path / "private.txt", "x")
        os.umask(0o022)
        fileio.write_text(tmp_path / "shared.txt", "x")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "shared.txt").stat().st_mode) == 0o644
