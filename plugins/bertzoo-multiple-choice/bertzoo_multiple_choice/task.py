"""Multiple choice: pick the right ending (or answer) among several, SWAG-style.

Zellers et al. 2018, "SWAG: A Large-Scale Adversarial Dataset for Grounded Commonsense
Inference" (https://arxiv.org/abs/1808.05326); BERT's recipe for it (Devlin et al. 2018,
Section 4.4): each (context, ending) pair is encoded as one sequence, a linear layer turns its
pooled [CLS] state into one score, and a softmax over a row's choices is trained with
cross-entropy. The weights are those of Hugging Face's `BertForMultipleChoice` (`classifier`:
H -> 1 on the pooler output), so `bertzoo export` writes that class.

Where this departs from Hugging Face's `run_swag.py`: rows may have different numbers of
choices (ARC has 3 to 5); a batch is padded to its row with the most choices and the missing
choices are masked out of the softmax (`choice_mask`).

Batch layout: input_ids / attention_mask / token_type_ids (B, C, T), choice_mask (B, C),
labels (B,): B rows, C choices, T word pieces.

Registered with bertzoo only through this distribution's entry point
(`[project.entry-points."bertzoo.tasks"]` in its pyproject.toml).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertzoo.tasks import DataError, RawInputs, TaskDataModule, TaskModule, TaskSpec, pad_to


# ------------------------------------------------------------------------------------ the data
class MultipleChoiceDataModule(TaskDataModule):
    """Rows of a context, optionally the start of the answer, and its candidate endings.

    The defaults read SWAG's CSV layout (sent1, sent2, ending0-ending3, label); HellaSwag-
    or ARC-like JSON lines with a list of choices use `choices_column`.

    Args:
        context_column: The context each choice is paired with (SWAG: "sent1").
        question_column: Text put before every ending, e.g. the start of the next sentence
            (SWAG: "sent2") or a question; none to use the endings alone.
        choice_columns: One column per choice (SWAG: ending0 ... ending3).
        choices_column: Instead of `choice_columns`, one column holding the list of choices
            (JSON lines); rows may differ in their number of choices.
        label_column: Index of the right choice (0-based), needed except for prediction.
        **kwargs: The arguments of `TaskDataModule` (files, tokenizer, batch size, ...).
    """

    def __init__(self, context_column: str = "sent1", question_column: str | None = "sent2",
                 choice_columns: list[str] | None = None, choices_column: str | None = None,
                 label_column: str = "label", **kwargs):
        super().__init__(**kwargs)
        self.context_column = context_column
        self.question_column = question_column
        self.choice_columns = list(choice_columns or [f"ending{i}" for i in range(4)])
        self.choices_column = choices_column
        self.label_column = label_column

    def fingerprint_parts(self) -> tuple:
        return (*super().fingerprint_parts(), self.context_column, self.question_column,
                tuple(self.choice_columns), self.choices_column, self.label_column)

    def preprocess(self, dataset, split: str):
        columns = [self.context_column] + ([self.question_column] if self.question_column
                                           else [])
        columns += [self.choices_column] if self.choices_column else self.choice_columns
        with_labels = split != "predict"
        self.require_columns(dataset, columns + ([self.label_column] if with_labels else []),
                             self.source(split))

        def tokenize(rows: dict[str, list], indices: list[int]) -> dict[str, list]:
            out: dict[str, list] = {"input_ids": [], "token_type_ids": [], "index": [],
                                    "labels": []}
            for position, index in enumerate(indices):
                choices = (rows[self.choices_column][position] if self.choices_column
                           else [rows[c][position] for c in self.choice_columns])
                if not isinstance(choices, list) or len(choices) < 2 \
                        or not all(isinstance(c, str) for c in choices):
                    raise DataError(f"{self.location(split, index)}: expected two or more "
                                    f"text choices, found {choices!r}")
                context = rows[self.context_column][position]
                lead = rows[self.question_column][position] if self.question_column else ""
                encoded = self.encode([context] * len(choices),
                                      [f"{lead} {choice}".strip() for choice in choices])
                out["input_ids"].append(encoded["input_ids"])
                out["token_type_ids"].append(encoded["token_type_ids"])
                out["index"].append(index)
                if with_labels:
                    out["labels"].append(self._label(rows[self.label_column][position],
                                                     len(choices), split, index))
            if not with_labels:
                del out["labels"]
            return out

        return self.map(dataset, tokenize, split, with_indices=True,
                        remove_columns=dataset.column_names)

    def _label(self, value: Any, num_choices: int, split: str, index: int) -> int:
        try:
            label = int(value)
        except (TypeError, ValueError):
            label = -1
        if not 0 <= label < num_choices or str(value).strip() != str(label):
            raise DataError(f"{self.location(split, index)}: label {value!r} in column "
                            f"{self.label_column!r} is not a choice index 0-{num_choices - 1}")
        return label

    def lengths(self, split: str) -> list[int]:
        # A row costs as much as its longest choice (all are padded to the batch's longest).
        return [max(len(ids) for ids in choices)
                for choices in self.datasets[split]["input_ids"]]

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad every row to the batch's most choices (masked), every choice to the longest."""
        ids = self.special_ids
        num_choices = max(len(row["input_ids"]) for row in rows)
        flat_ids: list[list[int]] = []
        flat_types: list[list[int]] = []
        choice_mask = []
        for row in rows:
            missing = num_choices - len(row["input_ids"])
            flat_ids += row["input_ids"] + [[ids.cls, ids.sep]] * missing
            flat_types += row["token_type_ids"] + [[0, 0]] * missing
            choice_mask.append([True] * len(row["input_ids"]) + [False] * missing)
        input_ids = pad_to(flat_ids, ids.pad, self.pad_to_multiple_of)  # (B*C, T)
        length = input_ids.shape[1]
        shape = (len(rows), num_choices, length)
        batch = {
            "input_ids": input_ids.view(shape),
            "attention_mask": pad_to([[1] * len(x) for x in flat_ids], 0,
                                     length=length).view(shape),
            "token_type_ids": pad_to(flat_types, 0, length=length).view(shape),
            "choice_mask": torch.tensor(choice_mask),  # (B, C)
            "index": torch.tensor([row["index"] for row in rows]),
        }
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([row["labels"] for row in rows])
        return batch


# ----------------------------------------------------------------------------------- the model
class MultipleChoiceModule(TaskModule):
    """BERT scoring each choice with a linear layer on its pooled [CLS] state.

    Args:
        **kwargs: The arguments of `TaskModule` (backbone, optimizer, schedule, ...).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.classifier = nn.Linear(self.hidden_size, 1)
        self.init_heads(self.classifier)

    def forward(self, batch: dict[str, Any]) -> Tensor:
        batch_size, num_choices, length = batch["input_ids"].shape  # (B, C, T)
        flat = {key: batch[key].reshape(batch_size * num_choices, length)
                for key in ("input_ids", "attention_mask", "token_type_ids")}
        pooled = self.encoder(flat["input_ids"], flat["attention_mask"],
                              flat["token_type_ids"]).pooler_output  # (B*C, H)
        scores = self.classifier(self.dropout(pooled)).view(batch_size, num_choices)  # (B, C)
        # A padding choice gets the lowest score, so softmax gives it no probability.
        return scores.masked_fill(~batch["choice_mask"], torch.finfo(scores.dtype).min)

    def loss(self, scores: Tensor, batch: dict[str, Any]) -> Tensor:
        return F.cross_entropy(scores, batch["labels"])

    def build_metrics(self):
        from torchmetrics import MeanMetric, MetricCollection

        # The number of choices may vary between rows, so accuracy is the mean of "right or
        # not" rather than a torchmetrics classification metric with a fixed class count.
        return MetricCollection({"accuracy": MeanMetric()})

    def metric_update(self, scores: Tensor, batch: dict[str, Any]) -> tuple:
        return ((scores.argmax(-1) == batch["labels"]).float(),)

    def decode(self, scores: Tensor, batch: dict[str, Any]) -> list[dict[str, Any]]:
        probabilities = scores.float().softmax(-1)
        rows = []
        for index, probs, mask in zip(batch["index"].tolist(), probabilities,
                                      batch["choice_mask"]):
            probs = probs[mask].tolist()
            rows.append({"index": index, "choice": max(range(len(probs)), key=probs.__getitem__),
                         "probabilities": probs})
        return rows

    @classmethod
    def hf_export(cls, state_dict: dict[str, Tensor], hparams: dict[str, Any]):
        """A Hugging Face `BertForMultipleChoice` folder (`classifier`: H -> 1)."""
        head = {"classifier.weight": state_dict["classifier.weight"],
                "classifier.bias": state_dict["classifier.bias"]}
        return "BertForMultipleChoice", head, {}


# -------------------------------------------------------------------------- the registry entry
SUBJECTS = ("The chef", "A child", "The driver", "She", "The old man", "A dog")
ACTIONS = ("opens the door", "picks up the cup", "climbs the stairs", "starts the car")
FOLLOW_UPS = {"opens the door": "walks inside", "picks up the cup": "drinks the tea",
              "climbs the stairs": "reaches the top", "starts the car": "drives away"}


def example_data(folder: Path, like: dict[str, Any] | None = None) -> dict[str, Any]:
    """A few rows in SWAG's CSV layout (sent1, sent2, ending0-3, label) whose right ending
    follows from the context: the data module arguments that read them. The rows are always
    in this layout (the plugin's recipe reads it), so `like` changes nothing."""
    rng = random.Random(0)
    files = {}
    for split, count in (("train", 16), ("dev", 8)):
        files[split] = Path(folder) / f"{split}.csv"
        with files[split].open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sent1", "sent2", "ending0", "ending1", "ending2", "ending3",
                             "label"])
            for _ in range(count):
                subject, action = rng.choice(SUBJECTS), rng.choice(ACTIONS)
                endings = list(FOLLOW_UPS.values())
                rng.shuffle(endings)
                writer.writerow([f"{subject} {action}.", f"{subject} then", *endings,
                                 endings.index(FOLLOW_UPS[action])])
    return {"train_file": str(files["train"]), "validation_file": str(files["dev"]),
            "test_file": str(files["dev"]), "predict_file": str(files["dev"])}


def input_row(value: Any, data: dict[str, Any], position: int) -> dict[str, Any]:
    """{"context": ..., "choices": [two or more texts]}."""
    value = RawInputs.fields(value, ("context", "choices"))
    return {"context": RawInputs.text(value["context"], "context"),
            "choices": RawInputs.texts(value["choices"], "choices", minimum=2)}


def example_inputs(data_args: dict[str, Any]) -> list[Any]:
    """The predict rows of `example_data` as raw inputs: the start of the answer (SWAG's
    sent2) goes in front of every choice, as the data module puts it there."""
    data = MultipleChoiceDataModule(**data_args)
    raw = []
    for row in data.raw("predict"):
        lead = row[data.question_column] if data.question_column else ""
        choices = (row[data.choices_column] if data.choices_column
                   else [row[c] for c in data.choice_columns])
        raw.append({"context": row[data.context_column],
                    "choices": [f"{lead} {choice}".strip() for choice in choices]})
    return raw


RAW_INPUTS = RawInputs(
    description='{"context": ..., "choices": [two or more texts]}',
    json_schema={"type": "object", "required": ["context", "choices"],
                 "additionalProperties": False,
                 "properties": {"context": {"type": "string"},
                                "choices": {"type": "array", "items": {"type": "string"},
                                            "minItems": 2}}},
    to_row=input_row, examples=example_inputs,
    data={"context_column": "context", "question_column": None, "choices_column": "choices"})

TASK = TaskSpec(
    name="multiple_choice",
    description="Multiple choice (SWAG-style): score each (context, choice) pair, softmax",
    module=MultipleChoiceModule,
    datamodule=MultipleChoiceDataModule,
    example_data=example_data,
    monitor="val/accuracy",
    monitor_mode="max",
    inputs=RAW_INPUTS,
)
