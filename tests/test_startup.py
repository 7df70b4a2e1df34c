"""Start-up: help and vocabulary building never import torch (nor the web server's packages);
shell completion works.

Each check runs in a fresh interpreter, since this test process has imported torch already.
Nothing here is timed (timings are for benchmarks); not importing torch is what keeps
`charrnn --help` well under 0.3 s.
"""

import os
import subprocess
import sys

CHECK_IMPORTS = """
import sys
from typer.testing import CliRunner
from charrnn.cli import app

corpus, vocab = sys.argv[1:]
for args in (["--help"], ["sample", "--help"], ["train", "--help"], ["plot", "--help"],
             ["info", "--help"], ["serve", "--help"], ["vocab", "build", corpus, "-o", vocab]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
print(" ".join(m for m in ("torch", "matplotlib", "fastapi", "uvicorn") if m in sys.modules)
      or "none")
"""


def run_python(*args, env=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_help_and_vocab_build_do_not_import_torch(corpus, tmp_path):
    result = run_python("-c", CHECK_IMPORTS, str(corpus), str(tmp_path / "vocab.json"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["none"]
    assert (tmp_path / "vocab.json").is_file()


def test_the_real_entry_point_does_not_import_torch_for_help():
    # -X importtime lists every module imported on the way, on stderr.
    result = run_python("-X", "importtime", "-m", "charrnn", "--help")
    assert result.returncode == 0, result.stderr
    assert "sample" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "charrnn.cli" in imported
    assert not {"torch", "numpy", "matplotlib", "fastapi", "uvicorn"} & imported


def test_bash_completion_script_and_completions():
    script = run_python("-m", "charrnn", "--show-completion", "bash")
    assert script.returncode == 0, script.stderr
    assert "_CHARRNN_COMPLETE=complete_bash" in script.stdout
    assert "complete " in script.stdout and "charrnn" in script.stdout

    def complete(words: str) -> list[str]:
        cword = str(len(words.split()) - 1)
        result = run_python("-m", "charrnn", env={"_CHARRNN_COMPLETE": "complete_bash",
                                                  "COMP_WORDS": words, "COMP_CWORD": cword})
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    assert complete("charrnn sa") == ["sample"]
    assert {"--top-k", "--top-p"} <= set(complete("charrnn sample --to"))
    assert "build" in complete("charrnn vocab b")
