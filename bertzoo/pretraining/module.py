"""`PretrainingModule`: BERT's pretraining objective as a LightningModule.

Loss = masked-LM cross-entropy over the masked positions + next-sentence cross-entropy over the
pairs (Devlin et al. 2018, Section 3.1 and Appendix A.2), computed by
`bertzoo.model.BertForPreTraining`, which runs the MLM head on the masked positions only.
Optimisation (AdamW without decay on biases and LayerNorm, linear warm-up then linear decay) is
`bertzoo.training.BertModule`'s.

Logged per stage (`train/`, `val/`), through torchmetrics so that they sync across devices:
`mlm_loss` (mean over masked tokens), `perplexity` (exp of it), `mlm_accuracy`, `nsp_loss`,
`nsp_accuracy`, and `mlm_majority_accuracy`: the accuracy of always predicting the most frequent
masked token of that stage, the baseline `mlm_accuracy` is to be read against. With
`nsp=False` (masked LM only, as RoBERTa) there is no NSP head, loss or metric, and the data
module packs full rows instead of sentence pairs. Training metrics
are measured on the batches whose step is logged (every `trainer.log_every_n_steps`), validation
metrics on every batch.

Dropout randomness is re-seeded every training step from (seed, global step, rank) (in
BertModule, for every module): like the masking it is then a pure function of where training
is, and a run resumed from a checkpoint draws the same dropout masks as one that never stopped.

Several processes (DDP) train exactly as one process on the same global batch would (tested in
tests/test_distributed.py, with dropout off: each rank draws its own dropout masks). The MLM
loss is a mean over the masked tokens of the whole global batch, whose ranks hold different
numbers of them, so each rank's term is scaled by its share of the global count
(`share_of_global_mean`). The logged `val/loss` and `test/loss` are the stage's masked-token
mean MLM loss plus its pair mean NSP loss (`val/mlm_loss + val/nsp_loss`), which no way of
splitting the data into batches or ranks changes.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torchmetrics
from torch import Tensor, nn

from bertzoo.config import ConfigError
from bertzoo.model import IGNORE_INDEX, BertForPreTraining
from bertzoo.training import (BertModule, attached_trainer, build_encoder,
                              check_backbone_or_config, check_vocab_size, lightning_compat,
                              share_of_global_mean)
from bertzoo.training.options import (DropoutRate, Fraction, NonNegativeFloat, PositiveFloat, PositiveInt,
                                      Seed, SequenceLength)
from bertzoo.training.optim import OptimizerName, SchedulerName

log = logging.getLogger("bertzoo")


class Perplexity(torchmetrics.MeanMetric):
    """exp(mean token cross-entropy), from per-batch mean losses weighted by token counts.

    Equals `torchmetrics.text.Perplexity` on the same logits (tested) without a second softmax
    over the vocabulary.
    """

    def compute(self) -> Tensor:
        return torch.exp(super().compute())


class MajorityAccuracy(torchmetrics.Metric):
    """Accuracy of the constant prediction "the most frequent label seen": the baseline that an
    MLM accuracy must beat to show the model learned more than token frequencies."""

    full_state_update = False

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, labels: Tensor) -> None:
        self.counts += torch.bincount(labels, minlength=self.num_classes)

    def compute(self) -> Tensor:
        return self.counts.max().float() / self.counts.sum().clamp(min=1)


class PretrainingModule(BertModule):
    """BERT pretraining: masked LM + next sentence prediction.

    Args:
        backbone: Start from this checkpoint (continued / domain-adaptive pretraining): a
            bertzoo `.ckpt` or export, or a Hugging Face BERT folder; MLM/NSP heads it lacks are
            initialised (the MLM decoder is the word-embedding matrix either way). Its tokenizer
            is used for the data.
        config: Instead of a backbone, a random BERT: a preset (tiny, mini, small, medium, base,
            large) or a dict of BertConfig fields, optionally with `preset`.
        vocab_size: Linked from the data module's tokenizer; not set by hand.
        max_seq_length: Linked from the data module; checked against the position embeddings.
        learning_rate: Peak AdamW learning rate (BERT: 1e-4 at batch 256).
        weight_decay: Decoupled weight decay, none on biases and LayerNorm (BERT: 0.01).
        warmup: Linear warm-up: a fraction of all steps if < 1, else a number of steps (BERT:
            10,000); the rate then decays linearly to zero at the last step.
        adam_epsilon: AdamW epsilon (BERT: 1e-6).
        adam_betas: AdamW betas (BERT: 0.9, 0.999).
        seed: Base of the per-step dropout seed (default: the run's `seed_everything`).
        compile: `torch.compile` each encoder layer (true, or a dict of torch.compile
            options); for GPUs.
        optimizer: "adamw" (BERT's) or "lamb" (You et al. 2020; NVIDIA's large-batch
            pretraining at batch 32k-64k).
        scheduler: The learning-rate schedule: "linear" (warm-up, then linear decay to zero:
            BERT's), "cosine", "constant" (no warm-up), "constant_with_warmup" or
            "warmup_stable_decay" (warm-up, flat, then a 1-sqrt decay over the last
            `decay_fraction` of the steps: ModernBERT's).
        decay_fraction: The share of the steps "warmup_stable_decay" decays over.
        nsp: Next sentence prediction. False: masked LM only (RoBERTa, Liu et al. 2019, 4.2):
            no NSP head, loss or metrics, and the data module, which follows this setting,
            packs full rows instead of sentence pairs. A backbone's NSP head is then left out.
    """

    def __init__(self, backbone: str | None = None, config: str | dict[str, Any] | None = None,
                 vocab_size: PositiveInt | None = None,
                 max_seq_length: SequenceLength | None = None,
                 learning_rate: PositiveFloat = 1e-4, weight_decay: NonNegativeFloat = 0.01,
                 warmup: NonNegativeFloat = 10000, adam_epsilon: PositiveFloat = 1e-6,
                 adam_betas: tuple[DropoutRate, DropoutRate] = (0.9, 0.999),
                 seed: Seed | None = None, compile: bool | dict[str, Any] = False,
                 optimizer: OptimizerName = "adamw", scheduler: SchedulerName = "linear",
                 decay_fraction: Fraction = 0.1, nsp: bool = True):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, warmup=warmup,
                         adam_epsilon=adam_epsilon, adam_betas=adam_betas, compile=compile,
                         optimizer=optimizer, scheduler=scheduler, decay_fraction=decay_fraction)
        self.save_hyperparameters()
        # The rule every module follows (`bertzoo.training.encoder`); a backbone brings its
        # MLM/NSP heads too, where it has them.
        check_backbone_or_config(backbone, config)
        if backbone:
            self.model = BertForPreTraining.from_pretrained(backbone, nsp=nsp)
            check_vocab_size(vocab_size, self.model.config, f"the backbone {backbone}")
        else:
            # Without NSP nothing reads the pooler: none is built (DDP refuses unused weights).
            encoder = build_encoder(None, config, vocab_size, add_pooler=nsp)
            self.model = BertForPreTraining(encoder.config, encoder=encoder, nsp=nsp)
        bert = self.model.config
        self.check_sequence_length(max_seq_length)
        self.seed = seed  # BertModule.seed: the per-step dropout seed
        self.nsp = nsp
        nsp_metrics = {"nsp_loss": torchmetrics.MeanMetric(),
                       "nsp_accuracy": torchmetrics.classification.MulticlassAccuracy(
                           num_classes=2, average="micro")} if nsp else {}
        self.metrics = self.stage_metrics(torchmetrics.MetricCollection({
            "mlm_loss": torchmetrics.MeanMetric(),
            "perplexity": Perplexity(),
            "mlm_accuracy": torchmetrics.classification.MulticlassAccuracy(
                num_classes=bert.vocab_size, average="micro"),
            "mlm_majority_accuracy": MajorityAccuracy(bert.vocab_size),
            **nsp_metrics,
        }, compute_groups=False))

    @property
    def encoder(self) -> nn.Module:
        """The BERT encoder (inside `self.model`, so its parameters have one name each)."""
        return self.model.encoder

    def check_sequence_length(self, max_seq_length: int | None) -> None:
        limit = self.model.config.max_position_embeddings
        if max_seq_length is not None and max_seq_length > limit:
            raise ConfigError(f"data.max_seq_length ({max_seq_length}) exceeds the model's "
                              f"max_position_embeddings ({limit}); lower it or build the model "
                              f"with more positions")

    # ------------------------------------------------------------------------------- hooks
    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(attached_trainer(self), "datamodule", None)
        if datamodule is not None:
            self.check_sequence_length(getattr(datamodule, "max_seq_length", None))
            vocab = getattr(datamodule, "vocab_size", None)
            if vocab is not None and vocab != self.model.config.vocab_size:
                raise ConfigError(f"the data's tokenizer has {vocab} tokens but the model has "
                                  f"vocab_size {self.model.config.vocab_size}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # A checkpoint saved at the end of a validation inside fit holds a logging step one
        # less than the steps taken (see `lightning_compat.set_logging_step`): store the count
        # the resumed run must continue from.
        trainer = attached_trainer(self)
        if trainer is not None and trainer.validating and trainer.state.fn == "fit":
            lightning_compat.set_logging_step(checkpoint, trainer.global_step)

    # ------------------------------------------------------------------------------- steps
    def forward(self, batch: dict[str, Tensor]):
        return self.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                          mlm_labels=batch["mlm_labels"], nsp_labels=batch["nsp_labels"])

    def _measured(self) -> bool:
        """Whether this training batch's metrics are measured: only on the steps Lightning
        writes to the logs (every `trainer.log_every_n_steps`). On CPU, updating and logging a
        dozen values costs ~25 ms a step, more than a third of the tiny model's step, and
        the curves need no more points."""
        trainer = attached_trainer(self)
        every = trainer.log_every_n_steps if trainer is not None else 1
        return (self.global_step + 1) % max(1, every) == 0

    def _step(self, stage: str, batch: dict[str, Tensor]) -> Tensor:
        out = self(batch)
        masked = int(out.mlm_labels.numel())
        loss = out.loss
        if stage == "train":
            # Under DDP: this rank's term of the global batch's mean (see the module docstring);
            # one process gets out.mlm_loss back, and the sum is out.loss itself.
            loss = share_of_global_mean(out.mlm_loss, masked)
            if self.nsp:
                loss = loss + out.nsp_loss
            if not self._measured():
                return loss
        metrics = self.metrics[stage]
        batch_size = int(batch["input_ids"].shape[0])
        mlm_loss = out.mlm_loss.detach()
        call = (lambda metric, *args, **kw: metric(*args, **kw)) if stage == "train" else (
            lambda metric, *args, **kw: metric.update(*args, **kw))
        if masked:
            call(metrics["mlm_loss"], mlm_loss, weight=masked)
            call(metrics["perplexity"], mlm_loss, weight=masked)
            call(metrics["mlm_accuracy"], out.mlm_logits.detach(), out.mlm_labels)
            call(metrics["mlm_majority_accuracy"], out.mlm_labels)
        if self.nsp:
            call(metrics["nsp_loss"], out.nsp_loss.detach(), weight=batch_size)
            call(metrics["nsp_accuracy"], out.nsp_logits.detach(), batch["nsp_labels"])
        # Training logs the step's loss (synced as the mean over ranks: the global batch's);
        # validation and test log theirs at the epoch's end, from the metrics' sums.
        values = {"loss": loss.detach(), **metrics} if stage == "train" else dict(metrics)
        self.log_stage(stage, values, batch_size)
        return loss

    def _log_stage_loss(self, stage: str) -> None:
        """`<stage>/loss` = the stage's masked-token mean MLM loss + pair mean NSP loss (MLM
        only without NSP), from the (device-synced) sums the `mlm_loss` and `nsp_loss` metrics
        hold."""
        metrics = self.metrics[stage]
        mlm = torch.nan_to_num(metrics["mlm_loss"].compute(), nan=0.0)  # nan: nothing masked
        self.log(f"{stage}/loss", mlm + metrics["nsp_loss"].compute() if self.nsp else mlm)

    def on_validation_epoch_end(self) -> None:
        self._log_stage_loss("val")

    def on_test_epoch_end(self) -> None:
        self._log_stage_loss("test")

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step("train", batch)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step("val", batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step("test", batch)


__all__ = ["PretrainingModule", "Perplexity", "MajorityAccuracy", "IGNORE_INDEX"]
