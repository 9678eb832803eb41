"""`bertzoo`: the one command (`USAGE` lists the subcommands).

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
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from bertzoo import recipe_catalog
from bertzoo.config import ConfigError
from bertzoo.files import CKPT_KEY, CheckpointError, InputFileError, read_torch_file
from bertzoo.tokenizer import TokenizerError

RUNS_DIR = "runs"
TASK_COMMANDS = ("fit", "validate", "test", "predict")
# The usage text is not taken from the docstring: `python -OO` drops docstrings.
USAGE = """\
    bertzoo pretrain --config recipes/pretrain/tiny.yaml [overrides]   MLM + NSP pretraining
    bertzoo fit|validate|test|predict --task NAME --config RECIPE         any registered task
    bertzoo tasks                                                         the registry, as a table
    bertzoo export CKPT OUT_DIR [--format onnx]                           Hugging Face folder
    bertzoo serve PATH [--port 8000]                                      HTTP: POST /predict
    bertzoo recipes [copy NAME DIR]                                       the packaged recipes
    bertzoo plot RUN_DIR                                                  PNG curves of metrics.csv
    bertzoo bench [--device cuda]                                         speed vs transformers
    bertzoo glue --model.backbone X [--tasks cola,...] [--resume]         GLUE: dev table, test submission"""


# ------------------------------------------------------------------------------ run folders
def next_version(save_dir: str, name: str) -> int:
    root = Path(save_dir) / name
    versions = [int(p.name.split("_", 1)[1]) for p in root.glob("version_*")
                if p.name.split("_", 1)[1].isdigit()] if root.is_dir() else []
    return max(versions, default=-1) + 1


def reserve_version(save_dir: str, name: str) -> int:
    """The next free `version_<n>` under save_dir/name, created at once, so that a run started
    at the same moment (another shell, another job on a shared disk) takes the next one."""
    root = Path(save_dir) / name
    root.mkdir(parents=True, exist_ok=True)
    version = next_version(save_dir, name)
    while True:
        try:
            (root / f"version_{version}").mkdir()
            return version
        except FileExistsError:
            version += 1


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
                     extra_callbacks: tuple = (), summary=None) -> dict[str, Any]:
    """The Trainer setup every bertzoo run shares; any of it can be overridden by a recipe."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    from bertzoo.training.report import OneLineModelSummary, progress_bar

    from bertzoo.training import (BestCheckpoint, LastCheckpoint, SaveOnInterrupt,
                                  StopOnNonFiniteLoss, TokensPerSecond)
    logger_args = {"save_dir": RUNS_DIR, "name": name, "version": version}  # -> version_<n>
    # bertzoo's CSVLogger keeps metrics.csv when `--ckpt_path last` resumes in the run's folder.
    loggers = [{"class_path": "bertzoo.training.AppendingCSVLogger", "init_args": logger_args}]
    try:
        import tensorboard  # noqa: F401
        loggers.append({"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                        "init_args": {**logger_args, "default_hp_metric": False}})
    except ImportError:
        pass
    callbacks = [
        *extra_callbacks,
        BestCheckpoint(monitor=monitor, mode=mode, save_top_k=1, filename="best-{step}",
                       auto_insert_metric_name=False),
        LastCheckpoint(),  # last.ckpt at every validation and at the end: `--ckpt_path last`
        LearningRateMonitor(logging_interval="step"),
        TokensPerSecond(),
        StopOnNonFiniteLoss(),  # a NaN loss stops the run before it is checkpointed
        SaveOnInterrupt(),  # Ctrl-C: finish the step, save last.ckpt, stop
    ]
    callbacks += [progress_bar(leave=True), OneLineModelSummary()]
    if summary is not None:
        callbacks.append(summary)
    return {"logger": loggers, "callbacks": callbacks, "default_root_dir": RUNS_DIR,
            # checkpoints written to a temporary name, then renamed; read with weights_only
            "plugins": [{"class_path": "bertzoo.training.AtomicCheckpointIO"}],
            # BERT's optimizer (google-research/bert optimization.py) and Hugging Face's
            # Trainer clip the global gradient norm at 1.0. Short fine-tuning runs depend on it:
            # an unclipped first step's large gradient fills AdamW's second moment, which
            # remembers it for ~1/(1 - beta2) = 1,000 steps and keeps the updates small.
            "gradient_clip_val": 1.0,
            "use_distributed_sampler": False}  # bertzoo's samplers shard by rank themselves


# ----------------------------------------------------------------------------- LightningCLI
def suggest_closest_key(message: str, parser) -> str:
    """jsonargparse's "... does not accept option 'data.text_colum'" with the closest key the
    parser knows appended ("did you mean 'data.text_column'?")."""
    import difflib
    import re
    found = re.search(r"(?:Subcommand '[\w-]+'|Group '([\w.]+)') does not accept option "
                      r"'([\w.]+)'", message)
    on_command_line = re.search(r"unrecognized arguments: --([\w.]+)", message)
    if found:
        unknown = f"{found.group(1)}.{found.group(2)}" if found.group(1) else found.group(2)
    elif on_command_line:
        unknown = on_command_line.group(1)
    else:
        return message
    known = known_keys(parser)
    closest = difflib.get_close_matches(unknown, sorted(known), n=1, cutoff=0.6)
    if not closest:
        return message
    return f"{message}; did you mean '{'--' if on_command_line and not found else ''}" \
           f"{closest[0]}'?"


def known_keys(parser) -> set[str]:
    """Every key `parser` accepts ("data.text_column", "trainer.max_epochs", ...)."""
    # (without validation: the defaults of a parser that is reporting an error need not hold)
    return set(parser.get_defaults(skip_validation=True).keys())


def checkpoint_for_cli(path: str):
    """A --ckpt_path checkpoint read without running pickled code, or a CheckpointError that
    names the file (a truncated copy gave a raw unpickling traceback)."""
    return read_torch_file(path, described_as=f"--ckpt_path {path}", mmap=True)


def describe_module(qualified_name: str) -> str:
    """'bertzoo.tasks.ner.NerModule' -> "bertzoo.tasks.ner.NerModule (task 'ner')"."""
    from bertzoo.tasks.registry import TaskError, list_tasks
    commands = {"bertzoo.pretraining.module.PretrainingModule": "bertzoo pretrain"}
    try:
        for task in list_tasks():
            if task.spec is not None:
                module = task.spec.module
                commands.setdefault(f"{module.__module__}.{module.__qualname__}",
                                    f"task {task.name!r}")
    except TaskError:  # naming the task is a courtesy; a broken registry must not hide the error
        pass
    command = commands.get(qualified_name)
    return f"{qualified_name} ({command})" if command else qualified_name


def check_checkpoint_module(ckpt: dict, path: str, module_class) -> None:
    """--ckpt_path resumes (or evaluates) the module that wrote the checkpoint: another task's
    checkpoint is refused before Lightning merges its hyper-parameters into this task's."""
    from bertzoo.training import refuse_another_modules_checkpoint
    info = ckpt.get(CKPT_KEY) if isinstance(ckpt, dict) else None
    if module_class is not None:
        refuse_another_modules_checkpoint((info or {}).get("module"), module_class,
                                          f"--ckpt_path {path}", describe=describe_module)


def _parser_class(user_command: str = "fit"):
    from lightning.pytorch.cli import LightningArgumentParser

    from bertzoo.training.options import one_line_parser_error

    class BertzooArgumentParser(LightningArgumentParser):
        """Suggests the closest key for an unknown one (a typo in a recipe or an override)."""

        def error(self, message: str, ex: Exception | None = None):
            parser = getattr(ex, "subcommand_parser", None) or self
            message = suggest_closest_key(message, parser)
            if os.environ.get("BERTZOO_TRACEBACK"):
                # the traceback, down to the parser's own error (what jsonargparse raises
                # under JSONARGPARSE_DEBUG)
                import argparse
                raise argparse.ArgumentError(None, message) from ex
            if not self.exit_on_error:
                return super().error(message, ex)  # raised for the caller
            # One line, like bertzoo's own errors: the usage of every option of the model,
            # the data and the Trainer buries the message (`--help` prints it).
            print(f"bertzoo {user_command}: error: {one_line_parser_error(message)}",
                  file=sys.stderr)
            raise SystemExit(2)

    return BertzooArgumentParser


def _lightning_cli_class():
    from lightning.pytorch.cli import LightningCLI

    from bertzoo.training.options import PositiveInt
    from bertzoo.training.report import RunSummary

    class BertzooCLI(LightningCLI):
        """LightningCLI with bertzoo's links between the data module and the model."""

        def __init__(self, *args, links: tuple[str, ...] = (), task_name: str | None = None,
                     task_argument: bool = False, user_command: str | None = None,
                     run_folder: Path | None = None, accumulate_given: bool = False,
                     **kwargs):
            self.links = links
            self.accumulate_given = accumulate_given
            self.user_command = user_command or kwargs["args"][0]
            self.run_folder = run_folder
            self.task_name = task_name
            self.task_argument = task_argument or task_name is not None
            self.command = kwargs["args"][0]
            super().__init__(*args, parser_class=_parser_class(self.user_command), **kwargs)

        def parse_arguments(self, parser, args) -> None:
            super().parse_arguments(parser, args)
            # Next, Lightning reads a --ckpt_path checkpoint to merge its hyper-parameters into
            # the model's arguments: check first that it is readable and of this module.
            config = self.config[self.config.subcommand] if self.config.get("subcommand") \
                else self.config
            ckpt_path = config.get("ckpt_path")
            if ckpt_path and Path(ckpt_path).is_file():
                model_class = self.model_class
                if self.subclass_mode_model:
                    model_class = resolve_class(config.model.get("class_path")
                                                if config.get("model") else None)
                check_checkpoint_module(checkpoint_for_cli(ckpt_path), ckpt_path, model_class)

        def subcommands(self) -> dict[str, set[str]]:
            # Only the subcommand being run: building the parser of each (model, data and
            # Trainer signatures, four times) costs seconds that nobody uses.
            return {self.command: LightningCLI.subcommands()[self.command]}

        def add_arguments_to_parser(self, parser) -> None:
            if self.task_argument:
                # Read by bertzoo before parsing (it picks the classes); declared so that a
                # recipe may say `task: NAME` and `--help` lists it.
                parser.add_argument("--task", type=str | None, default=self.task_name,
                                    help="Registered task name (see `bertzoo tasks`); a recipe "
                                         "may name it instead with `task: NAME`.")
            parser.add_argument(
                "--global_batch_size", type=PositiveInt | None, default=None,
                help="Sequences per optimizer step over all processes: data.batch_size x "
                     "trainer.devices x trainer.num_nodes x trainer.accumulate_grad_batches. "
                     "When set, training derives trainer.accumulate_grad_batches from it for "
                     "the devices it runs on (leave that out, or give the same value); a "
                     "global batch that is not a multiple of data.batch_size x devices x "
                     "nodes is refused before anything is read. Read by fit and pretrain; "
                     "validate, test and predict accept it (a recipe has one) and ignore it.")
            for name in self.links:
                parser.link_arguments(f"data.{name}", f"model.init_args.{name}"
                                      if self.subclass_mode_model else f"model.{name}",
                                      apply_on="instantiate")
            if not self.subclass_mode_data:
                for name in self.datamodule_class.model_settings:
                    parser.link_arguments(f"model.{name}", f"data.{name}", apply_on="parse")

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            self._refuse_nulls(config)
            if self.run_folder is not None:  # the arguments are good: the run starts
                print(f"bertzoo {self.user_command}: run folder {self.run_folder}", flush=True)
            fill_from_checkpoint(config, self.subclass_mode_model)
            # Lightning refuses a progress bar or checkpoint callback when the trainer switches
            # them off; bertzoo's defaults step aside (its model summary too).
            from lightning.pytorch.callbacks import Checkpoint, ModelSummary, ProgressBar
            switched_off = tuple(kind for key, kind in (
                ("enable_progress_bar", ProgressBar), ("enable_checkpointing", Checkpoint),
                ("enable_model_summary", ModelSummary)) if config.trainer.get(key) is False)
            if switched_off:
                self.trainer_defaults["callbacks"] = [
                    c for c in self.trainer_defaults.get("callbacks", [])
                    if not isinstance(c, switched_off)]

        def _refuse_nulls(self, config) -> None:
            from bertzoo.training.options import refuse_null_values
            sections = {"trainer": (self.trainer_class, config.get("trainer")),
                        "model": (self.model_class, config.get("model")),
                        "data": (self.datamodule_class, config.get("data"))}
            for name, (cls, values) in sections.items():
                subclass = (self.subclass_mode_model if name == "model" else
                            self.subclass_mode_data if name == "data" else False)
                if subclass and values is not None:
                    cls = resolve_class(values.get("class_path"))
                    values = values.get("init_args")
                if cls is not None and values is not None:
                    refuse_null_values(name, cls, dict(values.items(nested=False))
                                       if hasattr(values, "items") else {})

        def instantiate_trainer(self, **kwargs):
            try:
                return super().instantiate_trainer(**kwargs)
            except ModuleNotFoundError as err:
                # A Trainer setting that needs a package this machine lacks (an accelerator's
                # or a strategy's): Lightning raises while checking its requirements.
                raise ConfigError(f"trainer: {err}") from err

        # The rules between options, once everything is built and before any data is read.
        def _check(self) -> None:
            from bertzoo.training.checks import check_run
            check_run(self.model, self.datamodule, self.trainer, stage=self.subcommand)

        before_validate = before_test = before_predict = _check

        def before_fit(self) -> None:
            from bertzoo.training.checks import apply_global_batch
            config = self.config[self.subcommand]
            derived = apply_global_batch(config.get("global_batch_size"), self.datamodule,
                                         self.trainer, self.accumulate_given)
            if derived is not None:  # the run's config.yaml says what the run did
                config.trainer.accumulate_grad_batches = derived
            self._check()

        def after_fit(self) -> None:
            summary = next((c for c in self.trainer.callbacks if isinstance(c, RunSummary)),
                           None)
            if summary is not None:
                summary.show()

    return BertzooCLI


def _init_args(section, subclass_mode: bool):
    return section.init_args if subclass_mode and "init_args" in section else section


def fill_from_checkpoint(config, subclass_mode: bool = False) -> None:
    """Apply bertzoo's defaults that depend on other values: `data.tokenizer` from the backbone
    or the checkpoint, and a model restored from `--ckpt_path` built from that checkpoint's
    stored config (so its original backbone folder need not exist)."""
    model = _init_args(config.model, subclass_mode)
    data = _init_args(config.data, subclass_mode) if config.get("data") else None
    ckpt_path = config.get("ckpt_path")
    if ckpt_path and Path(ckpt_path).is_file() and "backbone" in model:
        ckpt = checkpoint_for_cli(ckpt_path)
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
                      subclass_mode: bool = False, task_argument: bool = False,
                      user_command: str | None = None):
    """Run one LightningCLI subcommand with bertzoo's Trainer defaults and run folder."""
    user_command = user_command or command
    for _, path in _config_paths(args):
        _read_yaml(path)  # a damaged recipe named before the parser meets it
    original_args, args = list(args), list(args)
    resumed_version = None
    if "--ckpt_path" in args or any(a.startswith("--ckpt_path=") for a in args):
        value_at = next(i for i, a in enumerate(args) if a.startswith("--ckpt_path"))
        value = args[value_at].split("=", 1)[1] if "=" in args[value_at] else args[value_at + 1]
        if value == "last":
            path, last_version = latest_checkpoint(RUNS_DIR, run_name)
            if command == "fit":  # resuming continues in that run's folder
                resumed_version = last_version
            if "=" in args[value_at]:
                args[value_at] = f"--ckpt_path={path}"
            else:
                args[value_at + 1] = str(path)
    # Set by the first process of a DDP run for the workers Lightning starts: same folder.
    inherited_version = os.environ.get("BERTZOO_RUN_VERSION")
    reserved = None
    if inherited_version is not None:
        version = int(inherited_version)
    elif resumed_version is not None:
        version = resumed_version
    elif any(a in ("-h", "--help") or a.startswith("--print_config") for a in args):
        version = next_version(RUNS_DIR, run_name)  # nothing will be written
    else:
        version = reserved = reserve_version(RUNS_DIR, run_name)
    os.environ["BERTZOO_RUN_VERSION"] = str(version)  # DDP workers re-run us: same folder
    run_folder = Path(RUNS_DIR) / run_name / f"version_{version}" \
        if reserved is not None or resumed_version is not None else None
    extra_callbacks = ()
    if command == "predict":
        from bertzoo.tasks.base import PredictionWriter
        extra_callbacks = (PredictionWriter(),)
    summary = None
    if command == "fit":  # on every process (it asks the run folder of all); rank 0 prints
        from bertzoo.training.report import RunSummary
        summary = RunSummary(user_command, next_commands=lambda best, last, run_dir, data:
                             next_commands(user_command, task_name or run_name, original_args,
                                           best, run_dir, data))
    cli_class = _lightning_cli_class()
    finished = False
    try:
        # LightningCLI warns when given `args` while sys.argv holds arguments: bertzoo passes
        # the arguments it has read (without --task) on purpose.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        result = cli_class(
            module_class, datamodule_class, args=[command, *args], links=links,
            task_name=task_name, task_argument=task_argument, user_command=user_command,
            run_folder=run_folder,
            accumulate_given=option_given(args, "trainer", "accumulate_grad_batches"),
            subclass_mode_model=subclass_mode, subclass_mode_data=subclass_mode,
            trainer_defaults=trainer_defaults(run_name, version, monitor, monitor_mode,
                                              extra_callbacks, summary),
            save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
            parser_kwargs={"default_env": False},
        )
        finished = True
        return result
    finally:
        if inherited_version is None:  # the next run in this process gets its own folder
            os.environ.pop("BERTZOO_RUN_VERSION", None)
        folder = Path(RUNS_DIR) / run_name / f"version_{reserved}"
        if reserved is not None and folder.is_dir() and not finished \
                and not any(folder.glob("checkpoints/*.ckpt")):
            # The run stopped before its first checkpoint (bad input, most often): what it
            # wrote (config.yaml, an empty metrics.csv) goes, and the number is free again.
            shutil.rmtree(folder, ignore_errors=True)


# Options that neither `test` nor `predict` reads (training's, and validation's limit): left
# out of the commands a summary suggests.
TRAINING_ONLY = ("--ckpt_path", "--trainer.max_epochs", "--trainer.max_steps",
                 "--trainer.min_epochs", "--trainer.min_steps", "--trainer.max_time",
                 "--trainer.val_check_interval", "--trainer.check_val_every_n_epoch",
                 "--trainer.num_sanity_val_steps", "--trainer.limit_train_batches",
                 "--trainer.limit_val_batches", "--trainer.accumulate_grad_batches",
                 "--trainer.gradient_clip_val", "--trainer.log_every_n_steps",
                 "--global_batch_size")


def next_commands(user_command: str, task: str, args: list[str], checkpoint: str,
                  run_dir: Path | None, datamodule) -> list[list[str]]:
    """What to run after a `fit` (or `pretrain`), with this run's paths filled in: evaluate
    and predict with the same recipe and overrides from `checkpoint`, export it, serve it."""
    export_dir = str((run_dir or Path(checkpoint).parent.parent) / "export")
    later = [["bertzoo", "export", checkpoint, export_dir]]
    if "serve" in COMMANDS:
        later.append(["bertzoo", "serve", checkpoint])
    if user_command == "pretrain":
        return [*later, ["bertzoo", "fit", "--task", "classification", "--model.backbone",
                         checkpoint, "--data.train_file", "TRAIN.tsv"]]
    kept, skip = [], False
    for arg in args:  # the same recipe and overrides, without what only training reads
        if skip:
            skip = False
        elif arg in TRAINING_ONLY:
            skip = True
        elif arg.split("=", 1)[0] not in TRAINING_ONLY:
            kept.append(arg)
    if "--task" not in kept and not any(a.startswith("--task=") for a in kept):
        kept = ["--task", task, *kept]
    files = getattr(datamodule, "files", {}) or {}
    held_out = files.get("validation") or files.get("test")
    commands = []
    for verb, split in (("test", "test"), ("predict", "predict")):
        extra = []
        if not files.get(split) and held_out:
            extra = [f"--data.{split}_file={held_out}"]
        commands.append(["bertzoo", verb, *kept, *extra, f"--ckpt_path={checkpoint}"])
    return [*commands, *later]


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
    parser.add_argument("--format", choices=("hf", "onnx"), default="hf",
                        help="hf: a Hugging Face folder (default); onnx: the task model as an "
                             "ONNX graph with its tokenizer (pip install 'bertzoo[onnx]')")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="with --format onnx: int8 dynamic quantization (onnxruntime)")
    ns = parser.parse_args(args)
    if ns.format == "onnx":
        return export_onnx_command(ns)
    written = export(ns.checkpoint, ns.out_dir, encoder_only=ns.encoder_only)
    print(f"exported {ns.checkpoint} -> {written}")
    return 0


def export_onnx_command(ns) -> int:
    """`bertzoo export CKPT OUT --format onnx [--quantize int8]`."""
    try:
        from bertzoo.onnx_export import export_onnx
        written, difference = export_onnx(ns.checkpoint, ns.out_dir, quantize=ns.quantize)
    except ImportError as err:
        print(f"bertzoo export: error: {err}", file=sys.stderr)
        return 1
    print(f"exported {ns.checkpoint} -> {written / 'model.onnx'} (max |difference| from "
          f"PyTorch on the task's example inputs: {difference:.1e})")
    return 0


def cmd_serve(args: list[str]) -> int:
    """bertzoo serve PATH: a trained task model behind HTTP (POST /predict, GET /health)."""
    import argparse

    from bertzoo.training.options import NonNegativeFloat, Port, PositiveInt, argparse_type
    parser = argparse.ArgumentParser(prog="bertzoo serve", description=cmd_serve.__doc__)
    parser.add_argument("path", help="a task .ckpt, a run folder, or a `bertzoo export` folder "
                                     "(Hugging Face or ONNX) of a task model")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=argparse_type(Port), default=8000,
                        help="port to listen on (int in [1024, 65535])")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--max-batch-size", type=argparse_type(PositiveInt), default=8,
                        help="requests batched together on the server (int >= 1; 1: no "
                             "batching)")
    parser.add_argument("--batch-timeout", type=argparse_type(NonNegativeFloat), default=0.01,
                        help="seconds a batch waits for more requests (float >= 0)")
    parser.add_argument("--workers", type=argparse_type(PositiveInt), default=1,
                        help="model processes, each with its own copy (int >= 1)")
    parser.add_argument("--batch-size", type=argparse_type(PositiveInt), default=32,
                        help="inputs per forward pass (int >= 1)")
    ns = parser.parse_args(args)
    try:
        from bertzoo.serving import serve
    except ImportError as err:
        print(f"bertzoo serve: error: {err}", file=sys.stderr)
        return 1
    serve(ns.path, host=ns.host, port=ns.port, device=ns.device,
          max_batch_size=ns.max_batch_size, batch_timeout=ns.batch_timeout,
          workers=ns.workers, batch_size=ns.batch_size)
    return 0


def cmd_pretrain(args: list[str]):
    from bertzoo.pretraining import PretrainingDataModule, PretrainingModule
    return run_lightning_cli("fit", args, PretrainingModule, PretrainingDataModule,
                             run_name="pretrain", monitor="val/mlm_loss", monitor_mode="min",
                             links=PretrainingDataModule.model_links, user_command="pretrain")


def _config_paths(args: list[str]) -> list[tuple[int, Path]]:
    """(position, path) of every `--config` given on the command line."""
    found = []
    for i, arg in enumerate(args):
        value = args[i + 1] if arg == "--config" and i + 1 < len(args) else (
            arg.split("=", 1)[1] if arg.startswith("--config=") else None)
        if value:
            found.append((i, Path(value)))
    return found


def _read_yaml(path: Path) -> dict:
    """A --config file's top-level mapping. A file that is empty, not UTF-8 text, not YAML or
    not a mapping is refused naming the file (and the line): the parser's own errors name
    neither, or end in a traceback."""
    import yaml

    from bertzoo.files import check_text_file
    if not path.is_file():
        return {}  # jsonargparse reports a missing --config file itself
    check_text_file(path, expected="a YAML recipe (UTF-8 text)")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML ({problem}); expected a recipe: "
                          f"a YAML mapping of model, data and trainer options") from err
    if not isinstance(loaded, dict):
        held = "nothing" if loaded is None else f"a YAML {type(loaded).__name__}"
        raise ConfigError(f"{path} holds {held}, not a recipe: expected a YAML mapping of "
                          f"model, data and trainer options")
    return loaded


def task_from_args(args: list[str]) -> tuple[str | None, list[str]]:
    """The task name from `--task NAME` on the command line or `task:` in a --config YAML
    (the last one naming a task), and the arguments without `--task`."""
    from bertzoo.tasks.registry import TaskError
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
    recipe_task, recipe = None, None
    for _, path in _config_paths(rest):
        task = _read_yaml(path).get("task")
        if task:
            recipe_task, recipe = str(task), path
    if name is not None and recipe_task is not None and name != recipe_task:
        raise TaskError(f"--task {name} conflicts with {recipe}, a recipe for task "
                        f"{recipe_task!r}")
    return name or recipe_task, rest


def class_path_from_args(args: list[str], key: str) -> str | None:
    """The class named for `key` ("model" or "data") by the --config files and the command
    line, in the order jsonargparse applies them (a later one wins)."""
    import yaml
    configs = dict(_config_paths(args))
    found = None
    for i, arg in enumerate(args):
        value = None
        if i in configs:
            section = _read_yaml(configs[i]).get(key)
            value = section.get("class_path") if isinstance(section, dict) else section
        elif arg in (f"--{key}", f"--{key}.class_path") and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith((f"--{key}=", f"--{key}.class_path=")):
            value = arg.split("=", 1)[1]
        if isinstance(value, str) and value.lstrip().startswith("{"):
            loaded = yaml.safe_load(value)  # --model '{"class_path": ..., "init_args": ...}'
            value = loaded.get("class_path") if isinstance(loaded, dict) else None
        if isinstance(value, str) and value:
            found = value
    return found


def option_given(args: list[str], section: str, key: str) -> bool:
    """Whether `section.key` is set by the command line or a --config file, rather than left
    at its default (the parsed value alone cannot tell a default from a value typed again)."""
    import yaml
    configs = dict(_config_paths(args))
    flag, group = f"--{section}.{key}", f"--{section}"
    for i, arg in enumerate(args):
        value = None
        if arg == flag or arg.startswith(f"{flag}="):
            return True
        if i in configs:
            value = _read_yaml(configs[i]).get(section)
        elif arg == group and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(f"{group}="):
            value = arg.split("=", 1)[1]
        if isinstance(value, str):  # --trainer FILE or --trainer '{...}'
            try:
                value = _read_yaml(Path(value)) if Path(value).is_file() else \
                    yaml.safe_load(value)
            except (OSError, yaml.YAMLError):
                value = None  # not a file nor YAML: the parser says so
        if isinstance(value, dict) and key in value:
            return True
    return False


def resolve_class(path: str | None):
    """The class a `class_path` names: a dotted path, or a short name of a registered task's
    class. None when it cannot be found (jsonargparse then reports it)."""
    import importlib

    from bertzoo.tasks.registry import list_tasks
    if not path:
        return None
    if "." in path:
        module_name, _, name = path.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError):
            return None
    for task in list_tasks():
        for cls in (task.spec.module, task.spec.datamodule) if task.spec else ():
            if cls.__name__ == path:
                return cls
    return None


def check_links(links: tuple[str, ...], module_class, datamodule_class) -> None:
    """jsonargparse silently drops a link whose target the model lacks; make it an error."""
    from bertzoo.tasks.registry import TaskError, init_parameters
    accepted = init_parameters(module_class)
    for name in links:
        if not (hasattr(datamodule_class, name) or name in init_parameters(datamodule_class)):
            raise TaskError(f"{datamodule_class.__qualname__}.model_links names {name!r}, "
                            f"which the data module does not have")
        if name not in accepted:
            raise TaskError(f"{datamodule_class.__qualname__} provides {name!r} for the model, "
                            f"but {module_class.__qualname__} takes no {name!r} argument")


def cmd_task(command: str, args: list[str]):
    from bertzoo.tasks.base import TaskDataModule, TaskModule
    from bertzoo.tasks.registry import get_task, list_tasks
    name, rest = task_from_args(args)
    if name is not None:
        spec = get_task(name)
        links = tuple(spec.datamodule.model_links)
        check_links(links, spec.module, spec.datamodule)
        return run_lightning_cli(command, rest, spec.module, spec.datamodule, run_name=name,
                                 monitor=spec.monitor, monitor_mode=spec.monitor_mode,
                                 links=links, task_name=name)
    # No task name: `model` and `data` are given by class_path (subclass mode). Loading every
    # task first lets jsonargparse resolve their short class names too.
    list_tasks()
    module_class = resolve_class(class_path_from_args(rest, "model"))
    datamodule_class = resolve_class(class_path_from_args(rest, "data"))
    spec = next((t.spec for t in list_tasks() if t.spec and module_class
                 and issubclass(module_class, t.spec.module)), None)
    datamodule_class = datamodule_class or (spec.datamodule if spec else None)
    links: tuple[str, ...] = ("vocab_size",)
    if module_class is not None and datamodule_class is not None:
        links = tuple(datamodule_class.model_links)
        check_links(links, module_class, datamodule_class)
    return run_lightning_cli(command, rest, TaskModule, TaskDataModule,
                             run_name=spec.name if spec else "task",
                             monitor=spec.monitor if spec else "val/loss",
                             monitor_mode=spec.monitor_mode if spec else "min",
                             subclass_mode=True, links=links, task_argument=True)


def cmd_bench(args: list[str]) -> int:
    from bertzoo.bench import main as bench_main
    return bench_main(args)


def cmd_glue(args: list[str]) -> int:
    from bertzoo.glue import main as glue_main
    return glue_main(args, run_task=cmd_task)


def cmd_plot(args: list[str]) -> int:
    from bertzoo.plot import main as plot_main
    return plot_main(args)


COMMANDS = {
    "pretrain": cmd_pretrain,
    "plot": cmd_plot,
    "bench": cmd_bench,
    "tasks": cmd_tasks,
    "export": cmd_export,
    "recipes": recipe_catalog.main,
    "serve": cmd_serve,
    "glue": cmd_glue,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenize before workers fork
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(f"usage:\n{USAGE}")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS and command not in TASK_COMMANDS:
        print(f"bertzoo: unknown command {command!r}\nusage:\n{USAGE}", file=sys.stderr)
        return 2
    if command in TASK_COMMANDS or command == "pretrain":
        from bertzoo.training.report import quiet_dependency_noise  # loads Lightning
        quiet_dependency_noise()
    try:
        if command in TASK_COMMANDS:
            cmd_task(command, rest)
            return 0
        result = COMMANDS[command](rest)
        return result if isinstance(result, int) else 0
    except interruptions() as interrupted:
        print(f"bertzoo {command}: stopped: {interrupted}", file=sys.stderr)
        return 130  # the shell's status for a run ended by Ctrl-C
    except user_errors() as err:
        if os.environ.get("BERTZOO_TRACEBACK"):
            raise
        # Bad input, explained by the message itself: no traceback (BERTZOO_TRACEBACK=1 shows it).
        print(f"bertzoo {command}: error: {one_line(err)}", file=sys.stderr)
        return 1


def one_line(err: BaseException) -> str:
    """A user error's message on one line; Lightning's refusals say they are about the
    Trainer's settings."""
    text = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
    if lightning is not None and isinstance(err, lightning.MisconfigurationException):
        return f"trainer: {text}"
    return text


def interruptions() -> tuple[type[BaseException], ...]:
    """A run stopped on request (Ctrl-C, SIGTERM) after saving where it was."""
    training = sys.modules.get("bertzoo.training")  # not imported by `bertzoo tasks`, `plot`
    return (training.TrainingInterrupted,) if training else ()


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that report bad input (their message says what and where), not bugs."""
    from bertzoo.tasks.registry import TaskError
    errors: list[type[BaseException]] = [CheckpointError, ConfigError, TaskError,
                                         TokenizerError, InputFileError, FileNotFoundError]
    if "bertzoo.training" in sys.modules:
        errors.append(sys.modules["bertzoo.training"].NonFiniteLossError)
    if "bertzoo.tasks.base" in sys.modules:
        errors.append(sys.modules["bertzoo.tasks.base"].DataError)
    if "bertzoo.plot" in sys.modules:
        errors.append(sys.modules["bertzoo.plot"].PlotError)
    if "bertzoo.pretraining.corpus" in sys.modules:
        errors.append(sys.modules["bertzoo.pretraining.corpus"].CorpusError)
    if "lightning.fabric.utilities.exceptions" in sys.modules:
        # Lightning's error for Trainer settings it cannot honour (an accelerator the machine
        # lacks, callbacks that contradict a flag): the user's to fix, its message says how.
        errors.append(sys.modules["lightning.fabric.utilities.exceptions"]
                      .MisconfigurationException)
    return tuple(errors)


if __name__ == "__main__":
    sys.exit(main())
