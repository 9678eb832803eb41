"""Named-entity recognition (token classification): a linear layer over BERT's last hidden
states predicts one tag per word, read from the word's first word piece.

Devlin et al. 2018, Section 5.3 (CoNLL-2003 NER): "we use the representation of the first
sub-token as the input to the token-level classifier over the NER label set". Data come from
CoNLL-style files (`bertzoo.tasks.conll`), JSON lines or a Hugging Face dataset with `tokens`
and `ner_tags`; metrics are seqeval's entity-level precision/recall/F1 in its default mode
(`bertzoo.tasks.entity_metrics`) plus token accuracy.

Where this departs from Hugging Face's `run_ner.py`:
- A sentence longer than `max_length` word pieces is not truncated: it is cut, at word
  boundaries, into windows that overlap by up to `stride` pieces. Every window is trained on;
  each word is predicted (and scored) from the one window where it has the most context on
  both sides, BERT's "max context" rule for SQuAD (google-research/bert `run_squad.py`,
  `_check_is_max_context`), and the windows are put back together by sentence before entities
  are read, so metrics and predictions cover every word of every sentence.
- A word that tokenizes to nothing (a lone variation selector, say) is fed as [UNK] rather than
  dropped, so that it still gets a tag and still counts in the metrics.
- A single word longer than a whole window keeps only its first `max_length - 2` pieces (its
  tag is read from the first one anyway).

`bertzoo predict` writes one JSON line per sentence: its text (the input text, or the words
joined by single spaces), words, tags, and entities with their type, text, word span
`[start_word, end_word)` and character span `[start_char, end_char)` in that text.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertzoo.config import ConfigError
from bertzoo import synthetic
from bertzoo.tasks import inputs
from bertzoo.tasks.base import DataError, TaskDataModule, TaskModule
from bertzoo.tasks.conll import (canonical_scheme, inside_label, read_conll, scheme_labels,
                                 split_tag, tag_problem, write_conll)
from bertzoo.tasks.entity_metrics import entity_metrics, get_entities
from bertzoo.tasks.registry import TaskSpec
from bertzoo.training import share_of_global_mean
from bertzoo.training.options import NonNegativeInt

IGNORE_INDEX = -100  # label of tokens that carry none (cross-entropy's ignore_index)
JSON_SUFFIXES = (".json", ".jsonl")


# ------------------------------------------------------------------------------------ windows
def plan_windows(piece_counts: list[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Word ranges [start, end) of the windows covering a sentence whose words have
    `piece_counts` pieces: each window holds at most `budget` pieces, and the next one starts
    as far back as keeps the overlap within `stride` pieces (always at least one word on, and
    always reaching past the previous window's end)."""
    windows: list[tuple[int, int]] = []
    start, num_words = 0, len(piece_counts)
    while True:
        end, used = start, 0
        while end < num_words and used + piece_counts[end] <= budget:
            used += piece_counts[end]
            end += 1
        windows.append((start, end))
        if end == num_words:
            return windows
        # Overlap up to `stride` pieces, leaving room for the word that did not fit.
        limit, next_start, overlap = min(stride, budget - piece_counts[end]), end, 0
        while next_start - 1 > start and overlap + piece_counts[next_start - 1] <= limit:
            next_start -= 1
            overlap += piece_counts[next_start]
        start = next_start


def best_windows(piece_counts: list[int], windows: list[tuple[int, int]]) -> list[int]:
    """For each word, the window that predicts it: the one where min(pieces before the word,
    pieces after it) is largest; the earlier window on ties (BERT's max-context rule)."""
    owner = [-1] * len(piece_counts)
    best_score = [-1] * len(piece_counts)
    for window, (start, end) in enumerate(windows):
        before, total = 0, sum(piece_counts[start:end])
        for word in range(start, end):
            after = total - before - piece_counts[word]
            score = min(before, after)
            if score > best_score[word]:
                owner[word], best_score[word] = window, score
            before += piece_counts[word]
    return owner


# ---------------------------------------------------------------------------------- the data
class NerDataModule(TaskDataModule):
    """Sentences of words with one tag each, from CoNLL files, JSON lines or a Hugging Face
    dataset; each sentence becomes one or more windows of word pieces.

    Args:
        labels: The tags the model predicts, in label-id order. Default: the dataset's
            ClassLabel names, else every tag of `scheme` for the entity types of the training
            data ("O", then B-/I-[/E-/S-] per type, sorted). Filled in from a trained model's
            checkpoint for `predict`/`test`, so no training file is needed there.
        scheme: Tag scheme of the data: IOB2 (alias BIO), IOB1 or BIOES (alias IOBES). A tag
            outside it is an error naming the file and line.
        tag_column: Where the tags are: a column number for CoNLL files (default -1, the
            last; CoNLL-2003's original files: 3 for NER, 2 for chunks), a field name for JSON
            lines and Hugging Face datasets (default: "ner_tags", else "tags").
        label_all_tokens: Train every word piece on its word's tag (B-x becomes I-x on the
            pieces after the first) instead of the first piece only. Predictions and metrics
            always read the first piece.
        stride: Word pieces that consecutive windows of a sentence longer than `max_length`
            may share (context on both sides of a cut); must be below `max_length - 2`.

    Files: `.json`/`.jsonl` are JSON lines with a `tokens` list and a tag list (for `predict`,
    a `text` string instead of `tokens` is split into words as BERT's pre-tokenizer does);
    any other suffix is read as CoNLL (`token ... tag` per line, blank line between sentences;
    a single column is untagged text, enough for `predict`).
    """

    model_links: ClassVar[tuple[str, ...]] = ("vocab_size", "label_names")
    token_label_keys: ClassVar[tuple[str, ...]] = ("labels", "word_index")
    file_formats: ClassVar[tuple[str, ...]] = (".conll (or any other: CoNLL columns)", ".jsonl",
                                               ".json")

    def __init__(self, labels: list[str] | None = None, scheme: str = "IOB2",
                 tag_column: NonNegativeInt | str | None = None, label_all_tokens: bool = False,
                 stride: NonNegativeInt = 32, **kwargs):
        super().__init__(**kwargs)
        self.labels = list(labels) if labels else None
        self.scheme = canonical_scheme(scheme)
        self.tag_column = tag_column
        self.label_all_tokens = label_all_tokens
        self.stride = stride
        if not 0 <= stride < self.max_length - 2:
            raise DataError(f"data.stride must be >= 0 and below max_length - 2 = "
                            f"{self.max_length - 2} (the pieces a window holds besides [CLS] "
                            f"and [SEP]), got {stride}")
        self._label_names: list[str] | None = None
        self._label_ids_by_name: dict[str, int] | None = None

    # -- reading
    def read_file(self, path: str):
        import datasets
        if Path(path).suffix.lower() in JSON_SUFFIXES:
            return super().read_file(path)
        if isinstance(self.tag_column, str):
            raise DataError(f"data.tag_column={self.tag_column!r} names a field, but {path} is "
                            f"read as CoNLL columns: give a column number (e.g. -1, the last)")
        column = -1 if self.tag_column is None else self.tag_column
        return datasets.Dataset.from_dict(read_conll(path, self.scheme, column))

    def location(self, split: str, row: int, word: int = 0) -> str:
        """"file:line" of word `word` of row `row` for CoNLL files, else the base's answer."""
        raw = self.raw(split)
        if "line" in raw.column_names and self.files.get(split):
            return f"{self.files[split]}:{raw[row]['line'] + word}"
        where = super().location(split, row)
        return f"{where}, word {word}" if word else where

    def _tag_field(self, dataset, split: str) -> str | None:
        """The column holding the tags (None when the split has none)."""
        columns = dataset.column_names
        if "line" in columns:  # read from CoNLL
            return "tags" if "tags" in columns else None
        if isinstance(self.tag_column, str):
            return self.tag_column if self.tag_column in columns else None
        return next((c for c in ("ner_tags", "tags") if c in columns), None)

    def _require_tags(self, dataset, split: str) -> str:
        field = self._tag_field(dataset, split)
        if field is None:
            if "line" in dataset.column_names:
                raise DataError(f"{self.source(split)} has one column (tokens only); {split} "
                                f"data needs a tag column ('token tag' per line)")
            wanted = repr(self.tag_column) if isinstance(self.tag_column, str) \
                else "'ner_tags' or 'tags'"
            raise DataError(f"{self.source(split)}: no tag column {wanted} (set data.tag_column);"
                            f" found {dataset.column_names}")
        if "tokens" not in dataset.column_names:
            raise DataError(f"{self.source(split)}: no 'tokens' column (a list of words per "
                            f"sentence); found {dataset.column_names}")
        return field

    @staticmethod
    def _class_label_names(dataset, field: str) -> list[str] | None:
        from datasets import ClassLabel
        feature = getattr(dataset.features[field], "feature", None)
        return list(feature.names) if isinstance(feature, ClassLabel) else None

    # -- labels
    @property
    def label_names(self) -> list[str]:
        """The label set (linked to the model's `label_names`)."""
        if self._label_names is None:
            self._label_names = self._find_label_names()
        return self._label_names

    def _find_label_names(self) -> list[str]:
        if self.labels:
            for label in self.labels:
                if problem := tag_problem(label, self.scheme):
                    raise DataError(f"data.labels: {problem}")
            return list(self.labels)
        if not self.has_split("train"):
            raise DataError("the label set is unknown: give training data (data.train_file or "
                            "data.dataset), data.labels, or --ckpt_path of a trained model")
        train = self.raw("train")
        field = self._require_tags(train, "train")
        names = self._class_label_names(train, field)
        if names is not None:
            for name in names:
                if problem := tag_problem(name, self.scheme):
                    raise DataError(f"{self.source('train')}: label names of {field!r}: "
                                    f"{problem}; set data.scheme")
            return names
        types = set()
        for row, tags in enumerate(train[field]):
            for word, tag in enumerate(tags):
                if not isinstance(tag, str):
                    raise DataError(f"{self.location('train', row, word)}: tag {tag!r} is a "
                                    f"number without label names; give data.labels")
                if problem := tag_problem(tag, self.scheme):
                    raise DataError(f"{self.location('train', row, word)}: {problem}")
                types.add(split_tag(tag)[1])
        return scheme_labels(types - {None}, self.scheme)

    def fingerprint_parts(self) -> tuple:
        return (*super().fingerprint_parts(), self.label_names, self.scheme, self.tag_column,
                self.label_all_tokens, self.stride)

    # -- tokenizing
    def preprocess(self, dataset, split: str):
        columns = dataset.column_names
        tagged = split != "predict"
        field = self._require_tags(dataset, split) if tagged else None
        if "tokens" not in columns and not (split == "predict" and "text" in columns):
            raise DataError(f"{self.source(split)}: no 'tokens' column (a list of words per "
                            f"sentence){' or text column' if split == 'predict' else ''}; "
                            f"found {columns}")
        source_names = self._class_label_names(dataset, field) if tagged else None
        if source_names is not None:
            unknown = [n for n in source_names if n not in self.label_names]
            if unknown:
                raise DataError(f"{self.source(split)}: labels {unknown} are not among the "
                                f"model's labels {self.label_names}")
        return self.map(dataset, self._windows, split, with_indices=True,
                        remove_columns=columns,
                        fn_kwargs={"split": split, "field": field,
                                   "source_names": source_names})

    def _label_ids(self, tags: list, row: int, split: str, source_names: list[str] | None
                   ) -> list[int]:
        label_ids = self._label_to_id
        if source_names is not None:  # ClassLabel ids of the dataset
            return [label_ids[source_names[t]] for t in tags]
        ids = []
        for word, tag in enumerate(tags):
            if isinstance(tag, str):
                label = label_ids.get(tag)
                if label is None:
                    problem = tag_problem(tag, self.scheme) or (
                        f"tag {tag!r} is not among the labels the model predicts "
                        f"({', '.join(self.label_names)}): an entity type absent from the "
                        f"training data (or data.labels) cannot be learnt or scored")
                    raise DataError(f"{self.location(split, row, word)}: {problem}")
            elif self.labels and isinstance(tag, int) and 0 <= tag < len(self.label_names):
                label = tag  # numbers index data.labels
            else:
                raise DataError(f"{self.location(split, row, word)}: tag {tag!r} is not a tag "
                                f"string (numeric tags need data.labels or ClassLabel names)")
            ids.append(label)
        return ids

    @property
    def _label_to_id(self) -> dict[str, int]:
        if self._label_ids_by_name is None:
            self._label_ids_by_name = {label: i for i, label in enumerate(self.label_names)}
        return self._label_ids_by_name

    def _windows(self, batch: dict[str, list], indices: list[int], split: str,
                 field: str | None, source_names: list[str] | None) -> dict[str, list]:
        """Sentences -> windows: `input_ids` ([CLS] pieces [SEP]), `labels` (a word's tag on
        its first piece, -100 elsewhere), `word_index` (the word a token is read for: its
        position in the sentence on the first piece of each word this window predicts, -100
        elsewhere), `index` (the sentence); for predict also the words, text and offsets."""
        tokenizer = self.tokenizer
        cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        unk_id = tokenizer.token_to_id("[UNK]")
        budget = self.max_length - 2
        predicting = split == "predict"
        if "tokens" in batch:
            sentences = batch["tokens"]
            if predicting:  # character spans refer to the words joined by single spaces
                texts, offsets = [], []
                for words in sentences:
                    starts = [0]
                    for word in words[:-1]:
                        starts.append(starts[-1] + len(word) + 1)
                    texts.append(" ".join(words))
                    offsets.append([[s, s + len(w)] for s, w in zip(starts, words)])
        else:  # predict from raw text: BERT's pre-tokenizer finds the words and their offsets
            from tokenizers.pre_tokenizers import BertPreTokenizer
            pre_tokenizer = BertPreTokenizer()
            texts = batch["text"]
            split_texts = [pre_tokenizer.pre_tokenize_str(text or "") for text in texts]
            sentences = [[word for word, _ in words] for words in split_texts]
            offsets = [[list(span) for _, span in words] for words in split_texts]
        encodings = tokenizer.encode_batch([list(words) for words in sentences],
                                           is_pretokenized=True, add_special_tokens=False)
        label_to_id = self._label_to_id
        inside = [label_to_id.get(inside_label(name), i) for i, name in
                  enumerate(self.label_names)]
        out: dict[str, list] = {"input_ids": [], "word_index": [], "index": []}
        if field is not None:
            out["labels"] = []
        if predicting:
            out.update(words=[], text=[], word_offsets=[])
        for row, (index, words, encoding) in enumerate(zip(indices, sentences, encodings)):
            if not words and not predicting:
                continue  # nothing to learn or score
            pieces: list[list[int]] = [[] for _ in words]
            for word, piece in zip(encoding.word_ids, encoding.ids):
                pieces[word].append(piece)
            pieces = [p[:budget] if p else [unk_id] for p in pieces]
            counts = [len(p) for p in pieces]
            word_labels = (self._label_ids(batch[field][row], index, split, source_names)
                           if field is not None else None)
            if word_labels is not None and len(word_labels) != len(words):
                raise DataError(f"{self.location(split, index)}: {len(words)} tokens but "
                                f"{len(word_labels)} tags")
            windows = plan_windows(counts, budget, self.stride) if words else [(0, 0)]
            owners = best_windows(counts, windows)
            for window, (start, end) in enumerate(windows):
                input_ids, word_index, labels = [cls_id], [IGNORE_INDEX], [IGNORE_INDEX]
                for word in range(start, end):
                    input_ids += pieces[word]
                    word_index += [word if owners[word] == window else IGNORE_INDEX]
                    word_index += [IGNORE_INDEX] * (counts[word] - 1)
                    if word_labels is not None:
                        label = word_labels[word]
                        follow = inside[label] if self.label_all_tokens else IGNORE_INDEX
                        labels += [label] + [follow] * (counts[word] - 1)
                input_ids.append(sep_id)
                word_index.append(IGNORE_INDEX)
                labels.append(IGNORE_INDEX)
                out["input_ids"].append(input_ids)
                out["word_index"].append(word_index)
                out["index"].append(index)
                if field is not None:
                    out["labels"].append(labels)
                if predicting:
                    out["words"].append(list(words))
                    out["text"].append(texts[row])
                    out["word_offsets"].append(offsets[row])
        return out


# --------------------------------------------------------------------------------- the model
class NerModule(TaskModule):
    """BERT with a linear tag classifier on every token (Hugging Face's
    `BertForTokenClassification`); a word's tag is predicted at its first word piece.

    Args:
        label_names: The tags, in label-id order; linked from the data module.
    """

    train_metrics: ClassVar[bool] = False  # entity F1 needs whole sentences; val/test only

    def __init__(self, label_names: list[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        if not label_names:
            raise ConfigError("model.label_names is empty: it comes from the data module "
                              "(the training tags or data.labels)")
        self.label_names = list(label_names)
        # Token classification never reads the [CLS] pooler (BertForTokenClassification has
        # none); an unused parameter would also stall DDP's gradient reduction.
        self.encoder.pooler = None
        self.classifier = nn.Linear(self.hidden_size, len(self.label_names))
        self.init_heads(self.classifier)

    def forward(self, batch: dict[str, Any]) -> Tensor:
        hidden = self.encoder(batch["input_ids"], attention_mask=batch["attention_mask"],
                              token_type_ids=batch["token_type_ids"]).last_hidden_state  # (B, T, H)
        return self.classifier(self.dropout(hidden))  # (B, T, labels)

    def loss(self, outputs: Tensor, batch: dict[str, Any]) -> Tensor:
        """Mean cross-entropy over the labelled tokens (a word's first piece). In training under
        DDP, over the labelled tokens of the whole global batch: the ranks hold different
        numbers of them (`share_of_global_mean`)."""
        labelled = self.loss_weight(batch)
        if labelled == 0:  # nothing to learn from, but every parameter stays in the graph
            loss = outputs.sum() * 0.0
        else:
            loss = F.cross_entropy(outputs.flatten(0, 1), batch["labels"].flatten(),
                                   ignore_index=IGNORE_INDEX)
        # every rank takes part in the all-reduce, with or without labelled tokens
        return share_of_global_mean(loss, labelled) if self.training else loss

    def loss_weight(self, batch: dict[str, Any]) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def build_metrics(self):
        return entity_metrics(self.label_names)

    def metric_update(self, outputs: Tensor, batch: dict[str, Any]) -> tuple:
        return outputs.argmax(-1), batch["labels"], batch["word_index"], batch["index"]

    def decode(self, outputs: Tensor, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """One row per window: the sentence, and the tags of the words this window predicts
        (None for the others); `finalize_predictions` joins the windows of each sentence."""
        predicted = outputs.argmax(-1).tolist()  # (B, T)
        word_index = batch["word_index"].tolist()  # (B, T)
        rows = []
        for row, words in enumerate(_as_lists(batch["words"])):
            tags: list[str | None] = [None] * len(words)
            for word, label in zip(word_index[row], predicted[row]):
                if word >= 0:
                    tags[word] = self.label_names[label]
            rows.append({"index": int(batch["index"][row]), "words": words,
                         "text": batch["text"][row],
                         "word_offsets": _as_lists(batch["word_offsets"])[row], "tags": tags})
        return rows

    def finalize_predictions(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sentences: dict[int, dict[str, Any]] = {}
        for row in rows:
            sentence = sentences.setdefault(row["index"], {**row, "tags": list(row["tags"])})
            for word, tag in enumerate(row["tags"]):
                if tag is not None:
                    sentence["tags"][word] = tag
        results = []
        for index in sorted(sentences):
            sentence = sentences[index]
            text, offsets = sentence["text"], sentence["word_offsets"]
            tags = [tag or "O" for tag in sentence["tags"]]
            entities = []
            for entity_type, first, last in get_entities(tags):
                start_char, end_char = offsets[first][0], offsets[last][1]
                entities.append({"type": entity_type, "text": text[start_char:end_char],
                                 "start_word": first, "end_word": last + 1,
                                 "start_char": start_char, "end_char": end_char})
            results.append({"index": index, "text": text, "words": sentence["words"],
                            "tags": tags, "entities": entities})
        return results

    @classmethod
    def hf_export(cls, state_dict: dict[str, Tensor], hparams: dict[str, Any]):
        names = list(hparams["label_names"])
        return ("BertForTokenClassification",
                {"classifier.weight": state_dict["classifier.weight"],
                 "classifier.bias": state_dict["classifier.bias"]},
                {"id2label": {str(i): name for i, name in enumerate(names)},
                 "label2id": {name: i for i, name in enumerate(names)}})


def _as_lists(values) -> list:
    # The collator turns a column of equal-length number lists into a tensor; a batch of
    # sentences without words (empty texts to predict) is one.
    return values.tolist() if isinstance(values, Tensor) else values


# ------------------------------------------------------------------------------ registration
def example_data(folder: Path, like: dict[str, Any] | None = None) -> dict[str, Any]:
    """A few CoNLL sentences with person and location entities (one of them two words long)
    and a JSON-lines file of raw text to predict. Every NER recipe reads CoNLL files in this
    layout, so `like` (a recipe's `data:` section) changes nothing."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)

    def tagged(text: str) -> tuple[list[str], list[str]]:
        words = text.replace(".", " .").split()
        tags = []
        for i, word in enumerate(words):
            if word in synthetic.NAMES:
                tags.append("B-person")
            elif i > 0 and words[i - 1] == "in":
                tags.append("B-location")
            elif i > 0 and tags[-1] == "B-location" and word != ".":
                tags.append("I-location")
            else:
                tags.append("O")
        return words, tags

    texts = synthetic.sentences(40, seed=1)
    examples = [tagged(t) for t in texts]
    examples.append(tagged(f"{rng.choice(synthetic.NAMES)} visits the city in Oslo harbour ."))
    write_conll(folder / "train.conll", examples[:30])
    write_conll(folder / "validation.conll", examples[30:])
    (folder / "predict.jsonl").write_text(
        "".join(json.dumps({"text": text}) + "\n" for text in texts[:4]), encoding="utf-8")
    return {"train_file": str(folder / "train.conll"),
            "validation_file": str(folder / "validation.conll"),
            "test_file": str(folder / "validation.conll"),
            "predict_file": str(folder / "predict.jsonl")}


def input_row(value: Any, data: dict[str, Any], position: int) -> dict[str, Any]:
    """A text (split into words as BERT's pre-tokenizer does) or {"tokens": [words]}."""
    if not isinstance(value, (str, dict)):
        raise inputs.InputError("", 'a text, or {"tokens": [words]}', value)
    if isinstance(value, str):
        return {"text": value}
    value = inputs.fields(value, ("tokens",))
    return {"tokens": inputs.texts(value["tokens"], "tokens", minimum=0)}


def example_inputs(data_args: dict[str, Any]) -> list[Any]:
    """The predict rows of `example_data` as raw inputs."""
    rows = NerDataModule(**data_args).raw("predict")
    return [row["text"] if "text" in row else {"tokens": row["tokens"]} for row in rows]


RAW_INPUTS = inputs.RawInputs(
    description='a text, or {"tokens": [words]}',
    json_schema={"oneOf": [
        {"type": "string"},
        {"type": "object", "required": ["tokens"], "additionalProperties": False,
         "properties": {"tokens": {"type": "array", "items": {"type": "string"}}}}]},
    to_row=input_row, examples=example_inputs)

TASK = TaskSpec(
    name="ner",
    description="Named-entity recognition (token classification): IOB1/IOB2/BIOES tags, "
                "seqeval entity F1",
    module=NerModule,
    datamodule=NerDataModule,
    example_data=example_data,
    monitor="val/f1",
    monitor_mode="max",
    inputs=RAW_INPUTS,
)
