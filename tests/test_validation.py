"""Options refused at parse time by their type (the range shown in --help), rules between
options checked before data is read, and damaged or foreign files named before a library
parses them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bertzoo.cli import main
from bertzoo.files import InputFileError, check_text_file
from bertzoo.tasks import list_tasks
from bertzoo.training.options import (PositiveInt, Probability, Seed, check_range,
                                      one_line_parser_error)
from bertzoo.config import ConfigError

COMMANDS = [["pretrain"], *[["fit", "--task", t.name] for t in list_tasks() if t.spec]]


def run(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        status = main(args)
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def help_options(args: list[str], capsys, monkeypatch) -> dict[str, str]:
    """{"data.batch_size": "int >= 1", ...}: each model/data option's type as --help prints it."""
    monkeypatch.setenv("COLUMNS", "1000")
    status, out, _ = run([*args, "--help"], capsys)
    assert status == 0
    types = {}
    for block in re.split(r"\n(?=  --)", out):
        text = " ".join(block.split())
        found = re.match(r"--((?:model|data)\.\w+)\b.*?\(type: (.*?)(?:, default: .*)?\)$", text)
        if found:
            types[found.group(1)] = found.group(2)
    return types


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[-1])
def test_every_numeric_option_shows_its_range_in_help(args, capsys, monkeypatch):
    """No model or data option of a number type is a bare `int` or `float`: each names its
    range (`int >= 1`, `float in [0, 1]`, ...), which the parser enforces."""
    types = help_options(args, capsys, monkeypatch)
    assert "data.batch_size" in types and types["data.batch_size"] == "int >= 1"
    bare = {key: kind for key, kind in types.items()
            if re.search(r"\b(int|float)\b(?! (>|in |\(finite))", kind)}
    assert not bare, f"{args[-1]}: options without a range: {bare}"


@pytest.mark.parametrize("option, value, expected", [
    ("data.batch_size", "0", "data.batch_size: expected int >= 1, got 0"),
    ("data.batch_size", "lots", "data.batch_size: expected int >= 1, got 'lots'"),
    ("data.eval_batch_size", "-4", "data.eval_batch_size: expected int >= 1 or null, got -4"),
    ("data.seed", "-1", "data.seed: expected int in [0, 2**32 - 1], got -1"),
    ("model.learning_rate", "nan", "model.learning_rate: expected float > 0, got nan"),
    ("model.head_dropout", "1.0", "model.head_dropout: expected float in [0, 1), got 1.0"),
    ("data.num_workers", "-1", "data.num_workers: expected int >= 0, got -1"),
])
def test_out_of_range_values_are_refused_when_parsed(option, value, expected, tmp_path,
                                                     monkeypatch, capsys):
    """One line with the key, the range and the value, exit status 2, no run folder."""
    monkeypatch.chdir(tmp_path)
    status, _, err = run(["fit", "--task", "classification", f"--{option}={value}"], capsys)
    assert status == 2
    assert err.strip().splitlines() == [f"bertzoo fit: error: {expected}"]
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/version_*"))


def test_out_of_range_value_in_a_recipe(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"task": "classification",
                                      "data": {"max_train_samples": 0}}))
    status, _, err = run(["fit", "--config", str(recipe)], capsys)
    assert status == 2
    assert err.strip() == ("bertzoo fit: error: data.max_train_samples: expected int >= 1 or "
                           "null, got 0")


def test_pretraining_probabilities_are_ranges(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, _, err = run(["pretrain", "--data.mlm_probability=1"], capsys)
    assert status == 2
    assert err.strip() == ("bertzoo pretrain: error: data.mlm_probability: expected float in "
                           "(0, 1), got 1.0")


def test_range_types_give_plain_numbers_and_check_in_python():
    """The parser's value is a plain int/float (a checkpoint's hyper-parameters must load with
    weights_only=True); calling the type checks like the parser."""
    from jsonargparse import ArgumentParser

    def build(size: PositiveInt = 3, p: Probability | None = None, seed: Seed = 0):
        """Args:
            size: a size.
            p: a probability.
            seed: a seed.
        """

    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(build, "f")
    parsed = parser.parse_args(["--f.size=5", "--f.p=0.25", "--f.seed=7"])
    assert [type(parsed.f.size), type(parsed.f.p), type(parsed.f.seed)] == [int, float, int]
    assert PositiveInt(4) == 4 and type(PositiveInt(4)) is int
    with pytest.raises(ConfigError, match=r"expected int >= 1, got 0"):
        PositiveInt(0)
    with pytest.raises(ConfigError, match=r"data.x must be float in \[0, 1\], got 2"):
        check_range("data.x", 2, Probability)


def test_parser_errors_become_one_line():
    assert one_line_parser_error('Parser key "data.batch_size":\n  Expected a <class \'int\'>. '
                                 'Got value: lots') == "data.batch_size: expected int, got lots"
    union = ('Parser key "m.p":\n  Does not validate against any of the Union subtypes\n'
             "  Subtypes: [<class 'x'>, <class 'NoneType'>]\n  Errors:\n"
             "    - Not of type float in [0, 1]: expected float in [0, 1], got 2.0\n"
             "    - Expected a <class 'NoneType'>\n  Given value type: <class 'str'>\n"
             "  Given value: 2")
    assert one_line_parser_error(union) == "m.p: expected float in [0, 1] or null, got 2"


# ------------------------------------------------------------------------------ text files
@pytest.mark.parametrize("content, expected", [
    (b"a\tb\n\x00\x01\x02", r"x.tsv, line 2: a NUL byte; this looks like a binary file, not "
                            r"UTF-8 text"),
    ("label\ttext\n".encode("utf-16"), r"x.tsv is UTF-16 text; expected UTF-8 text \(save it "
                                       r"as UTF-8\)"),
    ("a\tb\n1\tcaf\u00e9\n".encode("latin-1"), r"x.tsv, line 2: byte 0xe9 is not UTF-8; expected "
                                               r"UTF-8 text \(save the file as UTF-8\)"),
], ids=["binary", "utf-16", "latin-1"])
def test_check_text_file_names_the_file_and_line(content, expected, tmp_path):
    path = tmp_path / "x.tsv"
    path.write_bytes(content)
    with pytest.raises(InputFileError, match=expected):
        check_text_file(path)


def test_check_text_file_accepts_utf8_cut_at_the_checked_length(tmp_path, monkeypatch):
    """A multi-byte character split by the end of the checked part is not an error."""
    import bertzoo.files
    monkeypatch.setattr(bertzoo.files, "TEXT_CHECK_BYTES", 5)
    path = tmp_path / "x.txt"
    path.write_text("abcd\u00e9fgh\n", encoding="utf-8")
    check_text_file(path)


# ------------------------------------------------------------------ through the command line
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
         "--trainer.max_steps=1", "--trainer.num_sanity_val_steps=0"]


def assert_no_run(folder: Path) -> None:
    runs = folder / "runs"
    assert not runs.exists() or not list(runs.glob("*/version_*")), "a run folder was left"


@pytest.fixture(scope="module")
def task_data(tmp_path_factory) -> dict[str, dict]:
    from bertzoo.tasks.classification import example_data as classification
    from bertzoo.tasks.ner import example_data as ner
    folder = tmp_path_factory.mktemp("data")
    data = {}
    for name, example_data in (("classification", classification), ("ner", ner)):
        (folder / name).mkdir()
        data[name] = example_data(folder / name)
    return data


def test_task_length_longer_than_the_positions(task_data, tiny_backbone_dir, tmp_path,
                                               monkeypatch, capsys):
    """Checked when the model and the data module are built, before the data is read."""
    monkeypatch.chdir(tmp_path)
    status, _, err = run(["fit", "--task", "classification",
                          f"--model.backbone={tiny_backbone_dir}", "--data.max_length=512",
                          "--data.labels=[negative, positive]",
                          "--data.train_file=never-read.tsv", *QUIET], capsys)
    assert status == 1
    assert err.strip().splitlines()[-1] == (
        "bertzoo fit: error: data.max_length (512) exceeds the model's max_position_embeddings "
        "(128); lower it or build the model with more positions")
    assert_no_run(tmp_path)


def test_pair_column_that_is_the_text_column(task_data, tiny_backbone_dir, tmp_path,
                                             monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, _, err = run(["fit", "--task", "classification",
                          f"--model.backbone={tiny_backbone_dir}",
                          "--data.text_pair_column=sentence",
                          f"--data.train_file={task_data['classification']['train_file']}",
                          *QUIET], capsys)
    assert status == 1
    assert err.strip().splitlines()[-1] == (
        "bertzoo fit: error: data.text_pair_column is data.text_column ('sentence'): a pair "
        "needs two columns (or set text_pair_column to null for single texts)")
    assert_no_run(tmp_path)


def test_warmup_longer_than_the_run_is_a_warning(task_data, tiny_backbone_dir, tmp_path,
                                                 monkeypatch, capsys):
    """A recipe's smoke test (`--trainer.max_steps 1`) still runs; the warning says why the
    rate stays low. It is bertzoo's own warning: the noise filters leave it shown."""
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match=r"model.warmup \(300 steps\) is longer than the run "
                                         r"\(trainer.max_steps=1\)"):
        status, _, _ = run(["fit", "--task", "classification",
                            f"--model.backbone={tiny_backbone_dir}", "--model.warmup=300",
                            f"--data.train_file={task_data['classification']['train_file']}",
                            *QUIET], capsys)
    assert status == 0


@pytest.mark.parametrize("task, kind", [("classification", "binary"),
                                        ("classification", "utf-16"), ("ner", "latin-1")])
def test_foreign_data_files_are_named(task, kind, task_data, tiny_backbone_dir, tmp_path,
                                      monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    original = Path(task_data[task]["train_file"])
    bad = tmp_path / f"bad{original.suffix}"
    text = original.read_text(encoding="utf-8")
    bad.write_bytes({"binary": text.encode()[:40] + b"\x00\x13\x88PK\x03\x04",
                     "utf-16": text.encode("utf-16"),
                     "latin-1": text.replace("e", "\u00e9").encode("latin-1")}[kind])
    status, _, err = run(["fit", "--task", task, f"--model.backbone={tiny_backbone_dir}",
                          f"--data.train_file={bad}", *QUIET], capsys)
    assert status == 1
    nul_line = text.encode()[:40].count(b"\n") + 1
    expected = {"binary": f"{bad}, line {nul_line}: a NUL byte; this looks like a binary file, "
                          f"not UTF-8 text",
                "utf-16": f"{bad} is UTF-16 text; expected UTF-8 text (save it as UTF-8)",
                "latin-1": f"{bad}, line 1: byte 0xe9 is not UTF-8; expected UTF-8 text (save "
                           f"the file as UTF-8)"}[kind]
    assert err.strip().splitlines()[-1] == f"bertzoo fit: error: {expected}"
    assert_no_run(tmp_path)


def test_damaged_tokenizer_and_config_files_are_named(task_data, tiny_backbone_dir, tmp_path,
                                                      monkeypatch, capsys):
    import shutil
    monkeypatch.chdir(tmp_path)
    train = f"--data.train_file={task_data['classification']['train_file']}"
    backbone = tmp_path / "backbone"
    shutil.copytree(tiny_backbone_dir, backbone)
    (backbone / "tokenizer.json").write_bytes(b"\x89PNG\x1a\n\x00\x00")
    status, _, err = run(["fit", "--task", "classification", f"--model.backbone={backbone}",
                          train, *QUIET], capsys)
    assert status == 1
    assert err.strip().splitlines()[-1] == (
        f"bertzoo fit: error: {backbone}/tokenizer.json, line 2: a NUL byte; this looks like a "
        f"binary file, not a tokenizer.json (UTF-8 JSON)")
    shutil.copy(tiny_backbone_dir / "tokenizer.json", backbone / "tokenizer.json")
    (backbone / "config.json").write_bytes(
        (tiny_backbone_dir / "config.json").read_text().encode("utf-16"))
    status, _, err = run(["fit", "--task", "classification", f"--model.backbone={backbone}",
                          train, *QUIET], capsys)
    assert status == 1
    assert err.strip().splitlines()[-1] == (
        f"bertzoo fit: error: {backbone}/config.json is not UTF-8 JSON text (byte 0: invalid "
        f"start byte); is it a config.json?")
    assert_no_run(tmp_path)


def test_a_trainer_setting_lightning_refuses(task_data, tiny_backbone_dir, tmp_path,
                                             monkeypatch, capsys):
    """Lightning's own refusal (MisconfigurationException), as one line naming the trainer."""
    monkeypatch.chdir(tmp_path)
    status, _, err = run(["fit", "--task", "classification",
                          f"--model.backbone={tiny_backbone_dir}", "--trainer.strategy=deepspeed",
                          f"--data.train_file={task_data['classification']['train_file']}",
                          *QUIET], capsys)
    assert status == 1
    assert err.strip().splitlines()[-1] == (
        "bertzoo fit: error: trainer: To use the `DeepSpeedStrategy`, you must have DeepSpeed "
        "installed. Install it by running `pip install -U deepspeed`.")
    assert_no_run(tmp_path)


def test_checkpointing_switched_off_runs(task_data, tiny_backbone_dir, tmp_path, monkeypatch,
                                         capsys):
    """`--trainer.enable_checkpointing=false` drops bertzoo's checkpoint callbacks (Lightning
    refused the run: found `ModelCheckpoint` in callbacks list)."""
    monkeypatch.chdir(tmp_path)
    status, _, err = run(["fit", "--task", "classification",
                          f"--model.backbone={tiny_backbone_dir}",
                          "--trainer.enable_checkpointing=false",
                          f"--data.train_file={task_data['classification']['train_file']}",
                          *QUIET], capsys)
    assert status == 0, err
    assert not list(tmp_path.glob("runs/**/*.ckpt"))


def test_padding_multiple_beyond_the_positions(task_data, tiny_backbone_dir, tmp_path,
                                               monkeypatch, capsys):
    """A batch padded past the position table failed inside the model's forward pass
    (ValueError: sequence length 600 exceeds max_position_embeddings), after data was read."""
    monkeypatch.chdir(tmp_path)
    status, _, err = run(["fit", "--task", "classification",
                          f"--model.backbone={tiny_backbone_dir}", "--data.pad_to_multiple_of=600",
                          f"--data.train_file={task_data['classification']['train_file']}",
                          *QUIET], capsys)
    assert status == 1
    assert err.strip().splitlines()[-1] == (
        "bertzoo fit: error: data.pad_to_multiple_of (600) pads a batch of data.max_length (128) "
        "to 600 tokens, more than the model's max_position_embeddings (128); use a smaller "
        "multiple")
    assert_no_run(tmp_path)


def test_null_adam_betas_in_a_recipe(tmp_path, monkeypatch, capsys):
    """Found by the long fuzz run: `adam_betas: null` passed the parser (a tuple type takes
    null) and failed in the module with `TypeError: 'NoneType' object is not iterable`."""
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"config": {
        "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64}, "adam_betas": None},
        "data": {"max_seq_length": 32}}))
    status, _, err = run(["pretrain", "--config", str(recipe)], capsys)
    assert status == 1
    assert err.strip().splitlines()[-1] == (
        "bertzoo pretrain: error: model.adam_betas: expected two numbers in [0, 1), got None")
    assert_no_run(tmp_path)
