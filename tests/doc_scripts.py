"""The scripts under docs/ are not a package: tests load them by path, each call a fresh
module (so one test's changes to a script's globals never reach another's)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

DOCS = Path(__file__).resolve().parents[1] / "docs"


def load_doc_script(relative: str) -> ModuleType:
    """docs/<relative> (e.g. "quality/transfer.py") as a freshly executed module."""
    path = DOCS / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
