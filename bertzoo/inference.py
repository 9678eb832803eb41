"""Use a trained model from Python: `bertzoo.load(path)` -> a `Predictor` for its task.

    predictor = bertzoo.load("runs/classification/version_0")     # or a .ckpt, an export
    predictor(["a gripping, funny film", "dull"])
    # [{'index': 0, 'sentence': 'a gripping, funny film', 'label': '1',
    #   'probabilities': {'0': 0.03, '1': 0.97}}, ...]

`path` is a task `.ckpt`, a run folder (its best checkpoint, else `last.ckpt`), a `bertzoo
export` folder of a task model, or a `bertzoo export --format onnx` folder (run with
onnxruntime). The task is found from the module that wrote the checkpoint; an export records
it in `bertzoo.json` (the TaskModule class, its hyper-parameters and the run's data
arguments).

Nothing here is task-specific. Each raw input becomes a row through the task's
`TaskSpec.inputs.to_row`; the rows then take the path `bertzoo predict` takes: the task's
data module preprocesses them (tokenizing, windows), its collate pads each batch to its
longest row, batches are grouped by length, the model runs under `torch.inference_mode`, and
the task's `decode` and `finalize_predictions` turn outputs into rows, which come back in
input order. So `predictor(inputs)` returns the rows `bertzoo predict` writes for the same
data.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from bertzoo.checkpoint import CheckpointError, load_into, load_state, read_weights
from bertzoo.config import BertConfig
from bertzoo.export import (CKPT_KEY, RUN_ONLY_DATA, SPLIT_PREFIXES, TASK_RECORD,
                            run_data_arguments)
from bertzoo.files import read_lightning_checkpoint
from bertzoo.tasks.inputs import InputError
from bertzoo.tasks.registry import TaskError, TaskSpec, init_parameters, list_tasks

ONNX_MODEL = "model.onnx"


class _PredictionRun:
    """What a task's `finalize_predictions` may read from `self.trainer` as under `bertzoo
    predict` (QA reads its questions' contexts from the data module): one process."""

    world_size = 1
    global_rank = 0
    is_global_zero = True

    def __init__(self, datamodule):
        self.datamodule = datamodule


class Predictor:
    """A trained task model that answers raw inputs; built by `bertzoo.load`.

    `predictor(inputs)` -> one dict per input, in input order. `predictor.task` is the task's
    name, `predictor.inputs` its raw-input schema, `predictor.data_args` the data module
    arguments its rows are read with.
    """

    def __init__(self, spec: TaskSpec, module, tokenizer, data_args: dict[str, Any],
                 device: torch.device, batch_size: int, source: str,
                 forward: Callable[[dict[str, Any]], Any] | None = None):
        if spec.inputs is None:
            raise TaskError(f"task {spec.name!r} declares no raw inputs (TaskSpec.inputs), so it "
                            f"cannot be loaded for inference; use `bertzoo predict`")
        self.spec = spec
        self.module = module
        self.tokenizer = tokenizer
        self.data_args = data_args
        self.device = device
        self.batch_size = batch_size
        self.source = source
        self.runtime = "pytorch" if forward is None else "onnxruntime"
        self._forward = forward or module
        self._template = None  # the last data module: its loaded tokenizers are reused
        self._lock = threading.Lock()

    @property
    def task(self) -> str:
        return self.spec.name

    @property
    def inputs(self):
        return self.spec.inputs

    def __repr__(self) -> str:
        return (f"Predictor(task={self.task!r}, source={self.source!r}, runtime={self.runtime}, "
                f"device={self.device})")

    # -- raw inputs -> rows
    def rows(self, inputs: list[Any]) -> list[dict[str, Any]]:
        """The data-module rows of raw inputs; an InputError names the bad one ("inputs[2].text:
        expected a string, found a number 5")."""
        if not isinstance(inputs, (list, tuple)):
            raise InputError("inputs", f"a list of inputs, each {self.inputs.description}",
                             inputs)
        rows = []
        for position, value in enumerate(inputs):
            try:
                rows.append(self.inputs.to_row(value, self.data_args, position))
            except InputError as err:
                raise err.at(f"inputs[{position}]") from None
        return rows

    def __call__(self, inputs: list[Any]) -> list[dict[str, Any]]:
        rows = self.rows(inputs)
        results: list[dict[str, Any] | None] = [None] * len(rows)
        # Rows of one shape (a text vs. pre-split words) go through the data module together.
        groups: dict[tuple[str, ...], list[int]] = {}
        for position, row in enumerate(rows):
            groups.setdefault(tuple(sorted(row)), []).append(position)
        with self._lock, quiet_datasets():
            for positions in groups.values():
                answered = self._run([rows[p] for p in positions])
                if len(answered) != len(positions):
                    raise RuntimeError(f"task {self.task!r} gave {len(answered)} rows for "
                                       f"{len(positions)} inputs")
                for position, row in zip(positions, answered):
                    if "index" in row:
                        row["index"] = position
                    results[position] = row
        return results  # type: ignore[return-value]

    # -- the task's own path, as `bertzoo predict` takes it
    def datamodule(self, rows: list[dict[str, Any]]):
        """A fresh data module of the task whose predict split is `rows`."""
        datamodule = self.spec.datamodule(**self.data_args)
        datamodule.use_rows(rows, "predict",
                            tokenizer=self._template if self._template is not None
                            else self.tokenizer)
        return datamodule

    def batches(self, rows: list[dict[str, Any]]) -> tuple[Any, Iterator[dict[str, Any]]]:
        """The data module of `rows` and its prediction batches (length-grouped, padded to each
        batch's longest row) on this predictor's device."""
        datamodule = self.datamodule(rows)
        datamodule.setup("predict")
        self._template = datamodule

        def on_device():
            for batch in datamodule.predict_dataloader():
                yield {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                       for k, v in batch.items()}

        return datamodule, on_device()

    def _run(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        datamodule, batches = self.batches(rows)
        decoded: list[dict[str, Any]] = []
        with torch.inference_mode():
            for batch in batches:
                decoded += self.module.decode(self._forward(batch), batch)
        self.module.trainer = _PredictionRun(datamodule)
        try:
            return self.module.finalize_predictions(decoded)
        finally:
            self.module.trainer = None


@contextlib.contextmanager
def quiet_datasets():
    """No `datasets` progress bar per call (a server would print one per request)."""
    import datasets
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


# ------------------------------------------------------------------------------- loading
def load(path: str | os.PathLike, device: str = "cpu", batch_size: int = 32,
         data: dict[str, Any] | None = None) -> Predictor:
    """A `Predictor` for the trained task model at `path`.

    Args:
        path: A task `.ckpt`; a run folder (runs/NAME/version_N: its best checkpoint, else
            last.ckpt); a `bertzoo export` folder of a task model; or a `bertzoo export
            --format onnx` folder (needs `pip install 'bertzoo[onnx]'`).
        device: "cpu", "cuda" (or "cuda:1", ...), or "auto" (a GPU when there is one).
        batch_size: Rows per forward pass.
        data: Data module arguments that change how inputs are read, e.g.
            {"max_length": 256} (default: those of the run the model came from, when its
            config.yaml is there or the export recorded them, else the task's defaults).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                          else "cpu" if device == "auto" else device)
    folder = Path(path).expanduser()
    if folder.is_dir() and (folder / "checkpoints").is_dir():
        folder = best_checkpoint(folder)
    if folder.is_file():
        return _load_checkpoint(folder, device, batch_size, data)
    if folder.is_dir() and (folder / TASK_RECORD).is_file():
        if (folder / ONNX_MODEL).is_file():
            return _load_onnx(folder, device, batch_size, data)
        return _load_export(folder, device, batch_size, data)
    if folder.is_dir():
        raise CheckpointError(f"{folder} is not a trained task model: expected a run folder "
                              f"(with checkpoints/), or a `bertzoo export` folder of a task "
                              f"model (with {TASK_RECORD}; an encoder-only or pretraining "
                              f"export has no task to run)")
    raise FileNotFoundError(f"no such file or folder: {folder} (expected a task .ckpt, a run "
                            f"folder or a `bertzoo export` folder)")


def best_checkpoint(run: Path) -> Path:
    """The best checkpoint a run kept (best-*.ckpt, the newest if several), else last.ckpt."""
    best = sorted((run / "checkpoints").glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    if (run / "checkpoints" / "last.ckpt").is_file():
        return run / "checkpoints" / "last.ckpt"
    raise FileNotFoundError(f"{run}/checkpoints holds no best-*.ckpt or last.ckpt")


def spec_for_module(module_path: str | None, source: str) -> TaskSpec:
    """The registered task whose TaskModule class is `module_path` ("pkg.mod.Class")."""
    tasks = [t.spec for t in list_tasks() if t.spec is not None]
    for spec in tasks:
        if f"{spec.module.__module__}.{spec.module.__qualname__}" == module_path:
            return spec
    raise TaskError(f"{source} was written by {module_path or 'an unknown module'}, which is no "
                    f"registered task's module (tasks: {', '.join(s.name for s in tasks)}); "
                    f"install the plugin that provides it")


def data_arguments(spec: TaskSpec, hparams: dict[str, Any], recorded: dict[str, Any],
                   overrides: dict[str, Any] | None, batch_size: int) -> dict[str, Any]:
    """The data module arguments rows are read with: those the model was trained with, then
    the values the data module links to the model (labels, problem type) from the model's
    hyper-parameters, as `bertzoo predict --ckpt_path` fills them, then `overrides`, then what
    the task's raw inputs need."""
    accepted = init_parameters(spec.datamodule)
    args = {k: v for k, v in recorded.items() if k in accepted and k not in RUN_ONLY_DATA
            and not k.startswith(SPLIT_PREFIXES)}
    for name in spec.datamodule.model_links:
        if name in accepted and name in hparams and name not in args:
            args[name] = hparams[name]
    if "labels" in accepted and not args.get("labels") and hparams.get("label_names"):
        args["labels"] = list(hparams["label_names"])
    args.update(overrides or {})
    args.update(spec.inputs.data if spec.inputs is not None else {})
    args.update(batch_size=batch_size, eval_batch_size=batch_size, num_workers=0)
    return args


def _load_checkpoint(path: Path, device, batch_size: int, data) -> Predictor:
    ckpt = read_lightning_checkpoint(path)
    info = ckpt[CKPT_KEY]
    spec = spec_for_module(info.get("module"), str(path))
    hparams = dict(ckpt.get("hyper_parameters") or {})
    del ckpt
    # Built from the config the checkpoint carries: the original backbone need not exist.
    module = spec.module.load_from_checkpoint(path, map_location="cpu", weights_only=True,
                                              backbone=None, config=info["config"])
    if module.tokenizer is None:
        raise CheckpointError(f"{path} carries no tokenizer")
    args = data_arguments(spec, hparams, run_data_arguments(path), data, batch_size)
    return Predictor(spec, module.to(device).eval(), module.tokenizer, args, device,
                     batch_size, str(path))


def read_record(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / TASK_RECORD).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder / TASK_RECORD} is not readable JSON ({err})") from err


def _module_from_record(spec: TaskSpec, record: dict[str, Any], config: BertConfig):
    hparams = {**record["hyper_parameters"], "backbone": None, "config": config.to_dict()}
    accepted = init_parameters(spec.module)
    return spec.module(**{k: v for k, v in hparams.items() if k in accepted})


def _load_export(folder: Path, device, batch_size: int, data) -> Predictor:
    from bertzoo.tokenizer import load_tokenizer
    record = read_record(folder)
    spec = spec_for_module(record.get("module"), str(folder))
    config, state, source = load_state(folder)
    module = _module_from_record(spec, record, config)
    load_into(module.encoder, state, source, optional=("pooler.",))
    head_file = folder / record["head_file"]
    tensors = read_weights(head_file)
    own = {k for k in module.state_dict() if not k.startswith("encoder.")}
    missing = sorted(own - set(record["head"].values()))
    absent = [name for name in record["head"] if name not in tensors]
    if missing or absent:
        raise CheckpointError(f"{folder}: the task head is incomplete (not recorded: "
                              f"{missing}; not in {head_file.name}: {absent})")
    module.load_state_dict({ours: tensors[name] for name, ours in record["head"].items()},
                           strict=False)
    args = data_arguments(spec, record["hyper_parameters"], record.get("data") or {}, data,
                          batch_size)
    tokenizer = load_tokenizer(folder)
    module.tokenizer = tokenizer
    return Predictor(spec, module.to(device).eval(), tokenizer, args, device, batch_size,
                     str(folder))


def _load_onnx(folder: Path, device, batch_size: int, data) -> Predictor:
    from bertzoo.tokenizer import load_tokenizer
    ort = require_extra("onnxruntime", "onnx")
    record = read_record(folder)
    spec = spec_for_module(record.get("module"), str(folder))
    # The module only decodes and finalizes here: no weights, so built on the meta device.
    with torch.device("meta"):
        module = _module_from_record(spec, record, BertConfig.from_dict(record["config"]))
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda"
                 else ["CPUExecutionProvider"])
    session = ort.InferenceSession(str(folder / ONNX_MODEL), providers=providers)
    graph = record["onnx"]
    forward = OnnxForward(session, graph["inputs"], graph["outputs"], graph["structure"])
    args = data_arguments(spec, record["hyper_parameters"], record.get("data") or {}, data,
                          batch_size)
    tokenizer = load_tokenizer(folder)
    return Predictor(spec, module.eval(), tokenizer, args, torch.device("cpu"), batch_size,
                     str(folder), forward=forward)


class OnnxForward:
    """The task module's forward, run by onnxruntime: a batch's tensors in, the outputs back
    in the structure the module's forward returns (a tensor, or a dict of tensors)."""

    def __init__(self, session, inputs: list[str], outputs: list[str], structure: str):
        self.session = session
        self.inputs = inputs
        self.outputs = outputs
        self.structure = structure

    def __call__(self, batch: dict[str, Any]):
        feed = {name: batch[name].cpu().numpy() for name in self.inputs}
        values = [torch.from_numpy(v) for v in self.session.run(self.outputs, feed)]
        if self.structure == "tensor":
            return values[0]
        return dict(zip(self.outputs, values))


def require_extra(module: str, extra: str):
    """Import an optional dependency, or say in one line which extra installs it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{module} is not installed: pip install 'bertzoo[{extra}]'") from None
