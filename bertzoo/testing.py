"""The test kit for bertzoo and for task plugins: the checks every registered task must pass,
a tiny backbone, and small synthetic text. Nothing here downloads anything.

`check_task(spec, folder)` runs, on the task's own `example_data` and a tiny random BERT, the
checks bertzoo's suite runs over every registered task (tests/test_registered_tasks.py calls
the same functions), so a plugin's CI runs exactly bertzoo's checks:

    # a plugin's tests/test_task.py
    from bertzoo.testing import check_task
    from my_plugin.task import TASK

    def test_bertzoo_checks(tmp_path):
        check_task(TASK, tmp_path)

The checks (`TASK_CHECKS`, each callable alone as `check(spec, folder, backbone)`):
    check_spec               the registry returns this spec under its name; it is valid;
                             `example_data` writes the files it names, with and without `like`
    check_forward_backward   a batch of the example data through the model: a finite scalar
                             loss, finite gradients that reach the word embeddings and every
                             parameter the task adds to the encoder
    check_fit_save_load_predict
                             through the command line: one `bertzoo fit` step with validation
                             (metrics.csv, the checkpoint monitor logged); its `last.ckpt`
                             read with `weights_only=True` (hyper-parameters must be plain
                             data) gives identical outputs and predictions; `bertzoo predict`
                             from the checkpoint alone writes one row per input
    check_help_documents_every_argument
                             `bertzoo fit --task NAME --help` shows every model and data
                             argument with a description (an `Args:` entry of its docstring)
    check_load_export_onnx   `bertzoo.load` of the checkpoint, the run folder, a `bertzoo
                             export` and an ONNX export answers the task's example inputs
                             (`TaskSpec.inputs`) with the rows `bertzoo predict` writes; the
                             ONNX graph equals PyTorch within 1e-4 and names its outputs as
                             Hugging Face does (needs bertzoo[onnx])

Failures raise AssertionError with a message naming the task, also under `python -O`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from bertzoo.cli import cmd_task, main
from bertzoo.config import BertConfig
from bertzoo.export import TASK_RECORD, export
from bertzoo.inference import load
from bertzoo.model import BertEncoder
from bertzoo.onnx_export import export_onnx
from bertzoo.synthetic import (ADJECTIVES, NAMES, NOUNS, PLACES, VERBS, documents, sentence,
                               sentences)
from bertzoo.tasks import TaskSpec, get_task
from bertzoo.tasks.registry import init_parameters
from bertzoo.tokenizer import train_tokenizer

__all__ = ["check_task", "TASK_CHECKS", "check_spec", "check_forward_backward",
           "check_fit_save_load_predict", "check_help_documents_every_argument",
           "build_task", "tiny_backbone", "tiny_config", "tiny_tokenizer", "write_bert_corpus",
           "documents", "sentence", "sentences", "NOUNS", "VERBS", "ADJECTIVES", "NAMES",
           "PLACES"]


# ---------------------------------------------------------------------------- tiny models
def write_bert_corpus(path: str | Path, docs: list[list[str]]) -> Path:
    """`docs` in google-research/bert's pretraining layout: a sentence per line, a blank line
    between documents (`format: bert`)."""
    path = Path(path)
    path.write_text("\n\n".join("\n".join(doc) for doc in docs) + "\n", encoding="utf-8")
    return path


def write_parquet_corpus(folder: str | Path, shards: int, documents_per_shard: int,
                         seed: int = 11) -> Path:
    """`shards` parquet files in `folder`, one generated document (a paragraph of 3-6
    sentences) per row in a `text` column: a streamed corpus as `data.dataset` reads it."""
    import datasets
    folder = Path(folder)
    docs = documents(shards * documents_per_shard, seed=seed, min_sentences=3, max_sentences=6)
    for shard in range(shards):
        rows = docs[shard * documents_per_shard:(shard + 1) * documents_per_shard]
        datasets.Dataset.from_dict({"text": [" ".join(d) for d in rows]}).to_parquet(
            str(folder / f"part-{shard:02d}.parquet"))
    return folder


def tiny_config(vocab_size: int, **overrides) -> BertConfig:
    """A BERT small enough for a unit test: 2 layers of width 32."""
    values = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    values.update(overrides)
    return BertConfig(**values)


def tiny_tokenizer(vocab_size: int = 200, seed: int = 0):
    """A WordPiece vocabulary trained on the synthetic sentences."""
    return train_tokenizer(texts=sentences(2000, seed), vocab_size=vocab_size, min_frequency=1)


def tiny_backbone(directory: str | Path, seed: int = 0, **config_overrides) -> Path:
    """Write a random tiny BERT with its tokenizer as a Hugging Face folder; return the path."""
    tokenizer = tiny_tokenizer(seed=seed)
    torch.manual_seed(seed)
    encoder = BertEncoder(tiny_config(tokenizer.get_vocab_size(), **config_overrides))
    encoder.save_pretrained(directory, tokenizer=tokenizer)
    return Path(directory)


# ---------------------------------------------------------------------------- the task checks
def expect(condition: Any, message: str) -> None:
    """`assert`, kept under `python -O`."""
    if not condition:
        raise AssertionError(message)


@contextlib.contextmanager
def working_directory(path: str | Path) -> Iterator[None]:
    """Run a block in `path` (runs land in ./runs/<task>/version_<n>)."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def build_task(spec: TaskSpec, backbone: str | Path, folder: str | Path, **data_overrides):
    """(example data arguments, data module, model) as the CLI builds them: the data module
    reads `example_data` with the backbone's tokenizer, the model takes its `model_links`."""
    data_args = spec.example_data(Path(folder))
    datamodule = spec.datamodule(tokenizer=str(backbone),
                                 **{"batch_size": 4, **data_args, **data_overrides})
    model = spec.module(backbone=str(backbone), **datamodule.model_arguments())
    return data_args, datamodule, model


def check_spec(spec: TaskSpec, folder: Path, backbone: Path | None = None) -> None:
    """The spec is the registered one and valid; `example_data` writes what it names."""
    registered = get_task(spec.name)  # raises TaskError with the reason if it is broken
    expect(registered is spec, f"{spec.name}: the registry's spec under this name is "
                               f"{registered!r}, not this one")
    spec.validate(spec.name)
    for like in (None, {}):
        data_args = spec.example_data(Path(folder), like=like)
        expect({"train_file", "validation_file"} <= set(data_args),
               f"{spec.name}: example_data returned {sorted(data_args)}, without train_file "
               f"and validation_file")
        for key, value in data_args.items():
            if key.endswith("_file"):
                expect(Path(value).is_file(),
                       f"{spec.name}: example_data's {key} {value} was not written")


def check_forward_backward(spec: TaskSpec, folder: Path, backbone: Path) -> None:
    """A finite scalar loss; finite gradients reaching the embeddings and every head."""
    name = spec.name
    _, datamodule, model = build_task(spec, backbone, folder)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    model.train()
    outputs = model(batch)
    loss = model.loss(outputs, batch)
    expect(loss.ndim == 0 and torch.isfinite(loss), f"{name}: loss {loss}")
    loss.backward()
    for parameter_name, parameter in model.named_parameters():
        if parameter.grad is not None:
            expect(torch.isfinite(parameter.grad).all(), f"{name}: {parameter_name} grad")
    word_embeddings = model.encoder.embeddings.word.weight.grad
    expect(word_embeddings is not None and word_embeddings.abs().sum() > 0,
           f"{name}: no gradient reaches the word embeddings")
    heads = [(n, p) for n, p in model.named_parameters() if not n.startswith("encoder.")]
    expect(heads, f"{name} adds no parameters on top of the encoder")
    expect(all(p.grad is not None for _, p in heads),
           f"{name}: head parameters without gradient: "
           f"{[n for n, p in heads if p.grad is None]}")


def _assert_same_outputs(first, second) -> None:
    if isinstance(first, torch.Tensor) or isinstance(first, (list, tuple, dict)):
        torch.testing.assert_close(first, second, rtol=0, atol=0)
    else:  # a dataclass or another container of tensors
        expect(vars(first).keys() == vars(second).keys(),
               f"outputs differ in their fields: {vars(first).keys()} {vars(second).keys()}")
        for key in vars(first):
            torch.testing.assert_close(getattr(first, key), getattr(second, key), rtol=0,
                                       atol=0)


def _data_arguments(data_args: dict) -> list[str]:
    return [f"--data.{key}={value if isinstance(value, str) else json.dumps(value)}"
            for key, value in data_args.items()]


QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def check_fit_save_load_predict(spec: TaskSpec, folder: Path, backbone: Path) -> None:
    """`bertzoo fit` for one step; its checkpoint reloads to identical outputs and
    predictions; `bertzoo predict` from the checkpoint alone writes a row per input."""
    name = spec.name
    folder = Path(folder)
    data_args = {"batch_size": 4, **spec.example_data(folder)}
    with working_directory(folder):
        # One training step and one validation batch through the command line.
        cli = cmd_task("fit", ["--task", name, f"--model.backbone={backbone}",
                               *_data_arguments(data_args), "--trainer.max_epochs=1",
                               "--trainer.limit_train_batches=1",
                               "--trainer.limit_val_batches=1",
                               "--trainer.log_every_n_steps=1", *QUIET])
        run = folder / "runs" / name / "version_0"
        expect((run / "config.yaml").is_file(), f"{name}: no config.yaml in {run}")
        with (run / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
        expect(len(losses) == 1 and math.isfinite(losses[0]),
               f"{name}: one finite train/loss_step expected in metrics.csv, got {losses}")
        expect(any(r.get("val/loss") for r in rows), f"{name}: no val/loss in metrics.csv")
        logged = cli.trainer.callback_metrics
        expect(spec.monitor in logged or spec.monitor == "val/loss",
               f"{name}: the checkpoint monitor {spec.monitor} is never logged "
               f"({sorted(logged)})")

        # Save -> load -> identical outputs and predictions. bertzoo reads checkpoints
        # without unpickling code, so the hyper-parameters must be plain data.
        path = run / "checkpoints" / "last.ckpt"
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        expect(checkpoint["bertzoo"]["module"].endswith(spec.module.__qualname__),
               f"{name}: the checkpoint names the module {checkpoint['bertzoo']['module']}")
        restored = spec.module.load_from_checkpoint(path, weights_only=True)
        model, datamodule = cli.model, cli.datamodule
        datamodule.setup("predict")
        batch = next(iter(datamodule.predict_dataloader()))
        model.eval()
        restored.eval()
        with torch.no_grad():
            _assert_same_outputs(model(batch), restored(batch))
            expect(model.predict_step(batch, 0) == restored.predict_step(batch, 0),
                   f"{name}: the reloaded checkpoint predicts differently")

        # Predict from the checkpoint alone: the model is rebuilt from the config it carries.
        code = main(["predict", "--task", name, "--ckpt_path", "last",
                     *_data_arguments(data_args), *QUIET])
        expect(code == 0, f"{name}: bertzoo predict exited with {code}")
    predict_run = folder / "runs" / name / "version_1"
    run_files = {"config.yaml", "hparams.yaml", "metrics.csv", "checkpoints"}
    written = [p for p in predict_run.iterdir()
               if p.name not in run_files and not p.name.startswith("events.out.")]
    expect(written, f"{name}: predict wrote nothing in {predict_run}")
    inputs = len(datamodule.raw("predict"))
    for path in written:
        text = path.read_text()
        expect(text.strip(), f"{path} is empty")
        if path.suffix == ".jsonl":
            lines = [json.loads(line) for line in text.splitlines()]
            expect(len(lines) == inputs, f"{path}: {len(lines)} lines for {inputs} inputs")
        elif path.suffix == ".json":
            json.loads(text)


def help_entries(text: str) -> dict[str, str]:
    """`--option` -> its help text, from argparse's formatted help."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"^  (--[\w.]+)(.*)$", line)
        if match:
            current = match.group(1)
            entries[current] = match.group(2)
        elif current and line.startswith("      "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def described(entry: str) -> bool:
    """Whether a help entry says more than its metavar, choices and type."""
    words = entry.split("(type:")[0].replace(",", " ").split()
    return any(not (w.startswith(("--", "{", "[")) or w.isupper() or w.endswith("+"))
               for w in words)


def check_help_documents_every_argument(spec: TaskSpec, folder: Path | None = None,
                                        backbone: Path | None = None) -> None:
    """`bertzoo fit --task NAME --help` lists every argument with a description."""
    name = spec.name
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(["fit", "--task", name, "--help"])
        except SystemExit as exit_:
            code = exit_.code
        else:
            code = "no exit"
    expect(code == 0, f"{name}: `bertzoo fit --task {name} --help` exited with {code}")
    entries = help_entries(out.getvalue())
    linked = set(spec.datamodule.model_links)  # not options: the data module sets them
    expected = {f"--model.{p}" for p in init_parameters(spec.module) - linked}
    expected |= {f"--data.{p}" for p in init_parameters(spec.datamodule)}
    missing = sorted(expected - set(entries))
    expect(not missing, f"{name}: not in --help: {missing}")
    undocumented = sorted(option for option in expected if not described(entries[option]))
    expect(not undocumented, f"{name}: no docstring (Args:) for {undocumented}")


def fit_and_predict(spec: TaskSpec, folder: Path, backbone: Path, **data) -> tuple[Path, dict]:
    """One `bertzoo fit` step on the example data, then `bertzoo predict` from its
    `last.ckpt`: (the fit run's folder, {file name: text} of what predict wrote)."""
    name = spec.name
    data_args = {"batch_size": 4, **spec.example_data(Path(folder)), **data}
    with working_directory(folder):
        cmd_task("fit", ["--task", name, f"--model.backbone={backbone}",
                         *_data_arguments(data_args), "--trainer.max_epochs=1",
                         "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
                         *QUIET])
        code = main(["predict", "--task", name, "--ckpt_path", "last",
                     *_data_arguments(data_args), *QUIET])
        expect(code == 0, f"{name}: bertzoo predict exited with {code}")
    runs = Path(folder) / "runs" / name
    written = {p.name: p.read_text() for p in (runs / "version_1").iterdir()
               if p.suffix in (".json", ".jsonl")}
    expect(written, f"{name}: bertzoo predict wrote no .json/.jsonl predictions")
    return runs / "version_0", {"data_args": data_args, "written": written}


def expect_close(ours: Any, theirs: Any, where: str, tolerance: float = 1e-4) -> None:
    """Equal JSON values, numbers within `tolerance`."""
    if isinstance(ours, float) or isinstance(theirs, float):
        expect(isinstance(ours, (int, float)) and isinstance(theirs, (int, float))
               and abs(ours - theirs) <= tolerance, f"{where}: {ours} != {theirs}")
    elif isinstance(theirs, dict):
        expect(isinstance(ours, dict) and ours.keys() == theirs.keys(),
               f"{where}: keys {sorted(ours) if isinstance(ours, dict) else ours} != "
               f"{sorted(theirs)}")
        for key in theirs:
            expect_close(ours[key], theirs[key], f"{where}.{key}", tolerance)
    elif isinstance(theirs, list):
        expect(isinstance(ours, list) and len(ours) == len(theirs),
               f"{where}: {len(ours) if isinstance(ours, list) else ours} items, expected "
               f"{len(theirs)}")
        for i, (a, b) in enumerate(zip(ours, theirs)):
            expect_close(a, b, f"{where}[{i}]", tolerance)
    else:
        expect(ours == theirs, f"{where}: {ours!r} != {theirs!r}")


def expect_rows_of_predict(predictor, inputs: list, written: dict[str, str], what: str) -> None:
    """`predictor(inputs)`, written as `bertzoo predict` writes rows, equals `written`."""
    rows = predictor(inputs)
    expect(len(rows) == len(inputs), f"{what}: {len(rows)} rows for {len(inputs)} inputs")
    ours = predictor.module.prediction_files(rows)
    expect(ours.keys() == written.keys(), f"{what}: writes {sorted(ours)}, bertzoo predict "
                                          f"wrote {sorted(written)}")
    for name, text in ours.items():
        parse = ((lambda t: [json.loads(line) for line in t.splitlines()])
                 if name.endswith(".jsonl") else json.loads)
        expect_close(parse(text), parse(written[name]), f"{what}: {name}")


def check_load_export_onnx(spec: TaskSpec, folder: Path, backbone: Path) -> None:
    """`bertzoo.load` of the task's `last.ckpt`, its run folder, its `bertzoo export` and its
    ONNX export (`--format onnx`, run by onnxruntime) answers the example predict inputs
    (`TaskSpec.inputs.examples`) with the rows `bertzoo predict` wrote (within 1e-4); the
    ONNX graph matches PyTorch within 1e-4 and names its outputs as the Hugging Face class of
    the export does."""
    import transformers
    name = spec.name
    expect(spec.inputs is not None, f"{name}: TaskSpec.inputs is not set; a task declares its "
                                    f"raw inputs (bertzoo.tasks.inputs.RawInputs) so that "
                                    f"bertzoo.load, bertzoo serve and ONNX export can run it")
    folder = Path(folder)
    run, predicted = fit_and_predict(spec, folder, backbone)
    inputs = spec.inputs.examples(predicted["data_args"])
    written = predicted["written"]
    checkpoint = run / "checkpoints" / "last.ckpt"
    predictor = load(checkpoint)
    expect(predictor.task == name, f"{name}: load() found the task {predictor.task!r}")
    expect_rows_of_predict(predictor, inputs, written, f"{name}: load(.ckpt)")
    expect_rows_of_predict(load(run), inputs, written, f"{name}: load(run folder)")
    exported = export(checkpoint, folder / "export")
    expect_rows_of_predict(load(exported), inputs, written, f"{name}: load(export)")
    onnx_folder, difference = export_onnx(checkpoint, folder / "onnx")
    expect(difference <= 1e-4, f"{name}: the ONNX graph differs from PyTorch by {difference}")
    graph = load(onnx_folder)
    expect(graph.runtime == "onnxruntime", f"{name}: the ONNX export ran with {graph.runtime}")
    expect_rows_of_predict(graph, inputs, written, f"{name}: load(ONNX export)")
    config = json.loads((exported / "config.json").read_text())
    architecture = (config.get("architectures") or [None])[0]
    if architecture not in (None, "BertModel"):  # a Hugging Face head: the same output names
        reference = getattr(transformers, architecture).from_pretrained(exported).eval()
        batch = next(predictor.batches(predictor.rows(inputs[:2]))[1])
        with torch.no_grad():
            out = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            token_type_ids=batch["token_type_ids"])
        names = json.loads((onnx_folder / TASK_RECORD).read_text())["onnx"]["outputs"]
        expect(names == [k for k in out.keys() if k != "loss"],
               f"{name}: ONNX outputs {names}, {architecture} returns {list(out.keys())}")


TASK_CHECKS: tuple[Callable[[TaskSpec, Path, Path], None], ...] = (
    check_spec, check_forward_backward, check_fit_save_load_predict,
    check_help_documents_every_argument, check_load_export_onnx)


def check_task(spec: TaskSpec, folder: str | Path, backbone: str | Path | None = None) -> None:
    """Run every check of `TASK_CHECKS` on `spec`, each in its own subfolder of `folder`.
    `backbone`: a BERT folder whose tokenizer the example data suits; by default a tiny random
    one written by `tiny_backbone` (its vocabulary: the synthetic English of
    `bertzoo.synthetic`)."""
    folder = Path(folder)
    if backbone is None:
        backbone = tiny_backbone(folder / "tiny-backbone")
    for check in TASK_CHECKS:
        where = folder / check.__name__
        where.mkdir(parents=True, exist_ok=True)
        check(spec, where, Path(backbone))
