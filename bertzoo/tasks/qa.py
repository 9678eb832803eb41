"""Extractive question answering (SQuAD v1.1 and v2.0): find the answer to a question as a span
of its context.

BERT's SQuAD recipe (Devlin et al. 2018, Sections 4.2-4.3; google-research/bert `run_squad.py`):
the question and the context are one input, [CLS] question [SEP] context [SEP], cut into
overlapping windows when the context is long; one linear layer over every final hidden state
gives each token a start and an end score; training minimises the cross-entropy of the answer's
start and end token (both [CLS] when the window does not hold the answer or there is none).
The head is Hugging Face's `BertForQuestionAnswering.qa_outputs`, so a trained model exports to
that class (`bertzoo export`).

Reading, windows, post-processing and the official scores live in `bertzoo.tasks.squad`, where
the departures from the references are listed. Here they are wired into Lightning: the data
module reads SQuAD JSON files (the official layout, optionally only some of its articles, or
rows in the Hugging Face `squad` layout as JSON lines) or a Hugging Face dataset; the model
reduces each window to its best span on the device, `SquadMetric` gathers those records from
every device and scores the questions (`val/exact_match`, `val/f1`, and for v2.0 the
HasAns/NoAns split); `bertzoo predict` writes `predictions.json`, `{question id: answer}`, the
file the official evaluation scripts read.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertzoo import synthetic
from bertzoo.tasks import inputs, squad
from bertzoo.tasks.base import DataError, TaskDataModule, TaskModule
from bertzoo.tasks.registry import TaskSpec
from bertzoo.training.options import (DropoutRate, FiniteFloat, NonNegativeInt, PositiveInt,
                                      SequenceLength)

log = logging.getLogger("bertzoo")

SQUAD_COLUMNS = ["id", "context", "question", "answers"]


# ------------------------------------------------------------------------------------ the data
class SquadDataModule(TaskDataModule):
    """Questions with a context (and gold answers) in the SQuAD layout.

    Files: the official SQuAD v1.1/v2.0 JSON (`{"data": [articles]}`), or JSON lines / a JSON
    list of rows with the Hugging Face `squad` columns id, context, question and answers
    (`{"text": [...], "answer_start": [...]}`). With `dataset`, a Hugging Face dataset in that
    layout (`rajpurkar/squad`, `rajpurkar/squad_v2`).

    Args:
        doc_stride: Context tokens that consecutive windows of one question share (Hugging
            Face's meaning); must be smaller than a window's room for context.
        max_question_length: Questions longer than this many tokens are cut (None: never).
        version_2_with_negative: SQuAD 2.0: questions may have no answer. Linked to the model.
        train_articles: Articles of the training file to use, by position in the file from 0:
            "0-37", "0-9,12", 5 or [1, 3] (official SQuAD JSON only); default all.
        validation_articles: The same for the validation file.
        test_articles: The same for the test file.
        predict_articles: The same for the predict file.
        max_length: Tokens per window, question and special tokens included (Hugging Face's
            `max_seq_length`).
        **kwargs: The arguments of `TaskDataModule` (files, tokenizer, batch size, ...).
    """

    model_links = ("vocab_size", "version_2_with_negative")
    # Per-token context offsets, padded with -100 like labels: any negative offset means
    # "not a context token" to the post-processing.
    token_label_keys = ("offset_start", "offset_end")
    file_formats = (".json", ".jsonl")

    def __init__(self, doc_stride: NonNegativeInt = 128,
                 max_question_length: PositiveInt | None = 64,
                 version_2_with_negative: bool = False,
                 train_articles: str | NonNegativeInt | list[NonNegativeInt] | None = None,
                 validation_articles: str | NonNegativeInt | list[NonNegativeInt] | None = None,
                 test_articles: str | NonNegativeInt | list[NonNegativeInt] | None = None,
                 predict_articles: str | NonNegativeInt | list[NonNegativeInt] | None = None,
                 max_length: SequenceLength = 384, **kwargs):
        super().__init__(max_length=max_length, **kwargs)
        self.window_config = squad.WindowConfig(max_length, doc_stride, max_question_length)
        self.doc_stride = doc_stride
        self.max_question_length = max_question_length
        self.version_2_with_negative = version_2_with_negative
        self.articles = {"train": train_articles, "validation": validation_articles,
                         "test": test_articles, "predict": predict_articles}
        for split, selection in self.articles.items():
            if selection is not None:  # a malformed range fails now, not mid-run
                try:
                    squad.parse_articles(selection)
                except squad.SquadError as err:
                    raise DataError(f"data.{split}_articles: {err}") from None
        self._references: dict[str, squad.SquadReferences] = {}
        self._squad_files: dict[tuple[str, int], Any] = {}

    # -- reading
    def read_file(self, path: str):
        suffix = Path(path).suffix.lower()
        if suffix == ".json":
            key = (str(Path(path).resolve()), Path(path).stat().st_mtime_ns)
            if key in self._squad_files:  # train and validation are often parts of one file
                return self._squad_files[key]
            data = squad.load_json(path)
            if squad.is_squad_layout(data):
                self._squad_files[key] = squad.read_squad_json(path, data)
                return self._squad_files[key]
        elif suffix != ".jsonl":
            raise DataError(f"{path}: unsupported file type {suffix!r}; expected a SQuAD .json "
                            f"file or .jsonl rows with the columns {SQUAD_COLUMNS}")
        return super().read_file(path)

    def select_rows(self, dataset, split: str):
        selection = self.articles.get(split)
        if selection is None:
            return dataset
        return squad.select_articles(dataset, selection, self.source(split))

    def references(self, split: str) -> squad.SquadReferences:
        """Ids, contexts and gold answers of a split's questions, by row (for scoring and for
        turning windows back into answer texts)."""
        if split not in self._references:
            dataset = self.raw(split)
            self.require_columns(dataset, ["id", "context"], self.source(split))
            self._references[split] = squad.SquadReferences.from_dataset(dataset)
        return self._references[split]

    # -- tokenizing
    def fingerprint_parts(self) -> tuple:
        return (*super().fingerprint_parts(), self.doc_stride, self.max_question_length,
                self.version_2_with_negative)

    def preprocess(self, dataset, split: str):
        with_labels = split != "predict"
        self.require_columns(dataset, SQUAD_COLUMNS if with_labels else SQUAD_COLUMNS[:3],
                             self.source(split))
        windowing = squad.window_tokenizer(self.tokenizer, self.window_config)
        config, version_2 = self.window_config, self.version_2_with_negative
        source = self.source(split)

        def windows(examples: dict[str, list], indices: list[int]) -> dict[str, list]:
            return squad.make_windows(examples, indices, windowing, config, with_labels,
                                      version_2, source)

        return self.map(dataset, windows, split, with_indices=True,
                        remove_columns=dataset.column_names)


# ----------------------------------------------------------------------------------- the model
class QuestionAnsweringModule(TaskModule):
    """BERT with a start/end scorer on every token (Hugging Face's `qa_outputs`).

    Args:
        n_best_size: Start and end candidates tried per window when choosing the answer.
        max_answer_length: Longest answer, in tokens.
        version_2_with_negative: SQuAD 2.0 (answers may be "no answer"). Linked from the data.
        null_score_diff_threshold: v2.0: answer "" when the no-answer score beats the best
            span's score by more than this.
        head_dropout: Dropout on the hidden states before `qa_outputs` (Hugging Face's
            `BertForQuestionAnswering` has none).
        **kwargs: The arguments of `TaskModule` (backbone, optimizer, schedule, ...).
    """

    train_metrics = False  # scoring needs whole questions, gathered at the end of an epoch

    def __init__(self, n_best_size: PositiveInt = 20, max_answer_length: PositiveInt = 30,
                 version_2_with_negative: bool = False,
                 null_score_diff_threshold: FiniteFloat = 0.0, head_dropout: DropoutRate = 0.0,
                 **kwargs):
        super().__init__(head_dropout=head_dropout, **kwargs)
        if n_best_size < 1 or max_answer_length < 1:
            raise ValueError(f"n_best_size and max_answer_length must be positive, got "
                             f"{n_best_size} and {max_answer_length}")
        self.n_best_size = n_best_size
        self.max_answer_length = max_answer_length
        self.version_2_with_negative = version_2_with_negative
        self.null_score_diff_threshold = null_score_diff_threshold
        # Span scoring never reads the [CLS] pooler (BertForQuestionAnswering has none); an
        # unused parameter would also stop DDP's gradient reduction at the second step.
        self.encoder.pooler = None
        self.qa_outputs = nn.Linear(self.hidden_size, 2)  # (start, end) score of each token
        self.init_heads(self.qa_outputs)

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        attention_mask = batch["attention_mask"]
        hidden = self.encoder(batch["input_ids"], attention_mask,
                              batch["token_type_ids"]).last_hidden_state  # (B, T, H)
        logits = self.qa_outputs(self.dropout(hidden)).float()  # (B, T, 2)
        # Padding is never an answer; without this the loss would depend on how much padding
        # a window's batch happened to have.
        logits = logits.masked_fill(~attention_mask.bool()[:, :, None],
                                    torch.finfo(logits.dtype).min)
        start_logits, end_logits = logits.unbind(-1)  # (B, T) each
        return {"start_logits": start_logits, "end_logits": end_logits}

    def loss(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> Tensor:
        if "start_positions" not in batch:
            raise DataError("these windows carry no answer positions (a predict split?); "
                            "training and evaluation need answers")
        return (F.cross_entropy(outputs["start_logits"], batch["start_positions"])
                + F.cross_entropy(outputs["end_logits"], batch["end_positions"])) / 2

    def window_spans(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        return squad.best_window_spans(outputs["start_logits"], outputs["end_logits"],
                                       batch["offset_start"], batch["offset_end"],
                                       self.n_best_size, self.max_answer_length)

    # -- metrics: per-window records, gathered across devices, scored per question
    def build_metrics(self):
        from torchmetrics import MetricCollection
        return MetricCollection(
            {name: squad.SquadMetric(name, self.version_2_with_negative,
                                     self.null_score_diff_threshold)
             for name in squad.score_names(self.version_2_with_negative)},
            compute_groups=False)

    def metric_update(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> tuple:
        spans = self.window_spans(outputs, batch)
        return (batch["index"], spans["span_score"], spans["span_start"], spans["span_end"],
                spans["null_score"])

    def references(self, split: str) -> squad.SquadReferences:
        """The questions' ids, contexts and gold answers, from the run's `SquadDataModule`."""
        datamodule = self.trainer.datamodule
        if not isinstance(datamodule, SquadDataModule):
            raise RuntimeError("QA scoring needs the questions' contexts and gold answers: run "
                               "with a SquadDataModule (trainer.fit(model, datamodule=...))")
        return datamodule.references(split)

    def _attach_references(self, stage: str, split: str) -> None:
        references = self.references(split)
        for metric in self.metrics[stage].values():
            metric.references = references

    def on_validation_epoch_start(self) -> None:
        self._attach_references("val", "validation")

    def on_test_epoch_start(self) -> None:
        self._attach_references("test", "test")

    # -- predictions
    def decode(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> list[dict[str, Any]]:
        """One row per window: its question's row and best span; `finalize_predictions` joins
        the windows of each question once the rows of every device are gathered."""
        spans = {key: value.tolist() for key, value in self.window_spans(outputs, batch).items()}
        return [{"index": index, **{key: values[i] for key, values in spans.items()}}
                for i, index in enumerate(batch["index"].tolist())]

    def finalize_predictions(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        references = self.references("predict")
        columns = {key: torch.tensor([row[key] for row in rows]) for key in
                   ("index", "span_score", "span_start", "span_end", "null_score")}
        answers = squad.combine_windows(
            columns["index"], columns["span_score"], columns["span_start"], columns["span_end"],
            columns["null_score"], references.contexts, self.version_2_with_negative,
            self.null_score_diff_threshold)
        return [{"index": index, "id": references.ids[index], "answer": answers[index]}
                for index in sorted(answers)]

    def prediction_files(self, rows: list[dict[str, Any]]) -> dict[str, str]:
        """`predictions.json`: {question id: answer text}, as the official scripts read it."""
        answers = {row["id"]: row["answer"] for row in rows}
        return {"predictions.json": json.dumps(answers, ensure_ascii=False, indent=1) + "\n"}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        # Checkpoints written before the pooler was dropped still carry its (untrained) weights.
        state = checkpoint.get("state_dict") or {}
        for key in [k for k in state if k.startswith("encoder.pooler.")]:
            del state[key]
        trained_v2 = (checkpoint.get("hyper_parameters") or {}).get("version_2_with_negative")
        if trained_v2 is not None and bool(trained_v2) != self.version_2_with_negative:
            log.warning("this checkpoint was trained with version_2_with_negative=%s but runs "
                        "with %s (set data.version_2_with_negative: %s to %s)", trained_v2,
                        self.version_2_with_negative, str(bool(trained_v2)).lower(),
                        "let it answer 'no answer'" if trained_v2 else "never answer ''")

    @classmethod
    def hf_export(cls, state_dict: dict[str, Tensor], hparams: dict[str, Any]):
        """A `BertForQuestionAnswering` folder: `qa_outputs.*` on top of `bert.*`."""
        head = {"qa_outputs.weight": state_dict["qa_outputs.weight"],
                "qa_outputs.bias": state_dict["qa_outputs.bias"]}
        return "BertForQuestionAnswering", head, {}


# -------------------------------------------------------------------------- the registry entry
def example_data(folder: Path, like: dict[str, Any] | None = None) -> dict[str, Any]:
    """A few questions in the official SQuAD v1.1 layout, with contexts long enough to need
    two windows, for the generated registry tests. With `like` (a recipe's `data:` section)
    its article selections are kept in kind but pointed at the two articles written here."""
    rng = random.Random(0)
    articles = []
    for article_index in range(2):
        paragraphs = []
        for paragraph_index in range(3):
            text = synthetic.sentences(6, seed=10 * article_index + paragraph_index)
            context = " ".join(text)
            qas = []
            for qa_index in range(3):
                answer_sentence = rng.randrange(len(text))
                answer = text[answer_sentence].split()[-1].rstrip(".")
                qas.append({"id": f"q{article_index}-{paragraph_index}-{qa_index}",
                            "question": f"where does {text[answer_sentence].split()[0]} go ?",
                            "answers": [{"text": answer,
                                         "answer_start": context.index(answer)}]})
            paragraphs.append({"context": context, "qas": qas})
        articles.append({"title": f"article {article_index}", "paragraphs": paragraphs})
    path = Path(folder) / "squad.json"
    path.write_text(json.dumps({"version": "1.1", "data": articles}))
    return {"train_file": str(path), "validation_file": str(path), "test_file": str(path),
            "predict_file": str(path), "validation_articles": "1", "test_articles": "1",
            "max_length": 48, "doc_stride": 16,
            **({"train_articles": "0"} if (like or {}).get("train_articles") else {})}


def input_row(value: Any, data: dict[str, Any], position: int) -> dict[str, Any]:
    """{"question": ..., "context": ..., "id" (optional, default: the input's position)}."""
    value = inputs.fields(value, ("question", "context"), ("id",))
    question_id = value.get("id", str(position))
    return {"id": inputs.text(question_id, "id"),
            "question": inputs.text(value["question"], "question"),
            "context": inputs.text(value["context"], "context")}


def example_inputs(data_args: dict[str, Any]) -> list[Any]:
    """The predict questions of `example_data` as raw inputs."""
    rows = SquadDataModule(**data_args).raw("predict")
    return [{"id": row["id"], "question": row["question"], "context": row["context"]}
            for row in rows]


RAW_INPUTS = inputs.RawInputs(
    description='{"question": ..., "context": ..., "id": ... (optional)}',
    json_schema={"type": "object", "required": ["question", "context"],
                 "additionalProperties": False,
                 "properties": {"question": {"type": "string"}, "context": {"type": "string"},
                                "id": {"type": "string"}}},
    to_row=input_row, examples=example_inputs)

TASK = TaskSpec(
    name="qa",
    description="Extractive question answering, SQuAD v1.1/v2.0 (exact match, F1)",
    module=QuestionAnsweringModule,
    datamodule=SquadDataModule,
    example_data=example_data,
    monitor="val/f1",
    monitor_mode="max",
    inputs=RAW_INPUTS,
)
