"""Sentence-pair instances for masked LM + next sentence prediction.

Follows google-research/bert `create_pretraining_data.py` (`create_instances_from_document`,
`truncate_seq_pair`): sentences of a document are gathered into a chunk until it reaches a target
length (`max_seq_length` - 3, or with probability `short_seq_prob` a random length from 2, so
that the model also sees short inputs); segment A is a random number of the chunk's whole
sentences; segment B is the rest of the chunk (IsNext) or, with probability 0.5, a span of
sentences from another document starting at a random sentence (NotNext), in which case the
chunk's unused sentences go back to be used by the next instance. The longer segment is then
trimmed, one token at a time from a random end, and the instance is
`[CLS] A [SEP] B [SEP]` with token types 0 for `[CLS] A [SEP]` and 1 for `B [SEP]`.

Where this departs from google's code, and why:
    - The target length is drawn for every chunk, not once per document, so `short_seq_prob` is
      the fraction of instances that are short whatever the document lengths are; the pair is
      trimmed to that target (google trims to the maximum, so its "short" instances of long
      sentences are not short).
    - A chunk always holds at least two sentences when the document has two left (a last,
      lone sentence joins the chunk before it, and is not put back after a NotNext pair when it
      would be left alone). Google's code turns every one-sentence chunk into a forced NotNext,
      which pushes the IsNext rate below one half. A document of a single sentence still gives
      one (NotNext) instance.
    - The other document of a NotNext pair comes from a pool (`DocumentPool`): the whole corpus
      for a map-style dataset (random access into Arrow), or the current block of a stream, so
      that a streamed corpus needs memory for one block only. It is never the same document.
    - Randomness is a pure function of (seed, duplicate, document index): each document has
      its own generator, so instances do not depend on the order, the batching or the number
      of processes that build them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bertzoo.config import ConfigError

IS_NEXT, NOT_NEXT = 0, 1  # google-research/bert's labels: 0 = B follows A, 1 = B is random


@dataclass(frozen=True)
class InstanceConfig:
    """How sentence-pair instances are made."""
    max_seq_length: int = 128
    short_seq_prob: float = 0.1
    next_sentence_prob: float = 0.5  # probability that B is the true continuation
    seed: int = 12345
    cls_id: int = 2
    sep_id: int = 3

    def __post_init__(self):
        if self.max_seq_length < 5:
            raise ConfigError(f"data.max_seq_length must be at least 5 ([CLS] A [SEP] B [SEP] with "
                             f"one token each side), got {self.max_seq_length}")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ConfigError(f"data.short_seq_prob must be in [0, 1], got {self.short_seq_prob}")
        if not 0.0 <= self.next_sentence_prob <= 1.0:
            raise ConfigError(f"data.next_sentence_prob must be in [0, 1], "
                             f"got {self.next_sentence_prob}")


class DocumentPool:
    """Where NotNext segments come from: documents addressed by their index in the pool."""

    def __init__(self, documents: Sequence[Sequence[Sequence[int]]]):
        self.documents = documents

    def __len__(self) -> int:
        return len(self.documents)

    def other(self, rng: np.random.Generator, exclude: int) -> tuple[int, Sequence[Sequence[int]]]:
        """A random document whose index is not `exclude` (uniform over the others)."""
        size = len(self.documents)
        if not 0 <= exclude < size:
            index = int(rng.integers(size))
        else:
            index = int(rng.integers(size - 1))
            index += index >= exclude  # skip the excluded one: uniform over the rest
        return index, self.documents[index]


def truncate_pair(tokens_a: list[int], tokens_b: list[int], max_tokens: int,
                  rng: np.random.Generator) -> None:
    """Trim the longer segment, one token at a time from a random end, until both fit."""
    while len(tokens_a) + len(tokens_b) > max_tokens:
        longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def document_instances(document: Sequence[Sequence[int]], document_index: int,
                       pool: DocumentPool, config: InstanceConfig,
                       rng: np.random.Generator) -> list[dict]:
    """All instances of one tokenized document (a list of sentences, each a list of ids)."""
    max_tokens = config.max_seq_length - 3  # room for [CLS], [SEP], [SEP]
    document = [s for s in document if len(s)]
    instances: list[dict] = []
    chunk: list[Sequence[int]] = []
    chunk_length = 0
    target = _target_length(max_tokens, config, rng)
    i = 0
    while i < len(document):
        chunk.append(document[i])
        chunk_length += len(document[i])
        last = i == len(document) - 1
        # Close the chunk at the target, but never leave a lone sentence behind it, and never
        # close a one-sentence chunk while the document has more (see the module docstring).
        full = chunk_length >= target and (len(chunk) >= 2 or last) and i != len(document) - 2
        if last or full:
            a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
            tokens_a = [t for sentence in chunk[:a_end] for t in sentence]
            if len(chunk) == 1 or rng.random() >= config.next_sentence_prob:
                label = NOT_NEXT
                b_index, other = pool.other(rng, exclude=document_index)
                other = [s for s in other if len(s)]
                tokens_b = []
                start = int(rng.integers(len(other)))
                for sentence in other[start:]:
                    tokens_b.extend(sentence)
                    if len(tokens_b) >= target - len(tokens_a):
                        break
                # The unused sentences go back to the document, unless that would leave one
                # lone last sentence (a forced NotNext): it is dropped instead.
                unused = len(chunk) - a_end
                if len(document) - 1 - i + unused != 1:
                    i -= unused
            else:
                label = IS_NEXT
                b_index = document_index
                tokens_b = [t for sentence in chunk[a_end:] for t in sentence]
            truncate_pair(tokens_a, tokens_b, target, rng)
            input_ids = [config.cls_id, *tokens_a, config.sep_id, *tokens_b, config.sep_id]
            token_type_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
            instances.append({"input_ids": input_ids, "token_type_ids": token_type_ids,
                              "nsp_label": label, "a_document": document_index,
                              "b_document": b_index})
            chunk, chunk_length = [], 0
            target = _target_length(max_tokens, config, rng)
        i += 1
    return instances


def _target_length(max_tokens: int, config: InstanceConfig, rng: np.random.Generator) -> int:
    if rng.random() < config.short_seq_prob:
        return int(rng.integers(2, max_tokens + 1))
    return max_tokens


def build_instances(batch: dict[str, list], indices: list[int], config: InstanceConfig,
                    pool: DocumentPool, duplicates: int = 1) -> dict[str, list]:
    """`datasets.map(batched=True, with_indices=True)` function: tokenized documents (column
    `sentence_ids`, at their `indices` in `pool`, the whole corpus) -> instances; each
    document's generator is seeded with (seed, duplicate, index). A stream's blocks are built
    by `bertzoo.pretraining.datamodule.StreamedInstances`."""
    documents = batch["sentence_ids"]
    out: dict[str, list] = {"input_ids": [], "token_type_ids": [], "nsp_label": [],
                            "a_document": [], "b_document": []}
    for duplicate in range(duplicates):
        for document, index in zip(documents, indices):
            rng = np.random.default_rng([config.seed, duplicate, index])
            for instance in document_instances(document, index, pool, config, rng):
                for key, value in instance.items():
                    out[key].append(value)
    return out


# ------------------------------------------------------------------- masked LM only: full rows
class RowPacker:
    """Documents -> rows of exactly `max_seq_length` tokens, for masked LM without NSP.

    As RoBERTa's FULL-SENTENCES (Liu et al. 2019, Section 4.2) and the "concatenate and chunk"
    of MosaicBERT and ModernBERT: the documents' tokens form one stream, a `[SEP]` between two
    documents, and each row is `[CLS]` + the next `max_seq_length - 2` tokens of the stream +
    `[SEP]`, crossing sentence and document boundaries, all in segment 0. No row is padded but
    the last one (`finish`). `carry` is the part of the stream not yet in a row: a list of
    ints, which is all a resumed stream needs to continue the same rows.
    """

    def __init__(self, max_seq_length: int, cls_id: int, sep_id: int,
                 carry: Sequence[int] = ()):
        if max_seq_length < 3:
            raise ConfigError(f"data.max_seq_length must be at least 3 ([CLS] token [SEP]), "
                              f"got {max_seq_length}")
        self.span = max_seq_length - 2
        self.cls_id, self.sep_id = cls_id, sep_id
        self.carry = [int(t) for t in carry]

    def add(self, document: Sequence[Sequence[int]]) -> list[list[int]]:
        """The rows this document completes (none, one or many)."""
        tokens = [t for sentence in document for t in sentence]
        if not tokens:
            return []
        if self.carry:
            self.carry.append(self.sep_id)  # the boundary between two documents
        self.carry.extend(tokens)
        rows = []
        while len(self.carry) >= self.span:
            rows.append(self._row(self.carry[:self.span]))
            del self.carry[:self.span]
        return rows

    def finish(self) -> list[list[int]]:
        """The last, shorter row of the stream (if any tokens are left)."""
        rows = [self._row(self.carry)] if self.carry else []
        self.carry = []
        return rows

    def _row(self, span: Sequence[int]) -> list[int]:
        return [self.cls_id, *span, self.sep_id]


def mlm_row(input_ids: Sequence[int]) -> dict:
    """An instance of masked LM only: one segment, no NSP label (IGNORE_INDEX, -100)."""
    return {"input_ids": input_ids, "token_type_ids": [0] * len(input_ids), "nsp_label": -100,
            "a_document": -1, "b_document": -1}


def packed_rows(documents, config: InstanceConfig):
    """`Dataset.from_generator` function: a map-style corpus's tokenized documents, in order,
    -> full rows (`RowPacker`), read a thousand documents at a time."""
    packer = RowPacker(config.max_seq_length, config.cls_id, config.sep_id)
    for batch in documents.iter(batch_size=1000):
        for document in batch["sentence_ids"]:
            for row in packer.add(document):
                yield mlm_row(row)
    for row in packer.finish():
        yield mlm_row(row)
