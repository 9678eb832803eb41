"""The `bertzoo` command's task side: choosing the task (--task, `task:` in a recipe, or class
paths), links from the data module to the model, run folders, `--ckpt_path last`, and errors
that explain themselves instead of a traceback."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from bertzoo.cli import check_links, class_path_from_args, main, task_from_args
from bertzoo.tasks.base import TaskDataModule
from bertzoo.tasks.registry import init_parameters
from bertzoo.tasks.classification import (ClassificationDataModule, ClassificationModule,
                                          example_data)
from bertzoo.tasks.registry import TaskError

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
ONE_STEP = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1", *QUIET]


def write_yaml(path: Path, content: dict) -> str:
    path.write_text(yaml.safe_dump(content))
    return str(path)


def test_usage_and_unknown_command(capsys):
    assert main([]) == 2
    assert "bertzoo fit|validate|test|predict --task NAME" in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert main(["train"]) == 2
    assert "unknown command 'train'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["--help"], ["tasks"]], ids=["help", "tasks"])
def test_the_command_runs_under_python_OO(command):
    """`python -OO` drops docstrings: the usage text must not come from one."""
    import os
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-OO", "-m", "bertzoo", *command],
                          capture_output=True, text=True, env={**os.environ}, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = "bertzoo pretrain --config" if command == ["--help"] else "classification"
    assert expected in done.stdout


def test_task_name_from_the_command_line_or_the_recipe(tmp_path):
    recipe = write_yaml(tmp_path / "r.yaml", {"task": "classification", "data": {}})
    assert task_from_args(["--task", "ner", "--x", "1"]) == ("ner", ["--x", "1"])
    assert task_from_args(["--task=qa"]) == ("qa", [])
    assert task_from_args(["--config", recipe]) == ("classification", ["--config", recipe])
    assert task_from_args([f"--config={recipe}", "--task", "classification"])[0] == \
        "classification"
    with pytest.raises(TaskError, match=r"--task ner conflicts with .*r.yaml, a recipe for "
                                        r"task 'classification'"):
        task_from_args(["--config", recipe, "--task", "ner"])
    assert task_from_args(["--data.train_file", "x.tsv"]) == (None, ["--data.train_file",
                                                                   "x.tsv"])


def test_class_paths_follow_the_order_jsonargparse_applies(tmp_path):
    recipe = write_yaml(tmp_path / "r.yaml", {"model": {"class_path": "a.B", "init_args": {}},
                                              "data": "c.D"})
    assert class_path_from_args(["--config", recipe], "model") == "a.B"
    assert class_path_from_args(["--config", recipe], "data") == "c.D"
    assert class_path_from_args(["--config", recipe, "--model", "x.Y"], "model") == "x.Y"
    assert class_path_from_args(["--model.class_path=x.Y", "--config", recipe], "model") == "a.B"
    assert class_path_from_args(['--model={"class_path": "p.Q"}'], "model") == "p.Q"


def test_init_parameters_follow_kwargs_to_the_base_classes():
    names = init_parameters(ClassificationModule)
    assert {"num_labels", "label_names", "backbone", "learning_rate", "warmup"} <= names
    assert "kwargs" not in names and "self" not in names
    assert {"text_column", "train_file", "batch_size"} <= init_parameters(ClassificationDataModule)


def test_a_link_the_model_cannot_take_is_an_error():
    class ExtraData(ClassificationDataModule):
        model_links = (*ClassificationDataModule.model_links, "vocabulary_file")

        @property
        def vocabulary_file(self) -> str:
            return "vocab.txt"

    check_links(ClassificationDataModule.model_links, ClassificationModule,
                ClassificationDataModule)
    with pytest.raises(TaskError, match="ExtraData provides 'vocabulary_file' for the model, but "
                                        "ClassificationModule takes no 'vocabulary_file' "
                                        "argument"):
        check_links(ExtraData.model_links, ClassificationModule, ExtraData)
    with pytest.raises(TaskError, match="model_links names 'num_labels', which the data module "
                                        "does not have"):
        check_links(("num_labels",), ClassificationModule, TaskDataModule)


USER_MODULE = '''
from bertzoo.tasks.classification import ClassificationModule


class WiderHeadClassifier(ClassificationModule):
    """A user's subclass, not registered anywhere: run by class path.

    Args:
        head_scale: Multiplies the logits.
        **kwargs: The arguments of ClassificationModule.
    """

    def __init__(self, head_scale: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.head_scale = head_scale

    def forward(self, batch):
        return super().forward(batch) * self.head_scale
'''


def test_class_path_recipe_with_a_user_subclass_and_short_names(tiny_backbone_dir, tmp_path,
                                                                 monkeypatch):
    (tmp_path / "user_tasks.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    data = example_data(tmp_path)
    recipe = write_yaml(tmp_path / "recipe.yaml", {
        "model": {"class_path": "user_tasks.WiderHeadClassifier",
                  "init_args": {"backbone": str(tiny_backbone_dir), "head_scale": 3.0}},
        "data": {"class_path": "ClassificationDataModule",  # a short name of a registered task
                 "init_args": {"train_file": data["train_file"],
                               "validation_file": data["validation_file"], "batch_size": 4}}})
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", recipe, *ONE_STEP]) == 0
    # A subclass of a registered task's module runs under that task's name and monitor ...
    run = tmp_path / "runs" / "classification" / "version_0"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    # ... and gets the data module's links although they are not in the recipe.
    hparams = checkpoint["hyper_parameters"]
    assert hparams["label_names"] == ["0", "1"] and hparams["num_labels"] == 2
    assert hparams["head_scale"] == 3.0
    assert checkpoint["bertzoo"]["module"] == "user_tasks.WiderHeadClassifier"
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["class_path"] == \
        "user_tasks.WiderHeadClassifier"


def test_run_folders_and_ckpt_path_last(tiny_backbone_dir, tmp_path, monkeypatch, capsys):
    data = example_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    base = ["--task", "classification", f"--model.backbone={tiny_backbone_dir}",
            f"--data.train_file={data['train_file']}",
            f"--data.validation_file={data['validation_file']}", "--data.batch_size=4"]
    assert main(["predict", "--task", "classification", "--ckpt_path", "last"]) == 1
    assert "--ckpt_path last: no last.ckpt under runs/classification/version_*" in \
        capsys.readouterr().err
    assert main(["fit", *base, *ONE_STEP]) == 0
    runs = tmp_path / "runs" / "classification"
    first = torch.load(runs / "version_0/checkpoints/last.ckpt", weights_only=True)
    assert first["global_step"] == 1
    # Resuming continues the newest run, in its own folder.
    assert main(["fit", *base, "--ckpt_path", "last", "--trainer.max_epochs=2",
                 "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
                 *QUIET]) == 0
    assert sorted(p.name for p in runs.iterdir()) == ["version_0"]
    resumed = torch.load(runs / "version_0/checkpoints/last.ckpt", weights_only=True)
    assert resumed["global_step"] == 2  # one more step on top of the first run's
    # Any other command with `last` reads that checkpoint and writes a run of its own.
    assert main(["predict", "--task", "classification", "--ckpt_path", "last",
                 f"--data.predict_file={data['predict_file']}", *QUIET]) == 0
    assert (runs / "version_1" / "predictions.jsonl").is_file()
    assert (runs / "version_0" / "config.yaml").is_file()  # the fit's config is untouched
    assert yaml.safe_load((runs / "version_0/config.yaml").read_text())["data"]["train_file"]


def test_bad_input_is_a_message_not_a_traceback(tiny_backbone_dir, tmp_path, monkeypatch,
                                               capsys):
    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\na\t0\nb\t1\n")
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--task", "classification", f"--model.backbone={tiny_backbone_dir}",
            f"--data.train_file={train}", *ONE_STEP]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "bertzoo fit: error:" in err and "missing column(s) 'sentence'" in err
    assert "Traceback" not in err
    monkeypatch.setenv("BERTZOO_TRACEBACK", "1")
    from bertzoo.tasks.base import DataError
    with pytest.raises(DataError):
        main(args)


def test_unknown_recipe_key_is_rejected_by_the_parser(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the run's folder is claimed (and given back) under ./runs
    recipe = write_yaml(tmp_path / "r.yaml", {"task": "classification",
                                              "data": {"text_colum": "sentence"}})
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", recipe])
    assert exit_.value.code == 2
    assert "text_colum" in capsys.readouterr().err


def _reserve_versions(start, rounds: int, queue) -> None:
    from bertzoo.cli import reserve_version
    reserved = []
    for _ in range(rounds):
        start.wait()  # in each round every process starts a run at the same moment
        reserved.append(reserve_version("runs", "classification"))
    queue.put(reserved)


def test_run_numbers_are_reserved_and_freed(tmp_path, monkeypatch, capsys):
    import multiprocessing
    monkeypatch.chdir(tmp_path)
    # Runs starting at the same moment (8 processes, 16 rounds) get different folders. (A
    # reservation that is not atomic, mkdir(exist_ok=True), fails this in each of 5 tries.)
    context = multiprocessing.get_context("fork")
    processes, each = 8, 16
    start, queue = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_reserve_versions, args=(start, each, queue))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    reserved = [queue.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    numbers = sorted(n for numbers in reserved for n in numbers)
    assert numbers == list(range(processes * each)), "two runs got the same folder"
    runs = tmp_path / "runs/classification"
    folders = sorted(f"version_{n}" for n in numbers)
    assert sorted(p.name for p in runs.iterdir()) == folders
    # A run that stops before writing anything gives its number back; --help takes none.
    assert main(["fit", "--task", "classification", "--data.train_file=missing.tsv",
                 "--model.config=tiny"]) == 1
    assert "no such file: missing.tsv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", "--task", "classification", "--help"])
    assert sorted(p.name for p in runs.iterdir()) == folders
