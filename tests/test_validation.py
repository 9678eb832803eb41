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


def refusal(args: list[str], capsys, folder: Path) -> str:
    """The one error line of a command that must be refused before any run starts in
    `folder` (exit status 1, no run folder left)."""
    status, _, err = run(args, capsys)
    assert status == 1
    assert_no_run(folder)
    return err.strip().splitlines()[-1]


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
    assert refusal(["fit", "--task", "classification",
                    f"--model.backbone={tiny_backbone_dir}", "--data.max_length=512",
                    "--data.labels=[negative, positive]",
                    "--data.train_file=never-read.tsv", *QUIET], capsys, tmp_path) == (
        "bertzoo fit: error: data.max_length (512) exceeds the model's max_position_embeddings "
        "(128); lower it or build the model with more positions")


def test_pair_column_that_is_the_text_column(task_data, tiny_backbone_dir, tmp_path,
                                             monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert refusal(["fit", "--task", "classification",
                    f"--model.backbone={tiny_backbone_dir}",
                    "--data.text_pair_column=sentence",
                    f"--data.train_file={task_data['classification']['train_file']}",
                    *QUIET], capsys, tmp_path) == (
        "bertzoo fit: error: data.text_pair_column is data.text_column ('sentence'): a pair "
        "needs two columns (or set text_pair_column to null for single texts)")


def test_warmup_longer_than_max_steps_is_refused_before_data_is_read(tiny_backbone_dir,
                                                                     tmp_path, monkeypatch,
                                                                     capsys):
    """A warm-up in steps longer than trainer.max_steps: the rate would never reach
    model.learning_rate. Refused when the Trainer is built (the training file is never read)."""
    monkeypatch.chdir(tmp_path)
    assert refusal(["fit", "--task", "classification",
                    f"--model.backbone={tiny_backbone_dir}", "--model.warmup=300",
                    "--data.labels=[negative, positive]",
                    "--data.train_file=never-read.tsv", *QUIET], capsys, tmp_path) == (
        "bertzoo fit: error: model.warmup (300 steps) is longer than the run "
        "(trainer.max_steps=1): the learning rate would never reach model.learning_rate; give "
        "model.warmup as a fraction of the run (e.g. 0.1), lower it, or train longer")


def test_warmup_longer_than_the_epochs_refused_before_a_step(tiny_backbone_dir, tmp_path,
                                                             monkeypatch, capsys):
    """Without trainer.max_steps, the run's length is known once the data is read: epochs x
    optimizer steps per epoch (batches / accumulated batches). Refused there, before a step is
    taken; the same warm-up as a fraction of the run, or one that fits, runs."""
    monkeypatch.chdir(tmp_path)
    train = tmp_path / "train.tsv"  # 24 rows: 6 batches of 4, 3 steps of 2 batches per epoch
    train.write_text("sentence\tlabel\n" + "".join(f"sentence number {i}\t{i % 2}\n"
                                                   for i in range(24)), encoding="utf-8")
    steps_per_epoch = 3
    epochs = ["--task", "classification", f"--model.backbone={tiny_backbone_dir}",
              f"--data.train_file={train}", "--data.batch_size=4",
              "--trainer.accumulate_grad_batches=2", "--trainer.max_epochs=2",
              "--trainer.max_steps=-1", "--trainer.limit_val_batches=0",
              "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    total = 2 * steps_per_epoch
    assert refusal(["fit", *epochs, f"--model.warmup={total + 1}"], capsys, tmp_path) == (
        f"bertzoo fit: error: model.warmup ({total + 1} steps) is longer than the run ({total} "
        f"optimizer steps: trainer.max_epochs=2 x {steps_per_epoch} steps per epoch of the "
        f"training data, each of trainer.accumulate_grad_batches=2 batches): the learning rate "
        f"would never reach model.learning_rate; give model.warmup as a fraction of the run "
        f"(e.g. 0.1), lower it, or train longer")
    for fits in (f"--model.warmup={total}", "--model.warmup=0.5"):
        status, _, err = run(["fit", *epochs, fits], capsys)
        assert status == 0, err
    import torch
    runs = sorted(tmp_path.glob("runs/classification/version_*/checkpoints/last.ckpt"))
    assert [torch.load(p, weights_only=True)["global_step"] for p in runs] == [total, total]


@pytest.mark.parametrize("extra, message", [
    (["--model.warmup=2.5"], "model.warmup (2.5) is neither a fraction of the run (< 1) nor a "
                             "whole number of steps; give 2 steps or a fraction such as 0.1"),
    (["--model.warmup=300", "--model.scheduler=constant"], None),  # no warm-up in that schedule
    (["--model.warmup=0.999"], None),  # a fraction of the run
], ids=["not-whole", "constant", "fraction"])
def test_warmup_forms(extra, message, task_data, tiny_backbone_dir, tmp_path, monkeypatch,
                      capsys):
    monkeypatch.chdir(tmp_path)
    status, _, err = run(["fit", "--task", "classification",
                          f"--model.backbone={tiny_backbone_dir}", *extra,
                          f"--data.train_file={task_data['classification']['train_file']}",
                          *QUIET], capsys)
    if message is None:
        assert status == 0, err
    else:
        assert status == 1 and err.strip().splitlines()[-1] == f"bertzoo fit: error: {message}"
        assert_no_run(tmp_path)


# ----------------------------------------------------------------------------- global batch
def test_global_batch_size_derives_the_accumulation(tiny_backbone_dir, tmp_path, monkeypatch,
                                                    capsys):
    """global_batch_size 8 at data.batch_size 4 on one device: 2 batches accumulated per
    optimizer step, as the run's config.yaml records; 2 steps read 4 batches."""
    import torch
    monkeypatch.chdir(tmp_path)
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"sentence number {i}\t{i % 2}\n"
                                                   for i in range(24)), encoding="utf-8")
    status, _, err = run(["fit", "--task", "classification",
                          f"--model.backbone={tiny_backbone_dir}", f"--data.train_file={train}",
                          "--data.batch_size=4", "--global_batch_size=8",
                          "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
                          "--trainer.enable_progress_bar=false",
                          "--trainer.enable_model_summary=false"], capsys)
    assert status == 0, err
    run_dir = tmp_path / "runs/classification/version_0"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["global_batch_size"] == 8 and saved["trainer"]["accumulate_grad_batches"] == 2
    checkpoint = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2
    batches = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"]
    assert batches == 4


@pytest.mark.parametrize("extra, message", [
    (["--global_batch_size=10"],
     "global_batch_size (10) is not a multiple of data.batch_size (4) x 1 device(s) "
     "(trainer.devices) x 1 node(s) (trainer.num_nodes) = 4: no whole number of accumulated "
     "batches makes it; use 8 or 12, or another data.batch_size"),
    (["--global_batch_size=2"],
     "global_batch_size (2) is not a multiple of data.batch_size (4) x 1 device(s) "
     "(trainer.devices) x 1 node(s) (trainer.num_nodes) = 4: no whole number of accumulated "
     "batches makes it; use 4, or another data.batch_size"),
    (["--global_batch_size=16", "--trainer.accumulate_grad_batches=2"],
     "trainer.accumulate_grad_batches (2) contradicts global_batch_size (16): data.batch_size "
     "(4) x 1 device(s) (trainer.devices) x 1 node(s) (trainer.num_nodes) x 2 = 8 sequences per "
     "step; leave trainer.accumulate_grad_batches out (global_batch_size makes it 4), or "
     "global_batch_size out"),
    # 1 is the default, but typed it is a request like any other
    (["--trainer.accumulate_grad_batches", "1", "--global_batch_size=16"],
     "trainer.accumulate_grad_batches (1) contradicts global_batch_size (16): data.batch_size "
     "(4) x 1 device(s) (trainer.devices) x 1 node(s) (trainer.num_nodes) x 1 = 4 sequences per "
     "step; leave trainer.accumulate_grad_batches out (global_batch_size makes it 4), or "
     "global_batch_size out"),
], ids=["not-a-multiple", "smaller-than-a-batch", "contradicting-accumulation",
        "accumulation-typed-as-1"])
def test_global_batch_that_does_not_divide_is_refused(
        extra, message, tiny_backbone_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert refusal(["fit", "--task", "classification",
                    f"--model.backbone={tiny_backbone_dir}", "--data.batch_size=4",
                    "--data.labels=[negative, positive]",
                    "--data.train_file=never-read.tsv", *extra, *QUIET], capsys, tmp_path) == (
        f"bertzoo fit: error: {message}")


def test_a_recipes_accumulation_contradicting_its_global_batch(tiny_backbone_dir, tmp_path,
                                                               monkeypatch, capsys):
    """The accumulation counts as given when a --config file sets it, and the product is the
    same from the command line or a recipe."""
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "classification", "global_batch_size": 32,
        "trainer": {"accumulate_grad_batches": 4},
        "model": {"backbone": str(tiny_backbone_dir)},
        "data": {"batch_size": 4, "labels": ["negative", "positive"],
                 "train_file": "never-read.tsv"}}))
    status, _, err = run(["fit", "--config", str(recipe), *QUIET], capsys)
    assert status == 1
    assert err.strip().splitlines()[-1].startswith(
        "bertzoo fit: error: trainer.accumulate_grad_batches (4) contradicts global_batch_size "
        "(32): data.batch_size (4) x 1 device(s)")
    assert_no_run(tmp_path)


def test_global_batch_arithmetic_over_devices_and_nodes():
    """data.batch_size x devices x nodes x accumulation, for the hardware a recipe meets."""
    from bertzoo.training.checks import accumulation_for
    assert accumulation_for(256, 32, 8, 1, 1, accumulate_given=False) == 1  # 8 GPUs
    assert accumulation_for(256, 32, 1, 1, 1, accumulate_given=False) == 8  # one GPU
    assert accumulation_for(256, 8, 4, 2, 1, accumulate_given=False) == 4  # 2 nodes of 4
    assert accumulation_for(256, 32, 1, 1, 8, accumulate_given=True) == 8  # said, and agrees
    with pytest.raises(ConfigError, match=r"global_batch_size \(256\) is not a multiple of "
                                          r"data.batch_size \(32\) x 3 device\(s\) "
                                          r"\(trainer.devices\) x 1 node\(s\) "
                                          r"\(trainer.num_nodes\) = 96: .*; use 192 or 288"):
        accumulation_for(256, 32, 3, 1, 1, accumulate_given=False)


# The accumulation each pretraining recipe wrote out before it gave global_batch_size, on the
# 8 GPUs of one node its header names: the global batch gives it back there.
ACCUMULATION_ON_8_GPUS = {"bert-base-phase1": 1, "bert-base-phase2": 4, "bert-large": 1,
                          "mlm-only": 4, "zh-wikipedia": 1}


def test_recipes_with_a_global_batch_run_as_before_on_8_gpus_and_fit_one():
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    from bertzoo.training.checks import accumulation_for
    given = {p.stem: yaml.safe_load(p.read_text()) for p in sorted(recipes.rglob("*.yaml"))
             if "global_batch_size" in yaml.safe_load(p.read_text())}
    assert set(given) == set(ACCUMULATION_ON_8_GPUS)
    for name, recipe in given.items():
        batch, nodes = recipe["data"]["batch_size"], recipe["trainer"].get("num_nodes", 1)
        assert "accumulate_grad_batches" not in recipe["trainer"], name  # derived, not typed
        assert accumulation_for(recipe["global_batch_size"], batch, 8, nodes, 1,
                                accumulate_given=False) == ACCUMULATION_ON_8_GPUS[name], name
        accumulation_for(recipe["global_batch_size"], batch, 1, nodes, 1, accumulate_given=False)


def test_option_given_reads_the_command_line_and_the_recipes(tmp_path):
    from bertzoo.cli import option_given
    recipe = tmp_path / "r.yaml"
    recipe.write_text("trainer:\n  accumulate_grad_batches: 2\n")
    plain = tmp_path / "plain.yaml"
    plain.write_text("trainer:\n  max_steps: 2\n")
    trainer_only = tmp_path / "trainer.yaml"  # a file for the trainer group alone
    trainer_only.write_text("accumulate_grad_batches: 2\n")
    given = lambda *args: option_given(list(args), "trainer", "accumulate_grad_batches")  # noqa
    assert given("--trainer.accumulate_grad_batches", "1")
    assert given("--trainer.accumulate_grad_batches=1")
    assert given("--config", str(recipe)) and given(f"--config={recipe}")
    assert given("--trainer", '{"accumulate_grad_batches": 3}')
    assert given("--trainer", str(trainer_only)) and not given("--trainer", str(plain))
    assert not given("--config", str(plain), "--trainer.max_steps=3")
    assert not given("--trainer", '{"max_steps": 3}')
    assert not given("--trainer.accumulate_grad_batches_typo=2")


def test_global_batch_size_shows_its_range_in_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    for args in (["pretrain"], ["fit", "--task", "classification"]):
        status, out, _ = run([*args, "--help"], capsys)
        assert status == 0
        found = re.search(r"--global_batch_size GLOBAL_BATCH_SIZE\s+(.*?)\n", out)
        assert found and found.group(1).endswith("(type: int >= 1 | null, default: null)"), \
            found and found.group(1)


@pytest.mark.parametrize("option, value, expected", [
    ("--workers", "0", "expected int >= 1, got 0"),
    ("--max-batch-size", "0", "expected int >= 1, got 0"),
    ("--batch-size", "-2", "expected int >= 1, got -2"),
    ("--batch-timeout", "-1", "expected float >= 0, got -1.0"),
    ("--port", "80", "expected int in [1024, 65535], got 80"),
])
def test_serve_options_have_ranges(option, value, expected, capsys, monkeypatch):
    """`bertzoo serve`'s numbers, refused by its parser with the range (LitServe raised a
    ValueError traceback for each of these), and the range in --help."""
    status, _, err = run(["serve", "model.ckpt", option, value], capsys)
    assert status == 2
    assert err.strip().splitlines()[-1] == f"bertzoo serve: error: argument {option}: {expected}"
    monkeypatch.setenv("COLUMNS", "1000")
    _, out, _ = run(["serve", "--help"], capsys)
    shown = next(" ".join(block.split()) for block in re.split(r"\n(?=  -)", out)
                 if block.strip().startswith(option))
    assert f"({expected.split(', got')[0].removeprefix('expected ')}" in shown, shown


@pytest.mark.parametrize("case", ["parser", "before data", "recipe", "first step"])
def test_bertzoo_traceback_shows_the_traceback(case, tiny_backbone_dir, tmp_path, monkeypatch,
                                               capsys):
    """BERTZOO_TRACEBACK=1: the error is raised (Python prints the traceback) with the cause
    it was made from, at every stage an error can be found."""
    import argparse
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BERTZOO_TRACEBACK", "1")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("task: classification\nmodel: {backbone: [x\n")
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"sentence {i}\t{i % 2}\n"
                                                   for i in range(8)), encoding="utf-8")
    base = ["fit", "--task", "classification", f"--model.backbone={tiny_backbone_dir}",
            "--trainer.enable_progress_bar=false"]
    args, raised, cause = {
        "parser": (["fit", "--task", "classification", "--data.batch_size=0"],
                   argparse.ArgumentError, Exception),
        "before data": ([*base, "--model.warmup=300", "--trainer.max_steps=1",
                         "--data.labels=[a, b]", "--data.train_file=never-read.tsv"],
                        ConfigError, type(None)),
        "recipe": (["fit", "--config", str(recipe)], ConfigError, yaml.YAMLError),
        "first step": ([*base, "--model.warmup=300", "--trainer.max_epochs=1",
                        f"--data.train_file={train}"],
                       ConfigError, type(None)),
    }[case]
    with pytest.raises(raised) as error:
        main(args)
    assert isinstance(error.value.__cause__, cause), repr(error.value.__cause__)
    assert "error:" not in capsys.readouterr().err  # no one-line report instead


# -------------------------------------------------------------------------- damaged recipes
@pytest.mark.parametrize("content, message", [
    (b"model: {backbone: [1, 2\n",
     "{path}, line 2, column 1: not valid YAML (expected ',' or ']', but got '<stream end>'); "
     "expected a recipe: a YAML mapping of model, data and trainer options"),
    (b"model:\n  x: 1\n\x00\x01\x02",
     "{path}, line 3: a NUL byte; this looks like a binary file, not a YAML recipe (UTF-8 text)"),
    ("trainer:\n  max_steps: 1 # caf\u00e9\n".encode("latin-1"),
     "{path}, line 2: byte 0xe9 is not UTF-8; expected a YAML recipe (UTF-8 text) (save the "
     "file as UTF-8)"),
    ("task: ner\n".encode("utf-16"),
     "{path} is UTF-16 text; expected a YAML recipe (UTF-8 text) (save it as UTF-8)"),
    (b"- model\n- data\n",
     "{path} holds a YAML list, not a recipe: expected a YAML mapping of model, data and "
     "trainer options"),
    (b"", "{path} holds nothing, not a recipe: expected a YAML mapping of model, data and "
          "trainer options"),
], ids=["yaml", "binary", "latin-1", "utf-16", "list", "empty"])
@pytest.mark.parametrize("command", ["fit", "pretrain"])
def test_a_damaged_recipe_is_named(command, content, message, tmp_path, monkeypatch, capsys):
    """Found by the fuzzer's damaged recipes: a recipe that is not YAML text ended in yaml's or
    the codec's traceback (`fit` reads the recipe for its `task:` before the parser does)."""
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(content)
    status, _, err = run([command, "--config", str(recipe)], capsys)
    assert status == 1
    assert err.strip().splitlines() == [f"bertzoo {command}: error: "
                                        f"{message.format(path=recipe)}"]
    assert_no_run(tmp_path)


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
    assert refusal(["fit", "--task", "classification", f"--model.backbone={backbone}",
                    train, *QUIET], capsys, tmp_path) == (
        f"bertzoo fit: error: {backbone}/config.json is not UTF-8 JSON text (byte 0: invalid "
        f"start byte); is it a config.json?")


def test_a_trainer_setting_lightning_refuses(task_data, tiny_backbone_dir, tmp_path,
                                             monkeypatch, capsys):
    """Lightning's own refusal (MisconfigurationException), as one line naming the trainer."""
    monkeypatch.chdir(tmp_path)
    assert refusal(["fit", "--task", "classification",
                    f"--model.backbone={tiny_backbone_dir}", "--trainer.strategy=deepspeed",
                    f"--data.train_file={task_data['classification']['train_file']}",
                    *QUIET], capsys, tmp_path) == (
        "bertzoo fit: error: trainer: To use the `DeepSpeedStrategy`, you must have DeepSpeed "
        "installed. Install it by running `pip install -U deepspeed`.")


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
    assert refusal(["fit", "--task", "classification",
                    f"--model.backbone={tiny_backbone_dir}", "--data.pad_to_multiple_of=600",
                    f"--data.train_file={task_data['classification']['train_file']}",
                    *QUIET], capsys, tmp_path) == (
        "bertzoo fit: error: data.pad_to_multiple_of (600) pads a batch of data.max_length (128) "
        "to 600 tokens, more than the model's max_position_embeddings (128); use a smaller "
        "multiple")


def test_null_adam_betas_in_a_recipe(tmp_path, monkeypatch, capsys):
    """Found by the long fuzz run: `adam_betas: null` passed the parser (a tuple type takes
    null) and failed in the module with `TypeError: 'NoneType' object is not iterable`."""
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"config": {
        "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64}, "adam_betas": None},
        "data": {"max_seq_length": 32}}))
    assert refusal(["pretrain", "--config", str(recipe)], capsys, tmp_path) == (
        "bertzoo pretrain: error: model.adam_betas: expected tuple[float in [0, 1), float in "
        "[0, 1)], got null (an empty value in the recipe); give a value, or leave the key out "
        "for its default")
    from bertzoo.pretraining import PretrainingModule  # built in Python, the module refuses it
    with pytest.raises(ConfigError, match=r"model.adam_betas: expected two numbers in \[0, 1\), "
                                          r"got None"):
        PretrainingModule(config="tiny", adam_betas=None)


@pytest.mark.parametrize("section, key, expected", [
    ("model", "warmup", "float >= 0"),
    ("data", "batch_size", "int >= 1"),
    ("data", "max_length", "int >= 5"),
    ("trainer", "accumulate_grad_batches", "int"),
])
def test_an_empty_value_in_a_recipe_is_refused(section, key, expected, tiny_backbone_dir,
                                               tmp_path, monkeypatch, capsys):
    """Found by the fuzzer's damaged recipes (a recipe cut after `warmup:`): the parser does
    not check a null from a config file, and the module met it in arithmetic (TypeError:
    '<' not supported between instances of 'NoneType' and 'int'). An option whose type has
    null (data.eval_batch_size) takes it."""
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"task: classification\n{section}:\n  {key}:\n  \n")
    assert refusal(["fit", "--config", str(recipe), f"--model.backbone={tiny_backbone_dir}",
                    "--data.labels=[negative, positive]",
                    "--data.train_file=never-read.tsv", *QUIET], capsys, tmp_path) == (
        f"bertzoo fit: error: {section}.{key}: expected {expected}, got null (an empty value in "
        f"the recipe); give a value, or leave the key out for its default")
    from bertzoo.training.options import accepts_none, option_types
    from bertzoo.tasks.classification import ClassificationDataModule
    assert accepts_none(option_types(ClassificationDataModule)["eval_batch_size"])


# ------------------------------------------------------------------------- no blanket catch
# Where a catch-all is the design, and where the error goes: (file, function) -> why.
CATCH_ALL_BOUNDARIES = {
    ("tasks/registry.py", "_load"): "a plugin's failure is recorded (`bertzoo tasks` lists it "
                                    "as broken) and raised from it when the task is used",
    ("glue.py", "main"): "one GLUE task's failure is recorded in the results and reported; the "
                         "suite goes on and exits 1 (BERTZOO_TRACEBACK=1 prints the traceback)",
    ("serving.py", "_answer"): "a batch that fails is answered one request at a time",
    ("serving.py", "_failure"): "a request the model cannot answer gets a 422 naming the error; "
                                "the server goes on",
}


def test_no_blanket_except_swallows_an_error():
    """Every `except Exception` (or BaseException, or a bare `except:`) in bertzoo and its
    plugin re-raises: as a named, user-facing error from the original (`raise ... from err`),
    or as it was (`raise`), unless it is one of the boundaries above."""
    import ast
    root = Path(__file__).resolve().parents[1]
    sources = [*(root / "bertzoo").rglob("*.py"), *(root / "plugins").rglob("*.py")]
    swallowing = []
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        functions = [node for node in ast.walk(tree)
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for handler in (n for n in ast.walk(tree) if isinstance(n, ast.ExceptHandler)):
            caught = handler.type
            names = [e.id for e in (caught.elts if isinstance(caught, ast.Tuple) else [caught])
                     if isinstance(e, ast.Name)] if caught is not None else ["(bare)"]
            if not {"Exception", "BaseException", "(bare)"} & set(names):
                continue
            raises = [n for n in ast.walk(handler) if isinstance(n, ast.Raise)]
            if raises and all(r.exc is None or r.cause is not None for r in raises):
                continue
            inside = min((f for f in functions if f.lineno <= handler.lineno <= f.end_lineno),
                         key=lambda f: f.end_lineno - f.lineno, default=None)
            where = (path.relative_to(root / "bertzoo").as_posix()
                     if (root / "bertzoo") in path.parents else path.name,
                     inside.name if inside else "")
            if where not in CATCH_ALL_BOUNDARIES:
                swallowing.append(f"{path.relative_to(root)}:{handler.lineno} ({where[1]})")
    assert not swallowing, f"catch-alls that do not re-raise from the cause: {swallowing}"
