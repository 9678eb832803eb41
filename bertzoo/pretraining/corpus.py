"""Corpus readers: text in any of the supported layouts -> documents (lists of sentences).

Every reader yields the same record, `{"sentences": [str, ...]}`, one per document, and every
corpus becomes a Hugging Face `datasets.Dataset` (cached as Arrow, keyed by a fingerprint of the
files' paths, sizes and modification times and the reader's options) or, with
`streaming=True`, a `datasets.IterableDataset` that never holds the corpus in memory.

Layouts (`format`):
    bert      google-research/bert's `create_pretraining_data.py` input: one sentence per line,
              a blank line between documents.
    text      plain prose: each file is one document; its paragraphs (blocks separated by blank
              lines, lines inside a block joined) are split into sentences by `split_sentences`.
    wikitext  WikiText (Merity et al. 2016): a ` = Title = ` line starts a document, ` = = Section
              = = ` headings are dropped, every other line is a paragraph. The tokenized forms
              `@-@`, `@,@`, `@.@` are joined back into `-`, `,`, `.` and `<unk>` becomes BERT's
              `[UNK]` (a special token, so it is never masked or predicted).
Besides files: any Hugging Face dataset with a text column (`from_hf_dataset`), by name or as a
local folder, where a row is a document (a string is split into paragraphs and sentences; a list
of strings is taken as its sentences), and the embedded corpus of `bertzoo.pretraining.embedded`.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bertzoo.files import InputFileError, check_text_file

FORMATS = ("bert", "text", "wikitext")
# Bump when a reader's output changes, so Arrow caches written by an older reader are not reused.
READER_VERSION = 1


class CorpusError(ValueError):
    """A corpus that cannot be read or used; the message names the file and the problem."""


def fingerprint(*parts: Any) -> str:
    """A stable hex digest of `repr(parts)`, for `datasets` cache keys."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


# ----------------------------------------------------------------------------- sentence splitting
# A sentence ends at ".", "!" or "?" (possibly followed by closing quotes or brackets) when
# whitespace and then an upper-case letter, a digit or an opening quote/bracket follow.
_BOUNDARY = re.compile(r"""[.!?]["')\]]*(\s+)(?=["'(\[]?[A-Z0-9])""")
# Chinese (and Japanese) text ends a sentence at a full-width 。！？ (several in a row count as
# one end, e.g. "？！"), with any closing quotes or brackets after it, and needs no space after.
_CJK_BOUNDARY = re.compile(r"""[。！？]+[”’"'」』）)\]】]*""")
# Words whose final period does not end a sentence; also any single capital letter ("J. Smith").
ABBREVIATIONS = frozenset("""
    e.g i.e etc vs cf al approx dept est fig figs no nos vol vols pp p ch sec eq eqs mr mrs ms
    dr prof sr jr st mt ft jan feb mar apr jun jul aug sep sept oct nov dec inc ltd co corp
""".split())


def split_sentences(paragraph: str) -> list[str]:
    """Split one paragraph into sentences with a small rule set (no model, no download).

    Rule: a boundary is ".", "!" or "?", optionally followed by closing quotes or brackets, then
    whitespace, then an upper-case letter, a digit or an opening quote/bracket. A boundary after
    a known abbreviation (`ABBREVIATIONS`: "e.g.", "Dr.", "Fig." ...) or after a single capital
    initial ("J.") is not a boundary. Chinese text: a sentence ends after 。, ！ or ？ and the
    closing quotes or brackets that follow (no whitespace needed). Whitespace inside the
    paragraph is collapsed.
    """
    text = " ".join(paragraph.split())
    if not text:
        return []
    pieces, start = [], 0
    for match in _BOUNDARY.finditer(text):
        pieces.append(text[start:match.start(1)])
        start = match.end(1)
    pieces.append(text[start:])
    sentences: list[str] = []
    for piece in pieces:
        if sentences and _ends_with_abbreviation(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return [s for s in (s.strip() for s in sentences for s in _split_cjk(s)) if s]


def _split_cjk(sentence: str) -> list[str]:
    pieces, start = [], 0
    for match in _CJK_BOUNDARY.finditer(sentence):
        pieces.append(sentence[start:match.end()])
        start = match.end()
    pieces.append(sentence[start:])
    return pieces


def _ends_with_abbreviation(sentence: str) -> bool:
    last = sentence.rsplit(" ", 1)[-1].rstrip("\"')]")
    if not last.endswith("."):
        return False
    word = last[:-1].lstrip("\"'([")
    return (len(word) == 1 and word.isupper()) or word.lower() in ABBREVIATIONS


def paragraphs(text: str) -> Iterator[str]:
    """Blocks of text separated by blank lines, each block's lines joined by spaces."""
    block: list[str] = []
    for line in text.splitlines():
        if line.strip():
            block.append(line.strip())
        elif block:
            yield " ".join(block)
            block = []
    if block:
        yield " ".join(block)


def text_to_sentences(text: str) -> list[str]:
    """Prose -> sentences: paragraphs split by `split_sentences`."""
    return [s for paragraph in paragraphs(text) for s in split_sentences(paragraph)]


# --------------------------------------------------------------------------------- file readers
def read_bert_format(path: str) -> Iterator[dict[str, list[str]]]:
    """google-research/bert layout: one sentence per line, blank lines between documents."""
    sentences: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                sentences.append(line)
            elif sentences:
                yield {"sentences": sentences}
                sentences = []
    if sentences:
        yield {"sentences": sentences}


def read_text_format(path: str) -> Iterator[dict[str, list[str]]]:
    """Plain prose: the whole file is one document, split into sentences."""
    sentences = text_to_sentences(Path(path).read_text(encoding="utf-8"))
    if sentences:
        yield {"sentences": sentences}


_WIKI_TITLE = re.compile(r"^ ?= [^=].* = ?$")
_WIKI_HEADING = re.compile(r"^ ?(= ){2,}.*( =){2,} ?$")
_WIKI_JOINERS = {" @-@ ": "-", " @,@ ": ",", " @.@ ": "."}


def wikitext_detokenize(line: str) -> str:
    for marker, char in _WIKI_JOINERS.items():
        line = line.replace(marker, char)
    return line.replace("<unk>", "[UNK]")


def read_wikitext_format(path: str) -> Iterator[dict[str, list[str]]]:
    """WikiText: ` = Title = ` starts a document; section headings are dropped."""
    sentences: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if _WIKI_TITLE.match(line.rstrip("\n")) and not _WIKI_HEADING.match(line.rstrip("\n")):
                if sentences:
                    yield {"sentences": sentences}
                sentences = []
            elif line.strip() and not _WIKI_HEADING.match(line.rstrip("\n")):
                sentences.extend(split_sentences(wikitext_detokenize(line)))
    if sentences:
        yield {"sentences": sentences}


READERS = {"bert": read_bert_format, "text": read_text_format, "wikitext": read_wikitext_format}


def expand_files(patterns: str | Sequence[str], field: str = "data.train_files") -> list[str]:
    """File names and glob patterns -> existing files, in a stable order; a clear error for a
    name that matches nothing."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    files: list[str] = []
    for pattern in patterns:
        pattern = str(Path(pattern).expanduser())
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else (
            [pattern] if Path(pattern).exists() else [])
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            raise CorpusError(f"{field}: no such file: {pattern}")
        files.extend(matches)
    return files


def _read_files(files: list[str], format: str) -> Iterator[dict[str, list[str]]]:
    reader = READERS[format]
    for path in files:
        try:
            yield from reader(path)
        except UnicodeDecodeError as err:
            raise CorpusError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from err


def _file_identity(files: list[str]) -> list[tuple[str, int, int]]:
    """What makes a cache entry stale: path, size and modification time of each file."""
    return [(str(Path(f).resolve()), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]


def _features():
    import datasets
    return datasets.Features({"sentences": datasets.Sequence(datasets.Value("string"))})


def documents_from_files(files: str | Sequence[str], format: str = "bert",
                         streaming: bool = False, field: str = "data.train_files"):
    """The documents of local text files as a cached `datasets.Dataset` (or a stream)."""
    import datasets
    if format not in READERS:
        raise CorpusError(f"data.format must be one of {', '.join(FORMATS)}, got {format!r}")
    files = expand_files(files, field)
    for path in files:
        try:
            check_text_file(path)
        except InputFileError as err:
            raise CorpusError(str(err)) from None
    if streaming:
        return datasets.IterableDataset.from_generator(
            _read_files, features=_features(), gen_kwargs={"files": files, "format": format})
    return _nonempty(lambda: datasets.Dataset.from_generator(
        _read_files, features=_features(), gen_kwargs={"files": files, "format": format},
        fingerprint=fingerprint("files", READER_VERSION, format, _file_identity(files))),
        ", ".join(files))


def _nonempty(build, source: str):
    """`datasets` refuses to write a dataset of no rows; say which corpus was empty."""
    import datasets
    try:
        return build()
    except datasets.exceptions.DatasetGenerationError as err:
        # A reader's CorpusError (a bad byte past the start of a file), raised inside datasets'
        # builder: it names the file; the wrapper says only that generating failed.
        if isinstance(err.__cause__, CorpusError):
            raise CorpusError(str(err.__cause__)) from err
        raise
    except ValueError as err:
        if "corresponds to no data" in str(err):
            raise CorpusError(f"{source} has no documents (empty, or no line with text)") from None
        raise


def documents_from_generator(generator, gen_kwargs: dict[str, Any], key: Any,
                             streaming: bool = False):
    """Documents from any generator of `{"sentences": [...]}` records, cached under `key`."""
    import datasets
    if streaming:
        return datasets.IterableDataset.from_generator(generator, features=_features(),
                                                       gen_kwargs=gen_kwargs)
    return _nonempty(lambda: datasets.Dataset.from_generator(
        generator, features=_features(), gen_kwargs=gen_kwargs,
        fingerprint=fingerprint("generator", READER_VERSION, key)), str(key))


# ---------------------------------------------------------------------------- Hugging Face data
def _rows_to_documents(batch: dict[str, list], text_column: str) -> dict[str, list]:
    out: list[list[str]] = []
    for value in batch[text_column]:
        if isinstance(value, str):
            out.append(text_to_sentences(value))
        elif isinstance(value, (list, tuple)):
            out.append([" ".join(str(s).split()) for s in value if s and str(s).strip()])
        else:
            out.append([])
    return {"sentences": out}


def from_hf_dataset(name: str, config: str | None = None, split: str = "train",
                    text_column: str = "text", streaming: bool = False,
                    num_proc: int | None = None):
    """A Hugging Face dataset (hub name, a folder written by `save_to_disk`, or a loading script
    / data folder) whose `text_column` holds one document per row."""
    import datasets
    path = Path(name).expanduser()
    saved = ("dataset_info.json", "state.json", "dataset_dict.json")
    if path.is_dir() and any((path / marker).is_file() for marker in saved):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise CorpusError(f"{name} has no split {split!r}; it has {list(loaded)}")
            loaded = loaded[split]
        # As a stream: many shards (contiguous row ranges), so that any usual number of
        # processes and workers divides them (5040 = 7!: 1-10, 12, 14, 15, 16 ... all divide).
        dataset = (loaded.to_iterable_dataset(num_shards=min(len(loaded), 5040)) if streaming
                   else loaded)
    else:
        try:
            dataset = datasets.load_dataset(name, config, split=split, streaming=streaming)
        except FileNotFoundError as err:
            raise CorpusError(f"data.dataset: {name!r} is neither a local dataset folder nor a "
                              f"dataset that could be loaded ({err})") from err
    columns = dataset.column_names
    if columns is not None and text_column not in columns:
        raise CorpusError(f"data.dataset {name}: no column {text_column!r} (set data.text_column); "
                          f"it has {columns}")
    remove = [c for c in columns or [] if c != "sentences"]
    kwargs = {} if streaming else {"num_proc": num_proc, "desc": "splitting sentences"}
    return dataset.map(_rows_to_documents, batched=True, remove_columns=remove or None,
                       fn_kwargs={"text_column": text_column}, **kwargs)


def iter_sentences(documents: Iterable[dict[str, list[str]]]) -> Iterator[str]:
    for document in documents:
        yield from document["sentences"]
