"""Training that survives its machines: torchrun restarts, preemption signals, two nodes.

torchrun restarts every worker when one dies; the restarted workers must continue from their
job's last.pt and end with exactly the weights of a run never interrupted. A stop signal to
any worker stops them all at one step with last.pt saved, within train.preempt_grace. All on
the CPU with gloo, as CI runs it; workers are found as torchrun's children in /proc.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from charrnn import checkpoint
from charrnn.config import load_config
from charrnn.distributed import PEER_LOST
from charrnn.errors import CharRNNError, TrainingInterrupted
from charrnn.metrics import read_metrics
from charrnn.rundir import RunDir
from charrnn.train import train
from conftest import StopAfter, errors_in, set_args, tiny_overrides, torchrun, write_corpus

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="finds torchrun's workers in /proc")

# Dropout on: a restarted worker must get its own random number generator back.
RUN = {"data.batch_size": 8, "model.dropout": 0.2, "train.threads": 1, "train.max_steps": 240,
       "train.eval_every": 40, "train.eval_chars": 500, "train.log_every": 1}
STEP_LINE = re.compile(r"^step +([\d,]+) \|")
# The workers' store fresh for every restart: see ElasticJob.shares_torchrun_store.
FRESH_STORE = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Two processes under torchrun, never interrupted (on the same text as `corpus`)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    corpus = write_corpus(run.parent)
    with Launch(torchrun(*set_args(corpus, run, **RUN)), run.parent) as launch:
        assert launch.finish() == 0, launch.stderr
    return run


class Launch:
    """A torchrun in the background, its stdout read line by line (stderr to a file). It and
    its workers are killed if they outlive `timeout`, so no test waits forever on a hang."""

    def __init__(self, command: list[str], where: Path, timeout: float = 240,
                 env: dict | None = None):
        self.stderr_path = where / f"stderr-{time.monotonic_ns()}.txt"
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr,
                                            text=True, env=env)
        self.stdout = ""
        self.timed_out = False
        self._timer = threading.Timer(timeout, self._time_out)
        self._timer.daemon = True
        self._timer.start()

    def __enter__(self) -> Launch:
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        if self.process.poll() is None:
            self.kill()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_steps(self, count: int) -> int:
        """Read on until `count` more training steps are logged; the last one's number."""
        for line in self.process.stdout:
            self.stdout += line
            if (match := STEP_LINE.match(line)) and (count := count - 1) <= 0:
                return int(match.group(1).replace(",", ""))
        pytest.fail(f"training ended before the steps came (timed out: {self.timed_out}): "
                    f"{self.stdout[-2000:]}{self.stderr[-3000:]}")

    def finish(self) -> int:
        """Wait for torchrun to end; its exit code."""
        self.stdout += self.process.stdout.read()
        code = self.process.wait()
        assert not self.timed_out, f"torchrun was killed after its timeout: {self.stderr[-3000:]}"
        return code

    def workers(self, restart: int = 0) -> dict[int, int]:
        """{rank: pid} of the workers torchrun started at its `restart`-th restart."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = {int(env["RANK"]): pid for pid, env in children(self.process.pid)
                     if env.get("TORCHELASTIC_RESTART_COUNT") == str(restart)}
            if found:
                return found
            time.sleep(0.05)
        pytest.fail(f"torchrun started no workers for restart {restart}")

    def kill(self) -> None:
        for pid, _ in children(self.process.pid):
            with_signal(pid, signal.SIGKILL)
        self.process.kill()
        self.process.wait(timeout=30)

    def _time_out(self) -> None:
        self.timed_out = True
        self.kill()


def children(parent: int) -> list[tuple[int, dict[str, str]]]:
    """(pid, environment) of every live child of `parent`, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            # The command name in parentheses may hold spaces: the fields follow the last ')'.
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            raw = (entry / "environ").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                   if "=" in item)
        found.append((int(entry.name), env))
    return found


def with_signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def assert_same_weights(expected: Path, actual: Path) -> None:
    for name in ("last.pt", "best.pt"):
        a, b = checkpoint.load(expected / name), checkpoint.load(actual / name)
        assert a["step"] == b["step"], name
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), (name, key)
    moments = [checkpoint.load(run / "last.pt")["train_state"]["optimizer"]["state"]
               for run in (expected, actual)]
    for param, state in moments[0].items():
        for key, value in state.items():
            assert torch.equal(moments[1][param][key], value), (param, key)
    evaluations = [[(r["step"], r["val_loss"]) for r in read_metrics(run) if r["kind"] == "eval"]
                   for run in (expected, actual)]
    assert evaluations[0] == evaluations[1]


# ---- torchrun restarts the workers --------------------------------------------------------------
@pytest.mark.slow
@needs_proc
def test_workers_killed_twice_are_restarted_and_end_with_the_same_weights(
        corpus, reference, tmp_path):
    run = tmp_path / "run"
    # Timed saves as well: a kill then loses little, and they must change nothing trained.
    args = set_args(corpus, run, **RUN, **{"train.save_every_time": 0.05})
    launcher = ("--standalone", "--max-restarts=3")
    rng = random.Random(14)
    with Launch(torchrun(*args, launcher=launcher), tmp_path, env=FRESH_STORE) as launch:
        for restart, rank in enumerate([1, 0]):  # a worker, then the one that writes
            launch.wait_for_steps(rng.randint(2, 40))
            os.kill(launch.workers(restart)[rank], signal.SIGKILL)
        assert launch.finish() == 0, launch.stderr
    out = launch.stdout
    for restart in (1, 2):
        assert out.count(f"torchrun restarted the workers (restart {restart} of this job): "
                         f"resuming from {run / 'last.pt'} at step ") == 1, out
    assert out.count("done: 240 steps") == 1
    assert_same_weights(reference, run)


def test_a_restarted_job_resumes_its_own_checkpoint_despite_overwrite(
        corpus, tmp_path, monkeypatch):
    """The restart runs the same command line again, --overwrite included."""
    settings = {**RUN, "train.max_steps": 30, "train.eval_every": 10}
    config = load_config(None, tiny_overrides(corpus, tmp_path / "run", **settings))
    train(load_config(None, tiny_overrides(corpus, tmp_path / "reference", **settings)))

    as_torchrun_job(monkeypatch, restarts=0)
    with pytest.raises(TrainingInterrupted):  # as a worker that dies would, after a checkpoint
        train(config, overwrite=True, stop=StopAfter(13))
    as_torchrun_job(monkeypatch, restarts=1)
    view = RecordingView()
    result = train(config, overwrite=True, view=view)
    assert result.step == 30
    assert (f"torchrun restarted the workers (restart 1 of this job): resuming from "
            f"{tmp_path / 'run' / 'last.pt'} at step 13") in view.text()
    assert_same_weights(tmp_path / "reference", tmp_path / "run")
    assert checkpoint.load(tmp_path / "run" / "last.pt")["train_state"]["torchrun_job"] == "job-a"


def test_a_restart_treats_another_runs_checkpoint_as_its_first_start_did(
        corpus, tmp_path, monkeypatch):
    run = tmp_path / "run"
    config = load_config(None, tiny_overrides(corpus, run, **{"train.max_steps": 6}))
    as_torchrun_job(monkeypatch, restarts=0, job="older-job")
    train(config)
    # A new job's first start died before it took the directory over (or was refused).
    as_torchrun_job(monkeypatch, restarts=1, job="job-a")
    with pytest.raises(CharRNNError, match="already holds a run"):
        train(config)
    view = RecordingView()
    assert train(config, overwrite=True, view=view).step == 6
    assert (f"torchrun restarted the workers (restart 1 of this job) and {run} holds no "
            "last.pt of this job: starting the run afresh") in view.text()
    assert "resuming" not in view.text()
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "eval"] == [6]


def as_a_new_launch(monkeypatch, agent: int) -> None:
    """The workers of another torchrun launch: another agent started them."""
    from charrnn import distributed

    monkeypatch.setattr(distributed, "agent_identity", lambda: ["host", agent, agent])


def test_a_restart_does_what_its_launchs_first_start_did_under_an_id_given_again(
        corpus, tmp_path, monkeypatch):
    """With an id given again (README's examples, a requeued Slurm job), a new launch's
    restart took over the run its first start had refused, training the old model on the new
    settings; and one told to --overwrite resumed the old run instead (its first start died
    before clearing it), training nothing new."""
    run = tmp_path / "run"
    config = load_config(None, tiny_overrides(corpus, run, **{"train.max_steps": 6}))
    as_a_new_launch(monkeypatch, agent=1)
    as_torchrun_job(monkeypatch, restarts=0, job="myjob")
    train(config)
    first = (run / "last.pt").read_bytes()

    longer = config.replace(train={"max_steps": 9})
    as_a_new_launch(monkeypatch, agent=2)
    with pytest.raises(CharRNNError, match="already holds a run"):
        train(longer)
    as_torchrun_job(monkeypatch, restarts=1, job="myjob")
    with pytest.raises(CharRNNError, match="already holds a run"):
        train(longer)  # it resumed run 1 at step 6
    assert (run / "last.pt").read_bytes() == first

    as_a_new_launch(monkeypatch, agent=3)
    as_torchrun_job(monkeypatch, restarts=0, job="myjob")

    class Killed(BaseException):
        pass

    def killed(self):  # noqa: ANN001, ANN202 - dies before it removes the old run
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(RunDir, "clear_previous", killed)
        with pytest.raises(Killed):
            train(longer, overwrite=True)
    as_torchrun_job(monkeypatch, restarts=1, job="myjob")
    view = RecordingView()
    assert train(longer, overwrite=True, view=view).step == 9
    assert "resuming" not in view.text()
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "eval"] == [9]


def test_what_makes_restarts_unsafe_is_said_before_the_first(corpus, tmp_path, monkeypatch):
    as_torchrun_job(monkeypatch, restarts=0, job="none")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    view = RecordingView()
    train(load_config(None, tiny_overrides(corpus, tmp_path / "run", **{"train.max_steps": 2})),
          view=view)
    warnings = [text for kind, text in view.messages if kind == "warning"]
    assert len(warnings) == 2
    assert "--rdzv-id=JOB_ID" in warnings[0]
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in warnings[1]


def as_torchrun_job(monkeypatch, restarts: int, job: str = "job-a") -> None:
    """This process as the one worker of a torchrun job (what torchrun's variables say)."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", job)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(restarts))
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")


class RecordingView:
    def __init__(self):
        self.messages = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def update(self, step, fraction, fields):
        pass

    def message(self, text, kind="info"):
        self.messages.append((kind, text))

    def text(self) -> str:
        return "\n".join(text for _, text in self.messages)


# ---- preemption ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_to_torchrun_saves_a_last_pt_that_resumes_exactly(corpus, reference, tmp_path):
    run = tmp_path / "run"
    with Launch(torchrun(*set_args(corpus, run, **RUN)), tmp_path) as launch:
        launch.wait_for_steps(random.Random(143).randint(2, 40))
        launch.process.send_signal(signal.SIGTERM)  # passed on to both workers
        launch.finish()
    shown = errors_in(launch.stderr)
    assert len(shown) == 1 and shown[0].startswith("error: stopped by SIGTERM at step"), shown
    stopped = checkpoint.load(run / "last.pt")["step"]
    assert f"at step {stopped:,}; {run / 'last.pt'} saved" in shown[0]
    assert 1 <= stopped < RUN["train.max_steps"]

    with Launch(torchrun("--resume", str(run)), tmp_path) as resumed:
        assert resumed.finish() == 0, resumed.stdout + resumed.stderr
    assert f"resuming at step {stopped:,}" in resumed.stdout
    assert_same_weights(reference, run)


@pytest.mark.slow
@needs_proc
def test_sigusr1_to_one_worker_stops_every_worker_at_one_step_with_last_pt(corpus, tmp_path):
    run = tmp_path / "run"
    with Launch(torchrun(*set_args(corpus, run, **RUN)), tmp_path) as launch:
        launch.wait_for_steps(3)
        os.kill(launch.workers()[1], signal.SIGUSR1)  # Slurm's warning, to rank 1 alone
        assert launch.finish() != 0
    shown = errors_in(launch.stderr)
    assert len(shown) == 1, launch.stderr
    step = checkpoint.load(run / "last.pt")["step"]
    assert shown[0] == (f"error: stopped by SIGUSR1 at step {step:,}; {run / 'last.pt'} saved. "
                        f"Continue with: torchrun ... -m charrnn train --resume {run}")
    assert "exitcode  : 138" in launch.stderr  # 128 + SIGUSR1, as torchrun reports it
    assert "[rank" not in launch.stderr  # no worker's traceback (torch marks them [rankN])


# Run as `python -c`: train, but let every checkpoint write hang, as on a file system that
# stopped answering.
STUCK_SAVES = """
import sys, time
from charrnn import checkpoint
from charrnn.cli import main
checkpoint.save = lambda *args, **kwargs: time.sleep(600)
sys.argv = ["charrnn", "train", *sys.argv[1:]]
main()
"""


def test_a_save_that_cannot_finish_ends_the_process_within_the_grace_period(corpus, tmp_path):
    run = tmp_path / "run"
    args = set_args(corpus, run, **{**RUN, "train.eval_every": 0, "train.max_steps": 10**6,
                                    "train.preempt_grace": 1})
    child = subprocess.Popen([sys.executable, "-c", STUCK_SAVES, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    for line in child.stdout:
        if STEP_LINE.match(line):
            break
    child.send_signal(signal.SIGTERM)
    child.send_signal(signal.SIGTERM)  # as a cluster and torchrun both send it: not "now"
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 143, stderr
    assert (f"warning: still running 1 s after SIGTERM (train.preempt_grace): exiting now; "
            f"{run / 'last.pt'}, if there, is the last complete checkpoint") in stdout
    assert not (run / "last.pt").exists() and "Traceback" not in stderr


# Run by torchrun in place of `-m charrnn`: the worker of rank 1 hangs at step 3, so rank 0
# waits for it inside DDP's gradient averaging, in C++, where no Python signal handler runs.
RANK_1_HANGS = """
import os, sys, time
from charrnn import train
from charrnn.cli import main
real_step = train.Trainer.train_step
def train_step(self):
    if os.environ["RANK"] == "1" and self.step == 2:
        time.sleep(600)
    return real_step(self)
train.Trainer.train_step = train_step
sys.argv = ["charrnn", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
@needs_proc
def test_a_worker_stuck_in_a_collective_still_exits_within_the_grace_period(corpus, tmp_path):
    script = tmp_path / "rank_1_hangs.py"
    script.write_text(RANK_1_HANGS, encoding="utf-8")
    run = tmp_path / "run"
    args = set_args(corpus, run, **{**RUN, "train.preempt_grace": 2})
    with Launch(torchrun(*args, script=str(script)), tmp_path, timeout=120) as launch:
        assert launch.wait_for_steps(2) == 2
        time.sleep(1)  # rank 0 is now waiting for rank 1's gradients
        os.kill(launch.workers()[0], signal.SIGTERM)
        assert launch.finish() != 0
    assert (f"warning: still running 2 s after SIGTERM (train.preempt_grace): exiting now; "
            f"{run / 'last.pt'}, if there, is the last complete checkpoint") in launch.stdout
    assert "exitcode  : 143" in launch.stderr


# As RANK_1_HANGS, at step 50 (after the first evaluation wrote last.pt), and only before
# torchrun's first restart.
RANK_1_HANGS_ONCE = RANK_1_HANGS.replace(
    'self.step == 2', 'self.step == 50 and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0"')


@pytest.mark.slow
@needs_proc
def test_a_hung_worker_is_given_up_after_the_peer_timeout_and_the_job_restarted(
        corpus, reference, tmp_path):
    """gloo's own bound is 30 minutes: rank 0 waited that long for a hung rank 1."""
    script = tmp_path / "rank_1_hangs_once.py"
    script.write_text(RANK_1_HANGS_ONCE, encoding="utf-8")
    run = tmp_path / "run"
    args = set_args(corpus, run, **{**RUN, "train.peer_timeout": 3, "train.preempt_grace": 2})
    launcher = ("--standalone", "--max-restarts=1")
    started = time.monotonic()
    with Launch(torchrun(*args, script=str(script), launcher=launcher), tmp_path, timeout=180,
                env=FRESH_STORE) as launch:
        assert launch.finish() == 0, launch.stderr  # nothing but the timeout ends the hang
    assert time.monotonic() - started < 120
    assert errors_in(launch.stderr) == [
        "error: another process of this run did not answer for 3 s (train.peer_timeout): it, "
        "or its machine, hangs; this one stopped too, and torchrun restarts the job from "
        "last.pt if --max-restarts allows"], launch.stderr
    assert "[rank" not in launch.stderr  # no worker's traceback
    assert (f"torchrun restarted the workers (restart 1 of this job): resuming from "
            f"{run / 'last.pt'} at step 40") in launch.stdout
    assert_same_weights(reference, run)


# Run as `python -c`: a stop request with a grace period, and a signal to this process.
GRACE = """
import os, signal, sys, time
from charrnn.interrupts import StopRequest
signum, leave = getattr(signal, sys.argv[1]), sys.argv[2] == "leave"
with StopRequest(grace=0.3, on_expiry=lambda name: print("expired after", name)) as stop:
    os.kill(os.getpid(), signum)
    os.kill(os.getpid(), signum)  # a second SIGTERM or SIGUSR1 changes nothing
    print("stop requested by", stop.signum)
    if not leave:
        time.sleep(30)
time.sleep(1)
print("still running")
"""


@pytest.mark.parametrize(("signum", "leave"), [(signal.SIGUSR1, False), (signal.SIGTERM, False),
                                               (signal.SIGTERM, True)])
def test_the_grace_period_ends_a_process_that_does_not_stop_in_time(signum, leave):
    child = subprocess.run([sys.executable, "-c", GRACE, signum.name, "leave" if leave else ""],
                           capture_output=True, text=True, timeout=60)
    assert f"stop requested by {int(signum)}" in child.stdout, child.stderr
    if leave:  # it left the stop's context in time: the deadline is off
        assert child.returncode == 0 and "still running" in child.stdout
    else:
        assert child.returncode == 128 + signum
        assert f"expired after {signum.name}" in child.stdout


def test_a_second_ctrl_c_still_stops_at_once():
    from charrnn.interrupts import StopRequest

    with pytest.raises(KeyboardInterrupt), StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler raises long before this ends


# ---- timed saves --------------------------------------------------------------------------------
def test_timed_saves_write_last_pt_and_change_nothing_trained(corpus, tmp_path, monkeypatch):
    settings = {**RUN, "train.max_steps": 30, "train.eval_every": 10, "train.keep_last": 2}
    train(load_config(None, tiny_overrides(corpus, tmp_path / "reference", **settings)))
    saved = []
    real_save = RunDir.save

    def counting_save(self, last, best, step, keep_last):
        saved.append((step, keep_last))
        real_save(self, last, best, step, keep_last)

    monkeypatch.setattr(RunDir, "save", counting_save)
    timed = {**settings, "train.save_every_time": 1e-9}  # due after every step
    train(load_config(None, tiny_overrides(corpus, tmp_path / "run", **timed)))
    assert [step for step, _ in saved] == list(range(1, 31))  # evaluations or timed saves
    assert [step for step, keep in saved if keep] == [10, 20, 30]  # keep_last: evaluations'
    assert_same_weights(tmp_path / "reference", tmp_path / "run")
    steps = sorted(p.name for p in (tmp_path / "run").glob("step-*.pt"))
    assert steps == ["step-00000020.pt", "step-00000030.pt"]


# ---- a worker that fails ------------------------------------------------------------------------
# Run by torchrun in place of `-m charrnn`: the worker of rank 1 hits a bug at step 5.
RANK_1_RAISES = """
import os, sys
from charrnn import train
from charrnn.cli import main
real_step = train.Trainer.train_step
def train_step(self):
    if os.environ["RANK"] == "1" and self.step == 5:
        raise RuntimeError("injected fault")
    return real_step(self)
train.Trainer.train_step = train_step
sys.argv = ["charrnn", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_a_worker_that_raises_stops_the_others_and_its_error_is_shown_once(corpus, tmp_path):
    script = tmp_path / "rank_1_raises.py"
    script.write_text(RANK_1_RAISES, encoding="utf-8")
    args = set_args(corpus, tmp_path / "run", **RUN)
    # Before it was fixed, rank 1 waited in a barrier and rank 0 in DDP's gradient averaging,
    # each for the other, for gloo's 30 minutes.
    with Launch(torchrun(*args, script=str(script)), tmp_path, timeout=120) as launch:
        assert launch.finish() != 0
    stderr = launch.stderr
    assert stderr.count("RuntimeError: injected fault") == 1, stderr
    assert "[rank0]" not in stderr  # rank 0 has no traceback of its own to add
    # Rank 0 says why it stopped, unless torchrun's SIGTERM ends it first.
    assert errors_in(stderr) in ([], [f"error: {PEER_LOST}"]), stderr


# ---- two nodes ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_loopback_train_what_one_process_trains(corpus, tmp_path):
    settings = {**RUN, "model.dropout": 0.0, "train.max_steps": 12, "train.eval_every": 6,
                "train.log_every": 3}
    launcher = ("--nnodes=2", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{free_port()}",
                "--rdzv_id=two-nodes")
    # Each node its own run directory, as on machines without a shared disk.
    nodes = [tmp_path / "node-a", tmp_path / "node-b"]
    with contextlib.ExitStack() as both:
        launches = [both.enter_context(Launch(
            torchrun(*set_args(corpus, node, **settings), processes=1, launcher=launcher),
            tmp_path, timeout=180)) for node in nodes]
        for launch in launches:
            assert launch.finish() == 0, launch.stderr
    # Rank 0 alone writes checkpoints and prints; the other node keeps its corpus copy.
    main, other = sorted(nodes, key=lambda node: not (node / "last.pt").exists())
    assert not list(other.glob("*.pt")) and list(other.glob("ids.*"))
    assert sum("done: 12 steps" in launch.stdout for launch in launches) == 1
    alone = tmp_path / "alone"
    train(load_config(None, tiny_overrides(corpus, alone, **settings)))
    two, one = checkpoint.load(main / "last.pt"), checkpoint.load(alone / "last.pt")
    for key, weights in one["model"].items():
        torch.testing.assert_close(two["model"][key], weights, rtol=1e-4, atol=1e-6, msg=key)
