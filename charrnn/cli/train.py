"""`charrnn train`: train from a YAML config, or resume a run; progress on the terminal."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from charrnn.cli.common import handles_errors, out, speaks_for_the_run
from charrnn.errors import UsageError


@handles_errors(memory_hint="lower data.batch_size, data.seq_len or model.hidden_size")
def train(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="YAML config (see configs/).", show_default=False)] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", metavar="SECTION.KEY=VALUE",
        help="Override a config key, value parsed as YAML; repeatable.")] = None,
    resume: Annotated[str | None, typer.Option(
        "--resume", metavar="[RUN_DIR]", show_default=False,
        help="Continue from last.pt of RUN_DIR (alone: the config's train.out_dir).")] = None,
    overwrite: Annotated[bool, typer.Option(
        help="Start over in a run directory that already holds a run.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the final result.")]
        = False,
) -> None:
    """Train a model as a YAML config says; checkpoints and metrics go to train.out_dir.

    On several GPUs or machines, start it with torchrun: `torchrun --nproc_per_node=N -m
    charrnn train ...`; data.batch_size is then the total over all processes.
    """
    from charrnn.cli.progress import make_view
    from charrnn.config import load_config
    from charrnn.rundir import saved_config
    from charrnn.train import train as run_training

    if resume is not None and overwrite:
        raise UsageError("--resume continues a run and --overwrite starts it over: give one")
    resume_target: bool | str = False
    if resume is not None:
        resume_target = os.path.expanduser(resume) if resume else True
    if config is None and isinstance(resume_target, str):
        cfg = saved_config(resume_target)
        if overrides:
            cfg = load_config(Path(resume_target) / "config.yaml", overrides)
        if speaks_for_the_run() and not quiet:
            # The run directory's config says what is read: say it, since no file the user
            # named on this command line does.
            named = [f"{key} {value}" for key, value in (
                ("data.path", cfg.data.path), ("data.vocab", cfg.data.vocab),
                ("train.init_from", cfg.train.init_from)) if value]
            out.print(f"resuming with {escape(str(Path(resume_target) / 'config.yaml'))}: "
                      f"{escape(', '.join(named))}", style="dim")
    else:
        cfg = load_config(config, overrides)
        if config is None and resume is None and speaks_for_the_run() and not quiet:
            # Nothing named says what is trained: say it (a 2,000-step run is minutes).
            auto = cfg.model.size == "auto"  # the shape and the steps are chosen later
            limits = [f"{cfg.train.max_steps:,} steps"
                      if cfg.train.max_steps and not (auto and "train.max_steps" not in
                                                      cfg.given) else "",
                      f"{cfg.train.max_time:g} s" if cfg.train.max_time else ""]
            shape = f"{cfg.model.cell} sized to the budget" if auto \
                else f"{cfg.model.cell} {cfg.model.num_layers}x{cfg.model.hidden_size}"
            out.print(f"no --config: built-in defaults and --set ({escape(cfg.data.path)}, "
                      f"{shape}, {' or '.join(filter(None, limits))}) into "
                      f"{escape(cfg.train.out_dir)}; configs/ has examples", style="dim")
    view = make_view(out, quiet) if speaks_for_the_run() else None
    result = run_training(cfg, resume=resume_target, overwrite=overwrite, view=view,
                          exit_after_grace=True)
    if not speaks_for_the_run():
        return
    run_dir = escape(str(result.run_dir))
    quoted = escape(shlex.quote(str(result.run_dir)))  # a command to paste into a shell
    out.print(f"[bold green]done[/]: {result.step:,} steps in {result.elapsed:.0f} s"
              f"{escape(scores_text(result))}; checkpoints in {run_dir}. Sample with: charrnn "
              f"sample --checkpoint {quoted}")


def scores_text(result) -> str:
    """The end's validation score, and best.pt's where it is clearly better on the same text
    (a small corpus learnt by heart ended at 4.77 with 2.42 in best.pt, and said only 4.77)."""
    final, best = result.final, result.best_val_loss
    if final is None:
        return ""
    text = f"; val {final.line()}"
    if best is not None and result.best_val_chars == final.chars and best < final.loss - 0.005:
        text += f"; best.pt holds an earlier, better model: val {best:.4f}"
    return text
