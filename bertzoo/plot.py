"""`bertzoo plot RUN_DIR`: PNG curves of a run's logged metrics (its `metrics.csv`).

One panel per metric, training and validation together: `train/mlm_loss_step` and
`val/mlm_loss` share the `mlm_loss` panel, the learning rate and throughput get their own. Epoch
aggregates (`*_epoch`) are left out (one point per epoch says little next to the step curve).
matplotlib is imported only here, with the non-interactive Agg backend.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from pathlib import Path

from bertzoo.files import atomic_write


class PlotError(ValueError):
    """A run folder without metrics to plot."""


def read_series(metrics_csv: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{panel: {series: [(step, value), ...]}} from a Lightning CSVLogger file."""
    panels: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    with metrics_csv.open(newline="") as file:
        for row in csv.DictReader(file):
            if not row.get("step"):
                continue
            step = int(float(row["step"]))
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None) or key.endswith("_epoch"):
                    continue
                stage, _, name = key.rpartition("/")
                if stage in ("train", "val", "test"):  # train/mlm_loss_step -> mlm_loss: train
                    panel, series = name.removesuffix("_step"), stage
                else:  # lr/pg1 -> lr: lr/pg1
                    panel, series = key.split("/")[0], key
                panels[panel][series].append((step, float(value)))
    return {panel: dict(series) for panel, series in panels.items()}


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the curves of `run_dir/metrics.csv` to `out` (default `run_dir/metrics.png`)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics_csv = run_dir / "metrics.csv" if run_dir.is_dir() else run_dir
    if not metrics_csv.is_file():
        raise PlotError(f"{metrics_csv}: no such file; `bertzoo plot` takes a run folder "
                        f"(runs/<name>/version_<n>) holding the metrics.csv its CSV logger wrote")
    panels = read_series(metrics_csv)
    if not panels:
        raise PlotError(f"{metrics_csv} holds no logged values")
    order = sorted(panels, key=lambda p: (p in ("lr", "lr-AdamW", "tokens_per_sec"), p))
    columns = min(3, len(order))
    rows = math.ceil(len(order) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.4 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, order):
        for series, points in sorted(panels[panel].items()):
            steps, values = zip(*sorted(points))
            style = {"marker": "o", "markersize": 3} if series == "val" else {"linewidth": 1}
            ax.plot(steps, values, label=series, **style)
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(panels[panel]) > 1:
            ax.legend()
    for ax in list(axes.flat)[len(order):]:
        ax.axis("off")
    figure.suptitle(str(run_dir))
    figure.tight_layout()
    target = Path(out) if out else (run_dir if run_dir.is_dir() else run_dir.parent) / "metrics.png"
    atomic_write(target, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)
    return target


def main(args: list[str]) -> int:
    """bertzoo plot RUN_DIR [--out FILE.png]: PNG curves of a run's metrics.csv."""
    parser = argparse.ArgumentParser(prog="bertzoo plot", description=main.__doc__)
    parser.add_argument("run_dir", help="a run folder (runs/<name>/version_<n>) or its metrics.csv")
    parser.add_argument("--out", help="PNG file to write (default: RUN_DIR/metrics.png)")
    ns = parser.parse_args(args)
    written = plot_run(ns.run_dir, ns.out)
    print(f"wrote {written}")
    return 0
