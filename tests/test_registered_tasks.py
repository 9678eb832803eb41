"""Tests generated from the registry: every task found in the `bertzoo.tasks` entry points
(built-in or installed plugin) gets the same checks, so a new task is tested the day it
registers. The data comes from each task's own `TaskSpec.example_data`.

    - the entry point loads and the spec is valid;
    - forward and backward on a tiny backbone: a finite scalar loss, finite gradients that
      reach the embeddings and every head parameter;
    - through the command line: one `bertzoo fit` step with validation; its checkpoint loaded
      with `load_from_checkpoint(weights_only=True)` gives identical outputs and predictions
      (hyper-parameters must be plain data); `bertzoo predict` from the checkpoint alone writes
      files with one row per input;
    - `bertzoo fit --task NAME --help` documents every model and data argument.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch

from bertzoo.cli import cmd_task, init_parameters, main
from bertzoo.tasks.registry import REGISTRY, get_task

TASK_NAMES = REGISTRY.names()  # discovered without importing any task


def build(name: str, backbone: Path, folder: Path, **data_overrides):
    """The task's spec, example data arguments, data module and model, as the CLI links them."""
    spec = get_task(name)
    data_args = spec.example_data(folder)
    datamodule = spec.datamodule(tokenizer=str(backbone),
                                 **{"batch_size": 4, **data_args, **data_overrides})
    links = {link: getattr(datamodule, link) for link in spec.datamodule.model_links}
    model = spec.module(backbone=str(backbone), **links)
    return spec, data_args, datamodule, model


def test_every_built_in_task_and_the_example_plugin_is_registered():
    assert {"classification", "ner", "qa", "multiple_choice"} <= set(TASK_NAMES)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_spec_loads_and_is_valid(name, tmp_path):
    spec = get_task(name)  # raises TaskError with the reason if the plugin is broken
    assert spec.name == name
    spec.validate(name)
    data_args = spec.example_data(tmp_path)
    assert {"train_file", "validation_file"} <= set(data_args)
    for key, value in data_args.items():
        if key.endswith("_file"):
            assert Path(value).is_file(), f"example_data's {key} {value} was not written"


@pytest.mark.parametrize("name", TASK_NAMES)
def test_forward_backward_on_a_tiny_backbone(name, tiny_backbone_dir, tmp_path):
    _, _, datamodule, model = build(name, tiny_backbone_dir, tmp_path)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    model.train()
    outputs = model(batch)
    loss = model.loss(outputs, batch)
    assert loss.ndim == 0 and torch.isfinite(loss), f"{name}: loss {loss}"
    loss.backward()
    for parameter_name, parameter in model.named_parameters():
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad).all(), f"{name}: {parameter_name} grad"
    word_embeddings = model.encoder.embeddings.word.weight.grad
    assert word_embeddings is not None and word_embeddings.abs().sum() > 0
    heads = [(n, p) for n, p in model.named_parameters() if not n.startswith("encoder.")]
    assert heads, f"{name} adds no parameters on top of the encoder"
    assert all(p.grad is not None for _, p in heads), \
        f"{name}: head parameters without gradient: {[n for n, p in heads if p.grad is None]}"


def _assert_same_outputs(first, second) -> None:
    if isinstance(first, torch.Tensor) or isinstance(first, (list, tuple, dict)):
        torch.testing.assert_close(first, second, rtol=0, atol=0)
    else:  # a dataclass or another container of tensors
        assert vars(first).keys() == vars(second).keys()
        for key in vars(first):
            torch.testing.assert_close(getattr(first, key), getattr(second, key), rtol=0,
                                       atol=0)


def _data_arguments(data_args: dict) -> list[str]:
    return [f"--data.{key}={value if isinstance(value, str) else json.dumps(value)}"
            for key, value in data_args.items()]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_cli_fit_save_load_predict(name, tiny_backbone_dir, tmp_path, monkeypatch):
    spec = get_task(name)
    data_args = {"batch_size": 4, **spec.example_data(tmp_path)}
    monkeypatch.chdir(tmp_path)
    quiet = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    # One training step and one validation batch through the command line.
    cli = cmd_task("fit", ["--task", name, f"--model.backbone={tiny_backbone_dir}",
                           *_data_arguments(data_args), "--trainer.max_epochs=1",
                           "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
                           "--trainer.log_every_n_steps=1", *quiet])
    run = tmp_path / "runs" / name / "version_0"
    assert (run / "config.yaml").is_file()
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) == 1 and math.isfinite(losses[0])
    assert any(r.get("val/loss") for r in rows)
    logged = cli.trainer.callback_metrics
    assert spec.monitor in logged or spec.monitor == "val/loss", \
        f"{name}: the checkpoint monitor {spec.monitor} is never logged ({sorted(logged)})"

    # Save -> load -> identical outputs and predictions. bertzoo reads checkpoints without
    # unpickling code, so the hyper-parameters must be plain data (weights_only=True).
    path = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["bertzoo"]["module"].endswith(spec.module.__qualname__)
    restored = spec.module.load_from_checkpoint(path, weights_only=True)
    model, datamodule = cli.model, cli.datamodule
    datamodule.setup("predict")
    batch = next(iter(datamodule.predict_dataloader()))
    model.eval()
    restored.eval()
    with torch.no_grad():
        _assert_same_outputs(model(batch), restored(batch))
        assert model.predict_step(batch, 0) == restored.predict_step(batch, 0)

    # Predict from the checkpoint alone: the model is rebuilt from the config it carries.
    assert main(["predict", "--task", name, "--ckpt_path", "last",
                 *_data_arguments(data_args), *quiet]) == 0
    predict_run = tmp_path / "runs" / name / "version_1"
    run_files = {"config.yaml", "hparams.yaml", "metrics.csv", "checkpoints"}
    written = [p for p in predict_run.iterdir()
               if p.name not in run_files and not p.name.startswith("events.out.")]
    assert written, f"{name}: predict wrote nothing in {predict_run}"
    inputs = len(datamodule.raw("predict"))
    for path in written:
        text = path.read_text()
        assert text.strip(), f"{path} is empty"
        if path.suffix == ".jsonl":
            lines = [json.loads(line) for line in text.splitlines()]
            assert len(lines) == inputs, f"{path}: {len(lines)} lines for {inputs} inputs"
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


@pytest.mark.parametrize("name", TASK_NAMES)
def test_help_documents_every_argument(name, capsys):
    spec = get_task(name)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--task", name, "--help"])
    assert exit_.value.code == 0
    entries = help_entries(capsys.readouterr().out)
    linked = set(spec.datamodule.model_links)  # not options: the data module sets them
    expected = {f"--model.{p}" for p in init_parameters(spec.module) - linked}
    expected |= {f"--data.{p}" for p in init_parameters(spec.datamodule)}
    missing = sorted(expected - set(entries))
    assert not missing, f"{name}: not in --help: {missing}"
    undocumented = sorted(option for option in expected if not described(entries[option]))
    assert not undocumented, f"{name}: no docstring (Args:) for {undocumented}"
