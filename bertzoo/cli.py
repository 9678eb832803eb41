"""`bertzoo`: the one command.

    bertzoo pretrain --config recipes/pretrain/tiny.yaml [overrides]   MLM + NSP pretraining
    bertzoo fit|validate|test|predict --task NAME --config RECIPE         any registered task
    bertzoo tasks                                                         the registry, as a table
    bertzoo export CKPT OUT_DIR                                           Hugging Face folder

`pretrain` and the task commands are LightningCLI (jsonargparse) underneath: every argument of
the model, the data module and the Trainer is settable from YAML or the command line, and
`--help` prints each one with its docstring. bertzoo adds, for all of them alike:

- runs land in `runs/<name>/version_<n>/` (config.yaml, metrics.csv, TensorBoard events when
  installed, checkpoints/, predictions), one folder per run so nothing is overwritten;
- `--ckpt_path last` resumes the newest run of that name from its `last.ckpt`, in its folder;
- values the data determines (tokenizer vocabulary size, label names) are linked from the data
  module to the model, never typed twice; `data.tokenizer` defaults to `model.backbone` (or to
  the checkpoint given with `--ckpt_path`);
- a model restored with `--ckpt_path` is built from the config stored in that checkpoint, so
  the original backbone folder need not exist any more.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

RUNS_DIR = "runs"
TASK_COMMANDS = ("fit", "validate", "test", "predict")
USAGE = __doc__.split("\n\n")[1]


# ------------------------------------------------------------------------------ run folders
def next_version(save_dir: str, name: str) -> int:
    root = Path(save_dir) / name
    versions = [int(p.name.split("_", 1)[1]) for p in root.glob("version_*")
                if p.name.split("_", 1)[1].isdigit()] if root.is_dir() else []
    return max(versions, default=-1) + 1


def latest_checkpoint(save_dir: str, name: str) -> tuple[Path, int]:
    """The newest `last.ckpt` of runs/<name>/version_*/checkpoints, and its version number."""
    candidates = sorted((Path(save_dir) / name).glob("version_*/checkpoints/last*.ckpt"),
                        key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"--ckpt_path last: no last.ckpt under {save_dir}/{name}/version_*/"
                                f"checkpoints; nothing to resume (pass a .ckpt path instead)")
    path = candidates[-1]
    return path, int(path.parent.parent.name.split("_", 1)[1])


def trainer_defaults(name: str, version: int, monitor: str, mode: str,
                     extra_callbacks: tuple = ()) -> dict[str, Any]:
    """The Trainer setup every bertzoo run shares; any of it can be overridden by a recipe."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from bertzoo.training import TokensPerSecond
    logger_args = {"save_dir": RUNS_DIR, "name": name, "version": f"version_{version}"}
    loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": logger_args}]
    try:
        import tensorboard  # noqa: F401
        loggers.append({"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                        "init_args": {**logger_args, "default_hp_metric": False}})
    except ImportError:
        pass
    callbacks = [
        *extra_callbacks,
        ModelCheckpoint(monitor=monitor, mode=mode, save_last=True, save_top_k=1,
                        filename="best-{step}", auto_insert_metric_name=False),
        LearningRateMonitor(logging_interval="step"),
        TokensPerSecond(),
    ]
    try:
        from lightning.pytorch.callbacks import RichProgressBar
        import rich  # noqa: F401
        callbacks.append(RichProgressBar(leave=True))
    except ImportError:
        pass
    return {"logger": loggers, "callbacks": callbacks, "default_root_dir": RUNS_DIR,
            "use_distributed_sampler": False}  # bertzoo's samplers shard by rank themselves


# ----------------------------------------------------------------------------- LightningCLI
def _lightning_cli_class():
    from lightning.pytorch.cli import LightningCLI

    class BertzooCLI(LightningCLI):
        """LightningCLI with bertzoo's links between the data module and the model."""

        def __init__(self, *args, links: tuple[str, ...] = (), task_name: str | None = None,
                     **kwargs):
            self.links = links
            self.task_name = task_name
            super().__init__(*args, **kwargs)

        def add_arguments_to_parser(self, parser) -> None:
            if self.task_name is not None:
                parser.add_argument("--task", type=str | None, default=self.task_name,
                                    help="Registered task name (see `bertzoo tasks`).")
            for name in self.links:
                parser.link_arguments(f"data.{name}", f"model.init_args.{name}"
                                      if self.subclass_mode_model else f"model.{name}",
                                      apply_on="instantiate")

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            fill_from_checkpoint(config, self.subclass_mode_model)

    return BertzooCLI


def _init_args(section, subclass_mode: bool):
    return section.init_args if subclass_mode and "init_args" in section else section


def fill_from_checkpoint(config, subclass_mode: bool = False) -> None:
    """Apply bertzoo's defaults that depend on other values: `data.tokenizer` from the backbone
    or the checkpoint, and a model restored from `--ckpt_path` built from that checkpoint's
    stored config (so its original backbone folder need not exist)."""
    from bertzoo.checkpoint import CKPT_KEY
    model = _init_args(config.model, subclass_mode)
    data = _init_args(config.data, subclass_mode) if config.get("data") else None
    ckpt_path = config.get("ckpt_path")
    if ckpt_path and Path(ckpt_path).is_file() and "backbone" in model:
        import torch
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        info = ckpt.get(CKPT_KEY) if isinstance(ckpt, dict) else None
        if info is not None:
            model.backbone, model.config = None, info["config"]
            if data is not None and "tokenizer" in data and not data.tokenizer:
                data.tokenizer = str(ckpt_path)
            # Label names the model was trained with, so predict/test need no training file.
            hparams = ckpt.get("hyper_parameters") or {}
            if data is not None and "labels" in data and not data.labels \
                    and hparams.get("label_names"):
                data.labels = list(hparams["label_names"])
    if data is not None and "tokenizer" in data and not data.tokenizer \
            and model.get("backbone"):
        data.tokenizer = model.backbone


def run_lightning_cli(command: str, args: list[str], module_class, datamodule_class,
                      run_name: str, monitor: str, monitor_mode: str,
                      links: tuple[str, ...] = (), task_name: str | None = None,
                      subclass_mode: bool = False):
    """Run one LightningCLI subcommand with bertzoo's Trainer defaults and run folder."""
    args = list(args)
    version = int(os.environ.get("BERTZOO_RUN_VERSION", next_version(RUNS_DIR, run_name)))
    if "--ckpt_path" in args or any(a.startswith("--ckpt_path=") for a in args):
        value_at = next(i for i, a in enumerate(args) if a.startswith("--ckpt_path"))
        value = args[value_at].split("=", 1)[1] if "=" in args[value_at] else args[value_at + 1]
        if value == "last":
            path, version = latest_checkpoint(RUNS_DIR, run_name)
            if "=" in args[value_at]:
                args[value_at] = f"--ckpt_path={path}"
            else:
                args[value_at + 1] = str(path)
    os.environ["BERTZOO_RUN_VERSION"] = str(version)  # DDP workers re-run us: same folder
    extra_callbacks = ()
    if command == "predict":
        from bertzoo.tasks.base import PredictionWriter
        extra_callbacks = (PredictionWriter(),)
    cli_class = _lightning_cli_class()
    return cli_class(
        module_class, datamodule_class, args=[command, *args], links=links,
        task_name=task_name, subclass_mode_model=subclass_mode,
        subclass_mode_data=subclass_mode,
        trainer_defaults=trainer_defaults(run_name, version, monitor, monitor_mode,
                                          extra_callbacks),
        save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
        parser_kwargs={"default_env": False},
    )


# ---------------------------------------------------------------------------- subcommands
def cmd_tasks(args: list[str]) -> int:
    """Print the task registry: name, description, distribution, version, status."""
    from bertzoo.tasks.registry import list_tasks
    rows = [(t.name, t.spec.description if t.spec else "", t.distribution, t.version, t.status)
            for t in list_tasks()]
    header = ("name", "description", "distribution", "version", "status")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    return 1 if any(r[4].startswith("broken: duplicate") for r in rows) else 0


def cmd_export(args: list[str]) -> int:
    """bertzoo export CKPT OUT_DIR [--encoder-only]: write a Hugging Face BERT folder."""
    import argparse

    from bertzoo.export import export
    parser = argparse.ArgumentParser(prog="bertzoo export", description=cmd_export.__doc__)
    parser.add_argument("checkpoint", help="a bertzoo .ckpt, export folder or HF BERT folder")
    parser.add_argument("out_dir", help="folder to write (config.json, model.safetensors, "
                                        "tokenizer files)")
    parser.add_argument("--encoder-only", action="store_true",
                        help="write the BertModel layout only, without pretraining/task heads")
    ns = parser.parse_args(args)
    written = export(ns.checkpoint, ns.out_dir, encoder_only=ns.encoder_only)
    print(f"exported {ns.checkpoint} -> {written}")
    return 0


def cmd_pretrain(args: list[str]):
    from bertzoo.pretraining import PretrainingDataModule, PretrainingModule
    return run_lightning_cli("fit", args, PretrainingModule, PretrainingDataModule,
                             run_name="pretrain", monitor="val/mlm_loss", monitor_mode="min",
                             links=PretrainingDataModule.model_links)


def task_from_args(args: list[str]) -> tuple[str | None, list[str]]:
    """The task name from `--task NAME` on the command line or `task:` in a --config YAML."""
    import yaml
    rest, name = [], None
    i = 0
    while i < len(args):
        if args[i] == "--task" and i + 1 < len(args):
            name = args[i + 1]
            i += 2
            continue
        if args[i].startswith("--task="):
            name = args[i].split("=", 1)[1]
        else:
            rest.append(args[i])
        i += 1
    if name is None:
        for i, arg in enumerate(rest):
            path = rest[i + 1] if arg == "--config" and i + 1 < len(rest) else (
                arg.split("=", 1)[1] if arg.startswith("--config=") else None)
            if path and Path(path).is_file():
                loaded = yaml.safe_load(Path(path).read_text()) or {}
                if isinstance(loaded, dict) and loaded.get("task"):
                    name = loaded["task"]
    return name, rest


def cmd_task(command: str, args: list[str]):
    from bertzoo.tasks.base import TaskDataModule, TaskModule
    from bertzoo.tasks.registry import get_task, list_tasks
    name, rest = task_from_args(args)
    if name is None:
        # A recipe naming full class paths: import every task so short names resolve too.
        list_tasks()
        return run_lightning_cli(command, rest, TaskModule, TaskDataModule, run_name="task",
                                 monitor="val/loss", monitor_mode="min", subclass_mode=True,
                                 links=("vocab_size",))
    spec = get_task(name)
    return run_lightning_cli(command, rest, spec.module, spec.datamodule, run_name=name,
                             monitor=spec.monitor, monitor_mode=spec.monitor_mode,
                             links=spec.datamodule.model_links, task_name=name)


COMMANDS = {
    "pretrain": cmd_pretrain,
    "tasks": cmd_tasks,
    "export": cmd_export,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenize before workers fork
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(f"usage:\n{USAGE}")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in TASK_COMMANDS:
        cmd_task(command, rest)
        return 0
    if command not in COMMANDS:
        print(f"bertzoo: unknown command {command!r}\nusage:\n{USAGE}", file=sys.stderr)
        return 2
    result = COMMANDS[command](rest)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
