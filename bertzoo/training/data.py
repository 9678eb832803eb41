"""`BertDataModule`: what every bertzoo data module shares, pretraining's and each task's.

    the tokenizer   read once from `tokenizer` (a folder or a `.ckpt`), or made by the subclass
                    (`make_tokenizer`); its vocabulary size and special-token ids
    model_links     the data module's values the model is built with (`vocab_size`, label
                    names...): the CLI links each to the same-named model argument
    loaders         a `StatefulDataLoader` over a `bertzoo.data.BatchSampler`: one global
                    order per (seed, epoch), this process's share of each global batch, and a
                    position Lightning saves in every checkpoint, so a run resumed mid-epoch
                    continues with the next batch instead of restarting the epoch

A subclass reads and prepares its data (`setup`) and says which loaders it has; litgpt's
`litgpt/data/base.py` is the model for this split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import lightning as L
from torchdata.stateful_dataloader import StatefulDataLoader

from bertzoo.config import ConfigError
from bertzoo.training.options import NonNegativeInt, PositiveInt, Seed
from bertzoo.data import BatchSampler, distributed_rank_and_size
from bertzoo import tokenizer as wordpiece
from bertzoo.tokenizer import SpecialIds


class BertDataModule(L.LightningDataModule):
    """Base of every bertzoo data module: tokenizer, model links and resumable loaders.

    Args:
        tokenizer: Tokenizer folder or `.ckpt`.
        batch_size: Training rows per batch on each device.
        eval_batch_size: Rows per batch for validation/test/predict (default: batch_size).
        num_workers: DataLoader worker processes.
        seed: Seed of the training order.
    """

    #: Values of the data module (attributes or properties) that the model is built with: the
    #: CLI links each to the model argument of the same name, so that nobody types them twice.
    model_links: ClassVar[tuple[str, ...]] = ("vocab_size",)
    #: Model arguments the data module follows (its own arguments of the same name): the CLI
    #: sets each from the model's when the command line is read, so nobody types them twice.
    model_settings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, tokenizer: str | None = None, batch_size: PositiveInt = 32,
                 eval_batch_size: PositiveInt | None = None, num_workers: NonNegativeInt = 0,
                 seed: Seed = 0):
        super().__init__()
        self.tokenizer_path = tokenizer
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._tokenizer = None

    # -- tokenizer
    @property
    def tokenizer(self):
        """The `tokenizers.Tokenizer`, made on first use (`make_tokenizer`)."""
        if self._tokenizer is None:
            self._tokenizer = self.make_tokenizer()
        return self._tokenizer

    def make_tokenizer(self):
        """The tokenizer `tokenizer` names. Subclasses may make one when it names none
        (pretraining trains a WordPiece vocabulary on its corpus)."""
        if not self.tokenizer_path:
            raise ConfigError("no tokenizer: set data.tokenizer, or model.backbone (whose "
                              "tokenizer is then used)")
        return wordpiece.load_tokenizer(self.tokenizer_path)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> SpecialIds:
        """Ids of [PAD], [UNK], [CLS], [SEP] (and [MASK]) in this tokenizer."""
        return wordpiece.special_ids(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        return self.special_ids.pad

    def model_arguments(self) -> dict[str, Any]:
        """{name: value} of every `model_links` entry: what the CLI passes to the model."""
        return {name: getattr(self, name) for name in self.model_links}

    # -- loaders
    def batch_sampler(self, num_rows: int, train: bool, lengths: Sequence[int] | None = None,
                      group_by_length: bool = False,
                      sampler_class: type[BatchSampler] = BatchSampler) -> BatchSampler:
        """This process's batches of `num_rows` rows: shuffled anew each epoch for training,
        in order (longest first with `group_by_length`) otherwise."""
        return sampler_class(num_rows, self.batch_size if train else self.eval_batch_size,
                             shuffle=train, lengths=lengths, group_by_length=group_by_length,
                             # every process must take the same number of training steps
                             drop_last=train and distributed_rank_and_size()[1] > 1,
                             seed=self.seed)

    def stateful_loader(self, dataset, collate_fn: Callable, batch_sampler: Any = None,
                        batch_size: int | None = None) -> StatefulDataLoader:
        """A `StatefulDataLoader`: Lightning saves its position (and its batch sampler's) in
        every checkpoint and restores it on resume. Give `batch_sampler` for a map-style
        dataset, `batch_size` for an iterable one."""
        if batch_sampler is not None:
            return StatefulDataLoader(dataset, batch_sampler=batch_sampler,
                                      collate_fn=collate_fn, num_workers=self.num_workers,
                                      persistent_workers=self.num_workers > 0)
        return StatefulDataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn,
                                  num_workers=self.num_workers)
