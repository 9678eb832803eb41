"""Entity-level precision, recall and F1 for sequence labelling, as seqeval computes them by
default, and a torchmetrics `Metric` that gathers what they need across devices.

Reference: seqeval 1.2 (github.com/chakki-works/seqeval), `metrics/sequence_labeling.py`:
`get_entities`, `f1_score`, `classification_report` in their default mode (`mode=None`), which
is "compatible with conlleval.pl", the CoNLL-2000 evaluation script. In that mode the scheme
does not matter: one set of rules reads entities from IOB1, IOB2 and BIOES tags alike:

- a tag is split into a prefix (its first character) and a type (what follows the first '-');
- an entity ends before a token when the previous tag was E or S, when B or I is followed by
  B, S or O, or when the type changes;
- an entity starts at B or S, at I or E that follows O, E or S (so an I-x without a B-x
  opens an entity, and so does an E-x after O), or wherever the type changes;
- each sentence ends with an implicit O, so no entity crosses sentences.

An entity is (type, first token, last token); a prediction counts when all three equal a gold
entity's. Precision/recall are 0 when undefined (seqeval's `zero_division="warn"` value), F1 is
2PR/(P+R) or 0. seqeval's `mode="strict"` (with a `scheme`) is different: it drops the
ill-formed chunks the default mode accepts; bertzoo does not offer it.

The `EntityScore` metric keeps, for every tagged word, (sentence, word position, predicted
label, gold label) and computes entities only in `compute()`, after torchmetrics has gathered
these states from every device: a sentence split into several windows, possibly in different
batches or on different devices, is put back together before any entity is read from it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from bertzoo.tasks.conll import split_tag

Entity = tuple[str, int, int]  # (type, first token, last token), both inclusive as in seqeval


# --------------------------------------------------------------------------- reading entities
def _prefix_and_type(tag: str) -> tuple[str, str]:
    # seqeval: tag = chunk[0], type = chunk[1:].split('-', maxsplit=1)[-1] or '_'
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _ends(prev_prefix: str, prefix: str, prev_type: str, entity_type: str) -> bool:
    return (prev_prefix in ("E", "S")
            or (prev_prefix in ("B", "I") and prefix in ("B", "S", "O"))
            or (prev_prefix not in ("O", ".") and prev_type != entity_type))


def _starts(prev_prefix: str, prefix: str, prev_type: str, entity_type: str) -> bool:
    return (prefix in ("B", "S")
            or (prev_prefix in ("E", "S", "O") and prefix in ("E", "I"))
            or (prefix not in ("O", ".") and prev_type != entity_type))


def get_entities(tags: Sequence[str]) -> list[Entity]:
    """Entities of one sentence's tags under conlleval's rules (seqeval's default mode)."""
    entities: list[Entity] = []
    prev_prefix, prev_type, begin = "O", "", 0
    for position, tag in enumerate([*tags, "O"]):
        prefix, entity_type = _prefix_and_type(tag)
        if _ends(prev_prefix, prefix, prev_type, entity_type):
            entities.append((prev_type, begin, position - 1))
        if _starts(prev_prefix, prefix, prev_type, entity_type):
            begin = position
        prev_prefix, prev_type = prefix, entity_type
    return entities


# ------------------------------------------------------------------------------------ scores
@dataclass
class EntityCounts:
    """Sufficient statistics of the entity scores: per type, entities predicted, gold, and
    predicted correctly; and how many tokens were tagged correctly."""
    predicted: Counter = field(default_factory=Counter)
    gold: Counter = field(default_factory=Counter)
    correct: Counter = field(default_factory=Counter)
    tokens: int = 0
    tokens_correct: int = 0

    def add(self, gold_tags: Sequence[str], predicted_tags: Sequence[str]) -> None:
        """Count one sentence."""
        if len(gold_tags) != len(predicted_tags):
            raise ValueError(f"a sentence has {len(gold_tags)} gold tags but "
                             f"{len(predicted_tags)} predicted ones")
        gold = set(get_entities(gold_tags))
        predicted = set(get_entities(predicted_tags))
        self.gold.update(entity_type for entity_type, _, _ in gold)
        self.predicted.update(entity_type for entity_type, _, _ in predicted)
        self.correct.update(entity_type for entity_type, _, _ in gold & predicted)
        self.tokens += len(gold_tags)
        self.tokens_correct += sum(g == p for g, p in zip(gold_tags, predicted_tags))

    @property
    def types(self) -> list[str]:
        """Entity types seen in the gold or predicted tags (seqeval's report rows), sorted."""
        return sorted(set(self.gold) | set(self.predicted))

    def scores(self, entity_type: str | None = None) -> tuple[float, float, float, int]:
        """(precision, recall, f1, support) of one type, or micro-averaged over all types."""
        if entity_type is None:
            correct, predicted, gold = (sum(c.values()) for c in
                                        (self.correct, self.predicted, self.gold))
        else:
            correct, predicted, gold = (c[entity_type] for c in
                                        (self.correct, self.predicted, self.gold))
        return _prf(correct, predicted, gold)

    @property
    def accuracy(self) -> float:
        """Token accuracy (seqeval's `accuracy_score`); 0 without tokens."""
        return self.tokens_correct / self.tokens if self.tokens else 0.0

    def report(self) -> dict[str, dict[str, float]]:
        """The dict `seqeval.metrics.classification_report(output_dict=True)` returns: one row
        per type, then "micro avg", "macro avg" and "weighted avg"."""
        rows = {t: self.scores(t) for t in self.types}
        report = {t: _row(*values) for t, values in rows.items()}
        report["micro avg"] = _row(*self.scores())
        support = np.array([values[3] for values in rows.values()], dtype=np.int64)
        columns = [np.array([values[i] for values in rows.values()], dtype=np.float64)
                   for i in range(3)]
        # Averages as numpy takes them (np.average), to the last bit; no types gives nan, as in
        # seqeval.
        with np.errstate(invalid="ignore", divide="ignore"):
            macro = [float(np.average(c)) if len(c) else float("nan") for c in columns]
        report["macro avg"] = _row(*macro, int(support.sum()))
        if support.sum() == 0:  # seqeval's value for zero_division="warn"
            weighted = [0.0, 0.0, 0.0]
        else:
            weighted = [float(np.average(c, weights=support)) for c in columns]
        report["weighted avg"] = _row(*weighted, int(support.sum()))
        return report


def _prf(correct: int, predicted: int, gold: int) -> tuple[float, float, float, int]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    denominator = precision + recall
    f1 = 2.0 * precision * recall / denominator if denominator else 0.0
    return precision, recall, f1, gold


def _row(precision: float, recall: float, f1: float, support: int) -> dict[str, float]:
    return {"precision": precision, "recall": recall, "f1-score": f1, "support": support}


def count_entities(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
                   ) -> EntityCounts:
    """Counts over sentences of tags (lists of strings), gold and predicted in the same order."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted ones")
    counts = EntityCounts()
    for gold_tags, predicted_tags in zip(gold, predicted):
        counts.add(gold_tags, predicted_tags)
    return counts


# ----------------------------------------------------------------------------------- metric
SCORES = ("precision", "recall", "f1", "accuracy")


def metric_name(score: str, entity_type: str | None = None) -> str:
    """'f1' for the micro average, 'f1_creative-work' for one type (a valid module name)."""
    return score if entity_type is None else f"{score}_{re.sub(r'[^0-9A-Za-z_-]', '_', entity_type)}"


class EntityScore(Metric):
    """One entity-level score (or token accuracy) over whole sentences.

    Args:
        label_names: Tag of each label id ("O", "B-person", ...).
        score: "precision", "recall", "f1" (entity level, micro-averaged over types unless
            `entity_type` is given) or "accuracy" (token level).
        entity_type: Score this entity type only.

    `update(predicted, gold, word_index, sentence_index)` takes per-token label ids `(B, T)`,
    the position in its sentence of the word each token tags `(B, T)` (negative for tokens that
    tag nothing: special tokens, continuation pieces, words another window of the sentence
    tags) and each row's sentence `(B,)`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, label_names: Sequence[str], score: str = "f1",
                 entity_type: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if score == "accuracy" and entity_type is not None:
            raise ValueError("token accuracy has no per-type variant")
        self.label_names = list(label_names)
        self.score = score
        self.entity_type = entity_type
        for name in ("sentence_ids", "word_ids", "predicted", "gold"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, predicted: Tensor, gold: Tensor, word_index: Tensor,
               sentence_index: Tensor) -> None:
        tagged = word_index >= 0  # (B, T)
        # Kept as float32 (exact for integers below 2**24): a process that saw no batch syncs
        # torchmetrics' float32 placeholder, and gloo aborts when ranks' dtypes differ.
        self.sentence_ids.append(sentence_index[:, None].expand_as(word_index)[tagged].float())
        self.word_ids.append(word_index[tagged].float())
        self.predicted.append(predicted[tagged].float())
        self.gold.append(gold[tagged].float())

    def sentences(self) -> tuple[list[list[str]], list[list[str]]]:
        """(gold, predicted) tag sequences of every sentence seen, in sentence order."""
        states = (self.sentence_ids, self.word_ids, self.predicted, self.gold)
        if isinstance(self.sentence_ids, list) and not self.sentence_ids:
            return [], []  # no update (lists until synced, then one tensor each)
        sentence_ids, word_ids, predicted, gold = (dim_zero_cat(s).long() for s in states)
        if not sentence_ids.numel():
            return [], []
        key = sentence_ids * (int(word_ids.max()) + 1) + word_ids
        order = torch.argsort(key, stable=True)
        key, sentence_ids = key[order], sentence_ids[order]
        first = torch.ones_like(key, dtype=torch.bool)  # a word tagged twice counts once
        first[1:] = key[1:] != key[:-1]
        sentence_ids = sentence_ids[first]
        predicted, gold = predicted[order][first].tolist(), gold[order][first].tolist()
        lengths = torch.unique_consecutive(sentence_ids, return_counts=True)[1].tolist()
        names = self.label_names
        gold_sentences, predicted_sentences, start = [], [], 0
        for length in lengths:
            gold_sentences.append([names[i] for i in gold[start:start + length]])
            predicted_sentences.append([names[i] for i in predicted[start:start + length]])
            start += length
        return gold_sentences, predicted_sentences

    def counts(self) -> EntityCounts:
        return count_entities(*self.sentences())

    def compute(self) -> Tensor:
        counts = self.counts()
        if self.score == "accuracy":
            value = counts.accuracy
        else:
            precision, recall, f1, _ = counts.scores(self.entity_type)
            value = {"precision": precision, "recall": recall, "f1": f1}[self.score]
        return torch.tensor(value, dtype=torch.float32)


def entity_metrics(label_names: Sequence[str]):
    """A `MetricCollection`: micro precision/recall/F1, token accuracy, and precision/recall/F1
    of every entity type in `label_names`."""
    from torchmetrics import MetricCollection
    types = sorted({split_tag(name)[1] for name in label_names} - {None})
    metrics = {score: EntityScore(label_names, score) for score in SCORES}
    for entity_type in types:
        for score in ("precision", "recall", "f1"):
            metrics[metric_name(score, entity_type)] = EntityScore(label_names, score,
                                                                   entity_type)
    # Each member keeps its own small state: sharing them (compute groups) makes Lightning's
    # per-step logging deep-copy every state on every step.
    return MetricCollection(metrics, compute_groups=False)
