"""The embedded default corpus: English text that ships with every CPython installation, so that
pretraining runs with no download.

Two sources, both read from the running interpreter's own files:
    - `pydoc_data.topics`: the language reference and library chapters that `help()` prints
      (79 topics); each section of a topic (a heading underlined with `*`, `=` or `-`) is one
      document.
    - the standard library's docstrings and comments, read with `ast` and `tokenize` from the
      `.py` sources (nothing is imported, so no module's import-time side effects run): for
      every module, the docstrings and prose comment blocks outside its classes, in source
      order, form one document, and every top-level class with enough to say (its docstrings
      and comments, at least `MIN_CLASS_SENTENCES` sentences) is a document of its own. Test
      suites and site-packages are skipped; comment blocks that look like code (commented-out
      statements, assignments, `TODO`/`XXX` markers) are dropped.

Text is cleaned by simple rules before sentence splitting (`bertzoo.pretraining.corpus`):
doctest lines (`>>>`, `...`), ASCII tables, heading underlines and paragraphs that are mostly
not letters (code, grammar rules) are dropped. Documents of fewer than two sentences are
dropped (NSP needs a continuation), and so are exact duplicates.

With CPython 3.11 this gives 1,667 documents, 36k sentences and 0.46M words; the exact figures
depend on the Python version, so the corpus is cached per interpreter (building it takes about
20 s, once).
"""

from __future__ import annotations

import ast
import io
import re
import sys
import sysconfig
import tokenize
from collections.abc import Iterator
from pathlib import Path

from bertzoo.pretraining.corpus import documents_from_generator, paragraphs, split_sentences

MIN_CLASS_SENTENCES = 4
# Part of the cache key: bump when what is extracted changes, so an older cached corpus is not used.
EXTRACTION_VERSION = 3
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


# Comment lines that are code rather than prose: commented-out statements, assignments, calls,
# and tool markers.
_CODE_COMMENT = re.compile(
    r"^\s*(def|class|import|from|return|elif|else|for|while|print|try|except|assert|raise|del|"
    r"yield)\b.*[:(=]|^\s*if\b.*:\s*$|^\s*[\w.\[\]]+\s*[-+*/|&]?=[^=]|==|\)\s*:\s*$|"
    r"[(\[{]\s*$|^\s*(XXX|TODO|FIXME|noqa|type:|pragma|-\*-)")


def _comment_blocks(source: str) -> Iterator[tuple[int, str]]:
    """(first line, text) of each block of consecutive whole-line `#` comments, without the
    lines that look like code."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return
    block: list[str] = []
    first = previous = -2
    for token in tokens:
        if token.type != tokenize.COMMENT or not token.line.lstrip().startswith("#"):
            continue  # a comment after code on its line is about that line, not prose
        line = token.start[0]
        if line != previous + 1 and block:
            yield first, "\n".join(block)
            block = []
        text = token.string.lstrip("#!").strip()
        if not _CODE_COMMENT.search(text):
            if not block:
                first = line
            block.append(text)
        previous = line
    if block:
        yield first, "\n".join(block)


def _docstrings(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, docstring) of the module and of every class and function in it."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node)
            if docstring:
                yield node.body[0].lineno, docstring


def module_documents(path: Path) -> Iterator[list[str]]:
    """One document for the module (the docstrings and comments outside its classes, in
    source order), one per top-level class that has at least MIN_CLASS_SENTENCES sentences of
    docstrings and comments (smaller ones join the module's)."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return  # a few stdlib files are templates or use another encoding
    classes = [(node.lineno, node.end_lineno) for node in tree.body
               if isinstance(node, ast.ClassDef)]
    groups: dict[int, list[tuple[int, list[str]]]] = {}  # class number (-1: module) -> texts
    for line, text in [*_docstrings(tree), *_comment_blocks(source)]:
        owner = next((k for k, (first, last) in enumerate(classes) if first <= line <= last), -1)
        groups.setdefault(owner, []).append((line, text_sentences(text)))
    documents: list[list[str]] = []
    module = groups.pop(-1, [])
    for owner, texts in sorted(groups.items()):
        if sum(len(sentences) for _, sentences in texts) >= MIN_CLASS_SENTENCES:
            documents.append([s for _, sentences in sorted(texts) for s in sentences])
        else:
            module.extend(texts)
    yield [s for _, sentences in sorted(module) for s in sentences]
    yield from documents


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
        key=("embedded", EXTRACTION_VERSION, stdlib, version, MIN_CLASS_SENTENCES),
        streaming=streaming)
