"""bertzoo as pip installs it (a wheel, not editable): the packaged recipes are there, and a
copied one runs.

The checkout's packaging files are copied to a temporary folder (so no stale build/ folder
of the checkout leaks into the wheel) and installed with `pip install --no-deps
--no-build-isolation --target SITE`: a real wheel build and install, with the dependencies
this interpreter already has. Every command then runs in a fresh process, from a folder
outside the repository, with PYTHONPATH=SITE, and checks that it imported that installed copy,
not the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bertzoo import cli, recipe_catalog
from bertzoo.tasks.registry import get_task

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "bertzoo", "recipes")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, source / name)
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--no-cache-dir", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def recipes_command() -> list[str]:
    """`bertzoo recipes` once the CLI routes it; the catalog module's own entry until then."""
    if "recipes" in cli.COMMANDS:
        return ["-m", "bertzoo.cli", "recipes"]
    return ["-m", "bertzoo.recipe_catalog"]


def test_the_installed_copy_is_the_one_imported(site, tmp_path):
    done = run(site, tmp_path, "-c", "import bertzoo, bertzoo.recipe_catalog as c; "
               "print(bertzoo.__file__); print(c.recipes_root())")
    assert done.returncode == 0, done.stderr
    module, recipes = done.stdout.split()
    assert Path(module).is_relative_to(site) and Path(recipes) == site / "bertzoo" / "recipes"


# -------------------------------------------- the command's errors (in this process: no wheel)
def test_copy_refuses_to_overwrite(tmp_path, capsys):
    assert recipe_catalog.main(["copy", "classification/sst2", str(tmp_path)]) == 0
    (tmp_path / "sst2.yaml").write_text("mine")
    assert recipe_catalog.main(["copy", "classification/sst2", str(tmp_path)]) == 1
    assert (tmp_path / "sst2.yaml").read_text() == "mine"
    assert capsys.readouterr().err.splitlines() == [
        f"bertzoo recipes: error: {tmp_path / 'sst2.yaml'} already exists; not overwritten "
        f"(remove it, or copy to another folder)"]


def test_unknown_name_gets_the_closest_match(tmp_path, capsys):
    assert recipe_catalog.main(["copy", "sst-2", str(tmp_path / "new")]) == 1
    assert not (tmp_path / "new").exists()
    assert capsys.readouterr().err.splitlines() == [
        "bertzoo recipes: error: no recipe 'sst-2'; did you mean 'classification/sst2'? "
        "(`bertzoo recipes` lists them)"]
    assert recipe_catalog.main(["copy", "zzzz", str(tmp_path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "bertzoo recipes: error: no recipe 'zzzz' (`bertzoo recipes` lists them)"]


def test_copy_to_a_new_file_name_and_not_onto_a_file(tmp_path, capsys):
    assert recipe_catalog.main(["copy", "pretrain/tiny", str(tmp_path / "a" / "mine.yaml")]) == 0
    assert (tmp_path / "a" / "mine.yaml").read_text() == \
        (ROOT / "recipes" / "pretrain" / "tiny.yaml").read_text()
    assert "run it: bertzoo pretrain --config" in capsys.readouterr().out
    (tmp_path / "file").write_text("")
    assert recipe_catalog.main(["copy", "tiny", str(tmp_path / "file")]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err


def test_the_wheel_holds_every_module_and_recipe(site):
    """A package under bertzoo/ missing from pyproject's list, or a recipe missing from the
    package data, fails here by name."""
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "bertzoo").rglob("*.py")
               if "__pycache__" not in p.parts}
    installed = {p.relative_to(site).as_posix() for p in (site / "bertzoo").rglob("*.py")}
    assert modules - installed == set(), "modules missing from the wheel: add their package " \
                                         "to [tool.setuptools] packages in pyproject.toml"
    recipes = {p.relative_to(ROOT / "recipes").as_posix()
               for p in (ROOT / "recipes").rglob("*.y*ml")}
    shipped = {p.relative_to(site / "bertzoo" / "recipes").as_posix()
               for p in (site / "bertzoo" / "recipes").rglob("*.y*ml")}
    assert recipes == shipped


def test_installed_bertzoo_lists_copies_and_runs_a_recipe(site, tmp_path, tiny_backbone_dir):
    work = tmp_path / "work"  # outside the repository: nothing of the checkout is importable
    work.mkdir()
    listed = run(site, work, *recipes_command())
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()[2:]}
    assert rows["classification/sst2"] == "classification"
    assert rows["pretrain/tiny"] == "pretrain" and rows["qa/squad"] == "qa"
    assert "GLUE SST-2: is a movie-review sentence positive or negative?" in listed.stdout

    copied = run(site, work, *recipes_command(), "copy", "classification/sst2", "my-recipes")
    assert copied.returncode == 0, copied.stderr
    recipe = work / "my-recipes" / "sst2.yaml"
    assert recipe.read_text() == (ROOT / "recipes" / "classification" / "sst2.yaml").read_text()
    assert f"bertzoo fit --config {Path('my-recipes') / 'sst2.yaml'}" in copied.stdout

    # The copy runs, with its header's local-files override pointing at a few SST-2-layout rows.
    (tmp_path / "data").mkdir()
    data = get_task("classification").example_data(tmp_path / "data")
    fit = run(site, work, "-m", "bertzoo.cli", "fit", "--config", str(recipe),
              "--data.dataset", "null", "--data.dataset_config", "null",
              "--data.train_file", data["train_file"],
              "--data.validation_file", data["validation_file"],
              f"--model.backbone={tiny_backbone_dir}", "--trainer.max_epochs=1",
              "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
              "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false")
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert (work / "runs" / "classification" / "version_0" / "checkpoints" / "last.ckpt").is_file()
