"""The two classes every task builds on: `TaskModule` (a LightningModule) and `TaskDataModule`.

A task — built-in or plugin — supplies only what is specific to it:

    TaskDataModule subclass                     TaskModule subclass
      read_file(path)     -> datasets.Dataset      __init__: heads on top of self.encoder,
      preprocess(dataset) -> tokenized Dataset       then self.init_heads(*heads)
      label_names (if it has labels)               forward(batch) -> outputs
      model_links: what the model is built with    loss(outputs, batch) -> scalar
                                                   build_metrics() -> MetricCollection
                                                   metric_update(outputs, batch) -> args
                                                   decode(outputs, batch) -> [row dicts]

and inherits the rest: the tokenizer and resumable loaders every bertzoo data module has
(`bertzoo.training.data.BertDataModule`), backbone loading (a bertzoo checkpoint/export or a
Hugging Face folder) or random initialisation from a preset, BERT's initialisation for the
heads, AdamW with warm-up/decay and optional layer-wise learning-rate decay, metric logging
under the same names in every stage (synced across devices by torchmetrics), reading
CSV/TSV/JSON(L) files or a Hugging Face dataset, tokenizing once with a cached `datasets.map`,
length-grouped batching with dynamic padding, and prediction writing.

Optional hooks (all have defaults; added after the first version, nothing was renamed):
    TaskDataModule.encode(texts, pairs)   truncating BERT encoding of single texts or pairs
    TaskDataModule.location(split, row)   "file, line N" for error messages (follows
                                          `max_train_samples` back to the file's line)
    TaskDataModule.lengths(split)         per-row lengths for length-grouped batching
                                          (default: len(input_ids)); override when a row
                                          holds several sequences (multiple choice)
    BertModule.checkpoint_monitor         (metric, "min"|"max") when the metric the best
                                          checkpoint is chosen by depends on the
                                          configuration (default: the TaskSpec's monitor)
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor, nn

from bertzoo.config import ConfigError
from bertzoo.data import pad_to
from bertzoo.files import atomic_write, check_text_file
from bertzoo.model import init_weights
from bertzoo.training import BertModule, build_encoder
from bertzoo.training.options import (DropoutRate, Fraction, NonNegativeFloat, NonNegativeInt,
                                      PositiveFloat, PositiveInt, Seed, SequenceLength)
from bertzoo.training.data import BertDataModule
from bertzoo.training.optim import OptimizerName, SchedulerName

class DataError(ValueError):
    """Task data that cannot be used; the message names the file (and line or column)."""


# Suffixes of files that are not text (`datasets` reads them, compressed or columnar): every
# other data file is checked to be UTF-8 text before a parser sees it.
BINARY_SUFFIXES = (".parquet", ".arrow", ".feather", ".gz", ".bz2", ".xz", ".zst", ".zip")


def _has_more_lines_than(path: str | os.PathLike, count: int) -> bool:
    """Whether a text file has more than `count` non-blank lines (reads only that far)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        seen = 0
        for line in f:
            seen += bool(line.strip())
            if seen > count:
                return True
    return False


# ---------------------------------------------------------------------------------- the model
class TaskModule(BertModule):
    """Base LightningModule of every task: the encoder plus whatever head the task adds.

    Args:
        backbone: Checkpoint to start from: a Hugging Face BERT folder, a bertzoo export folder
            or a bertzoo `.ckpt` (pretraining or any task). Its tokenizer is used for the data.
        config: Instead of a backbone, random initialisation from a preset (tiny, mini, small,
            medium, base, large) or a dict of BertConfig fields.
        vocab_size: Linked from the data module's tokenizer; not set by hand.
        head_dropout: Dropout before the task head.
        learning_rate: Peak AdamW learning rate.
        weight_decay: Decoupled weight decay (none on biases and LayerNorm).
        warmup: Linear warm-up: a fraction of all steps if < 1, else a number of steps; the rate
            then decays linearly to zero.
        adam_epsilon: AdamW epsilon.
        adam_betas: AdamW betas.
        layerwise_lr_decay: Multiply the rate by this per layer below the top (1.0 = off).
        compile: `torch.compile` each encoder layer (true, or a dict of torch.compile
            options such as {"mode": "max-autotune"}); for GPUs.
        optimizer: "adamw" (BERT's) or "lamb" (You et al. 2020; NVIDIA's large-batch
            pretraining).
        scheduler: The learning-rate schedule: "linear" (warm-up, then linear decay to zero:
            BERT's), "cosine", "constant" (no warm-up), "constant_with_warmup" or
            "warmup_stable_decay" (warm-up, flat, then a 1-sqrt decay over the last
            `decay_fraction` of the steps: ModernBERT's).
        decay_fraction: The share of the steps "warmup_stable_decay" decays over.
    """

    #: Compute metrics on training batches too (cheap ones); NER/QA turn this off.
    train_metrics: ClassVar[bool] = True

    def __init__(self, backbone: str | None = None, config: str | dict[str, Any] | None = None,
                 vocab_size: PositiveInt | None = None, head_dropout: DropoutRate = 0.1,
                 learning_rate: PositiveFloat = 5e-5, weight_decay: NonNegativeFloat = 0.01,
                 warmup: NonNegativeFloat = 0.1, adam_epsilon: PositiveFloat = 1e-8,
                 adam_betas: tuple[DropoutRate, DropoutRate] = (0.9, 0.999),
                 layerwise_lr_decay: Fraction = 1.0, compile: bool | dict[str, Any] = False,
                 optimizer: OptimizerName = "adamw", scheduler: SchedulerName = "linear",
                 decay_fraction: Fraction = 0.1):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, warmup=warmup,
                         adam_epsilon=adam_epsilon, adam_betas=adam_betas,
                         layerwise_lr_decay=layerwise_lr_decay, compile=compile,
                         optimizer=optimizer, scheduler=scheduler, decay_fraction=decay_fraction)
        self.save_hyperparameters()
        self.encoder = build_encoder(backbone, config, vocab_size)
        self.dropout = nn.Dropout(head_dropout)
        self._metrics: nn.ModuleDict | None = None
        # Evaluation losses are accumulated as metrics (float sums synced by torchmetrics):
        # Lightning's own epoch mean of a logged tensor averages its integer batch-size count
        # across ranks with integer division (43 rows on 2 ranks count as 42; Lightning 2.6).
        import torchmetrics
        self.stage_loss = nn.ModuleDict({"val": torchmetrics.MeanMetric(),
                                         "test": torchmetrics.MeanMetric()})

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.hidden_size

    def init_heads(self, *heads: nn.Module) -> None:
        """Initialise the task's head layers as BERT initialises its own
        (`bertzoo.model.init_weights`: N(0, initializer_range) weights from the encoder's
        config, zero biases, unit LayerNorms). Call it once the heads are built."""
        for head in heads:
            head.apply(lambda module: init_weights(module, self.encoder.config))

    # -- what a task implements
    def forward(self, batch: dict[str, Any]) -> Any:
        raise NotImplementedError

    def loss(self, outputs: Any, batch: dict[str, Any]) -> Tensor:
        raise NotImplementedError

    def build_metrics(self):
        """A torchmetrics `MetricCollection`; cloned per stage and logged as `<stage>/<name>`."""
        raise NotImplementedError

    def metric_update(self, outputs: Any, batch: dict[str, Any]) -> tuple:
        """The positional arguments the task's metrics are updated with for one batch."""
        raise NotImplementedError

    def decode(self, outputs: Any, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """One JSON-serialisable dict per input row, each with the row's "index"."""
        raise NotImplementedError

    def loss_weight(self, batch: dict[str, Any]) -> int:
        """How many items `loss` averages over (default: the rows). An epoch's validation and
        test loss is the mean of the batches' losses weighted by this, so a task whose loss is
        a mean over tokens logs the token mean, whatever the batches or devices."""
        return int(batch["input_ids"].shape[0])

    def finalize_predictions(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """All decoded rows of a prediction run (gathered from every device) -> final rows."""
        return sorted(rows, key=lambda row: row["index"])

    def prediction_files(self, rows: list[dict[str, Any]]) -> dict[str, str]:
        """File name -> content written next to the run by `bertzoo predict`."""
        return {"predictions.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                             for r in rows)}

    # -- shared machinery
    @property
    def metrics(self) -> nn.ModuleDict:
        if self._metrics is None:
            self._metrics = self.stage_metrics(self.build_metrics()).to(self.device)
        return self._metrics

    def configure_model(self) -> None:
        self.metrics  # create the metric states before the strategy moves/wraps the module
        super().configure_model()

    def _shared_step(self, stage: str, batch: dict[str, Any]) -> Tensor:
        outputs = self(batch)
        loss = self.loss(outputs, batch)
        batch_size = int(batch["input_ids"].shape[0])
        values: dict[str, Any] = {"loss": loss}
        if stage != "train":
            # weighted by the loss's own count, so a mean over tokens stays one on any number
            # of devices (training steps hold equal rows everywhere; the task makes its loss
            # global there, see NerModule.loss)
            self.stage_loss[stage].update(loss.detach(), weight=self.loss_weight(batch))
            values["loss"] = self.stage_loss[stage]
        if stage != "train" or self.train_metrics:
            collection = self.metrics[stage]
            args = self.metric_update(outputs, batch)
            if stage == "train":
                collection(*args)  # forward: also gives the per-step value to log
            else:
                collection.update(*args)
            values.update(collection)
        self.log_stage(stage, values, batch_size)
        return loss

    def training_step(self, batch, batch_idx):
        return self._shared_step("train", batch)

    def validation_step(self, batch, batch_idx):
        self._shared_step("val", batch)

    def test_step(self, batch, batch_idx):
        self._shared_step("test", batch)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self.decode(self(batch), batch)

    @classmethod
    def hf_export(cls, state_dict: dict[str, Tensor], hparams: dict[str, Any]):
        """(architecture, head tensors under Hugging Face names, config.json extras) to export
        this task as a Hugging Face model, or None to export the encoder alone."""
        return None


# ----------------------------------------------------------------------------------- the data
def _dataset_fingerprint(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


class TaskDataModule(BertDataModule):
    """Base data module of every task.

    Args:
        train_file: Training data (CSV, TSV, JSON lines; tasks add their own formats).
        validation_file: Validation data, same format.
        test_file: Test data, same format.
        predict_file: Rows to predict (labels not needed).
        dataset: A Hugging Face dataset name (or a local dataset folder) instead of files.
        dataset_config: The dataset's configuration name, if it has several.
        dataset_revision: The dataset's branch, tag or commit on the Hub (`revision` of
            `datasets.load_dataset`), e.g. `refs/convert/parquet`, where the Hub keeps the
            Parquet export of a repository that is still a loading script.
        tokenizer: Tokenizer folder or `.ckpt`; defaults to `model.backbone` (or `--ckpt_path`).
        max_length: Longest tokenized input; longer inputs are truncated (or windowed, by
            tasks that support it).
        batch_size: Training rows per batch on each device.
        eval_batch_size: Rows per batch for validation/test/predict (default: batch_size).
        group_by_length: Batch rows of similar length together (less padding).
        pad_to_multiple_of: Round each batch's length up to a multiple of this.
        max_train_samples: Use this many training rows, drawn at random with `seed`.
        num_workers: DataLoader worker processes.
        num_proc: Processes for tokenization (`datasets.map`).
        seed: Seed for the training order and `max_train_samples`.
    """

    #: Per-token label columns padded with -100 by the default collator.
    token_label_keys: ClassVar[tuple[str, ...]] = ()
    #: File suffixes `read_file` understands (for error messages).
    file_formats: ClassVar[tuple[str, ...]] = (".csv", ".tsv", ".jsonl", ".json")

    def __init__(self, train_file: str | None = None, validation_file: str | None = None,
                 test_file: str | None = None, predict_file: str | None = None,
                 dataset: str | None = None, dataset_config: str | None = None,
                 dataset_revision: str | None = None,
                 tokenizer: str | None = None, max_length: SequenceLength = 128,
                 batch_size: PositiveInt = 32, eval_batch_size: PositiveInt | None = None,
                 group_by_length: bool = True, pad_to_multiple_of: PositiveInt | None = None,
                 max_train_samples: PositiveInt | None = None, num_workers: NonNegativeInt = 0,
                 num_proc: PositiveInt | None = None, seed: Seed = 42):
        super().__init__(tokenizer=tokenizer, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed)
        self.files = {"train": train_file, "validation": validation_file, "test": test_file,
                      "predict": predict_file}
        self.dataset_name = dataset
        self.dataset_config = dataset_config
        self.dataset_revision = dataset_revision
        self.max_length = max_length
        self.group_by_length = group_by_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_train_samples = max_train_samples
        self.num_proc = num_proc
        self._truncating_tokenizer = None
        self._raw: dict[str, Any] = {}
        self._sampled_rows: dict[str, list[int]] = {}  # split -> file row of each kept row
        self.datasets: dict[str, Any] = {}

    # -- reading
    def source(self, split: str) -> str:
        return self.files.get(split) or f"{self.dataset_name}[{split}]"

    def raw(self, split: str):
        """The untokenized split as a `datasets.Dataset` (read once)."""
        if split not in self._raw:
            self._raw[split] = self._read(split)
        return self._raw[split]

    def has_split(self, split: str) -> bool:
        if self.files.get(split):
            return True
        if self.dataset_name is None:
            return False
        return self._hf_split(split) is not None

    def _hf_split(self, split: str) -> str | None:
        import datasets
        names = datasets.get_dataset_split_names(self.dataset_name, self.dataset_config,
                                                 revision=self.dataset_revision)
        for candidate in {"train": ("train",), "validation": ("validation", "dev", "valid"),
                          "test": ("test",), "predict": ("test",)}[split]:
            if candidate in names:
                return candidate
        return None

    def _read(self, split: str):
        path = self.files.get(split)
        if path:
            if not Path(path).is_file():
                raise DataError(f"data.{split}_file: no such file: {path}")
            if Path(path).stat().st_size == 0:
                raise DataError(f"{path} is empty (data.{split}_file)")
            if Path(path).suffix.lower() not in BINARY_SUFFIXES:
                check_text_file(path)
            dataset = self.read_file(path)
        elif self.dataset_name is not None:
            import datasets
            hf_split = self._hf_split(split)
            if hf_split is None:
                raise DataError(f"dataset {self.dataset_name} has no {split} split")
            dataset = datasets.load_dataset(self.dataset_name, self.dataset_config, split=hf_split,
                                            revision=self.dataset_revision)
        else:
            raise DataError(f"no {split} data: set data.{split}_file or data.dataset")
        dataset = self.select_rows(dataset, split)
        if len(dataset) == 0:
            raise DataError(f"{self.source(split)} has no rows (empty or header only)")
        if split == "train" and self.max_train_samples is not None \
                and self.max_train_samples < len(dataset):
            import numpy as np
            rows = np.random.default_rng(self.seed).permutation(len(dataset))
            rows = rows[: self.max_train_samples].tolist()
            self._sampled_rows[split] = rows
            dataset = dataset.select(rows)
        return dataset

    def select_rows(self, dataset, split: str):
        """The part of a split's data to use, chosen before `max_train_samples` draws from it
        (e.g. QA's article ranges of one SQuAD file). Default: all of it."""
        return dataset

    def location(self, split: str, row: int) -> str:
        """Where row `row` of a split came from, for error messages: "file, line N" (files
        with a header line count it), or "dataset[split] row N"."""
        row = self._sampled_rows[split][row] if split in self._sampled_rows else row
        path = self.files.get(split)
        if not path:
            return f"{self.source(split)} row {row}"
        header = 1 if Path(path).suffix.lower() in (".csv", ".tsv") else 0
        return f"{path}, line {row + 1 + header}"

    def read_file(self, path: str):
        """A local file as a `datasets.Dataset` (cached as Arrow by `datasets`)."""
        import datasets
        suffix = Path(path).suffix.lower()
        if suffix in (".csv", ".tsv"):
            builder, options = "csv", dict(
                delimiter="\t" if suffix == ".tsv" else ",",
                # GLUE's TSVs are not quoted: a quote character is text, not a delimiter.
                quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL,
                keep_default_na=False)
        elif suffix in (".jsonl", ".json"):
            builder, options = "json", {}
        else:
            raise DataError(f"{path}: unsupported file type {suffix!r}; expected one of "
                            f"{', '.join(self.file_formats)}")
        header_lines = 1 if builder == "csv" else 0
        if not _has_more_lines_than(path, header_lines):
            raise DataError(f"{path} has no rows (empty or header only)")
        try:
            return datasets.load_dataset(builder, data_files=str(path), split="train",
                                         **options)
        except Exception as err:  # datasets wraps the parser's error; show the parser's
            cause = err
            while cause.__cause__ is not None or cause.__context__ is not None:
                cause = cause.__cause__ or cause.__context__
            raise DataError(f"{path} is not valid {suffix[1:].upper()}: "
                            f"{type(cause).__name__}: {cause}") from err

    @staticmethod
    def require_columns(dataset, columns: list[str], source: str) -> None:
        missing = [c for c in columns if c not in dataset.column_names]
        if missing:
            import difflib
            unused = [c for c in dataset.column_names if c not in columns]
            hints = [f"{c!r} (did you mean {close[0]!r}?)" if (
                close := difflib.get_close_matches(c, unused, n=1)) else repr(c)
                     for c in missing]
            raise DataError(f"{source}: missing column(s) {', '.join(hints)}; the file has "
                            f"{dataset.column_names}")

    # -- tokenizing (once, cached by datasets)
    def preprocess(self, dataset, split: str):
        """Tokenize one split; the result has `input_ids`, `token_type_ids`, the task's label
        column(s) and `index` (the input row). Implemented by each task, usually as
        `self.map(dataset, function, split, ...)`."""
        raise NotImplementedError

    def encode(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, list]:
        """BERT inputs for single texts or text pairs: [CLS] a [SEP] (b [SEP]), truncated to
        `max_length` longest-first (the side that is longer loses tokens), no padding."""
        if self._truncating_tokenizer is None:
            from tokenizers import Tokenizer
            # A copy: truncation is state of a tokenizers.Tokenizer, and the model saves
            # `self.tokenizer` into its checkpoint.
            self._truncating_tokenizer = Tokenizer.from_str(self.tokenizer.to_str())
            self._truncating_tokenizer.enable_truncation(self.max_length,
                                                         strategy="longest_first")
        inputs = texts if pairs is None else list(zip(texts, pairs))
        encodings = self._truncating_tokenizer.encode_batch(inputs)
        return {"input_ids": [e.ids for e in encodings],
                "token_type_ids": [e.type_ids for e in encodings]}

    def fingerprint_parts(self) -> tuple:
        """Everything besides the input data that changes preprocessing's result."""
        return (type(self).__qualname__, self.tokenizer.to_str(), self.max_length)

    def map(self, dataset, function, split: str, **kwargs):
        """`dataset.map(function, batched=True)` with a fingerprint built from the input data's
        fingerprint and `fingerprint_parts()`: the second run with the same inputs reads the
        Arrow cache instead of tokenizing again."""
        fingerprint = _dataset_fingerprint(dataset._fingerprint, function.__qualname__,
                                           *self.fingerprint_parts(), sorted(kwargs.items(),
                                                                             key=str))
        return dataset.map(function, batched=True, num_proc=self.num_proc,
                           new_fingerprint=fingerprint, desc=f"tokenizing {split}",
                           **kwargs)

    # -- Lightning hooks
    def setup(self, stage: str) -> None:
        wanted = {"fit": ("train", "validation"), "validate": ("validation",),
                  "test": ("test",), "predict": ("predict",)}[stage]
        for split in wanted:
            if split in self.datasets:
                continue
            if split == "validation" and stage == "fit" and not self.has_split("validation"):
                continue  # training without validation is allowed
            self.datasets[split] = self.preprocess(self.raw(split), split)

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad `input_ids`/`token_type_ids` (and token label columns) to the batch's longest
        row; scalar columns become tensors; anything else stays a list."""
        batch: dict[str, Any] = {}
        input_ids = [r["input_ids"] for r in rows]
        batch["input_ids"] = pad_to(input_ids, self.pad_token_id, self.pad_to_multiple_of)
        length = batch["input_ids"].shape[1]
        batch["attention_mask"] = pad_to([[1] * len(ids) for ids in input_ids], 0, length=length)
        batch["token_type_ids"] = pad_to([r.get("token_type_ids") or [0] * len(r["input_ids"])
                                          for r in rows], 0, length=length)
        for key in rows[0]:
            if key in batch:
                continue
            values = [r[key] for r in rows]
            if key in self.token_label_keys:
                batch[key] = pad_to(values, -100, length=length)
            elif all(isinstance(v, (int, float, bool)) for v in values):
                batch[key] = torch.tensor(values)
            elif all(isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)
                     for v in values) and len({len(v) for v in values}) == 1:
                batch[key] = torch.tensor(values)  # fixed-size vectors, e.g. multi-label targets
            else:
                batch[key] = values
        return batch

    def lengths(self, split: str) -> list[int]:
        """Length of each preprocessed row, for length-grouped batching."""
        return [len(ids) for ids in self.datasets[split]["input_ids"]]

    def _loader(self, split: str, train: bool):
        dataset = self.datasets[split]
        sampler = self.batch_sampler(len(dataset), train,
                                     lengths=self.lengths(split) if self.group_by_length else None,
                                     group_by_length=self.group_by_length)
        if split == "predict":
            sampler = _PredictionBatches(sampler)
        return self.stateful_loader(dataset, self.collate, batch_sampler=sampler)

    def train_dataloader(self):
        return self._loader("train", train=True)

    def val_dataloader(self):
        return self._loader("validation", train=False) if "validation" in self.datasets else []

    def test_dataloader(self):
        return self._loader("test", train=False)

    def predict_dataloader(self):
        return self._loader("predict", train=False)

    # -- rows given in memory (bertzoo.load, bertzoo serve)
    def use_rows(self, rows: list[dict[str, Any]], split: str = "predict",
                 tokenizer: Any = None) -> None:
        """Read `split` from `rows` (dicts of the columns a file of that split would hold)
        instead of a file or dataset: how `bertzoo.load`'s predictor runs raw inputs through
        the task's own preprocessing. `tokenizer` is a loaded `tokenizers.Tokenizer`, or
        another data module whose loaded tokenizers are shared (no reload per call)."""
        import datasets
        if isinstance(tokenizer, TaskDataModule):
            self._tokenizer = tokenizer.tokenizer
            self._truncating_tokenizer = tokenizer._truncating_tokenizer
        elif tokenizer is not None:
            self._tokenizer = tokenizer
        self.files[split] = None
        self._raw[split] = datasets.Dataset.from_list(rows)
        self.datasets.pop(split, None)


# ------------------------------------------------------------------------------ predictions
class _PredictionBatches:
    """A `BatchSampler` seen through a narrower interface. For prediction Lightning rebuilds
    any batch sampler that has `batch_size` and `drop_last` as if it were PyTorch's, with a
    sequential sampler in place of ours; without them it keeps ours (order by length, this
    process's share of the rows) and only records the indices it yields."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


warnings.filterwarnings("ignore", message=r"You are using a custom batch sampler "
                        r"`_PredictionBatches` for prediction")


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


class PredictionWriter(L.Callback):
    """Writes `bertzoo predict` output next to the run: rows from every device are gathered,
    finalised by the task (`finalize_predictions`), and written once by rank 0."""

    def __init__(self, output_dir: str | None = None):
        self.output_dir = output_dir
        self.written: list[Path] = []
        self._rows: list[dict[str, Any]] = []

    # The rows are collected here rather than read from `trainer.predict_loop.predictions`,
    # which Lightning leaves empty under the forking and spawning DDP strategies.
    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._rows = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                             dataloader_idx=0) -> None:
        self._rows.extend(outputs)

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        rows, self._rows = self._rows, []
        if trainer.world_size > 1:
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        if not trainer.is_global_zero:
            return
        rows = pl_module.finalize_predictions(rows)
        directory = Path(self.output_dir or trainer.log_dir or ".")
        for name, text in pl_module.prediction_files(rows).items():
            write_text_atomically(directory / name, text)
            self.written.append(directory / name)
            print(f"wrote {len(rows)} predictions to {directory / name}")
