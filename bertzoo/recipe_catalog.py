"""The recipes that ship with bertzoo: `bertzoo recipes` lists them, `bertzoo recipes copy NAME
DIR` copies one out to edit and run, as torchtune's `tune ls` / `tune cp` do.

    bertzoo recipes                          name, command/task and one line on each
    bertzoo recipes copy NAME DIR            DIR/<file> from the packaged NAME (never overwrites)

A recipe's name is its path under the recipes folder without the suffix
("classification/sst2"); its file name alone ("sst2") works too while no other recipe has it.

Where they come from: the repository's top-level `recipes/` folder is the source. The wheel
carries it as the data-only package `bertzoo.recipes` (pyproject.toml maps that package onto
`recipes/`), read through `importlib.resources` in an installed bertzoo. A source checkout
(editable, or on PYTHONPATH) has no bertzoo/recipes folder: `recipes/` beside the `bertzoo`
package is read there.
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import sys
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

SUFFIXES = (".yaml", ".yml")


class RecipeError(ValueError):
    """An unknown recipe name, or a copy that would overwrite a file."""


@dataclass(frozen=True)
class Recipe:
    name: str            # "classification/sst2"
    file: Traversable    # the packaged YAML (a Path in a source tree or an unzipped wheel)

    @property
    def filename(self) -> str:
        return self.file.name

    @property
    def command(self) -> str:
        """The `bertzoo` command that runs it: `pretrain` for pretrain/*, else `fit`."""
        return "pretrain" if self.name.startswith("pretrain/") else "fit"

    def text(self) -> str:
        return self.file.read_text(encoding="utf-8")

    def header(self) -> list[str]:
        """The opening comment block, without the `#`s."""
        lines = []
        for line in self.text().splitlines():
            if not line.startswith("#"):
                break
            lines.append(line[1:].strip())
        return lines

    @property
    def description(self) -> str:
        """The header's first line: each recipe opens with a one-line summary."""
        header = self.header()
        return header[0] if header else ""

    @property
    def task(self) -> str:
        """The `task:` the recipe names ("pretrain" for pretraining recipes)."""
        import yaml
        loaded = yaml.safe_load(self.text())
        if isinstance(loaded, dict) and loaded.get("task"):
            return str(loaded["task"])
        return "pretrain" if self.command == "pretrain" else ""


def recipes_root() -> Traversable:
    """The folder of packaged recipes: `bertzoo/recipes` of an installed bertzoo (its
    `bertzoo.recipes` package data), or `recipes/` beside the `bertzoo` package of a source
    checkout (editable installs included: there the package maps onto that folder)."""
    installed = resources.files("bertzoo") / "recipes"
    if installed.is_dir():
        return installed
    checkout = Path(__file__).resolve().parents[1] / "recipes"
    if checkout.is_dir():
        return checkout
    raise RecipeError(f"no packaged recipes: neither {installed} nor {checkout} exists "
                      f"(reinstall bertzoo)")


def _walk(folder: Traversable, prefix: str = ""):
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            yield from _walk(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(SUFFIXES):
            yield Recipe(prefix + entry.name.rsplit(".", 1)[0], entry)


def list_recipes() -> list[Recipe]:
    """Every packaged recipe, sorted by name."""
    return list(_walk(recipes_root()))


def find_recipe(name: str) -> Recipe:
    """The recipe called `name` (its full name, or its file name when no other has it)."""
    found = list_recipes()
    wanted = name.strip().removesuffix(".yaml").removesuffix(".yml").strip("/")
    for recipe in found:
        if recipe.name == wanted:
            return recipe
    by_stem = [r for r in found if r.name.rsplit("/", 1)[-1] == wanted]
    if len(by_stem) == 1:
        return by_stem[0]
    if len(by_stem) > 1:
        raise RecipeError(f"recipe name {name!r} is ambiguous: "
                          f"{', '.join(r.name for r in by_stem)}")
    names = [r.name for r in found] + [r.name.rsplit("/", 1)[-1] for r in found]
    close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.5)
    hint = ""
    if close:
        match = next(r.name for r in found if close[0] in (r.name, r.name.rsplit("/", 1)[-1]))
        hint = f"; did you mean {match!r}?"
    raise RecipeError(f"no recipe {name!r}{hint} (`bertzoo recipes` lists them)")


def copy_recipe(name: str, destination: str | Path) -> Path:
    """Copy recipe `name` into folder `destination` (created if missing) under its own file
    name, or to `destination` itself when that ends in .yaml/.yml. Never overwrites."""
    recipe = find_recipe(name)
    destination = Path(destination)
    if destination.suffix in SUFFIXES and not destination.is_dir():
        target = destination
    else:
        if destination.exists() and not destination.is_dir():
            raise RecipeError(f"{destination} is a file, not a folder (give a folder, or a "
                              f"new .yaml file name)")
        target = destination / recipe.filename
    if target.exists():
        raise RecipeError(f"{target} already exists; not overwritten (remove it, or copy to "
                          f"another folder)")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Exclusive creation: a file that appeared since the check above is not overwritten either.
    with recipe.file.open("rb") as source, open(target, "xb") as out:
        shutil.copyfileobj(source, out)
    return target


def format_table(recipes: list[Recipe]) -> str:
    rows = [(r.name, r.task, r.description) for r in recipes]
    header = ("name", "task", "description")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(2)]
    lines = []
    for row in [header, ("-" * widths[0], "-" * widths[1], "-" * len(header[2])), *rows]:
        lines.append(f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}".rstrip())
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertzoo recipes",
        description="List the recipes that ship with bertzoo, or copy one out to edit and run.")
    commands = parser.add_subparsers(dest="action", metavar="{list,copy}")
    commands.add_parser("list", help="list the packaged recipes (the default)")
    copy = commands.add_parser("copy", help="copy a packaged recipe to a folder")
    copy.add_argument("name", help="a name from `bertzoo recipes`, e.g. classification/sst2")
    copy.add_argument("destination", metavar="DIR",
                      help="folder to copy into (created if missing), or a new .yaml path")
    return parser


def main(args: list[str] | None = None) -> int:
    """`bertzoo recipes [list]` / `bertzoo recipes copy NAME DIR`; returns the exit status."""
    ns = _parser().parse_args(sys.argv[1:] if args is None else args)
    try:
        if ns.action == "copy":
            recipe = find_recipe(ns.name)
            target = copy_recipe(recipe.name, ns.destination)
            print(f"copied {recipe.name} -> {target}\n"
                  f"run it: bertzoo {recipe.command} --config {target}")
            return 0
        print(format_table(list_recipes()))
        return 0
    except (RecipeError, OSError) as err:
        print(f"bertzoo recipes: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
