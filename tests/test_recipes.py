"""Every recipe in the repository, found recursively (recipes/**, plugins/*/recipes/**): none is
skipped, and no error is swallowed.

For each one:
    - it opens with a comment block whose command runs that very file;
    - it parses as it is, through the command it is meant for (`--print_config`: unknown keys,
      wrong types and unknown tasks fail here);
    - it runs: one training step and one validation batch, with tiny overrides that replace
      only what a test cannot have (the backbone -> a tiny random BERT, the data -> a few rows
      written by the task's `example_data` in the recipe's own layout, the corpus -> a few
      generated documents, the run length -> one step, worker/process counts -> none).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import yaml

from bertzoo.cli import class_path_from_args, main, resolve_class
from bertzoo.tasks.registry import get_task, list_tasks

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted([*(ROOT / "recipes").rglob("*.yaml"), *(ROOT / "recipes").rglob("*.yml"),
                  *(path for plugin in (ROOT / "plugins").iterdir() if plugin.is_dir()
                    for path in (plugin / "recipes").rglob("*.y*ml"))])
RECIPE_IDS = [str(p.relative_to(ROOT)) for p in RECIPES]


def load(recipe: Path) -> dict:
    loaded = yaml.safe_load(recipe.read_text())
    assert isinstance(loaded, dict), f"{recipe} is not a YAML mapping"
    return loaded


def command_of(recipe: Path) -> str:
    """`pretrain` for recipes/pretrain/**, else `fit` (a task recipe)."""
    return "pretrain" if (ROOT / "recipes" / "pretrain") in recipe.parents else "fit"


def task_of(recipe: Path, config: dict):
    """The TaskSpec a task recipe is for: its `task:` key, or the class its `model:` names."""
    if config.get("task"):
        return get_task(config["task"])
    list_tasks()
    module_class = resolve_class(class_path_from_args(["--config", str(recipe)], "model"))
    assert module_class is not None, f"{recipe} names neither a task nor a model class_path"
    return next(t.spec for t in list_tasks() if t.spec and issubclass(module_class, t.spec.module))


def arguments(section: str, values: dict) -> list[str]:
    return [f"--{section}.{key}={value if isinstance(value, str) else json.dumps(value)}"
            for key, value in values.items()]


def test_recipes_are_found_in_every_folder():
    folders = {p.parent.relative_to(ROOT).as_posix() for p in RECIPES}
    assert {"recipes/classification", "recipes/ner", "recipes/qa", "recipes/pretrain",
            "plugins/bertzoo-multiple-choice/recipes"} <= folders
    every_yaml = {p for p in (ROOT / "recipes").rglob("*") if p.suffix in (".yaml", ".yml")}
    assert every_yaml <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES, ids=RECIPE_IDS)
def test_recipe_opens_with_a_comment_block_that_runs_it(recipe):
    lines = recipe.read_text().splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    assert len(header) >= 5, f"{recipe}: no comment block (what, what first, command, override)"
    text = "\n".join(header)
    relative = recipe.relative_to(ROOT).as_posix()
    assert f"bertzoo {command_of(recipe)}" in text and relative in text, \
        f"{recipe}: the header shows no `bertzoo {command_of(recipe)} ... {relative}` command"


@pytest.mark.parametrize("recipe", RECIPES, ids=RECIPE_IDS)
def test_recipe_parses_as_written(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # recipes' relative paths are relative to the repository root
    with pytest.raises(SystemExit) as exit_:
        main([command_of(recipe), "--config", str(recipe), "--print_config"])
    assert exit_.value.code == 0, capsys.readouterr().err
    printed = yaml.safe_load(capsys.readouterr().out)
    written = load(recipe)
    for section in ("model", "data", "trainer"):
        for key, value in (written.get(section) or {}).items():
            if key in ("class_path", "init_args"):
                continue
            assert key in printed[section] or key in printed[section].get("init_args", {}), \
                f"{recipe}: {section}.{key} vanished while parsing"


def write_corpus(folder: Path) -> str:
    """A few documents in BERT's pretraining layout: a sentence per line, blank lines between
    documents."""
    from bertzoo.testing import documents, write_bert_corpus
    return str(write_bert_corpus(folder / "corpus.txt", documents(12, min_sentences=3)))


def tiny_overrides(recipe: Path, config: dict, backbone: Path, folder: Path) -> list[str]:
    model, data, trainer = (config.get(k) or {} for k in ("model", "data", "trainer"))
    model = model.get("init_args", model)
    data = data.get("init_args", data)
    overrides = ["--trainer.max_time=null", "--trainer.limit_val_batches=1",
                 "--trainer.accumulate_grad_batches=1", "--trainer.log_every_n_steps=1",
                 "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    if model.get("config") and not model.get("backbone"):
        # Random initialisation: keep it, at the smallest size, on the tiny vocabulary.
        overrides += ["--model.config=tiny", f"--data.tokenizer={backbone}"]
    else:
        overrides += [f"--model.backbone={backbone}"]
    for key in ("num_workers", "num_proc"):
        if key in data:
            overrides.append(f"--data.{key}={0 if key == 'num_workers' else 'null'}")
    if command_of(recipe) == "pretrain":
        overrides += ["--trainer.max_steps=1", "--trainer.val_check_interval=1",
                      "--trainer.check_val_every_n_epoch=null",
                      f"--data.train_files={write_corpus(folder)}", "--data.format=bert",
                      "--data.dataset=null", "--data.validation_files=null",
                      "--data.validation_documents=2", "--data.max_seq_length=64",
                      "--data.batch_size=4", "--data.eval_batch_size=4"]
        return overrides
    spec = task_of(recipe, config)
    if "like" in inspect.signature(spec.example_data).parameters:
        data_args = spec.example_data(folder, like=data)
    else:
        data_args = spec.example_data(folder)
    if data.get("dataset"):
        overrides += ["--data.dataset=null", "--data.dataset_config=null"]
    overrides += arguments("data", data_args)
    overrides += ["--trainer.max_steps=-1", "--trainer.max_epochs=1",
                  "--trainer.limit_train_batches=1"]
    return overrides


@pytest.mark.parametrize("recipe", RECIPES, ids=RECIPE_IDS)
def test_recipe_runs_with_tiny_overrides(recipe, tiny_backbone_dir, tmp_path, monkeypatch):
    config = load(recipe)
    folder = tmp_path / "data"
    folder.mkdir()
    overrides = tiny_overrides(recipe, config, tiny_backbone_dir, folder)
    monkeypatch.chdir(tmp_path)
    command = command_of(recipe)
    assert main([command, "--config", str(recipe), *overrides]) == 0
    name = "pretrain" if command == "pretrain" else task_of(recipe, config).name
    run = tmp_path / "runs" / name / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file(), f"{recipe}: no checkpoint in {run}"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["limit_val_batches"] == 1  # the overrides were applied on top
