"""Bad input through `bertzoo` as a user types it: each case fails before training starts, with
one message naming the file, key or field and what was expected, and leaves no run behind.

These are the rows of docs/errors.md that no other test covers; the table names the test of
every row.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from bertzoo.cli import main

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def task_files(tiny_backbone_dir, tmp_path_factory) -> dict[str, str]:
    """Classification data and a classification checkpoint (one fitted step)."""
    import os

    from bertzoo.tasks.classification import example_data
    folder = tmp_path_factory.mktemp("classification")
    files = {k: str(v) for k, v in example_data(folder).items()}
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert main(["fit", "--task", "classification", f"--model.backbone={tiny_backbone_dir}",
                     f"--data.train_file={files['train_file']}", "--trainer.max_steps=1",
                     "--trainer.num_sanity_val_steps=0", *QUIET]) == 0
    finally:
        os.chdir(cwd)
    files["checkpoint"] = str(folder / "runs/classification/version_0/checkpoints/last.ckpt")
    return files


def run(args: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of `bertzoo ARGS` (the parser exits; bertzoo's errors return)."""
    try:
        status = main(args)
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def failure(args: list[str], capsys, status: int) -> str:
    """stderr of `bertzoo ARGS` (trailing whitespace dropped), which must exit with `status`
    (2: the parser refused the arguments; 1: bertzoo's own check did)."""
    code, err = run(args, capsys)
    assert code == status, err
    return err.rstrip()


def assert_no_run(folder: Path) -> None:
    assert not list(folder.glob("runs/*/version_*/checkpoints")), "training started"
    assert not list(folder.glob("runs/*/version_*/metrics.csv")), "training started"


# ----------------------------------------------------------------------------------- config
@pytest.mark.parametrize("section, key, expected", [
    ("data", "text_colum", "did you mean 'data.text_column'?"),
    ("trainer", "max_epoch", "did you mean 'trainer.max_epochs'?"),
    ("model", "learning_rat", "did you mean 'model.learning_rate'?"),
], ids=["data", "trainer", "model"])
def test_unknown_yaml_key_suggests_the_closest(section, key, expected, tiny_backbone_dir,
                                               tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"task": "classification",
                                      "model": {"backbone": str(tiny_backbone_dir)},
                                      section: {key: 1}}))
    err = failure(["fit", "--config", str(recipe)], capsys, status=2)
    assert err.endswith(
        f"error: Subcommand 'fit' does not accept option '{section}.{key}'; {expected}")
    assert_no_run(tmp_path)


def test_unknown_command_line_option_suggests_the_closest(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = failure(["fit", "--task", "classification", "--data.max_lenght=64"], capsys, status=2)
    assert err.endswith("error: unrecognized arguments: --data.max_lenght=64; did you "
                        "mean '--data.max_length'?")


@pytest.mark.parametrize("where", ["yaml", "command line"])
def test_wrong_type_names_the_key_and_the_expected_type(where, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if where == "yaml":
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml.safe_dump({"task": "classification",
                                          "data": {"batch_size": "lots"}}))
        args = ["fit", "--config", str(recipe)]
    else:
        args = ["fit", "--task", "classification", "--data.batch_size=lots"]
    err = failure(args, capsys, status=2)
    assert err == "bertzoo fit: error: data.batch_size: expected int >= 1, got 'lots'"


# ------------------------------------------------------------------------------- checkpoints
def test_checkpoint_of_another_task_names_both(task_files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    checkpoint = task_files["checkpoint"]
    err = failure(["fit", "--task", "ner", f"--data.train_file={task_files['train_file']}",
                   f"--ckpt_path={checkpoint}", *QUIET], capsys, status=1)
    assert err.endswith(
        f"bertzoo fit: error: --ckpt_path {checkpoint} was written by "
        f"bertzoo.tasks.classification.ClassificationModule (task 'classification'), but this "
        f"run is bertzoo.tasks.ner.NerModule (task 'ner'): --ckpt_path resumes or evaluates "
        f"the module that wrote it; to start a new task from that checkpoint, pass it as "
        f"--model.backbone")
    assert_no_run(tmp_path)


def test_truncated_checkpoint_names_the_file(task_files, tiny_backbone_dir, tmp_path,
                                             monkeypatch, capsys):
    """A .ckpt cut short (a copy interrupted, a full disk) as --ckpt_path and as a backbone:
    a message naming it, not an unpickling traceback."""
    monkeypatch.chdir(tmp_path)
    torn = tmp_path / "torn.ckpt"
    torn.write_bytes(Path(task_files["checkpoint"]).read_bytes()[:4096])
    data = [f"--data.train_file={task_files['train_file']}", *QUIET]
    err = failure(["fit", "--task", "classification", f"--model.backbone={tiny_backbone_dir}",
                   f"--ckpt_path={torn}", *data], capsys, status=1)
    assert err.endswith(
        f"bertzoo fit: error: --ckpt_path {torn} is not a readable checkpoint (RuntimeError: "
        f"PytorchStreamReader failed reading zip archive: failed finding central directory)")

    err = failure(["fit", "--task", "classification", f"--model.backbone={torn}",
                   f"--data.tokenizer={tiny_backbone_dir}", *data], capsys, status=1)
    assert err.endswith(
        f"bertzoo fit: error: {torn} is not a readable checkpoint (RuntimeError: "
        f"PytorchStreamReader failed reading zip archive: failed finding central directory)")
    assert_no_run(tmp_path)


class Payload:
    """Stands for any object a pickle constructs (and may run code doing so)."""


def test_checkpoint_holding_objects_is_refused_unread(task_files, tmp_path, monkeypatch,
                                                      capsys):
    """weights_only=True: a checkpoint that would construct objects is not unpickled at all."""
    monkeypatch.chdir(tmp_path)
    tampered = tmp_path / "tampered.ckpt"
    ckpt = torch.load(task_files["checkpoint"], weights_only=True)
    ckpt["payload"] = Payload()
    torch.save(ckpt, tampered)
    err = failure(["fit", "--task", "classification", f"--ckpt_path={tampered}",
                   f"--data.train_file={task_files['train_file']}", *QUIET], capsys, status=1)
    assert err.endswith(
        f"bertzoo fit: error: --ckpt_path {tampered} is not a readable checkpoint "
        f"(UnpicklingError: Weights only load failed: it would construct test_errors.Payload, "
        f"which is not a tensor or plain data)")
    assert_no_run(tmp_path)


def test_tokenizer_folder_without_vocabulary(task_files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "my-tokenizer"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text("{}")
    err = failure(["fit", "--task", "classification", "--model.config=tiny",
                   f"--data.tokenizer={folder}", f"--data.train_file={task_files['train_file']}",
                   *QUIET], capsys, status=1)
    assert err.endswith(f"bertzoo fit: error: {folder} has neither tokenizer.json nor "
                        f"vocab.txt; a BERT tokenizer folder needs one of them")
    assert_no_run(tmp_path)


def test_backbone_and_config_together(task_files, tiny_backbone_dir, tmp_path, monkeypatch,
                                      capsys):
    monkeypatch.chdir(tmp_path)
    err = failure(["fit", "--task", "classification", f"--model.backbone={tiny_backbone_dir}",
                   "--model.config=tiny", f"--data.train_file={task_files['train_file']}",
                   *QUIET], capsys, status=1)
    assert err.endswith(
        "bertzoo fit: error: give either model.backbone (a checkpoint to start from) or "
        "model.config (a preset for random initialisation), not both")
    assert_no_run(tmp_path)


def test_the_bad_input_table_names_tests_that_exist():
    """docs/errors.md cites a test for every row: each one named must exist."""
    import re
    root = Path(__file__).parents[1]
    table = (root / "docs" / "errors.md").read_text()
    cited = set(re.findall(r"(test_\w+\.py)::(test_\w+)", table))
    rows = re.findall(r"^\| (\d+) \|", table, flags=re.MULTILINE)
    assert len(rows) >= 15 and len(cited) >= 15
    for file, function in sorted(cited):
        source = (root / "tests" / file).read_text()
        assert re.search(rf"^def {function}\(", source, flags=re.MULTILINE), f"{file}::{function}"
