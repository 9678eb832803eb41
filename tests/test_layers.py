"""bertzoo's modules import downward only, and nothing imports in a circle.

    core      config, files, synthetic, ops, model, checkpoint, tokenizer, data
                                                            torch only, no Lightning
    base      training/ (the shared Lightning module, data-module base, callbacks, loggers, ...)
    domain    pretraining/, tasks/
    apps      export, bench, plot, recipe catalogue, GLUE, inference, serving, ONNX export
    cli       cli, demo, __main__
    kit       testing (the checks a plugin's CI runs: they drive the CLI)

A module may import its own layer or the layers above it in this table, never one below it
(`bertzoo/__init__.py` is the package's front door and may name anything). The graph counts
imports inside functions too, so a local import cannot hide a cycle; a local import is fine only
for what is optional or slow to load (a subcommand, an optional extra).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bertzoo"
PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "bertzoo-multiple-choice"

LAYERS = {  # module (or package) prefix -> layer; the longest matching prefix wins
    "bertzoo.config": 0, "bertzoo.files": 0, "bertzoo.synthetic": 0, "bertzoo.ops": 0,
    "bertzoo.model": 0,
    "bertzoo.checkpoint": 0, "bertzoo.tokenizer": 0, "bertzoo.data": 0,
    "bertzoo.training": 1,
    "bertzoo.pretraining": 2, "bertzoo.tasks": 2,
    "bertzoo.export": 3, "bertzoo.bench": 3, "bertzoo.plot": 3, "bertzoo.glue": 3,
    "bertzoo.recipe_catalog": 3, "bertzoo.recipes": 3, "bertzoo.inference": 3,
    "bertzoo.serving": 3, "bertzoo.onnx_export": 3,
    "bertzoo.cli": 4, "bertzoo.demo": 4, "bertzoo.__main__": 4,
    "bertzoo.testing": 5,
}
NAMES = ["core", "base", "domain", "apps", "cli", "kit"]
# Third-party packages the core must not need (it loads with torch alone).
NOT_IN_CORE = ("lightning", "pytorch_lightning", "jsonargparse", "torchmetrics", "datasets")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(name: str) -> int | None:
    matches = [prefix for prefix in LAYERS if name == prefix or name.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def imports(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, at any depth; `from bertzoo.x
    import y` counts as bertzoo.x.y when that is a module, else bertzoo.x."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((candidate if _is_module(candidate) else base, node.lineno))
    return found


def _is_module(name: str) -> bool:
    if not name.startswith("bertzoo"):
        return False
    relative = Path(*name.split("."))
    root = PACKAGE.parent
    return (root / relative).with_suffix(".py").is_file() or (root / relative / "__init__.py").is_file()


def package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer():
    unplaced = [module_name(p) for p in package_modules()
                if p != PACKAGE / "__init__.py" and layer_of(module_name(p)) is None]
    assert not unplaced, f"place these modules in a layer (tests/test_layers.py): {unplaced}"


def test_imports_point_downward():
    upward = []
    for path in package_modules():
        if path == PACKAGE / "__init__.py":
            continue
        mine = layer_of(module_name(path))
        for target, line in imports(path):
            theirs = layer_of(target) if target.startswith("bertzoo.") else None
            if theirs is not None and mine is not None and theirs > mine:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({NAMES[mine]}) "
                              f"imports {target} ({NAMES[theirs]})")
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_core_needs_no_lightning():
    found = []
    for path in package_modules():
        if layer_of(module_name(path)) == 0:
            found += [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
                      for target, line in imports(path)
                      if target.split(".")[0] in NOT_IN_CORE]
    assert not found, "the core must load with torch alone:\n" + "\n".join(found)


def test_import_bertzoo_loads_no_lightning():
    """`import bertzoo` (the encoder, config, checkpoints, tokenizer) needs torch alone; the
    Lightning parts load when first named."""
    import subprocess
    import sys
    probe = ("import sys, bertzoo; bertzoo.BertEncoder; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in %r))" % (NOT_IN_CORE,))
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]", f"import bertzoo loaded {loaded}"


def test_no_import_cycles():
    """Modules, not packages: `bertzoo.tasks` (its __init__) and `bertzoo.tasks.base` are nodes
    of their own. Counting imports inside functions too."""
    graph: dict[str, set[str]] = {}
    for path in package_modules():
        name = module_name(path)
        graph[name] = {target for target, _ in imports(path)
                       if target.startswith("bertzoo") and target != name and _is_module(target)}
    graph.pop("bertzoo", None)  # the front door re-exports; nothing inside imports it
    for edges in graph.values():
        edges.discard("bertzoo")
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("path", sorted(p for p in (PLUGIN / "bertzoo_multiple_choice").rglob("*.py")),
                         ids=lambda p: p.name)
def test_plugin_uses_only_the_public_task_api(path):
    """A plugin needs `bertzoo.tasks` (and `bertzoo` itself); anything else is an internal that
    may change under it."""
    internal = [f"{path.name}:{line} imports {target}" for target, line in imports(path)
                if target.startswith("bertzoo.") and not target.startswith("bertzoo.tasks")
                or target.startswith("bertzoo.tasks.")]
    assert not internal, "the plugin imports bertzoo internals:\n" + "\n".join(internal)
