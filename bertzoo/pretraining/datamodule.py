"""`PretrainingDataModule`: corpus -> documents -> tokens -> sentence-pair instances -> masked
batches, in that one direction.

    read       text files (bert / text / wikitext layouts), a Hugging Face dataset, or the
               embedded corpus                                      -> {"sentences": [str]}
    vocabulary the given tokenizer, or WordPiece trained on the training documents (cached)
    tokenize   once, batched, with the Rust tokenizer, `datasets.map` (Arrow, fingerprint cache)
                                                                    -> {"sentence_ids": [[int]]}
    instances  google-research/bert's NSP algorithm (`instances.py`), `datasets.map` again
                                                                    -> input_ids, token_type_ids,
                                                                       nsp_label
    batches    `BatchSampler` (deterministic per seed and epoch, rank-aware) and the dynamic
               masking collator (`masking.py`), in a `StatefulDataLoader` whose position is saved
               in Lightning checkpoints

Every step after reading is cached by `datasets`; a second run with the same inputs and options
reads Arrow files instead of recomputing.

With `streaming=True` (`datasets` streaming: files, a local dataset folder of parquet/JSON/text
files, or a hub dataset) nothing holds the corpus in memory, whatever its size:
    - the stream's shards (its files, or a parquet file's row groups after `reshard()`) are
      split between the processes by `datasets.distributed.split_dataset_by_node`; when their
      number is not a multiple of the world size every process would read the whole corpus and
      keep one document in W, so the stream is resharded if it can be, and a warning says so
      if it cannot;
    - each process's shards are split again between its DataLoader workers, which read,
      tokenize and build instances in parallel;
    - documents are shuffled in windows of `shuffle_buffer` documents (rounded up to whole
      blocks), and instances are built one block of `pool_size` documents at a time, NotNext
      segments coming from the same block (`StreamedInstances`); with `nsp` off, the window's
      documents are packed into full rows instead: memory is bounded by those two numbers, not
      by the corpus;
    - a resumed run continues every worker's stream where it stopped, re-reading one window
      (`StreamedInstances`, `StreamLoader`);
    - held-out validation documents (the first `validation_documents`) are filtered out of the
      training stream by content, so no process, worker or shard split can train on them.

`TOKENIZERS_PARALLELISM`: tokenization uses the Rust thread pool only when it runs in this
process alone (`num_proc` <= 1) and no DataLoader worker will fork after it; otherwise
parallelism comes from `num_proc` processes and the Rust pool stays off (a used pool makes forked
workers warn, and can deadlock them if they tokenize).
"""

from __future__ import annotations

import array
import collections
import contextlib
import copy
import dataclasses
import hashlib
import itertools
import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from bertzoo.config import ConfigError
from bertzoo.data import BatchSampler, distributed_rank_and_size
from bertzoo.files import atomic_write
from bertzoo.pretraining import chinese
from bertzoo.pretraining.corpus import (CorpusError, documents_from_files, fingerprint,
                                        from_hf_dataset, iter_sentences)
from bertzoo.pretraining.embedded import embedded_documents
from bertzoo.pretraining.instances import (DocumentPool, InstanceConfig, RowPacker,
                                           build_instances, document_instances, mlm_row,
                                           packed_rows)
from bertzoo.pretraining.masking import MaskingCollator
from bertzoo.tokenizer import train_tokenizer
from bertzoo.training.data import BertDataModule
from bertzoo.training.options import (AtLeastTwoInt, NonNegativeFloat, NonNegativeInt,
                                      OpenProbability, PositiveInt, Probability, Seed,
                                      SequenceLength)

log = logging.getLogger("bertzoo")

PIPELINE_VERSION = 1  # part of every cache key below the reader; bump when the output changes
SHUFFLE_STREAM = 2  # separates the streamed-instance order generators (instances: 0, masking: 1)
WINDOW_STREAM = 3  # ... and the streamed documents' shuffle


# ------------------------------------------------------------------------------ torch datasets
class TaggedBatchSampler(BatchSampler):
    """`BatchSampler` whose batches carry the epoch: [(epoch, index), ...], so that the
    collator can seed each row's masking with (seed, epoch, index) in any worker process."""

    def __iter__(self):
        for batch in super().__iter__():
            yield [(self.epoch, index) for index in batch]


class InstanceDataset(torch.utils.data.Dataset):
    """Instances in Arrow, fetched a batch at a time. `fixed_epoch` pins the masking epoch
    (validation masks the same way every time it runs)."""

    def __init__(self, instances, fixed_epoch: int | None = None):
        self.instances = instances.with_format("numpy",
                                               columns=["input_ids", "token_type_ids", "nsp_label"])
        self.fixed_epoch = fixed_epoch

    def __len__(self) -> int:
        return len(self.instances)

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        indices = [index for _, index in keys]
        columns = self.instances[indices]
        return [{"input_ids": columns["input_ids"][k],
                 "token_type_ids": columns["token_type_ids"][k],
                 "nsp_label": int(columns["nsp_label"][k]), "index": index,
                 "epoch": epoch if self.fixed_epoch is None else self.fixed_epoch}
                for k, (epoch, index) in enumerate(keys)]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        return self.__getitems__([key])[0]


class StreamedInstances(torch.utils.data.IterableDataset):
    """Instances built on the fly from a stream of tokenized documents (this process's share),
    with a position that resumes exactly.

    In each DataLoader worker (`datasets` hands every worker its own shards) the stream is read
    a window of documents at a time (`shuffle_buffer` rounded up to whole blocks of
    `pool_size`); a window's documents are shuffled, then cut into blocks of `pool_size` whose
    instances are built with google's algorithm (`instances.document_instances`, NotNext
    segments drawn from the block), `duplicates` times, and yielded in a random order. With
    `nsp=False` the window's documents are packed into full rows instead (`RowPacker`; the
    rows continue across windows and passes, so no row is padded). Every row is tagged with an
    index unique across processes, workers and positions, and with the pass: together they
    seed its masking. Document randomness is keyed the same way, so no two workers draw alike.

    The stream repeats, pass after pass (each with a new shard order, document shuffle and
    masking), and never ends by itself: the run's length is `trainer.max_steps`. Under DDP
    that keeps every process stepping together; shares of a stream are never exactly equal,
    and a process whose data ran out first would leave the others waiting.

    Resuming. `state_dict()` is plain data: the pass, the window's number, `datasets`' own
    position of the stream where the window starts, the rows of the window already yielded,
    the rows yielded in all, and (`nsp=False`) the tokens carried into the window. `datasets`'
    `IterableDataset.state_dict` restores a stream's shard and row exactly but not the
    contents of a shuffle buffer (`.shuffle(buffer_size=...)` refills it with other documents
    on resume), so the shuffling is done here, per window: a resumed stream re-reads and
    re-tokenizes at most one window of documents (plus one batch of `datasets.map`), rebuilds
    its instances and skips the rows already yielded. The same processes x workers layout is
    required to resume (the position is per worker of each process).
    """

    def __init__(self, documents, config: InstanceConfig, pool_size: int, duplicates: int,
                 seed: int, rank: int = 0, world_size: int = 1, shuffle_buffer: int = 0,
                 nsp: bool = True):
        self.documents = documents  # a datasets.IterableDataset of {"sentence_ids": ...}
        self.config = config
        self.pool_size = pool_size
        self.duplicates = duplicates
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle_buffer > 0
        self.window = max(1, math.ceil(shuffle_buffer / pool_size)) * pool_size
        self.nsp = nsp
        self._state: dict[str, Any] | None = None  # where the running iterator is
        self._resume: dict[str, Any] | None = None  # where the next iterator starts

    # ---------------------------------------------------------------------------- position
    def state_dict(self) -> dict[str, Any]:
        # Before a resumed iterator has yielded, its position is the one it will start from
        # (a checkpoint taken right after a resume must not send this worker back to the start)
        state = self._state if self._state is not None else self._resume
        return copy.deepcopy(state) if state is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = copy.deepcopy(state) if state else None

    def _start(self, workers: int, worker_id: int) -> dict[str, Any]:
        resume, self._resume = self._resume, None
        if resume is None:
            return {"processes": self.world_size, "workers": workers,
                    "stream": self.rank * workers + worker_id, "epoch": 0, "window": 0,
                    "source": None, "skip": 0, "position": 0, "carry": []}
        check_stream_layout(resume, self.world_size, workers)
        return resume

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = torch.utils.data.get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        streams = self.world_size * workers
        self._state = state = self._start(workers, worker_id)
        stream = self._own_stream()
        while True:
            for instance in self._epoch(stream, state, state["stream"], streams):
                yield {"input_ids": instance["input_ids"],
                       "token_type_ids": instance["token_type_ids"],
                       "nsp_label": instance["nsp_label"],
                       "index": (state["position"] - 1) * streams + state["stream"],
                       "epoch": state["epoch"]}
            if state["window"] == 0:
                return  # nothing to read here (more workers than shards)
            state.update(epoch=state["epoch"] + 1, window=0, source=None, skip=0)

    def _pass(self, epoch: int, stream_id: int, streams: int) -> Iterator[dict]:
        """One pass over the stream from its start (the instances, untagged)."""
        state = {"epoch": epoch, "window": 0, "source": None, "skip": 0, "position": 0,
                 "carry": []}
        yield from self._epoch(self._own_stream(), state, stream_id, streams)

    def _own_stream(self):
        """A copy of the stream whose pass this iterator alone sets. `datasets` keeps an
        `IterableDataset`'s epoch in shared memory (so that the main process's `set_epoch`
        reaches persistent workers), and every worker forked from this process shares it: one
        worker starting a pass changed the pass (the shard order) another worker was about to
        read."""
        return copy.deepcopy(self.documents)

    def _epoch(self, stream, state: dict[str, Any], stream_id: int,
               streams: int) -> Iterator[dict]:
        """The rest of the pass `state` is in, read from `stream` (this iterator's copy of the
        documents); `state` follows every row yielded."""
        epoch = state["epoch"]
        stream.set_epoch(epoch)
        if state["source"] is not None:
            stream.load_state_dict(state["source"])
        rows = iter(stream)

        def read() -> tuple[list, dict] | None:
            row = next(rows, None)
            if row is None:
                return None
            # int32 arrays: a block of Python int lists would take ~9x the memory
            return ([array.array("i", sentence) for sentence in row["sentence_ids"]],
                    stream.state_dict())

        ahead: list[tuple[list, dict]] = []
        while True:
            window, ahead = ahead, []
            while len(window) < self.window and (document := read()) is not None:
                window.append(document)
            if len(window) == self.window:
                # A lone last document would make a window (and an NSP block) of its own,
                # with no other document for its NotNext segment: it joins this window.
                while len(ahead) < 2 and (document := read()) is not None:
                    ahead.append(document)
                if len(ahead) == 1:
                    window.append(ahead.pop())
            if not window:
                return
            documents = [document for document, _ in window]
            if self.shuffle:
                order = np.random.default_rng([self.seed, WINDOW_STREAM, epoch, stream_id,
                                               state["window"]]).permutation(len(documents))
                documents = [documents[i] for i in order]
            if self.nsp:
                instances = self._window_instances(documents, epoch, state["window"],
                                                   stream_id, streams)
            else:
                packer = RowPacker(self.config.max_seq_length, self.config.cls_id,
                                   self.config.sep_id, carry=state["carry"])
                instances = [{**mlm_row(np.asarray(row, dtype=np.int32)),
                              "token_type_ids": np.zeros(len(row), dtype=np.int8)}
                             for document in documents for row in packer.add(document)]
            for k, instance in enumerate(instances):
                if k < state["skip"]:
                    continue  # yielded before the checkpoint this run resumed from
                state["skip"] = k + 1
                state["position"] += 1
                yield instance
            state.update(window=state["window"] + 1, source=window[-1][1], skip=0)
            if not self.nsp:
                state["carry"] = packer.carry

    def _window_instances(self, documents, epoch: int, window: int, stream_id: int,
                          streams: int) -> Iterator[dict]:
        blocks_per_window = self.window // self.pool_size
        previous: list = []
        for b, start in enumerate(range(0, len(documents), self.pool_size)):
            block = documents[start:start + self.pool_size]
            # A short last block; a lone last document draws its NotNext from the one before.
            pool = block if len(block) >= 2 or not previous else previous + block
            yield from self._block_instances(block, pool, epoch, window * blocks_per_window + b,
                                             stream_id, streams)
            previous = block

    def _block_instances(self, block, pool_documents, epoch: int, block_number: int,
                         stream_id: int, streams: int) -> Iterator[dict]:
        if len(pool_documents) < 2:
            raise CorpusError("a worker's share of the stream holds a single document; next "
                              "sentence prediction needs at least two (use fewer workers or "
                              "processes, or more documents)")
        pool = DocumentPool(pool_documents)
        first = len(pool_documents) - len(block)  # position of the block inside the pool
        # One duplicate of the block at a time, in a random order: memory holds the block's
        # documents and one copy of its instances.
        for duplicate in range(self.duplicates):
            instances = []
            for k, document in enumerate(block):
                number = (block_number * self.pool_size + k) * streams + stream_id
                rng = np.random.default_rng([self.config.seed, duplicate, number])
                instances.extend(
                    {**instance,  # nsp_label and the documents' indices in the pool
                     "input_ids": np.asarray(instance["input_ids"], dtype=np.int32),
                     "token_type_ids": np.asarray(instance["token_type_ids"], dtype=np.int8)}
                    for instance in document_instances(document, first + k, pool, self.config,
                                                       rng))
            order = np.random.default_rng([self.seed, SHUFFLE_STREAM, epoch, stream_id,
                                           block_number, duplicate]).permutation(len(instances))
            for i in order:
                yield instances[i]


class StreamLoader(StatefulDataLoader):
    """The data loader of a process's share of a stream, whose position is that of the last
    batch the training consumed.

    Two things Lightning does with a data loader without a length are undone here: its
    fetcher draws one batch ahead, so the loader's own state at a checkpoint is one batch
    past the step saved (`position(consumed)` is the state after the batches consumed,
    counted by `PretrainingDataModule.on_before_batch_transfer`); and on resume it hands
    every process the state rank 0 saved (`own_state`, this process's own position, restored
    by `PretrainingDataModule.load_state_dict`, is loaded instead).
    """

    own_state: dict[str, Any] | None = None
    HISTORY = 8  # states kept: the batches drawn ahead of the training loop, with room to spare

    def __iter__(self):
        self.consumed: int | None = None  # training batches taken (None: not counted)
        iterator = super().__iter__()
        # (batches drawn, the state after them)
        self._states = collections.deque([(0, super().state_dict())], maxlen=self.HISTORY)
        for drawn, batch in enumerate(iterator, start=1):
            self._states.append((drawn, super().state_dict()))
            yield batch

    def position(self) -> dict[str, Any]:
        """The state after the batches consumed (plain data); without a count of them, after
        the batches drawn."""
        if getattr(self, "consumed", None) is None:
            return self.state_dict()
        for drawn, state in reversed(self._states):
            if drawn <= self.consumed:
                return state
        raise RuntimeError(f"the training loop is more than {self.HISTORY} batches behind the "
                           f"data loader")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(self.own_state if self.own_state is not None else state_dict)


def check_stream_layout(state: dict[str, Any], processes: int, workers: int) -> None:
    """Refuse to resume a stream position saved with another processes x workers layout: each
    worker of each process reads its own shards, and their positions do not carry over."""
    if (state.get("processes"), state.get("workers")) != (processes, workers):
        raise CorpusError(
            f"the checkpoint's position in the streamed corpus was saved with "
            f"{state.get('processes')} process(es) x {state.get('workers')} data loader "
            f"worker(s) per process, and this run has {processes} x {workers}; a stream "
            f"resumes exactly only with the same layout: resume with the same trainer.devices "
            f"x trainer.num_nodes and data.num_workers (or start a new run from the "
            f"checkpoint's weights with model.backbone)")


def document_key(document: dict[str, list[str]]) -> str:
    """A document's identity by content (held-out documents are filtered by it)."""
    return hashlib.sha1("\n".join(document["sentences"]).encode()).hexdigest()


def _not_held_out(document: dict[str, list[str]], held_out: frozenset[str]) -> bool:
    return document_key(document) not in held_out


@contextlib.contextmanager
def tokenizers_parallelism(enabled: bool):
    """Set TOKENIZERS_PARALLELISM for the duration of a block (see the module docstring)."""
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if enabled else "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def tokenize_documents(batch: dict[str, list], tokenizer,
                       word_segmenter: str | None = None) -> dict[str, list]:
    """`datasets.map(batched=True)` function: sentences -> token ids, every sentence of the
    batch in one `encode_batch` call; documents left without tokens are dropped. With a
    `word_segmenter`, the tokens that continue a Chinese word carry its mark
    (`bertzoo.pretraining.chinese`)."""
    sentences = [s for document in batch["sentences"] for s in document]
    encodings = tokenizer.encode_batch(sentences, add_special_tokens=False)
    if word_segmenter is not None:
        cut = chinese.segmenter(word_segmenter)
        marked = [chinese.mark_words(sentence, encoding.ids, encoding.offsets, cut)
                  for sentence, encoding in zip(sentences, encodings)]
    else:
        marked = [encoding.ids for encoding in encodings]
    out: list[list[list[int]]] = []
    position = 0
    for document in batch["sentences"]:
        ids = [marked[position + k] for k in range(len(document))]
        position += len(document)
        ids = [sentence for sentence in ids if sentence]
        if ids:
            out.append(ids)
    return {"sentence_ids": out}


class _ArrowDocuments:
    """Random access to tokenized documents in Arrow, for `DocumentPool`."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> list[list[int]]:
        return self.dataset[index]["sentence_ids"]


# ------------------------------------------------------------------------------ the data module
class PretrainingDataModule(BertDataModule):
    """Data for BERT pretraining: masked LM + next sentence prediction.

    With neither `train_files` nor `dataset`, the corpus is the embedded one: English text that
    ships with Python (`bertzoo.pretraining.embedded`).

    Args:
        train_files: Text file(s) or glob pattern(s) to pretrain on.
        validation_files: Held-out text file(s); without them `validation_documents` of the
            training documents are held out.
        format: Layout of the files: "bert" (one sentence per line, blank line between
            documents), "text" (each file one document of prose paragraphs) or "wikitext"
            (` = Title = ` lines start documents).
        dataset: A Hugging Face dataset name, or a local dataset folder, with one document per
            row, instead of files.
        dataset_config: The dataset's configuration name, if it has several.
        dataset_split: Split of `dataset` to pretrain on.
        dataset_validation_split: Split of `dataset` to validate on (default: hold out
            `validation_documents`).
        text_column: Column of `dataset` holding the text (a string, or a list of sentences).
        streaming: Read the corpus as a stream (`datasets` streaming): no whole-corpus list in
            memory; needs `trainer.max_steps`, and holds out the first `validation_documents`
            documents (a count) for validation.
        validation_documents: Documents held out for validation when no validation data is
            given: a fraction of the corpus if < 1, else a count; 0 validates nothing.
        tokenizer: Tokenizer folder or `.ckpt`; default: `model.backbone`'s, or else a WordPiece
            vocabulary trained on the training documents (cached, saved with the checkpoints).
        tokenizer_vocab_size: Size of the vocabulary trained when no tokenizer is given.
        tokenizer_alphabet: Most distinct characters a trained vocabulary keeps as tokens of
            their own (the others become [UNK]); Chinese needs thousands (google's Chinese
            vocabulary holds ~14,000 characters).
        lowercase: Whether a trained vocabulary lower-cases (uncased BERT).
        max_seq_length: Longest instance, [CLS] and [SEP]s included.
        short_seq_prob: Fraction of instances with a shorter random target length.
        next_sentence_prob: Probability that segment B is the true continuation of A.
        dupe_factor: Instances are built this many times with different random choices (as
            google-research/bert's `dupe_factor`; masking is dynamic regardless).
        pool_size: Streaming: documents per block from which NotNext segments are drawn.
        shuffle_buffer: Streaming: documents in the shuffle buffer (the shard order is shuffled
            too, anew every epoch); 0 keeps the stream's order.
        mlm_probability: Fraction of the (non-special) tokens predicted.
        mask_token_prob: Of the predicted tokens, the fraction replaced by [MASK].
        random_token_prob: Of the predicted tokens, the fraction replaced by a random token.
        whole_word_mask: Mask whole words (## pieces together with their word; with
            `word_segmenter`, the characters of a Chinese word together).
        word_segmenter: "jieba": segment Chinese text into words for whole-word masking
            (Chinese-BERT-wwm; needs `pip install 'bertzoo[zh]'`); null for none.
        nsp: Next sentence prediction: sentence-pair instances (true), or masked LM only with
            full rows packed across sentences and documents (false, as RoBERTa). Default: the
            model's `nsp`.
        max_predictions_per_seq: Cap on predicted tokens per sequence (google: 20 at 128, 80 at
            512); null for none.
        batch_size: Training sequences per batch on each device.
        eval_batch_size: Sequences per validation batch (default: batch_size).
        pad_to_multiple_of: Round each batch's length up to a multiple of this.
        num_workers: DataLoader worker processes (masking runs there).
        num_proc: Processes for tokenization and instance building (`datasets.map`).
        seed: Seed of the held-out split, the instances, the training order and the masking.
    """

    model_links: ClassVar[tuple[str, ...]] = ("vocab_size", "max_seq_length")
    model_settings: ClassVar[tuple[str, ...]] = ("nsp",)  # the CLI sets data.nsp from model.nsp

    def __init__(self, train_files: str | list[str] | None = None,
                 validation_files: str | list[str] | None = None,
                 format: Literal["bert", "text", "wikitext"] = "bert",
                 dataset: str | None = None, dataset_config: str | None = None,
                 dataset_split: str = "train", dataset_validation_split: str | None = None,
                 text_column: str = "text", streaming: bool = False,
                 validation_documents: NonNegativeFloat = 0.05, tokenizer: str | None = None,
                 tokenizer_vocab_size: PositiveInt = 30522, tokenizer_alphabet: PositiveInt = 1000,
                 lowercase: bool = True,
                 max_seq_length: SequenceLength = 128, short_seq_prob: Probability = 0.1,
                 next_sentence_prob: Probability = 0.5, dupe_factor: PositiveInt = 1,
                 pool_size: AtLeastTwoInt = 10000, shuffle_buffer: NonNegativeInt = 1000,
                 mlm_probability: OpenProbability = 0.15, mask_token_prob: Probability = 0.8,
                 random_token_prob: Probability = 0.1, whole_word_mask: bool = False,
                 word_segmenter: Literal["jieba"] | None = None, nsp: bool | None = None,
                 max_predictions_per_seq: PositiveInt | None = None, batch_size: PositiveInt = 32,
                 eval_batch_size: PositiveInt | None = None,
                 pad_to_multiple_of: PositiveInt | None = None, num_workers: NonNegativeInt = 0,
                 num_proc: PositiveInt | None = None, seed: Seed = 12345):
        super().__init__()
        if train_files is not None and dataset is not None:
            raise ConfigError("give either data.train_files or data.dataset, not both")
        if validation_documents < 0:
            raise ConfigError(f"data.validation_documents must be >= 0, got {validation_documents}")
        if streaming and 0 < validation_documents < 1 and not (validation_files
                                                               or dataset_validation_split):
            raise ConfigError("a streamed corpus has no known length: give "
                              "data.validation_documents as a count of documents (e.g. 200)")
        if dupe_factor < 1:
            raise ConfigError(f"data.dupe_factor must be >= 1, got {dupe_factor}")
        if pool_size < 2:
            raise ConfigError(f"data.pool_size must be >= 2 (NotNext segments come from another "
                              f"document of the block), got {pool_size}")
        if shuffle_buffer < 0:
            raise ConfigError(f"data.shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be positive, got {batch_size}")
        if word_segmenter is not None:
            if not whole_word_mask:
                raise ConfigError("data.word_segmenter marks words for whole-word masking; set "
                                  "data.whole_word_mask: true with it")
            chinese.segmenter(word_segmenter)  # a missing jieba fails here, before any reading
        super().__init__(tokenizer=tokenizer, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed)
        self.train_files = train_files
        self.validation_files = validation_files
        self.format = format
        self.dataset_name = dataset
        self.dataset_config = dataset_config
        self.dataset_split = dataset_split
        self.dataset_validation_split = dataset_validation_split
        self.text_column = text_column
        self.streaming = streaming
        self.validation_documents = validation_documents
        self.tokenizer_vocab_size = tokenizer_vocab_size
        self.tokenizer_alphabet = tokenizer_alphabet
        self.lowercase = lowercase
        self.max_seq_length = max_seq_length
        self.dupe_factor = dupe_factor
        self.pool_size = pool_size
        self.shuffle_buffer = shuffle_buffer
        self.num_proc = num_proc
        self.word_segmenter = word_segmenter
        self._nsp = nsp
        self._stream_positions: list[dict[str, Any]] | None = None  # restored, per process
        self._stream_loader: StreamLoader | None = None
        # Validate the instance and masking options now, before anything is read.
        self.instance_config = InstanceConfig(max_seq_length=max_seq_length,
                                              short_seq_prob=short_seq_prob,
                                              next_sentence_prob=next_sentence_prob, seed=seed)
        self.masking_options = dict(
            mlm_probability=mlm_probability, mask_token_prob=mask_token_prob,
            random_token_prob=random_token_prob, whole_word_mask=whole_word_mask,
            max_predictions_per_seq=max_predictions_per_seq,
            pad_to_multiple_of=pad_to_multiple_of, seed=seed)
        MaskingCollator(vocab_size=8, special_ids=[0], mask_id=1, pad_id=0,
                        **self.masking_options)
        self._documents: dict[str, Any] | None = None
        self.instances: dict[str, Any] = {}
        self._collator: MaskingCollator | None = None

    @property
    def nsp(self) -> bool:
        """Sentence-pair instances for NSP, or full masked-LM rows: `data.nsp` if given, else
        the model's `nsp` (true without a model)."""
        model = self.trainer.lightning_module if self.trainer is not None else None
        model_nsp = getattr(model, "nsp", None)
        if self._nsp is not None and model_nsp is not None and self._nsp != model_nsp:
            raise ConfigError(f"data.nsp is {str(self._nsp).lower()} but model.nsp is "
                              f"{str(model_nsp).lower()}; set model.nsp alone (the data "
                              f"follows it)")
        nsp = self._nsp if self._nsp is not None else model_nsp if model_nsp is not None else True
        if not nsp and self.dupe_factor > 1:
            raise ConfigError("data.dupe_factor builds NSP instances several times; masked-LM "
                              "rows are built once (their masking changes every epoch): set "
                              "data.dupe_factor: 1 with model.nsp: false")
        return nsp

    # ---------------------------------------------------------------------------- documents
    def source_name(self) -> str:
        if self.train_files is not None:
            return str(self.train_files)
        if self.dataset_name is not None:
            return f"dataset {self.dataset_name}[{self.dataset_split}]"
        return "the embedded corpus"

    def documents(self) -> dict[str, Any]:
        """{"train": documents, "validation": documents or None}, read once."""
        if self._documents is None:
            self._documents = self._read_documents()
        return self._documents

    def _read_documents(self) -> dict[str, Any]:
        validation = None
        if self.train_files is not None:
            train = documents_from_files(self.train_files, self.format, self.streaming)
            if self.validation_files is not None:
                validation = documents_from_files(self.validation_files, self.format,
                                                  field="data.validation_files")
        elif self.dataset_name is not None:
            train = from_hf_dataset(self.dataset_name, self.dataset_config, self.dataset_split,
                                    self.text_column, self.streaming, self.num_proc)
            if self.dataset_validation_split:
                validation = from_hf_dataset(self.dataset_name, self.dataset_config,
                                             self.dataset_validation_split, self.text_column,
                                             num_proc=self.num_proc)
        else:
            train = embedded_documents(self.streaming)
        if validation is None and self.validation_documents:
            train, validation = self._hold_out(train)
        self._check_documents(train, self.source_name())
        if validation is not None:
            self._check_documents(validation, f"the validation documents of {self.source_name()}"
                                  if self.validation_files is None else str(self.validation_files))
        return {"train": train, "validation": validation}

    def _hold_out(self, documents):
        import datasets
        if self.streaming:
            # The first `count` documents, and the stream without them. Not `skip(count)`:
            # once the stream is split by process and worker, each skips count / shards of
            # its own shards, which are not the documents held out.
            count = int(self.validation_documents)
            held_out = datasets.Dataset.from_list(list(documents.take(count)),
                                                  features=documents.features)
            keys = frozenset(document_key(d) for d in held_out)
            return documents.filter(_not_held_out, fn_kwargs={"held_out": keys}), held_out
        size = len(documents)
        count = (round(self.validation_documents * size) if self.validation_documents < 1
                 else int(self.validation_documents))
        if size - count < 2 or count < 2:
            raise CorpusError(
                f"{self.source_name()} has {size} document(s): too few to hold out "
                f"{count} for validation and keep two for training (next sentence prediction "
                f"needs two documents on each side); add documents, give "
                f"data.validation_files, or set data.validation_documents: 0")
        split = documents.train_test_split(test_size=count, seed=self.seed, shuffle=True)
        return split["train"], split["test"]

    def _check_documents(self, documents, source: str) -> None:
        import datasets
        if isinstance(documents, datasets.IterableDataset):
            count = sum(1 for _ in documents.take(2))
        else:
            count = len(documents)
        if count == 0:
            raise CorpusError(f"{source} has no documents (empty, or no line with text)")
        if count == 1 and self.nsp:
            raise CorpusError(
                f"{source} has a single document; next sentence prediction needs at least two "
                f"(NotNext segments come from another document). In the bert format a blank "
                f"line separates documents; in the text format each file is one document")

    # ---------------------------------------------------------------------------- tokenizer
    def make_tokenizer(self):
        """The tokenizer `tokenizer` names, or else one trained on the training documents."""
        return super().make_tokenizer() if self.tokenizer_path else self._trained_tokenizer()

    def _trained_tokenizer(self):
        """WordPiece trained on the training documents, cached per corpus and options (one
        process trains, the others wait for its file)."""
        import datasets
        from filelock import FileLock
        from tokenizers import Tokenizer
        train = self.documents()["train"]
        corpus_key = (train._fingerprint if isinstance(train, datasets.Dataset)
                      else (self.source_name(), self.dataset_config, self.validation_documents))
        alphabet = (self.tokenizer_alphabet,) if self.tokenizer_alphabet != 1000 else ()
        key = fingerprint("wordpiece", corpus_key, self.tokenizer_vocab_size, self.lowercase,
                          *alphabet)
        cache = Path(datasets.config.HF_DATASETS_CACHE) / "bertzoo-tokenizers" / key
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / "tokenizer.json"
        with FileLock(str(cache / ".lock")):
            if not path.is_file():
                log.info("training a %d-token WordPiece vocabulary on %s",
                         self.tokenizer_vocab_size, self.source_name())
                with tokenizers_parallelism(self.num_workers == 0):
                    trained = train_tokenizer(texts=_sentences(train),
                                              vocab_size=self.tokenizer_vocab_size,
                                              limit_alphabet=self.tokenizer_alphabet,
                                              lowercase=self.lowercase)
                atomic_write(path, lambda tmp: trained.save(tmp))
        return Tokenizer.from_file(str(path))

    # ----------------------------------------------------------------------------- pipeline
    def tokenized(self, split: str):
        documents = self.documents()[split]
        import datasets
        features = datasets.Features(
            {"sentence_ids": datasets.Sequence(datasets.Sequence(datasets.Value("int32")))})
        kwargs = dict(batched=True, remove_columns=["sentences"], features=features,
                      fn_kwargs={"tokenizer": self.tokenizer,
                                 "word_segmenter": self.word_segmenter})
        if isinstance(documents, datasets.IterableDataset):
            return documents.map(tokenize_documents, **kwargs)
        segmenter = (self.word_segmenter,) if self.word_segmenter else ()
        return documents.map(
            tokenize_documents, num_proc=self.processes_for(len(documents)),
            desc=f"tokenizing {split} documents",
            new_fingerprint=fingerprint(documents._fingerprint, "tokenize", PIPELINE_VERSION,
                                        self.tokenizer.to_str(), *segmenter), **kwargs)

    def tokenizer_instance_config(self) -> InstanceConfig:
        """The instance options with this tokenizer's [CLS] and [SEP] ids."""
        return dataclasses.replace(self.instance_config,
                                   cls_id=self.tokenizer.token_to_id("[CLS]"),
                                   sep_id=self.tokenizer.token_to_id("[SEP]"))

    def build_instances(self, split: str):
        """The split's NSP instances (cached Arrow; a stream when streaming)."""
        import datasets
        tokenized = self.tokenized(split)
        config = self.tokenizer_instance_config()
        features = datasets.Features({
            "input_ids": datasets.Sequence(datasets.Value("int32")),
            "token_type_ids": datasets.Sequence(datasets.Value("int8")),
            "nsp_label": datasets.Value("int8"),
            "a_document": datasets.Value("int64"), "b_document": datasets.Value("int64")})
        # Validation instances are built once; training ones dupe_factor times.
        duplicates = self.dupe_factor if split == "train" else 1
        if isinstance(tokenized, datasets.IterableDataset):
            return tokenized  # instances are built by StreamedInstances, in the workers
        if not self.nsp:
            return datasets.Dataset.from_generator(
                packed_rows, features=features, gen_kwargs={"documents": tokenized,
                                                            "config": config},
                fingerprint=fingerprint(tokenized._fingerprint, "packed rows",
                                        PIPELINE_VERSION, config))
        pool = DocumentPool(_ArrowDocuments(tokenized))
        return tokenized.map(
            build_instances, batched=True, with_indices=True, remove_columns=["sentence_ids"],
            features=features, num_proc=self.processes_for(len(tokenized)),
            desc=f"building {split} instances",
            fn_kwargs={"config": config, "pool": pool, "duplicates": duplicates},
            new_fingerprint=fingerprint(tokenized._fingerprint, "instances", PIPELINE_VERSION,
                                        config, duplicates))

    def processes_for(self, documents: int) -> int | None:
        """`num_proc`, but no more processes than thousands of documents: starting a process
        costs more than tokenizing a few hundred documents."""
        if not self.num_proc or self.num_proc <= 1:
            return None
        return max(1, min(self.num_proc, documents // 1000)) or None

    @property
    def collator(self) -> MaskingCollator:
        if self._collator is None:
            self._collator = MaskingCollator.for_tokenizer(self.tokenizer, **self.masking_options)
        return self._collator

    # ------------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Read, tokenize and build instances once (local rank 0); `setup` then reads caches."""
        if not self.streaming:
            self._build()

    def setup(self, stage: str) -> None:
        self._build()

    def _build(self) -> None:
        self.collator  # a tokenizer without [MASK] fails here, before anything else runs
        parallel = (self.num_proc or 1) <= 1 and self.num_workers == 0
        with tokenizers_parallelism(parallel):
            for split in ("train", "validation"):
                if split not in self.instances and self.documents()[split] is not None:
                    self.instances[split] = self.build_instances(split)
        for split, instances in self.instances.items():
            if not self.streaming and len(instances) == 0:
                raise CorpusError(f"the {split} documents of {self.source_name()} gave no "
                                  f"instances")

    def streamed_instances(self) -> StreamedInstances:
        """This process's share of the streamed training corpus, as instances."""
        documents = self.instances["train"]  # tokenized documents, a datasets.IterableDataset
        rank, world_size = distributed_rank_and_size()
        if world_size > 1 and documents.num_shards % world_size:
            documents = documents.reshard()  # parquet: one shard per row group
            if documents.num_shards % world_size:
                warnings.warn(
                    f"{self.source_name()} streams as {documents.num_shards} shard(s), not a "
                    f"multiple of the {world_size} processes: every process reads and tokenizes "
                    f"the whole corpus and keeps one document in {world_size}. Split it into a "
                    f"multiple of {world_size} files (or parquet row groups)", stacklevel=2)
        if self.num_workers > 1 and documents.num_shards // world_size < self.num_workers:
            warnings.warn(f"{self.source_name()} streams as {documents.num_shards} shard(s) for "
                          f"{world_size} process(es) x {self.num_workers} workers: some workers "
                          f"will have nothing to read", stacklevel=2)
        if world_size > 1:
            from datasets.distributed import split_dataset_by_node
            documents = split_dataset_by_node(documents, rank=rank, world_size=world_size)
        # The documents are shuffled by StreamedInstances, not by `datasets`' shuffle buffer,
        # whose contents a resumed stream would lose (see StreamedInstances).
        return StreamedInstances(documents, self.tokenizer_instance_config(), self.pool_size,
                                 self.dupe_factor, self.seed, rank=rank, world_size=world_size,
                                 shuffle_buffer=self.shuffle_buffer, nsp=self.nsp)

    def _loader(self, split: str, train: bool):
        if split == "train" and self.streaming:
            loader = StreamLoader(self.streamed_instances(), batch_size=self.batch_size,
                                  collate_fn=self.collator, num_workers=self.num_workers)
            if self._stream_positions is not None:
                loader.own_state = self._own_stream_position()
                loader.load_state_dict(loader.own_state)
            self._stream_loader = loader
            return loader
        dataset = InstanceDataset(self.instances[split], fixed_epoch=None if train else 0)
        sampler = self.batch_sampler(len(dataset), train, sampler_class=TaggedBatchSampler)
        return self.stateful_loader(dataset, self.collator, batch_sampler=sampler)

    def train_dataloader(self):
        return self._loader("train", train=True)

    # ------------------------------------------------------- the position of a streamed corpus
    def state_dict(self) -> dict[str, Any]:
        """Streaming: every process's position in its share of the stream (its training data
        loader's state, plain data), gathered from all processes; Lightning saves rank 0's
        data loader state only, which is the position of rank 0's share alone."""
        loader = self._stream_loader
        if not self.streaming or loader is None:
            return {}
        rank, world_size = distributed_rank_and_size()
        own = {"processes": world_size, "workers": self.num_workers,
               "loader": loader.position()}
        positions = [own]
        if world_size > 1 and torch.distributed.is_initialized():
            positions = [None] * world_size
            torch.distributed.all_gather_object(positions, own)
        return {"stream_positions": positions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._stream_positions = state.get("stream_positions")

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Counts the training batches consumed (see `StreamLoader`)."""
        loader = self._stream_loader
        if loader is not None and self.trainer is not None and self.trainer.training:
            loader.consumed = (getattr(loader, "consumed", None) or 0) + 1
        return batch

    def _own_stream_position(self) -> dict[str, Any]:
        rank, world_size = distributed_rank_and_size()
        positions = self._stream_positions
        check_stream_layout({"processes": len(positions), "workers": positions[0]["workers"]},
                            world_size, self.num_workers)
        return positions[rank]["loader"]

    def val_dataloader(self):
        return self._loader("validation", train=False) if "validation" in self.instances else []


def _sentences(documents) -> Iterator[str]:
    import datasets
    if isinstance(documents, datasets.Dataset):
        for batch in documents.iter(batch_size=1000):
            for sentences in batch["sentences"]:
                yield from sentences
    else:
        yield from iter_sentences(documents)
