"""`charrnn plot`: a real image of the asked size, several runs in one figure, clean errors."""

import json
import shutil
import struct
import sys
import warnings
from functools import partial

import pytest
from typer.testing import CliRunner

from charrnn.cli import app
from charrnn.plot import legend_labels
from conftest import assert_clean_error

# Errors here are a single line on stderr, nothing else.
assert_clean_error = partial(assert_clean_error, one_line=True)
runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def png_size(path):
    """(width, height) from the IHDR chunk, which a valid PNG holds right after its signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, "not a PNG file"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])



def copy_run(tiny_run, target):
    target.mkdir(parents=True)
    shutil.copy(tiny_run / "metrics.jsonl", target / "metrics.jsonl")
    return target


def test_plot_writes_a_png_of_the_asked_size(tiny_run, tmp_path):
    image = tmp_path / "loss.png"
    result = invoke("plot", tiny_run, "-o", image, "--width", 640, "--height", 480)
    assert result.exit_code == 0, result.output
    assert f"wrote {image}" in result.stdout
    assert png_size(image) == (640, 480)


def test_default_size_and_several_runs_in_one_figure(tiny_run, tmp_path):
    a = copy_run(tiny_run, tmp_path / "a")
    b = copy_run(tiny_run, tmp_path / "b")
    image = tmp_path / "out" / "compare.png"  # a missing folder is created
    result = invoke("plot", a, b, "-o", image)
    assert result.exit_code == 0, result.output
    assert png_size(image) == (1200, 800)


def test_svg_output(tiny_run, tmp_path):
    image = tmp_path / "loss.svg"
    result = invoke("plot", tiny_run, "-o", image)
    assert result.exit_code == 0
    assert b"<svg" in image.read_bytes()[:500]
    assert "12 x 8 inches" in result.output  # a vector image has no pixels


def test_legend_labels_are_run_names_unless_they_clash(tmp_path):
    assert legend_labels([tmp_path / "x" / "run", tmp_path / "y" / "other"]) == ["run", "other"]
    clash = [tmp_path / "x" / "run", tmp_path / "y" / "run"]
    assert legend_labels(clash) == [str(p) for p in clash]


def test_gaps_and_records_without_times_still_plot(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [
        {"kind": "train", "step": 10, "loss": 3.0, "bpc": 4.3, "lr": 1e-3, "elapsed": 1.0},
        {"kind": "train", "step": 20, "loss": None, "bpc": None, "lr": 1e-3, "elapsed": 2.0},
        {"kind": "train", "step": 30, "loss": 2.0, "bpc": 2.9, "lr": 5e-4},
        {"kind": "eval", "step": 30, "val_loss": 2.1, "val_bpc": 3.0, "final": True},
    ]
    lines = [json.dumps(r) for r in records] + ['{"kind": "train", "st']  # torn last line
    (run / "metrics.jsonl").write_text("\n".join(lines))
    image = tmp_path / "gaps.png"
    result = invoke("plot", run, "-o", image, "--width", 400, "--height", 300)
    assert result.exit_code == 0, result.output
    assert png_size(image) == (400, 300)


def test_values_no_run_could_log_leave_gaps_without_warnings(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"kind": "train", "step": 10, "loss": 3.0, "lr": 1e308, "elapsed": 1e300},
               {"kind": "train", "step": 20, "loss": 2.0, "lr": 1e-3, "elapsed": 2.0}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's overflow warning was printed
        result = invoke("plot", run, "-o", tmp_path / "forged.png", "--width", 400)
    assert result.exit_code == 0, result.output


def test_plot_errors(tiny_run, tmp_path):
    assert_clean_error(invoke("plot", tmp_path / "missing"), 1, "metrics.jsonl not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    assert_clean_error(invoke("plot", empty, "-o", tmp_path / "x.png"), 1, "no records")
    assert_clean_error(invoke("plot", tiny_run, "-o", tmp_path / "x.nope"), 2,
                       "unknown image type")
    assert not (tmp_path / "x.png").exists()


def test_missing_matplotlib_is_one_clear_line(tiny_run, tmp_path, monkeypatch):
    # None in sys.modules makes `import matplotlib...` fail as if it were not installed.
    for name in [n for n in sys.modules if n.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    result = invoke("plot", tiny_run, "-o", tmp_path / "loss.png")
    assert_clean_error(result, 1, "needs matplotlib", "pip install 'charrnn[plot]'")
    assert not (tmp_path / "loss.png").exists()


@pytest.mark.parametrize("option", ["--width", "--height"])
def test_tiny_sizes_are_refused(tiny_run, tmp_path, option):
    result = invoke("plot", tiny_run, "-o", tmp_path / "x.png", option, 10)
    assert_clean_error(result, 2, option)
