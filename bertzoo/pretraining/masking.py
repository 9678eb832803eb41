"""Dynamic masking for the masked-LM objective, applied each time a batch is drawn.

BERT (Devlin et al. 2018, Section 3.1 and Appendix A.1; google-research/bert
`create_masked_lm_predictions`): `mlm_probability` (15%) of the tokens are selected for
prediction; of those, 80% become `[MASK]`, 10% a random token and 10% stay unchanged; the loss is
taken at the selected positions only (`mlm_labels` holds -100 everywhere else). Whole-word
masking (the May 2019 release of google-research/bert) selects whole words: a `##` piece is
always selected together with the word it continues. RoBERTa (Liu et al. 2019, Section 4.1)
showed that masking anew each time a sequence is seen ("dynamic masking") is at least as good as
google's fixed copies; this module does that.

Where this departs from google's code, and why:
    - Only non-special tokens are candidates ([CLS], [SEP], [PAD], [UNK], [MASK] never are), and
      the count is `mlm_probability` of those, rounded stochastically (floor(p * n + u), u
      uniform): the expected fraction is exactly `mlm_probability` for every length, where
      google's round(p * len) with a minimum of one over-masks short sequences.
    - A random replacement is drawn from the non-special tokens (google draws from the whole
      vocabulary, special tokens included).
    - The randomness of a sequence is a pure function of (seed, epoch, sample index): each row
      has its own generator. No RNG state has to be checkpointed for an exact resume, the
      result does not depend on `num_workers`, and N processes each masking their share of a
      global batch produce exactly what one process would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bertzoo.config import ConfigError
from bertzoo.model import IGNORE_INDEX
from bertzoo.tokenizer import TokenizerError, special_ids

MASKING_STREAM = 1  # separates the masking generators from the instance builder's (stream 0)
# Whole-word masking for text without `##` pieces (Chinese: WordPiece makes every character a
# token of its own). A word segmenter marks each token that continues the word of the token
# before it by setting this bit of its id (`bertzoo.pretraining.chinese`); the mark travels
# through instances, streams and caches with the id (int32, ids < 2**30), and the collator
# takes it off before anything else reads the id.
WORD_CONTINUES = 1 << 30


class MaskingCollator:
    """Rows of an instance dataset -> a padded, masked batch.

    A row is a dict with `input_ids` and `token_type_ids` (sequences of ints), `nsp_label`,
    and `index` and `epoch` (which seed its masking). The batch holds `input_ids`,
    `token_type_ids`, `attention_mask`, `mlm_labels` (B, T) and `nsp_labels` (B,).

    Args:
        vocab_size: Number of token ids.
        special_ids: Ids never selected and never used as random replacements.
        mask_id: Id of `[MASK]`.
        pad_id: Id of `[PAD]`.
        continuation_ids: Ids of `##` pieces (needed for whole-word masking).
        mlm_probability: Fraction of the non-special tokens selected for prediction.
        mask_token_prob: Of the selected, the fraction replaced by `[MASK]`.
        random_token_prob: Of the selected, the fraction replaced by a random token (the rest
            stays unchanged).
        whole_word_mask: Select whole words (a `##` piece with the word it continues).
        max_predictions_per_seq: At most this many selected tokens per sequence (None: no cap).
        pad_to_multiple_of: Round the batch length up to a multiple of this.
        seed: Base of every row's generator.
    """

    def __init__(self, vocab_size: int, special_ids: Sequence[int], mask_id: int, pad_id: int,
                 continuation_ids: Sequence[int] = (), mlm_probability: float = 0.15,
                 mask_token_prob: float = 0.8, random_token_prob: float = 0.1,
                 whole_word_mask: bool = False, max_predictions_per_seq: int | None = None,
                 pad_to_multiple_of: int | None = None, seed: int = 0):
        if not 0.0 < mlm_probability < 1.0:
            raise ConfigError(f"data.mlm_probability must be in (0, 1), got {mlm_probability}")
        if mask_token_prob < 0 or random_token_prob < 0 or mask_token_prob + random_token_prob > 1:
            raise ConfigError(f"data.mask_token_prob ({mask_token_prob}) and "
                             f"data.random_token_prob ({random_token_prob}) must be >= 0 and sum "
                             f"to at most 1 (the rest of the selected tokens stay unchanged)")
        if max_predictions_per_seq is not None and max_predictions_per_seq < 1:
            raise ConfigError(f"data.max_predictions_per_seq must be positive or null, "
                             f"got {max_predictions_per_seq}")
        self.vocab_size = vocab_size
        self.is_special = np.zeros(vocab_size, dtype=bool)
        self.is_special[list(special_ids)] = True
        self.is_continuation = np.zeros(vocab_size, dtype=bool)
        self.is_continuation[list(continuation_ids)] = True
        self.replacement_ids = np.flatnonzero(~self.is_special)
        self.mask_id = mask_id
        self.pad_id = pad_id
        self.mlm_probability = mlm_probability
        self.mask_token_prob = mask_token_prob
        self.random_token_prob = random_token_prob
        self.whole_word_mask = whole_word_mask
        self.max_predictions_per_seq = max_predictions_per_seq
        self.pad_to_multiple_of = pad_to_multiple_of
        self.seed = seed

    @classmethod
    def for_tokenizer(cls, tokenizer, **kwargs) -> "MaskingCollator":
        """A collator with the special, `[MASK]`, `[PAD]` and `##` ids of a tokenizer."""
        ids = special_ids(tokenizer)
        if ids.mask is None:
            raise TokenizerError("the tokenizer has no [MASK] token; masked-LM pretraining "
                                 "needs one")
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        added_special = [i for i, token in tokenizer.get_added_tokens_decoder().items()
                         if token.special]
        continuation = [i for token, i in vocab.items() if token.startswith("##")]
        return cls(vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
                   special_ids=sorted({*ids.all, *added_special}), mask_id=ids.mask,
                   pad_id=ids.pad, continuation_ids=continuation, **kwargs)

    def rng(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, MASKING_STREAM, epoch, index])

    # -------------------------------------------------------------------------- one sequence
    def select(self, input_ids: np.ndarray, rng: np.random.Generator,
               marked: np.ndarray | None = None) -> np.ndarray:
        """Sorted positions selected for prediction in one sequence. `marked` (T,): tokens a
        word segmenter says continue the word before them."""
        maskable = ~self.is_special[input_ids]  # (T,)
        candidates = int(maskable.sum())
        if candidates == 0:
            return np.zeros(0, dtype=np.int64)
        count = math.floor(self.mlm_probability * candidates + rng.random())
        if self.max_predictions_per_seq is not None:
            count = min(count, self.max_predictions_per_seq)
        if not self.whole_word_mask:
            return np.sort(rng.permutation(np.flatnonzero(maskable))[:count])
        # A word starts at a maskable token that is not a ## piece following a maskable token.
        continues = self.is_continuation[input_ids]
        if marked is not None:
            continues = continues | marked
        continues &= np.concatenate(([False], maskable[:-1]))
        starts = maskable & ~continues
        word_of = np.cumsum(starts) - 1  # (T,) word number of each token (valid where maskable)
        positions = np.flatnonzero(maskable)
        bounds = np.flatnonzero(np.diff(word_of[positions], prepend=-1)) \
            if len(positions) else np.zeros(0, dtype=np.int64)
        words = np.split(positions, bounds[1:])  # maskable positions of each word, in order
        chosen: list[np.ndarray] = []
        taken = 0
        for w in rng.permutation(len(words)):
            # As google's code: a word that would overshoot the count is skipped, not cut.
            if taken + len(words[w]) <= count:
                chosen.append(words[w])
                taken += len(words[w])
                if taken == count:
                    break
        return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)

    def mask(self, input_ids: np.ndarray, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
        """(masked input ids, labels) of one sequence; labels are -100 where nothing is
        predicted."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        marked = (input_ids & WORD_CONTINUES) != 0
        input_ids = input_ids & ~WORD_CONTINUES if marked.any() else input_ids
        selected = self.select(input_ids, rng, marked if self.whole_word_mask else None)
        labels = np.full(len(input_ids), IGNORE_INDEX, dtype=np.int64)
        labels[selected] = input_ids[selected]
        masked = input_ids.copy()
        decision = rng.random(len(selected))
        to_mask = selected[decision < self.mask_token_prob]
        to_random = selected[(decision >= self.mask_token_prob)
                             & (decision < self.mask_token_prob + self.random_token_prob)]
        masked[to_mask] = self.mask_id
        masked[to_random] = self.replacement_ids[
            rng.integers(len(self.replacement_ids), size=len(to_random))]
        return masked, labels

    # -------------------------------------------------------------------------------- a batch
    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(row["input_ids"]) for row in rows)
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch_size = len(rows)
        input_ids = np.full((batch_size, longest), self.pad_id, dtype=np.int64)
        token_type_ids = np.zeros((batch_size, longest), dtype=np.int64)
        attention_mask = np.zeros((batch_size, longest), dtype=np.int64)
        mlm_labels = np.full((batch_size, longest), IGNORE_INDEX, dtype=np.int64)
        for b, row in enumerate(rows):
            length = len(row["input_ids"])
            masked, labels = self.mask(row["input_ids"], self.rng(row["epoch"], row["index"]))
            input_ids[b, :length] = masked
            token_type_ids[b, :length] = row["token_type_ids"]
            attention_mask[b, :length] = 1
            mlm_labels[b, :length] = labels
        return {
            "input_ids": torch.from_numpy(input_ids),  # (B, T)
            "token_type_ids": torch.from_numpy(token_type_ids),  # (B, T)
            "attention_mask": torch.from_numpy(attention_mask),  # (B, T)
            "mlm_labels": torch.from_numpy(mlm_labels),  # (B, T)
            "nsp_labels": torch.tensor([int(row["nsp_label"]) for row in rows]),  # (B,)
        }
