"""`bertzoo glue`: the nine GLUE tasks one after another, a results table and the GLUE server's
submission files.

    bertzoo glue --model.backbone google-bert/bert-base-uncased
    bertzoo glue --model.backbone BACKBONE --tasks cola,sst2 --data_dir glue_data --resume \
        --trainer.max_epochs 2        # any other option goes to every task's recipe

Each task runs its packaged recipe (`recipes/glue/<task>.yaml`: the BERT paper's settings) as
`bertzoo fit` would, in its own run folder, then evaluates its best checkpoint on the dev set
(MNLI on both: matched and mismatched) with `validate`, and predicts the test set with
`predict`. In `--output_dir` (default runs/glue) it writes

    glue_results.md / .json   dev scores in the layout of the BERT paper's Table 1 (Devlin et
                              al. 2018), with each task's official metric, its run folders and
                              what failed
    CoLA.tsv ... WNLI.tsv,    one file per GLUE test set, `index<TAB>prediction` with a header
    MNLI-m.tsv, MNLI-mm.tsv,  line and the label strings gluebenchmark.com expects (AX is the
    AX.tsv                    diagnostic set, predicted by the MNLI model)

A task that fails is reported in the table and the others still run; `--resume` keeps the tasks
that finished in an earlier call with the same `--output_dir` and runs the rest.

Data: the Hugging Face hub's `nyu-mll/glue` by default (the recipes' own); with `--data_dir`, the
folder GLUE's download script writes (CoLA/, SST-2/, ..., diagnostic/), read as it is: CoLA's
train and dev files have no header line, MNLI has dev_matched/dev_mismatched and
test_matched/test_mismatched, QQP's and STS-B's columns are GLUE's own.
"""

from __future__ import annotations

import argparse
import json
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertzoo.config import ConfigError
from bertzoo.files import atomic_write
from bertzoo.recipe_catalog import recipes_root
from bertzoo.tasks.base import PredictionWriter

MNLI_LABELS = ("entailment", "neutral", "contradiction")  # nyu-mll/glue's class ids 0, 1, 2
NLI_LABELS = ("entailment", "not_entailment")  # QNLI and RTE, class ids 0, 1


@dataclass(frozen=True)
class Evaluation:
    """One dev set (`key` names it in the table: "m", "mm") or one test set (`key` is the
    submission file's name)."""
    key: str
    local_file: str          # in the task's folder of a GLUE download
    hub: dict[str, Any]      # data options that pick it on the hub


@dataclass(frozen=True)
class GlueTask:
    name: str                           # the recipe's name: recipes/glue/<name>.yaml
    title: str                          # as the GLUE paper and leaderboard write it
    folder: str                         # its folder in GLUE's download
    metrics: tuple[str, ...]            # the official metric(s), the first is the table's
    local: dict[str, Any]               # data options for GLUE's own TSV files
    server_labels: tuple[str, ...] | None = None  # the string of each hub class id
    regression: bool = False
    dev: tuple[Evaluation, ...] = (Evaluation("", "dev.tsv", {}),)
    test: tuple[Evaluation, ...] = ()

    def local_overrides(self, data_dir: str | Path) -> list[str]:
        """The recipe's data switched from the hub to the GLUE download in `data_dir`."""
        folder = Path(data_dir) / self.folder
        options = {"dataset": None, "dataset_config": None,
                   "train_file": str(folder / "train.tsv"),
                   "validation_file": str(folder / self.dev[0].local_file), **self.local}
        return [f"--data.{key}={json.dumps(value) if not isinstance(value, str) else value}"
                for key, value in options.items()]


def _tests(title: str, **hub) -> tuple[Evaluation, ...]:
    return (Evaluation(f"{title}.tsv", "test.tsv", hub),)


TASKS: dict[str, GlueTask] = {task.name: task for task in (
    GlueTask("cola", "CoLA", "CoLA", ("matthews",),
             {"column_names": ["source", "label", "original_label", "sentence"]},
             test=_tests("CoLA")),
    GlueTask("sst2", "SST-2", "SST-2", ("accuracy",), {}, test=_tests("SST-2")),
    GlueTask("mrpc", "MRPC", "MRPC", ("f1", "accuracy"),
             {"text_column": "#1 String", "text_pair_column": "#2 String",
              "label_column": "Quality"}, test=_tests("MRPC")),
    GlueTask("stsb", "STS-B", "STS-B", ("spearman", "pearson"), {"label_column": "score"},
             regression=True, test=_tests("STS-B")),
    GlueTask("qqp", "QQP", "QQP", ("f1", "accuracy"),
             {"text_column": "question1", "text_pair_column": "question2",
              "label_column": "is_duplicate"}, test=_tests("QQP")),
    GlueTask("mnli", "MNLI", "MNLI", ("accuracy",),
             {"text_column": "sentence1", "text_pair_column": "sentence2",
              "label_column": "gold_label"}, server_labels=MNLI_LABELS,
             dev=(Evaluation("m", "dev_matched.tsv",
                             {"dataset_splits": {"validation": "validation_matched"}}),
                  Evaluation("mm", "dev_mismatched.tsv",
                             {"dataset_splits": {"validation": "validation_mismatched"}})),
             test=(Evaluation("MNLI-m.tsv", "test_matched.tsv",
                              {"dataset_splits": {"predict": "test_matched"}}),
                   Evaluation("MNLI-mm.tsv", "test_mismatched.tsv",
                              {"dataset_splits": {"predict": "test_mismatched"}}),
                   # the diagnostic set, in GLUE's download diagnostic/diagnostic.tsv
                   Evaluation("AX.tsv", "../diagnostic/diagnostic.tsv",
                              {"dataset_config": "ax", "dataset_splits": {"predict": "test"}}))),
    GlueTask("qnli", "QNLI", "QNLI", ("accuracy",),
             {"text_column": "question", "text_pair_column": "sentence"},
             server_labels=NLI_LABELS, test=_tests("QNLI")),
    GlueTask("rte", "RTE", "RTE", ("accuracy",),
             {"text_column": "sentence1", "text_pair_column": "sentence2"},
             server_labels=NLI_LABELS, test=_tests("RTE")),
    GlueTask("wnli", "WNLI", "WNLI", ("accuracy",),
             {"text_column": "sentence1", "text_pair_column": "sentence2"},
             test=_tests("WNLI")),
)}
# The columns of the BERT paper's Table 1 (its Average leaves WNLI out), then WNLI.
TABLE = (("MNLI-m", "mnli", "m"), ("MNLI-mm", "mnli", "mm"), ("QQP", "qqp", ""),
         ("QNLI", "qnli", ""), ("SST-2", "sst2", ""), ("CoLA", "cola", ""),
         ("STS-B", "stsb", ""), ("MRPC", "mrpc", ""), ("RTE", "rte", ""))
# Submission labels: the strings gluebenchmark.com reads for each task's classes.
SERVER_VOCABULARY = {"cola": {"0", "1"}, "sst2": {"0", "1"}, "mrpc": {"0", "1"},
                     "qqp": {"0", "1"}, "wnli": {"0", "1"}, "mnli": set(MNLI_LABELS),
                     "qnli": set(NLI_LABELS), "rte": set(NLI_LABELS)}
METRIC_NAMES = {"matthews": "Matthews corr.", "accuracy": "accuracy", "f1": "F1",
                "spearman": "Spearman corr.", "pearson": "Pearson corr."}

RunTask = Callable[[str, list[str]], Any]


class GlueError(ConfigError):
    """Bad arguments to `bertzoo glue` (an unknown task name)."""


# ----------------------------------------------------------------------------- one task
def recipe_path(task: GlueTask) -> Path:
    return Path(str(recipes_root() / "glue" / f"{task.name}.yaml"))


def _option(key: str, value: Any) -> str:
    return f"--data.{key}={value if isinstance(value, str) else json.dumps(value)}"


def run_glue_task(task: GlueTask, run_task: RunTask, overrides: list[str], output_dir: Path,
                  data_dir: str | None) -> dict[str, Any]:
    """fit, validate on each dev set, predict each test set; the task's entry of the results
    (its submission files written into `output_dir`)."""
    base = ["--config", str(recipe_path(task))]
    if data_dir:
        base += task.local_overrides(data_dir)
    base += overrides
    fit = run_task("fit", base)
    trainer = fit.trainer
    checkpoint = trainer.checkpoint_callback.best_model_path \
        or trainer.checkpoint_callback.last_model_path
    if not checkpoint:
        raise RuntimeError("the fit run saved no checkpoint")
    entry: dict[str, Any] = {"run": str(trainer.log_dir), "checkpoint": str(checkpoint),
                             "dev": {}, "submission": []}
    folder = Path(data_dir) / task.folder if data_dir else None
    for dev in task.dev:
        where = ([f"--data.validation_file={folder / dev.local_file}"] if folder
                 else [_option(k, v) for k, v in dev.hub.items()])
        validate = run_task("validate", base + where + [f"--ckpt_path={checkpoint}"])
        entry["dev"][dev.key] = {name.split("/", 1)[1]: float(value) for name, value in
                                 validate.trainer.callback_metrics.items()
                                 if name.startswith("val/")}
    for test in task.test:
        where = ([f"--data.predict_file={(folder / test.local_file).resolve()}"] if folder
                 else [_option(k, v) for k, v in test.hub.items()])
        predict = run_task("predict", base + where + [f"--ckpt_path={checkpoint}"])
        written = [path for callback in predict.trainer.callbacks
                   if isinstance(callback, PredictionWriter) for path in callback.written]
        rows = [json.loads(line) for line in Path(written[-1]).read_text().splitlines()]
        write_submission(task, rows, output_dir / test.key)
        entry["submission"].append(test.key)
    return entry


def submission_label(task: GlueTask, row: dict[str, Any]) -> str:
    """One prediction as the GLUE server reads it."""
    if task.regression:
        return f"{min(5.0, max(0.0, float(row['score']))):.3f}"  # STS-B is scored on 0..5
    label = str(row["label"])
    if task.server_labels and label.isdigit():  # a hub class id -> its name
        label = task.server_labels[int(label)]
    if label not in SERVER_VOCABULARY[task.name]:
        raise ValueError(f"{task.title}: predicted label {label!r} is not one that GLUE's "
                         f"server reads ({', '.join(sorted(SERVER_VOCABULARY[task.name]))}); "
                         f"were the "
                         f"training labels GLUE's?")
    return label


def write_submission(task: GlueTask, rows: list[dict[str, Any]], path: Path) -> None:
    """`index<TAB>prediction`, a header line, one line per test row in the test file's order
    (GLUE's test files number their rows 0, 1, ... in order, as does the hub's `idx`)."""
    rows = sorted(rows, key=lambda row: row["index"])
    lines = ["index\tprediction"] + [f"{row['index']}\t{submission_label(task, row)}"
                                     for row in rows]
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))


# ------------------------------------------------------------------------------ results
def main_score(task: GlueTask, entry: dict[str, Any], dev_key: str = "") -> float | None:
    if entry.get("status") != "done":
        return None
    scores = entry["dev"].get(dev_key or task.dev[0].key, {})
    value = scores.get(task.metrics[0])
    return None if value is None else 100 * value


def table_cell(task: GlueTask, entry: dict[str, Any] | None, dev_key: str = "") -> str:
    if entry is None:
        return "—"
    if entry.get("status") != "done":
        return "failed"
    scores = entry["dev"].get(dev_key or task.dev[0].key, {})
    shown = [f"{100 * scores[m]:.1f}" if m in scores else "?" for m in task.metrics]
    return "/".join(shown)


def results_markdown(results: dict[str, Any]) -> str:
    tasks = results["tasks"]
    header = [label for label, _, _ in TABLE] + ["WNLI", "Average"]
    cells = [table_cell(TASKS[name], tasks.get(name), key) for _, name, key in TABLE]
    cells.append(table_cell(TASKS["wnli"], tasks.get("wnli")))
    scores = [main_score(TASKS[name], tasks[name], key) if name in tasks else None
              for _, name, key in TABLE]
    cells.append(f"{sum(scores) / len(scores):.1f}" if all(s is not None for s in scores)
                 else "—")
    lines = [f"# GLUE dev results: {results.get('backbone') or 'the given model'}", "",
             "Dev-set scores x 100 of the best checkpoint of each task (its recipe in "
             "recipes/glue/), in the layout of the BERT paper's Table 1 (Devlin et al. 2018): "
             "F1/accuracy for QQP and MRPC, Spearman/Pearson correlation for STS-B, "
             "Matthews correlation for CoLA, accuracy otherwise. The Average is that of the "
             "nine columns before WNLI (the first number of each), as in the paper.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
             "| " + " | ".join(cells) + " |", "",
             "| task | status | dev scores | run | submission |", "|---|---|---|---|---|"]
    for name, task in TASKS.items():
        entry = tasks.get(name)
        if entry is None:
            continue
        if entry.get("status") == "done":
            dev = "; ".join(
                f"{key + ': ' if key else ''}" + ", ".join(
                    f"{METRIC_NAMES[m]} {100 * scores[m]:.2f}" for m in task.metrics
                    if m in scores)
                for key, scores in entry["dev"].items())
            lines.append(f"| {task.title} | done | {dev} | {entry['run']} | "
                         f"{', '.join(entry['submission'])} |")
        else:
            error = entry.get("error", "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {task.title} | failed: {error} | | {entry.get('run', '')} | |")
    return "\n".join(lines) + "\n"


def write_results(output_dir: Path, results: dict[str, Any]) -> None:
    atomic_write(output_dir / "glue_results.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2) + "\n"))
    atomic_write(output_dir / "glue_results.md",
                 lambda tmp: Path(tmp).write_text(results_markdown(results)))


# ---------------------------------------------------------------------------- command
def parse_tasks(text: str | None) -> list[GlueTask]:
    if not text:
        return list(TASKS.values())
    names = [name.strip().lower().replace("-", "") for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise GlueError(f"--tasks: unknown GLUE task(s) {', '.join(unknown)}; the tasks are "
                        f"{', '.join(TASKS)}")
    return [TASKS[name] for name in dict.fromkeys(names)]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertzoo glue", description="Fine-tune and evaluate on the nine GLUE tasks, write "
        "a dev results table and the GLUE server's submission files. Any other option "
        "(--model.backbone X, --trainer.max_epochs 2, ...) goes to every task's recipe.")
    parser.add_argument("--tasks", help=f"comma-separated tasks to run (default: all: "
                                         f"{','.join(TASKS)})")
    parser.add_argument("--data_dir", help="a GLUE download (CoLA/, SST-2/, ..., diagnostic/) "
                                           "instead of the hub's nyu-mll/glue")
    parser.add_argument("--output_dir", default="runs/glue",
                        help="where glue_results.md/.json and the submission files go "
                             "(default: runs/glue)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the tasks that finished in an earlier run of this "
                             "--output_dir, run the others")
    return parser


def _backbone(overrides: list[str]) -> str | None:
    for i, arg in enumerate(overrides):
        if arg.startswith("--model.backbone="):
            return arg.split("=", 1)[1]
        if arg == "--model.backbone" and i + 1 < len(overrides):
            return overrides[i + 1]
    return None


def main(args: list[str], run_task: RunTask) -> int:
    """`bertzoo glue ...`; `run_task(command, arguments)` runs one `bertzoo fit|validate|predict
    --task classification` and returns its LightningCLI (the CLI gives its own). Returns 0 when
    every task finished, 1 when one failed."""
    options, overrides = parser().parse_known_args(args)
    tasks = parse_tasks(options.tasks)
    output_dir = Path(options.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"backbone": _backbone(overrides), "tasks": {}}
    previous = output_dir / "glue_results.json"
    if options.resume and previous.is_file():
        results["tasks"] = {name: entry for name, entry in
                            json.loads(previous.read_text())["tasks"].items()
                            if entry.get("status") == "done"}
    for task in tasks:
        if task.name in results["tasks"]:
            print(f"bertzoo glue: {task.title}: finished earlier, kept (--resume)")
            continue
        print(f"bertzoo glue: {task.title}")
        try:
            entry = {"status": "done", **run_glue_task(task, run_task, overrides, output_dir,
                                                       options.data_dir)}
        except (Exception, SystemExit) as err:  # noqa: BLE001 - one task's failure, reported
            if isinstance(err, SystemExit):  # the argument parser printed why
                message = f"invalid arguments (exit status {err.code}; see the output above)"
            else:
                message = f"{type(err).__name__}: {err}"
                if os.environ.get("BERTZOO_TRACEBACK"):
                    traceback.print_exc()
            print(f"bertzoo glue: {task.title} failed: {message}")
            entry = {"status": "failed", "error": message}
        results["tasks"][task.name] = entry
        write_results(output_dir, results)  # after each task: an interrupted suite keeps it
    write_results(output_dir, results)
    print(f"bertzoo glue: wrote {output_dir / 'glue_results.md'}")
    failed = [TASKS[name].title for name, entry in results["tasks"].items()
              if entry.get("status") != "done"]
    if failed:
        print(f"bertzoo glue: failed: {', '.join(failed)}")
    return 1 if failed else 0


__all__ = ["TASKS", "GlueTask", "GlueError", "main", "write_submission", "results_markdown"]
