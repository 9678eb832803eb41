"""The embedded default corpus: English text that ships with every CPython installation, so that
pretraining runs with no download.

Two sources, both read from the running interpreter's own files:
    - `pydoc_data.topics`: the language reference and library chapters that `help()` prints
      (79 topics); each section of a topic (a heading underlined with `*`, `=` or `-`) is one
      document.
    - the standard library's docstrings, read with `ast` from the `.py` sources (nothing is
      imported, so no module's import-time side effects run): for every module, the module
      docstring and its functions' docstrings in source order form one document, and every
      top-level class with enough to say (docstrings of the class and its methods, at least
      `MIN_CLASS_SENTENCES` sentences) is a document of its own. Test suites and
      site-packages are skipped.

Text is cleaned by simple rules before sentence splitting (`bertzoo.pretraining.corpus`):
doctest lines (`>>>`, `...`), ASCII tables, heading underlines and paragraphs that are mostly
not letters (code, grammar rules) are dropped. Documents of fewer than two sentences are
dropped (NSP needs a continuation), and so are exact duplicates.

With CPython 3.11 this gives about 2,000 documents and 0.5M words; the exact figures depend on
the Python version, so the corpus is cached per interpreter.
"""

from __future__ import annotations

import ast
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from bertzoo.pretraining.corpus import documents_from_generator, paragraphs, split_sentences

MIN_CLASS_SENTENCES = 4
SKIPPED_PARTS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}

_UNDERLINE = re.compile(r"^\s*([*=\-~^#])\1{2,}\s*$")
_TABLE = re.compile(r"^\s*[+|]")
_DOCTEST = re.compile(r"^\s*(>>>|\.\.\.)(\s|$)")


def clean_paragraphs(text: str) -> Iterator[str]:
    """Prose paragraphs of a docstring or help topic, without code, tables and doctests."""
    kept_lines = [line for line in text.splitlines()
                  if not (_UNDERLINE.match(line) or _TABLE.match(line) or _DOCTEST.match(line))]
    for paragraph in paragraphs("\n".join(kept_lines)):
        visible = [c for c in paragraph if not c.isspace()]
        letters = sum(c.isalpha() for c in visible)
        if len(paragraph.split()) >= 3 and letters >= 0.7 * len(visible):
            yield paragraph


def text_sentences(text: str) -> list[str]:
    return [s for paragraph in clean_paragraphs(text) for s in split_sentences(paragraph)]


def topic_documents() -> Iterator[list[str]]:
    """pydoc's help topics, one document per section."""
    import pydoc_data.topics
    for name in sorted(pydoc_data.topics.topics):
        lines = pydoc_data.topics.topics[name].splitlines()
        section: list[str] = []
        for index, line in enumerate(lines):
            is_heading = index + 1 < len(lines) and _UNDERLINE.match(lines[index + 1]) \
                and line.strip() and not _UNDERLINE.match(line)
            if is_heading and section:
                yield text_sentences("\n".join(section))
                section = []
            if not is_heading:
                section.append(line)
        yield text_sentences("\n".join(section))


def _docstrings_in_order(node: ast.AST) -> Iterator[str]:
    """Docstrings of `node` and of every function/class inside it, in source order."""
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        docstring = ast.get_docstring(node)
        if docstring:
            yield docstring
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _docstrings_in_order(child)


def module_documents(path: Path) -> Iterator[list[str]]:
    """One document for the module (its docstring and top-level functions'), one per top-level
    class that has at least MIN_CLASS_SENTENCES sentences (smaller ones join the module's)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return  # a few stdlib files are templates or use another encoding
    module_text = [ast.get_docstring(tree) or ""]
    classes: list[list[str]] = []
    for child in tree.body:
        if isinstance(child, ast.ClassDef):
            sentences = [s for d in _docstrings_in_order(child) for s in text_sentences(d)]
            if len(sentences) >= MIN_CLASS_SENTENCES:
                classes.append(sentences)
            else:
                module_text.append("\n\n".join(_docstrings_in_order(child)))
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            module_text.extend(_docstrings_in_order(child))
    yield [s for text in module_text for s in text_sentences(text)]
    yield from classes


def stdlib_sources(root: Path) -> list[Path]:
    return [path for path in sorted(root.rglob("*.py"))
            if not SKIPPED_PARTS.intersection(path.relative_to(root).parts)]


def generate_documents(stdlib: str, python_version: str) -> Iterator[dict[str, list[str]]]:
    """All embedded documents, in a fixed order (help topics, then modules by path)."""
    del python_version  # part of the cache key only
    seen: set[tuple[str, ...]] = set()
    sources = [topic_documents()] + [module_documents(p) for p in stdlib_sources(Path(stdlib))]
    for source in sources:
        for sentences in source:
            key = tuple(sentences)
            if len(sentences) >= 2 and key not in seen:
                seen.add(key)
                yield {"sentences": sentences}


def embedded_documents(streaming: bool = False):
    """The embedded corpus as a cached `datasets.Dataset` (or a stream) of documents."""
    stdlib = sysconfig.get_paths()["stdlib"]
    version = ".".join(map(str, sys.version_info[:3]))
    return documents_from_generator(
        generate_documents, {"stdlib": stdlib, "python_version": version},
        key=("embedded", stdlib, version, MIN_CLASS_SENTENCES), streaming=streaming)
