"""`charrnn data get` against a local HTTP server: good, corrupted and truncated transfers.

The server runs in a thread on 127.0.0.1 and serves the shared corpora; its first path segment
says how to misbehave (/good, /corrupt, /truncated, /padded, /missing), so `--mirror
http://127.0.0.1:PORT/corrupt` exercises the real download code end to end.
"""

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from functools import partial

import pytest
from typer.testing import CliRunner

from charrnn.cli import app
from charrnn.corpus import REMOTE_CORPORA, remote_corpus
from charrnn.download import fetch, file_sha256
from charrnn.errors import DownloadError, UsageError
from conftest import SHARED_DATA, assert_clean_error, shared_file

NIETZSCHE = REMOTE_CORPORA["nietzsche"]  # the smallest: 0.6 MB keeps these tests fast
# Errors here are a single line on stderr, nothing else.
assert_clean_error = partial(assert_clean_error, one_line=True)
runner = CliRunner()


STALL_AFTER = 300_000  # bytes a stalling server sends before it goes quiet
RELEASE = threading.Event()  # set when the server shuts down: stalled requests end


class CorpusHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        mode, _, name = self.path.lstrip("/").partition("/")
        path = SHARED_DATA / name
        if mode == "missing" or not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        announced = len(data)
        if mode == "corrupt":  # same length, one bit flipped
            data = data[:1000] + bytes([data[1000] ^ 1]) + data[1001:]
        elif mode == "padded":  # a different file that says so in its Content-Length
            data += b"trailing bytes"
            announced = len(data)
        elif mode == "truncated":  # promises the full length, then hangs up halfway
            data = data[:len(data) // 2]
        self.send_response(200)
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        if mode == "stall":  # sends STALL_AFTER bytes, then nothing until the tests end
            self.wfile.write(data[:STALL_AFTER])
            self.wfile.flush()
            RELEASE.wait()
            return
        self.wfile.write(data)
        self.close_connection = True

    def log_message(self, *args):
        pass  # keep pytest output clean


@pytest.fixture(scope="module")
def server():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is not available (needs the shared corpora)")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CorpusHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    RELEASE.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # A proxy configured on the machine must not intercept the local test server.
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])



# ---- the registry ---------------------------------------------------------------------------
@pytest.mark.parametrize("corpus", REMOTE_CORPORA.values(), ids=REMOTE_CORPORA.keys())
def test_published_sizes_and_checksums_match_the_shared_copies(corpus):
    path = shared_file(corpus.filename)
    assert path.stat().st_size == corpus.size
    assert file_sha256(path) == corpus.sha256


def test_unknown_names_list_the_known_ones_and_builtins_point_to_builtin():
    with pytest.raises(UsageError, match="tiny-shakespeare, nietzsche"):
        remote_corpus("shakespeare")
    with pytest.raises(UsageError, match="data.path=builtin:python-docs"):
        remote_corpus("python-docs")


# ---- the download ---------------------------------------------------------------------------
def test_download_is_verified_and_saved_under_its_name(tmp_path, server):
    seen = []
    fetched = fetch(NIETZSCHE, tmp_path / "data", mirror=f"{server}/good/",
                    on_progress=seen.append)
    assert fetched.downloaded and fetched.path == tmp_path / "data" / "nietzsche.txt"
    assert fetched.path.read_bytes() == shared_file("nietzsche.txt").read_bytes()
    assert sum(seen) == NIETZSCHE.size
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["nietzsche.txt"]  # no temp left


def test_a_verified_copy_is_not_downloaded_again(tmp_path, server):
    first = fetch(NIETZSCHE, tmp_path, mirror=f"{server}/good")
    stamp = first.path.stat().st_mtime_ns
    again = fetch(NIETZSCHE, tmp_path, mirror=f"{server}/corrupt")  # would fail if fetched
    assert not again.downloaded and again.path.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(("mode", "message"), [
    ("corrupt", "checksum mismatch for nietzsche"),
    ("truncated", "ended early|broke off"),
    ("padded", "offers 600,915 bytes but nietzsche is 600,901 bytes"),
    ("missing", "answered HTTP 404"),
])
def test_a_bad_transfer_leaves_nothing_behind(tmp_path, server, mode, message):
    with pytest.raises(DownloadError, match=message):
        fetch(NIETZSCHE, tmp_path, mirror=f"{server}/{mode}")
    assert list(tmp_path.iterdir()) == []  # not even a hidden temporary file


def test_an_interrupted_transfer_leaves_nothing_behind(tmp_path, server):
    def interrupt(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch(NIETZSCHE, tmp_path, mirror=f"{server}/good", on_progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_server_is_a_network_error(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot download from .*check the network"):
        fetch(NIETZSCHE, tmp_path, mirror=f"http://127.0.0.1:{port}", timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_a_mirror_directory_is_copied_and_verified(tmp_path):
    shared_file("tinyshakespeare.txt")
    corpus = REMOTE_CORPORA["tiny-shakespeare"]
    fetched = fetch(corpus, tmp_path / "out", mirror=str(SHARED_DATA))
    assert fetched.downloaded and file_sha256(fetched.path) == corpus.sha256
    with pytest.raises(DownloadError, match="has no nietzsche.txt"):
        fetch(NIETZSCHE, tmp_path / "out", mirror=str(tmp_path))
    with pytest.raises(UsageError, match="neither a URL .* nor a directory"):
        fetch(NIETZSCHE, tmp_path / "out", mirror=str(tmp_path / "nowhere"))


def test_a_different_file_in_the_way_is_kept(tmp_path):
    target = tmp_path / "nietzsche.txt"
    target.write_text("my own notes")
    with pytest.raises(DownloadError, match="exists but is not nietzsche.*delete it"):
        fetch(NIETZSCHE, tmp_path, mirror=str(tmp_path))
    assert target.read_text() == "my own notes"


def test_a_destination_that_is_a_file_is_refused(tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("")
    with pytest.raises(DownloadError, match="is a file, not a directory"):
        fetch(NIETZSCHE, blocker, mirror=str(tmp_path))


# ---- the command line -----------------------------------------------------------------------
def test_data_list_shows_remote_and_builtin_corpora():
    result = invoke("data", "list")
    assert result.exit_code == 0, result.output
    for fragment in ("tiny-shakespeare", "1,115,394", "86c4e6aa9db7", "nietzsche", "600,901",
                     "23cf69874ab6", "s3.amazonaws.com", "builtin:python-docs",
                     "builtin:python-stdlib"):
        assert fragment in result.stdout


def test_data_get_saves_then_says_it_is_already_there(tmp_path, server):
    dest = tmp_path / "data"
    result = invoke("data", "get", "nietzsche", "--dest", dest, "--mirror", f"{server}/good")
    assert result.exit_code == 0, result.output
    assert "saved" in result.stdout and "SHA-256 verified" in result.stdout
    assert (dest / "nietzsche.txt").stat().st_size == NIETZSCHE.size
    result = invoke("data", "get", "nietzsche", "--dest", dest, "--mirror", f"{server}/good")
    assert result.exit_code == 0 and "already here and verified" in result.stdout


def test_data_get_from_a_mirror_directory(tmp_path):
    shared_file("tinyshakespeare.txt")
    result = invoke("data", "get", "tiny-shakespeare", "--dest", tmp_path, "--mirror",
                    SHARED_DATA)
    assert result.exit_code == 0, result.output
    assert file_sha256(tmp_path / "tinyshakespeare.txt") == REMOTE_CORPORA[
        "tiny-shakespeare"].sha256
    assert f"data.path={tmp_path / 'tinyshakespeare.txt'}" in result.stdout


def test_data_get_errors_are_one_red_line(tmp_path, server):
    result = invoke("data", "get", "nietzsche", "--dest", tmp_path, "--mirror",
                    f"{server}/corrupt")
    assert_clean_error(result, 1, "checksum mismatch", "--mirror")
    assert list(tmp_path.iterdir()) == []
    result = invoke("data", "get", "war-and-peace", "--dest", tmp_path)
    assert_clean_error(result, 2, "unknown corpus 'war-and-peace'", "tiny-shakespeare")


def test_a_stalled_transfer_reports_the_bytes_that_did_arrive(tmp_path, server):
    with pytest.raises(DownloadError, match=f"broke off after {STALL_AFTER:,} of 600,901 bytes"):
        fetch(NIETZSCHE, tmp_path, mirror=f"{server}/stall", timeout=1.0)
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_data_get_leaves_no_temporary_file(tmp_path, server):
    child = subprocess.Popen([sys.executable, "-m", "charrnn", "data", "get", "nietzsche",
                              "--dest", str(tmp_path), "--mirror", f"{server}/stall"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"})
    # The stalled transfer holds its temporary file; wait (bounded) until it has bytes in it.
    for _ in range(6000):
        partial = [p for p in tmp_path.iterdir() if p.stat().st_size >= STALL_AFTER]
        if partial or child.poll() is not None:
            break
        time.sleep(0.05)
    assert partial, child.communicate()
    child.terminate()
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 143, stderr
    assert "terminated" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []
