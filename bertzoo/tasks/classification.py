"""Sequence classification: one text or a text pair -> one label, several labels, or a score.

BERT's fine-tuning recipe for GLUE (Devlin et al. 2018, Section 4.1): the final hidden state of
[CLS] through the pooler (dense + tanh), dropout, and one linear layer with K outputs; softmax
cross-entropy for single-label classification. As in Hugging Face's
`BertForSequenceClassification`, the same head does multi-label classification (independent
sigmoids, binary cross-entropy) and regression (K = 1, mean squared error, STS-B), so a trained
model exports to that class (`bertzoo export`) with its label names as `id2label`.

Where this departs from it: `pooling: mean` classifies the mean of the last hidden states over
the real tokens instead of the pooled [CLS] state. Sentence-embedding checkpoints
(sentence-transformers' all-MiniLM-L6-v2 and the like) were trained to put the meaning there,
and their [CLS] pooler was never trained for it; such a model exports as its encoder only.

Problem types (`data.problem_type`, linked to the model):
    single_label  one label per row; metrics accuracy, macro-F1, Matthews correlation, and
                  with two labels the F1 of the second one (GLUE's F1 for MRPC and QQP,
                  whose labels are 0 and 1)
    multi_label   a list of labels per row (a JSON list, or one string split on
                  `label_separator`); metrics accuracy (per label), macro-F1, Matthews
    regression    a number per row; metrics Pearson, Spearman, mean squared error

Label names come from the training data (sorted; numerically when every label is a number) or
from `data.labels`; they are stored in the checkpoint's hyper-parameters, so `test` and
`predict` with `--ckpt_path` need no training file, and a label in another split that training
never saw is an error naming its file and line.

GLUE's own files read as they are: unquoted TSVs (a quote is text), CoLA's train and dev files
without a header line (`data.column_names`), and a Hugging Face dataset whose evaluation splits
have other names (MNLI's `validation_matched`: `data.dataset_splits`).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassF1Score

from bertzoo.synthetic import NOUNS
from bertzoo.tasks import inputs
from bertzoo.tasks.base import DataError, TaskDataModule, TaskModule
from bertzoo.tasks.registry import TaskSpec
from bertzoo.training.options import PositiveInt, Probability

ProblemType = Literal["single_label", "multi_label", "regression"]
# Hugging Face's `config.problem_type` names for the same three cases.
HF_PROBLEM_TYPES = {"single_label": "single_label_classification",
                    "multi_label": "multi_label_classification", "regression": "regression"}


# ------------------------------------------------------------------------------------ the data
class ClassificationDataModule(TaskDataModule):
    """Rows of text (or text pairs) with a label, from CSV/TSV/JSONL files or a HF dataset.

    Args:
        text_column: Column holding the text (GLUE SST-2: "sentence").
        text_pair_column: Column holding the second text of a pair (GLUE MRPC: "#2 String"
            with text_column "#1 String"; RTE: "sentence2"); none for single texts.
        label_column: Column holding the label (a list or `label_separator`-joined string for
            multi-label data, a number for regression).
        labels: Label names in class-id order; by default every label of the training data,
            sorted (numerically when all are numbers). Taken from the checkpoint with
            `--ckpt_path`.
        problem_type: single_label, multi_label or regression (one number per row).
        label_separator: Separator of a multi-label string label ("a,b"); JSON lists need none.
        column_names: The columns of CSV/TSV files that have no header line (GLUE CoLA's
            train.tsv and dev.tsv: source, label, original_label, sentence). A file whose
            first line holds `text_column` as a field has a header and is read with it (CoLA's
            test.tsv: index, sentence).
        dataset_splits: Names of the Hugging Face dataset's splits where they are not the usual
            ones, as {validation|test|predict: name} (GLUE MNLI: {validation:
            validation_matched, predict: test_matched}).
        **kwargs: The arguments of `TaskDataModule` (files, tokenizer, batch size, ...).
    """

    model_links = ("vocab_size", "num_labels", "label_names", "problem_type")

    def __init__(self, text_column: str = "sentence", text_pair_column: str | None = None,
                 label_column: str = "label", labels: list[str] | None = None,
                 problem_type: ProblemType = "single_label", label_separator: str = ",",
                 column_names: list[str] | None = None,
                 dataset_splits: dict[str, str] | None = None, **kwargs):
        super().__init__(**kwargs)
        if problem_type not in HF_PROBLEM_TYPES:
            raise DataError(f"data.problem_type must be one of {list(HF_PROBLEM_TYPES)}, got "
                            f"{problem_type!r}")
        self.text_column = text_column
        self.text_pair_column = text_pair_column
        self.label_column = label_column
        self.problem_type = problem_type
        self.label_separator = label_separator
        self._label_names = [str(label) for label in labels] if labels else None
        self.column_names = list(column_names) if column_names else None
        unknown = set(dataset_splits or {}) - {"train", "validation", "test", "predict"}
        if unknown:
            raise DataError(f"data.dataset_splits: unknown split(s) {sorted(unknown)}; the keys "
                            f"are train, validation, test and predict")
        self.dataset_splits = dict(dataset_splits or {})
        self._headerless: set[str] = set()  # files read with `column_names`

    # -- reading
    def _hf_split(self, split: str) -> str | None:
        return self.dataset_splits.get(split) or super()._hf_split(split)

    def read_file(self, path: str):
        suffix = Path(path).suffix.lower()
        if not self.column_names or suffix not in (".tsv", ".csv"):
            return super().read_file(path)
        delimiter = "\t" if suffix == ".tsv" else ","
        with open(path, encoding="utf-8", errors="replace") as f:
            first = next(csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE
                                    if suffix == ".tsv" else csv.QUOTE_MINIMAL), [])
        if self.text_column in first:
            return super().read_file(path)  # it has a header line of its own
        if len(first) != len(self.column_names):
            raise DataError(f"{path}, line 1: {len(first)} fields, but data.column_names names "
                            f"{len(self.column_names)} ({', '.join(self.column_names)}), and "
                            f"the line is no header (no {self.text_column!r} field)")
        import datasets
        self._headerless.add(str(path))
        return datasets.load_dataset(
            "csv", data_files=str(path), split="train", delimiter=delimiter,
            quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL,
            keep_default_na=False, column_names=self.column_names, header=None)

    def location(self, split: str, row: int) -> str:
        where = super().location(split, row)
        path = self.files.get(split)
        if path and str(path) in self._headerless:  # no header line to count
            row = self._sampled_rows[split][row] if split in self._sampled_rows else row
            return f"{path}, line {row + 1}"
        return where

    # -- labels
    @property
    def label_names(self) -> list[str]:
        """Class names in id order ([] for regression); read from the training data once."""
        if self.problem_type == "regression":
            return []
        if self._label_names is None:
            if not self.has_split("train"):
                raise DataError("the label names are unknown: set data.train_file (or "
                                "data.dataset), or data.labels, or pass --ckpt_path of a "
                                "trained model")
            train = self.raw("train")
            self.require_columns(train, [self.label_column], self.source("train"))
            seen = {label for value in train[self.label_column]
                    for label in self._row_labels(value)}
            self._label_names = sort_labels(seen)
            if self.problem_type == "single_label" and len(self._label_names) < 2:
                raise DataError(f"{self.source('train')}: column {self.label_column!r} holds a "
                                f"single label {self._label_names}; classification needs two "
                                f"or more (for scores use problem_type: regression)")
        return self._label_names

    @property
    def num_labels(self) -> int:
        return 1 if self.problem_type == "regression" else len(self.label_names)

    def _row_labels(self, value: Any) -> list[str]:
        """The label names of one row's label cell."""
        if self.problem_type == "multi_label":
            if isinstance(value, list):
                return [str(v) for v in value]
            text = "" if value is None else str(value)
            return [part.strip() for part in text.split(self.label_separator) if part.strip()]
        return [] if value is None else [str(value)]

    # -- tokenizing
    def fingerprint_parts(self) -> tuple:
        return (*super().fingerprint_parts(), self.text_column, self.text_pair_column,
                self.label_column, self.problem_type, self.label_separator,
                tuple(self.label_names))

    def preprocess(self, dataset, split: str):
        text_columns = [c for c in (self.text_column, self.text_pair_column) if c]
        with_labels = split != "predict"
        self.require_columns(dataset, text_columns + ([self.label_column] if with_labels
                                                      else []), self.source(split))
        label_ids = {name: i for i, name in enumerate(self.label_names)}

        def tokenize(rows: dict[str, list], indices: list[int]) -> dict[str, list]:
            for column in text_columns:
                for value, index in zip(rows[column], indices):
                    if not isinstance(value, str):
                        raise DataError(f"{self.location(split, index)}: column {column!r} "
                                        f"should hold text, found {value!r}")
            out = self.encode(rows[self.text_column],
                              rows[self.text_pair_column] if self.text_pair_column else None)
            out["index"] = list(indices)
            if with_labels:
                out["labels"] = [self._target(value, label_ids, split, index)
                                 for value, index in zip(rows[self.label_column], indices)]
            return out

        kept = set(text_columns)
        return self.map(dataset, tokenize, split, with_indices=True,
                        remove_columns=[c for c in dataset.column_names if c not in kept])

    def _target(self, value: Any, label_ids: dict[str, int], split: str, index: int):
        """One row's training target: a class id, a multi-hot vector or a float."""
        if self.problem_type == "regression":
            try:
                return float(value)
            except (TypeError, ValueError):
                raise DataError(f"{self.location(split, index)}: label {value!r} in column "
                                f"{self.label_column!r} is not a number (problem_type: "
                                f"regression)") from None
        names = self._row_labels(value)
        unknown = [name for name in names if name not in label_ids]
        if unknown or (self.problem_type == "single_label" and len(names) != 1):
            what = (f"label {unknown[0]!r} was not seen in training" if unknown
                    else "no label")
            raise DataError(f"{self.location(split, index)}: {what} (column "
                            f"{self.label_column!r}); known labels: "
                            f"{', '.join(self.label_names)}")
        if self.problem_type == "single_label":
            return label_ids[names[0]]
        multi_hot = [0.0] * len(label_ids)
        for name in names:
            multi_hot[label_ids[name]] = 1.0
        return multi_hot


class SecondLabelF1(MulticlassF1Score):
    """F1 of label id 1 of two (GLUE's F1 for MRPC and QQP: "1", equivalent/duplicate, is the
    positive class), from the same logits as the other metrics."""

    def __init__(self):
        super().__init__(2, average="none")

    def compute(self):
        return super().compute()[1]


def sort_labels(labels: set[str]) -> list[str]:
    """Numeric labels in numeric order ("2" before "10"), anything else alphabetically."""
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


# ----------------------------------------------------------------------------------- the model
class ClassificationModule(TaskModule):
    """BERT with a linear layer on the pooled [CLS] state: classes, label sets or a score.

    Args:
        num_labels: Number of classes (1 for regression). Linked from the data module.
        label_names: Class names in id order. Linked from the data module; saved in the
            checkpoint and written into `predict` output.
        problem_type: single_label, multi_label or regression. Linked from the data module.
        pooling: What the head reads: "cls", the pooled [CLS] state (BERT), or "mean", the
            mean of the last hidden states over the real tokens (suits sentence-embedding
            checkpoints such as all-MiniLM-L6-v2).
        multi_label_threshold: Probability above which a label is predicted (multi_label).
        **kwargs: The arguments of `TaskModule` (backbone, optimizer, schedule, ...).
    """

    def __init__(self, num_labels: PositiveInt | None = None,
                 label_names: list[str] | None = None,
                 problem_type: ProblemType = "single_label",
                 pooling: Literal["cls", "mean"] = "cls",
                 multi_label_threshold: Probability = 0.5, **kwargs):
        super().__init__(**kwargs)
        if pooling not in ("cls", "mean"):
            raise ValueError(f"model.pooling must be 'cls' or 'mean', got {pooling!r}")
        if num_labels is None:
            raise ValueError("model.num_labels is unknown: it is linked from the data module "
                             "(bertzoo fit); in Python pass num_labels=")
        if problem_type == "regression" and num_labels != 1:
            raise ValueError(f"problem_type regression predicts one score, got num_labels="
                             f"{num_labels}")
        if label_names and len(label_names) != num_labels:
            raise ValueError(f"{len(label_names)} label names for num_labels={num_labels}")
        self.num_labels = num_labels
        self.label_names = list(label_names) if label_names else [
            str(i) for i in range(num_labels)]
        self.problem_type = problem_type
        self.pooling = pooling
        if pooling == "mean":
            self.encoder.pooler = None  # unused: no parameters without gradients (DDP)
        self.multi_label_threshold = multi_label_threshold
        self.classifier = nn.Linear(self.hidden_size, num_labels)
        self.init_heads(self.classifier)

    @property
    def checkpoint_monitor(self) -> tuple[str, str]:
        return ("val/pearson", "max") if self.problem_type == "regression" \
            else ("val/accuracy", "max")

    def forward(self, batch: dict[str, Any]) -> Tensor:
        out = self.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        if self.pooling == "cls":
            pooled = out.pooler_output  # (B, H)
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
            pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, H)
        return self.classifier(self.dropout(pooled))  # (B, num_labels)

    def loss(self, logits: Tensor, batch: dict[str, Any]) -> Tensor:
        labels = batch["labels"]
        if self.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.float())
        if self.problem_type == "multi_label":
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(logits, labels)

    def build_metrics(self):
        import torchmetrics as tm
        from torchmetrics import classification as tc
        if self.problem_type == "regression":
            return tm.MetricCollection({"pearson": tm.PearsonCorrCoef(),
                                        "spearman": tm.SpearmanCorrCoef(),
                                        "mse": tm.MeanSquaredError()})
        if self.problem_type == "multi_label":
            n = self.num_labels
            return tm.MetricCollection({
                "accuracy": tc.MultilabelAccuracy(n, average="micro"),
                "macro_f1": tc.MultilabelF1Score(n, average="macro"),
                "matthews": tc.MultilabelMatthewsCorrCoef(n)})
        n = self.num_labels
        metrics = {"accuracy": tc.MulticlassAccuracy(n, average="micro"),
                   "macro_f1": tc.MulticlassF1Score(n, average="macro"),
                   "matthews": tc.MulticlassMatthewsCorrCoef(n)}
        if n == 2:
            metrics["f1"] = SecondLabelF1()
        return tm.MetricCollection(metrics)

    def metric_update(self, logits: Tensor, batch: dict[str, Any]) -> tuple:
        labels = batch["labels"]
        if self.problem_type == "regression":
            return logits.squeeze(-1).float(), labels.float()
        if self.problem_type == "multi_label":
            return torch.sigmoid(logits.float()), labels.long()
        return logits.float(), labels

    def decode(self, logits: Tensor, batch: dict[str, Any]) -> list[dict[str, Any]]:
        indices = batch["index"].tolist()
        texts = {key: batch[key] for key in batch
                 if isinstance(batch[key], list) and key != "index"}
        rows = [{"index": index, **{key: values[i] for key, values in texts.items()}}
                for i, index in enumerate(indices)]
        logits = logits.float()
        if self.problem_type == "regression":
            for row, score in zip(rows, logits.squeeze(-1).tolist()):
                row["score"] = score
            return rows
        probabilities = (torch.sigmoid(logits) if self.problem_type == "multi_label"
                         else logits.softmax(-1)).tolist()
        for row, probs in zip(rows, probabilities):
            if self.problem_type == "multi_label":
                row["labels"] = [name for name, p in zip(self.label_names, probs)
                                 if p > self.multi_label_threshold]
            else:
                row["label"] = self.label_names[max(range(len(probs)), key=probs.__getitem__)]
            row["probabilities"] = dict(zip(self.label_names, probs))
        return rows

    @classmethod
    def hf_export(cls, state_dict: dict[str, Tensor], hparams: dict[str, Any]):
        """A `BertForSequenceClassification` folder: `classifier.*` and `id2label`."""
        if hparams.get("pooling", "cls") != "cls":
            return None  # no Hugging Face class reads the mean: export the encoder
        names = list(hparams.get("label_names") or [])
        num_labels = int(hparams["num_labels"])
        names = names or [f"LABEL_{i}" for i in range(num_labels)]
        head = {"classifier.weight": state_dict["classifier.weight"],
                "classifier.bias": state_dict["classifier.bias"]}
        config = {"id2label": {str(i): name for i, name in enumerate(names)},
                  "label2id": {name: i for i, name in enumerate(names)},
                  "problem_type": HF_PROBLEM_TYPES[hparams.get("problem_type", "single_label")]}
        return "BertForSequenceClassification", head, config


# -------------------------------------------------------------------------- the registry entry
def example_data(folder: Path, like: dict[str, Any] | None = None) -> dict[str, Any]:
    """A few rows of learnable sentiment (GLUE SST-2 layout: a TSV with `sentence` and `label`)
    for the generated tests. With `like` (a recipe's `data:` section) the rows follow its
    layout instead: its column names, a second text for pair tasks, numbers for regression,
    label lists for multi-label, and the format of its `train_file` (.tsv, .csv or .jsonl)."""
    like = like or {}
    text_column = like.get("text_column", "sentence")
    pair_column = like.get("text_pair_column")
    label_column = like.get("label_column", "label")
    problem_type = like.get("problem_type", "single_label")
    suffix = Path(like.get("train_file") or "train.tsv").suffix.lower()
    suffix = suffix if suffix in (".tsv", ".csv", ".jsonl") else ".tsv"
    rng = random.Random(0)
    good, bad = ("happy", "bright", "warm", "gentle"), ("sad", "dark", "cold", "noisy")
    files = {}
    for split, count in (("train", 24), ("dev", 8)):
        rows = []
        for i in range(count):
            positive = i % 2 == 1
            words = good if positive else bad
            row = {text_column: f"the {rng.choice(words)} {rng.choice(NOUNS)} is "
                                f"{rng.choice(words)} ."}
            if pair_column:
                row[pair_column] = f"it is {rng.choice(words)}"
            row[label_column] = {"regression": 4.0 if positive else 1.0,
                                 "multi_label": ["positive", "warm"] if positive else ["negative"]
                                 }.get(problem_type, int(positive))
            rows.append(row)
        files[split] = Path(folder) / f"{split}{suffix}"
        if suffix == ".jsonl":
            files[split].write_text("".join(json.dumps(row) + "\n" for row in rows))
            continue
        separator = like.get("label_separator", ",")
        delimiter = "\t" if suffix == ".tsv" else ","
        lines = [delimiter.join(rows[0])]
        for row in rows:
            cells = [separator.join(v) if isinstance(v, list) else str(v) for v in row.values()]
            lines.append(delimiter.join(f'"{c}"' if suffix == ".csv" else c for c in cells))
        files[split].write_text("\n".join(lines) + "\n")
    return {"train_file": str(files["train"]), "validation_file": str(files["dev"]),
            "test_file": str(files["dev"]), "predict_file": str(files["dev"])}


def input_row(value: Any, data: dict[str, Any], position: int) -> dict[str, Any]:
    """A text, or {"text": ..., "text_pair": ...} -> a row in the columns the model was
    trained on; a pair for a single-text model (or the reverse) is an error."""
    text_column = data.get("text_column", "sentence")
    pair_column = data.get("text_pair_column")
    if not isinstance(value, (str, dict)):
        raise inputs.InputError("", 'a text, or {"text": ..., "text_pair": ...}', value)
    if isinstance(value, str):
        first, second = value, None
    else:
        value = inputs.fields(value, ("text",), ("text_pair",))
        first = inputs.text(value["text"], "text")
        second = value.get("text_pair")
        if second is not None:
            inputs.text(second, "text_pair")
    if pair_column and second is None:
        raise inputs.InputError("text_pair", "a second text (this model classifies text "
                                             "pairs)", inputs.MISSING)
    if second is not None and not pair_column:
        raise inputs.InputError("text_pair", "no second text (this model classifies single "
                                             "texts)", second)
    return {text_column: first, **({pair_column: second} if pair_column else {})}


def example_inputs(data_args: dict[str, Any]) -> list[Any]:
    """The predict rows of `example_data` as raw inputs."""
    data = ClassificationDataModule(**data_args)
    pair = data.text_pair_column
    return [row[data.text_column] if not pair else
            {"text": row[data.text_column], "text_pair": row[pair]}
            for row in data.raw("predict")]


RAW_INPUTS = inputs.RawInputs(
    description='a text, or {"text": ..., "text_pair": ...} for a model of text pairs',
    json_schema={"oneOf": [
        {"type": "string"},
        {"type": "object", "required": ["text"], "additionalProperties": False,
         "properties": {"text": {"type": "string"}, "text_pair": {"type": "string"}}}]},
    to_row=input_row, examples=example_inputs)

TASK = TaskSpec(
    name="classification",
    description="Text or text-pair classification (single/multi-label) and regression (GLUE)",
    module=ClassificationModule,
    datamodule=ClassificationDataModule,
    example_data=example_data,
    monitor="val/accuracy",
    monitor_mode="max",
    inputs=RAW_INPUTS,
)
