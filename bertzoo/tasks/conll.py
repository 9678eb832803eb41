"""CoNLL-style tagged text and the tag schemes NER data comes in.

A CoNLL file has one token per line with its columns separated by a TAB (or, on lines without
a TAB, by whitespace); a blank or whitespace-only line ends a sentence; `-DOCSTART-` lines
(document boundaries in CoNLL-2003) are skipped. The tag is the last column unless another is
chosen (CoNLL-2003's original files hold `token POS chunk NER`). A file with a single column
holds untagged text, for `predict`.

    Empire    B-location          (Tjong Kim Sang & De Meulder 2003, "Introduction to the
    State     I-location           CoNLL-2003 Shared Task"; WNUT-17 uses the same layout, most
    Building  I-location           of its sentence separators being a line holding one TAB)
    =         O

Tag schemes (Ramshaw & Marcus 1995; Ratinov & Roth 2009):
    IOB1          I-X inside an entity; B-X only where an entity follows one of the same type.
    IOB2 (BIO)    B-X begins every entity, I-X continues it.
    BIOES (IOBES) as IOB2, plus E-X ending a multi-token entity and S-X a single-token one.
The scheme decides which tags are valid and which label set a model predicts; how entities are
read from a tag sequence is the same for all of them (conlleval's rules, see
`bertzoo.tasks.entity_metrics`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from bertzoo.tasks.base import DataError

OUTSIDE = "O"
SCHEME_PREFIXES = {"IOB1": ("I", "B"), "IOB2": ("B", "I"), "BIOES": ("B", "I", "E", "S")}
SCHEME_ALIASES = {"BIO": "IOB2", "IOBES": "BIOES"}
DOCSTART = "-DOCSTART-"


# ---------------------------------------------------------------------------------- schemes
def canonical_scheme(scheme: str) -> str:
    """'bio' -> 'IOB2', 'iobes' -> 'BIOES'; an unknown name is an error listing the known ones."""
    name = SCHEME_ALIASES.get(scheme.upper(), scheme.upper())
    if name not in SCHEME_PREFIXES:
        known = sorted([*SCHEME_PREFIXES, *SCHEME_ALIASES])
        raise DataError(f"unknown tag scheme {scheme!r}; expected one of {', '.join(known)}")
    return name


def split_tag(tag: str) -> tuple[str, str | None]:
    """'B-creative-work' -> ('B', 'creative-work'); 'O' -> ('O', None)."""
    if tag == OUTSIDE:
        return OUTSIDE, None
    prefix, _, entity_type = tag.partition("-")
    return prefix, entity_type


def tag_problem(tag: str, scheme: str) -> str | None:
    """Why `tag` is not a tag of `scheme` (None if it is)."""
    if tag == OUTSIDE:
        return None
    prefix, entity_type = split_tag(tag)
    prefixes = SCHEME_PREFIXES[scheme]
    if prefix not in prefixes or not entity_type:
        return (f"tag {tag!r} is not a valid {scheme} tag; expected 'O' or "
                f"{'/'.join(p + '-' for p in prefixes)} followed by an entity type "
                f"(e.g. {prefixes[0]}-person)")
    return None


def scheme_labels(entity_types: Iterable[str], scheme: str) -> list[str]:
    """Every label of `scheme` over `entity_types`: 'O', then each type's prefixes in order
    (B-x, I-x[, E-x, S-x]), types sorted. Labels a training file happens to lack (an I-x
    never seen, say) are included, so that any valid tag of a known type can be learnt."""
    prefixes = SCHEME_PREFIXES[canonical_scheme(scheme)]
    return [OUTSIDE] + [f"{prefix}-{t}" for t in sorted(set(entity_types)) for prefix in prefixes]


def inside_label(label: str) -> str:
    """The label a word's continuation pieces are trained on with `label_all_tokens`: B-x
    becomes I-x, as in Hugging Face's run_ner; every other label stays as it is."""
    prefix, entity_type = split_tag(label)
    return f"I-{entity_type}" if prefix == "B" else label


# ----------------------------------------------------------------------------------- reading
def read_conll(path: str | os.PathLike, scheme: str = "IOB2",
               tag_column: int = -1) -> dict[str, list]:
    """Sentences of a CoNLL file as columns for `datasets.Dataset.from_dict`.

    Returns `tokens` (list of str per sentence), `line` (the 1-based line number of its first
    token, for error messages) and, when the file has more than one column, `tags`.

    Raises `DataError` naming the file and line for: a line whose number of columns differs
    from the file's first token line (a missing tag), a tag that is not a tag of `scheme`, a
    `tag_column` the file does not have, a file without any token.
    """
    scheme = canonical_scheme(scheme)
    path = Path(path)
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    lines: list[int] = []
    sentence_tokens: list[str] = []
    sentence_tags: list[str] = []
    num_columns = tag_index = first_line = None

    def end_sentence():
        if sentence_tokens:
            tokens.append(list(sentence_tokens))
            tags.append(list(sentence_tags))
            sentence_tokens.clear()
            sentence_tags.clear()

    with open(path, encoding="utf-8") as file:
        for line_number, line in _numbered_lines(file, path):
            text = line.rstrip()
            if not text.strip():
                end_sentence()
                continue
            fields = text.split("\t") if "\t" in text else text.split()
            fields = [field.strip() for field in fields]
            if fields[0] == DOCSTART:
                end_sentence()
                continue
            if num_columns is None:
                num_columns, first_line = len(fields), line_number
                if num_columns > 1:
                    tag_index = tag_column if tag_column >= 0 else num_columns + tag_column
                    if not 1 <= tag_index < num_columns:
                        raise DataError(
                            f"{path}:{line_number}: data.tag_column={tag_column} but the file "
                            f"has {num_columns} columns (the first holds the tokens)")
            if len(fields) != num_columns:
                what = "is the tag missing? " if len(fields) < num_columns else ""
                raise DataError(
                    f"{path}:{line_number}: {what}expected {num_columns} column(s) like line "
                    f"{first_line} (token{' ... tag' if num_columns > 1 else ''}), found "
                    f"{len(fields)}: {text!r}")
            if any(not field for field in fields):
                raise DataError(f"{path}:{line_number}: empty column in {text!r}")
            if not sentence_tokens:
                lines.append(line_number)
            sentence_tokens.append(fields[0])
            if tag_index is not None:
                tag = fields[tag_index]
                problem = tag_problem(tag, scheme)
                if problem:
                    raise DataError(f"{path}:{line_number}: {problem} (set data.scheme if the "
                                    f"file uses another scheme)")
                sentence_tags.append(tag)
    end_sentence()
    if not tokens:
        raise DataError(f"{path} holds no tokens (expected one 'token tag' line per token, "
                        f"sentences separated by blank lines)")
    columns: dict[str, list] = {"tokens": tokens, "line": lines}
    if tag_index is not None:
        columns["tags"] = tags
    return columns


def write_conll(path: str | os.PathLike, sentences: Iterable[tuple[list[str], list[str]]]) -> None:
    """Write (tokens, tags) pairs as a TAB-separated CoNLL file (tests, examples)."""
    with open(path, "w", encoding="utf-8") as file:
        for words, word_tags in sentences:
            for word, tag in zip(words, word_tags, strict=True):
                file.write(f"{word}\t{tag}\n")
            file.write("\n")


def _numbered_lines(file, path):
    """(line number, line) of a text file; a byte that is not UTF-8 is a DataError naming the
    line (the start of the file is checked before it is read: this is for the rest)."""
    line_number = 0
    while True:
        try:
            line = next(file)
        except StopIteration:
            return
        except UnicodeDecodeError as err:
            raise DataError(f"{path}:{line_number + 1}: not UTF-8 text ({err.reason}); save the "
                            f"file as UTF-8") from err
        line_number += 1
        yield line_number, line
