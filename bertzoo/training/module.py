"""`BertModule`, the LightningModule every bertzoo module subclasses: the encoder's optimizer
and schedule, metric logging, what goes into a checkpoint, and the randomness that resumes
exactly."""

from __future__ import annotations

import math
import os
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from bertzoo.config import ConfigError
from bertzoo.files import CKPT_KEY, CheckpointError
from bertzoo.training.checks import check_warmup_fits
from bertzoo.training.checkpoint_io import refuse_another_modules_checkpoint
from bertzoo.training.optim import (OptimizerName, SchedulerName, build_optimizer,
                                    build_scheduler, check_optimizer, check_scheduler,
                                    parameter_groups, schedule_length)
from bertzoo.training.options import (DropoutRate, Fraction, NonNegativeFloat, PositiveFloat,
                                      check_range)
from bertzoo.training.process import tune_cpu_process


def attached_trainer(module: L.LightningModule) -> "L.Trainer | None":
    """The Trainer running `module`, or None outside one (a module used on its own)."""
    try:
        return module.trainer
    except RuntimeError:  # "... is not attached to a `Trainer`"
        return None


class StageMetrics(nn.ModuleDict):
    """One clone of a `MetricCollection` per stage, looked up as `metrics["train"]`, "val",
    "test", each logging under "<stage>/<name>". (nn.Module has a `train` method, so the
    clones are registered as "train_metrics", ... .)"""

    def __init__(self, collection):
        super().__init__({f"{stage}_metrics": collection.clone(prefix=f"{stage}/")
                          for stage in ("train", "val", "test")})
        # A training step logs its batch's value: under DDP that must be the whole global
        # batch's, as one process would log, not rank 0's share (no cost on one process).
        for metric in self["train"].values():
            metric.dist_sync_on_step = True

    def __getitem__(self, stage: str):
        return super().__getitem__(f"{stage}_metrics")


class BertModule(L.LightningModule):
    """Base of every bertzoo LightningModule.

    Subclasses build `self.encoder` with `bertzoo.training.build_encoder(...)`, their heads,
    and a `MetricCollection` per stage via `self.metrics = self.stage_metrics(collection)`.

    Pretraining (`bertzoo.pretraining.PretrainingModule`) and every task (`TaskModule`,
    built-in or plugin) subclass it, so a checkpoint of any of them carries the same
    `checkpoint["bertzoo"]` entry (config, tokenizer, module) and
    `BertEncoder.from_pretrained(ckpt)` reads any of them.
    """

    seed: int | None = None
    """Base of the per-step dropout seed (see `on_train_batch_start`); None takes the run's
    `seed_everything`. Subclasses set it from their `seed` argument."""

    checkpoint_monitor: tuple[str, str] | None = None
    """`(metric, "min" | "max")` that the best checkpoint (`BestCheckpoint`) is chosen by, for
    a module whose metric depends on its configuration (a classification model doing regression
    keeps the best val/pearson, not val/accuracy); None keeps the one the run was given."""

    def __init__(self, learning_rate: PositiveFloat = 5e-5, weight_decay: NonNegativeFloat = 0.01,
                 warmup: NonNegativeFloat = 0.1, adam_epsilon: PositiveFloat = 1e-6,
                 adam_betas: tuple[DropoutRate, DropoutRate] = (0.9, 0.999),
                 layerwise_lr_decay: Fraction = 1.0, compile: bool | dict[str, Any] = False,
                 optimizer: OptimizerName = "adamw", scheduler: SchedulerName = "linear",
                 decay_fraction: Fraction = 0.1):
        super().__init__()
        self.compile_options = ({} if compile is True else dict(compile)) if compile else None
        self.compiled = False
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup = warmup
        self.adam_epsilon = adam_epsilon
        # (the parser lets null through for a tuple: found by the fuzzer as a TypeError here)
        if not isinstance(adam_betas, (tuple, list)) or len(adam_betas) != 2:
            raise ConfigError(f"model.adam_betas: expected two numbers in [0, 1), got "
                              f"{adam_betas!r}")
        for beta in adam_betas:
            check_range("model.adam_betas", beta, DropoutRate)
        self.adam_betas = tuple(adam_betas)
        self.layerwise_lr_decay = layerwise_lr_decay
        check_optimizer(optimizer)
        check_scheduler(scheduler, decay_fraction)
        self.optimizer_name = optimizer
        self.scheduler_name = scheduler
        self.decay_fraction = decay_fraction
        self.tokenizer = None  # a tokenizers.Tokenizer, from the data module or the checkpoint
        if warmup < 0:
            raise ConfigError(f"model.warmup must be >= 0 (a fraction of the steps if < 1, else a "
                              f"number of steps), got {warmup}")

    # -- metrics: one MetricCollection per stage, logged under "<stage>/<name>" everywhere
    @staticmethod
    def stage_metrics(collection) -> StageMetrics:
        return StageMetrics(collection)

    def log_stage(self, stage: str, values: dict[str, Any], batch_size: int) -> None:
        """Log loss tensors and updated Metric objects the same way in every stage: per step in
        training (also shown in the progress bar), per epoch everywhere, synced across devices."""
        on_step = stage == "train"
        self.log_dict({f"{stage}/{k}" if "/" not in k else k: v for k, v in values.items()},
                      on_step=on_step, on_epoch=True, prog_bar=False, batch_size=batch_size,
                      sync_dist=True)

    # -- torch.compile, layer by layer
    def configure_model(self) -> None:
        """With `compile`, each encoder layer is compiled in place (`nn.Module.compile`: the
        state dict keeps its names, so checkpoints and exports are unchanged) with dynamic
        shapes, as every batch has its own length and number of real tokens. The embeddings
        and heads stay eager: their gathers by data-dependent indices would break the graph
        anyway. Worth it on GPUs; on CPU the first step compiles for minutes."""
        if self.compile_options is not None and not self.compiled:
            for layer in self.encoder.layers:
                layer.compile(**{"dynamic": True, **self.compile_options})
            self.compiled = True

    # -- tokenizer travels with the model
    def setup(self, stage: str) -> None:
        trainer = attached_trainer(self)
        if trainer is not None and trainer.strategy.root_device.type == "cpu":
            tune_cpu_process()
        datamodule = getattr(trainer, "datamodule", None)
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is not None:
            self.tokenizer = tokenizer

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CKPT_KEY] = {
            "config": self.encoder.config.to_dict(),
            "tokenizer": self.tokenizer.to_str() if self.tokenizer is not None else None,
            "module": f"{type(self).__module__}.{type(self).__qualname__}",
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        source = getattr(attached_trainer(self), "ckpt_path", None) or "this checkpoint"
        info = checkpoint.get(CKPT_KEY)
        if info is None:
            raise CheckpointError(f"{source} was not written by a bertzoo module (no 'bertzoo' "
                                  f"entry); pass it as model.backbone rather than --ckpt_path")
        refuse_another_modules_checkpoint(info.get("module"), type(self), source)
        if info.get("tokenizer") and self.tokenizer is None:
            from tokenizers import Tokenizer
            self.tokenizer = Tokenizer.from_str(info["tokenizer"])

    # -- randomness that resumes exactly
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Re-seed torch's generator (dropout) from (seed, global step, rank), so that dropout
        is a pure function of where training is: a run resumed from a checkpoint draws the same
        masks as one that never stopped (Lightning does not checkpoint RNG states)."""
        seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        sequence = np.random.SeedSequence([seed, self.global_step, self.global_rank])
        torch.manual_seed(int(sequence.generate_state(1, dtype=np.uint64)[0]))

    # -- optimizer and schedule
    def configure_optimizers(self):
        num_layers = self.encoder.config.num_hidden_layers
        groups = parameter_groups(self, self.weight_decay, self.learning_rate,
                                  self.layerwise_lr_decay, num_layers)
        # PyTorch's fused AdamW updates all tensors in one kernel: the same update, ~6x faster
        # than the per-tensor loop it uses by default on CPU (all-MiniLM-L6-v2: 0.88 s -> 0.14 s
        # a step on this 2-core machine). Lightning refuses gradient clipping with it under
        # mixed precision (it unscales inside step), and FSDP's sharded parameters are
        # subclasses: those keep the default.
        from lightning.pytorch.plugins.precision import MixedPrecision
        fused = not isinstance(self.trainer.precision_plugin, MixedPrecision) and all(
            type(p) is nn.Parameter and p.device.type in ("cpu", "cuda")
            for group in groups for p in group["params"])
        optimizer = build_optimizer(self.optimizer_name, groups, self.learning_rate,
                                    self.adam_betas, self.adam_epsilon, fused=fused)
        # Counted without the Trainer's own training loader (see `schedule_length`), so that
        # Lightning builds that loader after restoring a checkpoint, with its saved position.
        total = schedule_length(self.trainer, self.trainer.datamodule or self)
        if not math.isfinite(total) or total <= 0:
            raise ConfigError("cannot schedule the learning rate: set trainer.max_steps or "
                              "trainer.max_epochs")
        total = int(total)
        check_warmup_fits(self.warmup, self.scheduler_name, total, self.trainer)
        scheduler = build_scheduler(optimizer, self.scheduler_name, self.warmup, total,
                                    self.decay_fraction)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}
