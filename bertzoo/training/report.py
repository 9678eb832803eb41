"""What a run shows in the terminal: a progress bar that reads like a tool's, a one-line model
summary, dependency noise filtered out, and at the end of `fit`/`pretrain` a short summary with
the metric, the checkpoints and the commands to run next.

The noise filters name each message exactly (and its category): a warning of bertzoo's own, or
one of a dependency that is not listed here, is still shown.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import (Callback, ModelSummary, RichProgressBar,
                                         TQDMProgressBar)

from bertzoo.training.callbacks import LastCheckpoint

# (category, pattern of the message from its start) of warnings the user cannot act on: a
# dependency's deprecation inside another dependency, or a note on what bertzoo does on purpose.
NOISY_WARNINGS = (
    # torchdata's StatefulDataLoader calls torch.set_vital, which torch deprecates.
    (UserWarning, re.escape("'set_vital' is deprecated, please do not call")),
    # Lightning's _pytree still builds torch's LeafSpec.
    (FutureWarning, re.escape("`isinstance(treespec, LeafSpec)` is deprecated")),
    # `--ckpt_path last` resumes a run in its own folder, next to the checkpoints it wrote.
    (UserWarning, r"Checkpoint directory .+ exists and is not empty\.$"),
)
# Start of Lightning log lines advertising its cloud products.
NOISY_LOG_LINES = ("💡 Tip: For seamless cloud",
                   # bertzoo's one-line summary stands in for Lightning's table, on purpose
                   "Trainer already configured with model summary callbacks: "
                   "[<class 'bertzoo.training.report.OneLineModelSummary'>]")
LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"


class _DropAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOISY_LOG_LINES)


class CurrentStderr:
    """A stream that writes to `sys.stderr` as it is at each write. Lightning's log handler
    keeps the `sys.stderr` of the moment Lightning was imported; while a Rich progress bar is
    live, Rich puts a proxy in `sys.stderr` that prints a line above the bar. A log line (such
    as "`Trainer.fit` stopped: `max_steps=30` reached.") written past that proxy lands after
    the bar's text, and the bar, redrawn below it, shows twice on the screen."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


# Loggers that Lightning gives a handler of its own (when the root logger has none).
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


def quiet_dependency_noise() -> None:
    """Hide the warnings and log lines above (and only those), and send Lightning's log lines
    through `sys.stderr` as it is when they are written (`CurrentStderr`)."""
    for category, pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    logger = logging.getLogger(LIGHTNING_INFO_LOGGER)
    if not any(isinstance(f, _DropAdvertisements) for f in logger.filters):
        logger.addFilter(_DropAdvertisements())
    for name in LIGHTNING_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            # (a handler a user configured on stdout, or a file, is theirs: left alone)
            if type(handler) is logging.StreamHandler and not isinstance(
                    handler.stream, CurrentStderr) and handler.stream not in (sys.stdout,
                                                                              sys.__stdout__):
                try:
                    handler.setStream(CurrentStderr())
                except ValueError:  # the old stream was closed (flushing it failed)
                    handler.stream = CurrentStderr()


# ------------------------------------------------------------------------------ the bar
def _short(metric: str) -> str:
    return metric.split("/", 1)[-1]


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def bar_metrics(trainer, monitor: str | None) -> dict[str, str]:
    """The progress bar's items: the training loss of the latest step, the latest value of the
    monitored validation metric and the throughput, formatted (no `v_num`)."""
    metrics = trainer.callback_metrics
    shown: dict[str, str] = {}
    loss = _number(metrics.get("train/loss_step", metrics.get("train/loss")))
    if loss is not None:
        shown["loss"] = f"{loss:.4f}"
    if monitor and _number(metrics.get(monitor)) is not None:
        shown[_short(monitor)] = f"{_number(metrics[monitor]):.4f}"
    speed = _number(trainer.progress_bar_metrics.get("tokens_per_sec"))
    if speed is not None:
        shown["tokens/s"] = f"{speed:,.0f}"
    return shown


def _monitor(trainer) -> str | None:
    callback = trainer.checkpoint_callback
    return getattr(callback, "monitor", None)


class ReadableRichProgressBar(RichProgressBar):
    """Rich's bar showing `bar_metrics`, narrower, so that the line fits 100 columns."""

    BAR_WIDTH = 20

    def get_metrics(self, trainer, pl_module):
        return bar_metrics(trainer, _monitor(trainer))

    def configure_columns(self, trainer) -> list:
        from rich.progress import BarColumn
        columns = super().configure_columns(trainer)
        for column in columns:
            if isinstance(column, BarColumn):
                column.bar_width = self.BAR_WIDTH
        return columns


class ReadableTQDMProgressBar(TQDMProgressBar):
    """tqdm's bar showing `bar_metrics` (when rich is not installed)."""

    def get_metrics(self, trainer, pl_module):
        return bar_metrics(trainer, _monitor(trainer))


# Columns of the bar in a log (stdout not a terminal): Rich's width for a file, 80, puts each
# of the bar's metrics on a line of its own.
LOG_WIDTH = 120


def progress_bar(leave: bool = True):
    try:
        import rich  # noqa: F401
    except ImportError:
        return ReadableTQDMProgressBar(leave=leave)
    in_a_log = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return ReadableRichProgressBar(leave=leave,
                                   console_kwargs={"width": LOG_WIDTH} if in_a_log else None)


class OneLineModelSummary(ModelSummary):
    """The model in one line (class, parameters, size) instead of Lightning's table, whose
    FLOPs column reads 0 for a model without an example input."""

    @staticmethod
    def summarize(summary_data, total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes, total_flops: int,
                  **summarize_kwargs) -> None:
        from lightning.pytorch.utilities.model_summary import get_human_readable_count
        frozen = total_parameters - trainable_parameters
        parts = f"{get_human_readable_count(total_parameters)} parameters" + (
            f" ({get_human_readable_count(frozen)} frozen)" if frozen else "")
        print(f"model: {parts}, {model_size:.1f} MB", flush=True)


# ---------------------------------------------------------------------------- the summary
def read_metrics_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv ([] when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def metric_history(rows: list[dict[str, str]], metric: str) -> list[tuple[int, float]]:
    """(step, value) of every row that logged `metric`."""
    history = []
    for row in rows:
        value = _number(row.get(metric))
        if value is not None:
            history.append((int(float(row.get("step") or 0)), value))
    return history


def format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {seconds:02d}s" if hours else (
        f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s")


class RunSummary(Callback):
    """At the end of `fit`: the monitored metric (best and final), the task's other validation
    metrics (final), the best and last checkpoints, the wall time, and the next commands with
    the paths filled in. `next_commands(checkpoint, last, run_dir, datamodule)` gives those
    commands (each a list of arguments); the CLI, which knows how the run was started,
    supplies it."""

    def __init__(self, command: str, next_commands=None, stream=None):
        self.command = command
        self.next_commands = next_commands
        self.stream = stream
        self._started: float | None = None
        self.text: str | None = None  # the last summary printed (for tests)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._started = time.perf_counter()

    def on_fit_end(self, trainer, pl_module) -> None:
        # `trainer.log_dir` broadcasts from rank 0: every process asks, under DDP
        run_dir = trainer.log_dir
        if not trainer.is_global_zero or trainer.interrupted:
            return
        for logger in trainer.loggers:
            logger.save()  # metrics.csv complete before it is read
        self.text = self.render(trainer, run_dir)

    def show(self) -> None:
        """Print the summary; called once `fit` has returned, so that the progress bar has
        closed its display and the summary is the last thing on the screen."""
        if self.text:
            print(self.text, file=self.stream or sys.stdout, flush=True)

    def render(self, trainer, run_dir: str | None = None) -> str:
        run_dir = run_dir if run_dir is not None else trainer.log_dir
        run_dir = Path(run_dir) if run_dir else None
        rows = read_metrics_csv(run_dir / "metrics.csv") if run_dir else []
        callback = trainer.checkpoint_callback
        monitor = getattr(callback, "monitor", None)
        mode = getattr(callback, "mode", "min")
        elapsed = time.perf_counter() - (self._started or time.perf_counter())
        lines = [f"bertzoo {self.command}: finished in {format_duration(elapsed)}: "
                 f"{trainer.global_step} steps, {trainer.current_epoch} epoch(s)"
                 + (f"; run folder {run_dir}" if run_dir else "")]
        names = sorted({k for row in rows for k, v in row.items()
                        if k.startswith("val/") and v not in ("", None)})
        if monitor in names:
            names.remove(monitor)
            names.insert(0, monitor)
        width = max((len(n) for n in names), default=0)
        for name in names:
            history = metric_history(rows, name)
            if not history:
                continue
            line = f"  {name.ljust(width)}  final {history[-1][1]:.4f}"
            if name == monitor:
                pick = max if mode == "max" else min
                best = pick(value for _, value in history)
                line = (f"  {name.ljust(width)}  best {best:.4f}, final {history[-1][1]:.4f}"
                        f"  ({len(history)} validations; the best checkpoint's, {mode})")
            lines.append(line)
        if not names:
            lines.append("  no validation metrics (no validation data)")
        best = getattr(callback, "best_model_path", "") or None
        last = next((c.path(trainer) for c in trainer.callbacks
                     if isinstance(c, LastCheckpoint)), None)
        if best and Path(best).is_file():
            lines.append(f"  best checkpoint  {best}")
        if last and Path(last).is_file():
            lines.append(f"  last checkpoint  {last}")
        if self.next_commands is not None and (best or last):
            commands = self.next_commands(best if best and Path(best).is_file() else last,
                                          last, run_dir, trainer.datamodule)
            if commands:
                lines.append("next:")
                lines += [f"  {shlex.join(c) if isinstance(c, list) else c}" for c in commands]
        return "\n".join(lines)
