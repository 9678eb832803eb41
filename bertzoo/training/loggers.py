"""metrics.csv that a resumed run continues."""

from __future__ import annotations

import csv
import os
from argparse import Namespace
from typing import Any

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor


class MetricsFile:
    """`<log_dir>/metrics.csv` (one row per logged step, one column per metric, sorted, as
    Lightning's CSVLogger writes it) and `<log_dir>/hparams.yaml`.

    Rows already in metrics.csv are kept, minus those at or after the first step this run
    logs: a run resumed from a checkpoint in its own folder continues its curves (Lightning's
    writer deletes the file)."""

    METRICS_FILE = "metrics.csv"
    HPARAMS_FILE = "hparams.yaml"

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self.fs = get_filesystem(log_dir)
        self.metrics_file_path = os.path.join(log_dir, self.METRICS_FILE)
        self.rows: list[dict[str, Any]] = []  # logged, not yet written
        self.keys: list[str] = []
        self.hparams: dict[str, Any] = {}
        self.resumed_rows: list[dict[str, str]] | None = None
        if self.fs.isfile(self.metrics_file_path):
            self.resumed_rows, self.keys = self._read()
        self.fs.makedirs(log_dir, exist_ok=True)

    def _read(self) -> tuple[list[dict[str, str]], list[str]]:
        with self.fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            return rows, list(reader.fieldnames or [])

    def _write(self, rows: list[dict[str, Any]], mode: str = "w") -> None:
        with self.fs.open(self.metrics_file_path, mode, newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.keys)
            if mode == "w":
                writer.writeheader()
            writer.writerows(rows)

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        save_hparams_to_yaml(os.path.join(self.log_dir, self.HPARAMS_FILE), self.hparams)

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        row = {k: v.item() if isinstance(v, Tensor) else v for k, v in metrics.items()}
        row["step"] = step
        self.rows.append(row)

    def save(self) -> None:
        if not self.rows:
            return
        new_keys = set().union(*self.rows) - set(self.keys)
        self.keys = sorted([*self.keys, *new_keys])
        if self.resumed_rows is not None:
            first_new = min(int(row["step"]) for row in self.rows)
            kept = [r for r in self.resumed_rows if r.get("step") and int(r["step"]) < first_new]
            self._write(kept + self.rows)
            self.resumed_rows = None
        elif not self.fs.isfile(self.metrics_file_path):
            self._write(self.rows)
        else:
            if new_keys:  # a new column: the header changes, rewrite the rows written so far
                self._write(self._read()[0])
            self._write(self.rows, mode="a")
        self.rows = []


class AppendingCSVLogger(CSVLogger):
    """`CSVLogger` that continues the metrics.csv of a run resumed in its own folder (see
    `MetricsFile`, which does the writing). It stays a `CSVLogger`, so that the Trainer's
    `log_dir` and LightningCLI's config.yaml are in the run's folder, as with Lightning's."""

    def __init__(self, save_dir: str, name: str | None = "lightning_logs",
                 version: int | str | None = None, prefix: str = "",
                 flush_logs_every_n_steps: int = 100):
        super().__init__(save_dir, name=name, version=version, prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)
        self.prefix = prefix
        self.flush_logs_every_n_steps = flush_logs_every_n_steps
        self.metrics_file: MetricsFile | None = None

    @property
    @rank_zero_experiment
    def experiment(self) -> MetricsFile:
        if self.metrics_file is None:
            self.metrics_file = MetricsFile(self.log_dir)
        return self.metrics_file

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace | None = None) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params or {})
        self.experiment.log_hparams(params)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Tensor | float], step: int | None = None) -> None:
        if self.prefix:
            metrics = {f"{self.prefix}{self.LOGGER_JOIN_CHAR}{k}": v for k, v in metrics.items()}
        if step is None:
            step = len(self.experiment.rows)
        self.experiment.log_metrics(metrics, step)
        if (step + 1) % self.flush_logs_every_n_steps == 0:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        self.experiment.save()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self.metrics_file is not None:  # nothing was logged in this process
            self.metrics_file.save()
