"""What every bertzoo LightningModule shares: building the encoder, the optimizer and its
schedule, metric logging, what goes into a checkpoint, and the Trainer defaults.

Pretraining (`bertzoo.pretraining.module.PretrainingModule`) and every task
(`bertzoo.tasks.base.TaskModule`, built-in or plugin) subclass `BertModule`, so a checkpoint of
any of them carries the same `checkpoint["bertzoo"]` entry (config, tokenizer, module) and
`BertEncoder.from_pretrained(ckpt)` reads any of them.

Optimisation follows BERT (Devlin et al. 2018, Appendix A.2; google-research/bert
`optimization.py`): AdamW with decoupled weight decay, none on biases and LayerNorm parameters,
linear warm-up then linear decay to zero. Layer-wise learning-rate decay (Clark et al. 2020,
ELECTRA, Appendix A) is optional for fine-tuning.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from bertzoo.checkpoint import CKPT_KEY
from bertzoo.config import BertConfig, ConfigError
from bertzoo.model import BertEncoder


# ------------------------------------------------------------------------------ CPU processes
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_allocator_tuned = False  # mallopt is called once per process


def tune_cpu_process() -> None:
    """Process settings for computing on CPU; bertzoo modules apply them when fit, validation,
    test or predict starts on CPU, and `bertzoo bench` applies them to both columns.

    - Denormal floats flush to zero: the tiny gradients of the vocabulary softmax would
      otherwise slow the CPU matmuls many times over (see `bertzoo.model.init_weights`).
    - Freed memory stays in the process (glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD, as
      the MALLOC_*_THRESHOLD_ environment variables would set them): by default glibc hands
      large freed blocks back to the kernel, and the next step page-faults every activation
      and gradient back in. Measured here on a BERT-base training step (B=8, T=128, 2 cores):
      ~100,000 page faults per step, 2% of the step alone and 5% when another model's step
      runs in between; with the setting, none. GPUs' caching allocators do the same. Nothing
      happens where the C library is not glibc, or when MALLOC_MMAP_THRESHOLD_ or
      MALLOC_TRIM_THRESHOLD_ is set in the environment (your own choice is kept).
    """
    torch.set_flush_denormal(True)
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"
    except (AttributeError, ValueError, OSError):  # not a GNU C library, or not POSIX
        libc = ""
    if not libc.startswith("glibc") or {"MALLOC_MMAP_THRESHOLD_",
                                        "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
        return
    import ctypes
    mallopt = ctypes.CDLL(None).mallopt
    mallopt(_M_MMAP_THRESHOLD, 1 << 30)
    mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)


# --------------------------------------------------------------------------------- the encoder
def build_encoder(backbone: str | None, config: str | dict[str, Any] | None,
                  vocab_size: int | None, add_pooler: bool = True) -> BertEncoder:
    """The encoder from a checkpoint (`backbone`) or randomly initialised from `config`.

    `config` is a preset name (`tiny` ... `large`) or a dict of `BertConfig` fields, optionally
    with a `preset` key to start from. `vocab_size` is the tokenizer's; with a backbone it must
    match the checkpoint's embedding.
    """
    if backbone and config:
        raise ConfigError("give either model.backbone (a checkpoint to start from) or "
                          "model.config (a preset for random initialisation), not both")
    if backbone:
        # from_pretrained returns an inference-ready (eval) module; Lightning keeps each
        # submodule's mode, so without .train() dropout would stay off while fine-tuning.
        encoder = BertEncoder.from_pretrained(backbone).train()
        if vocab_size is not None and vocab_size != encoder.config.vocab_size:
            raise ConfigError(
                f"the tokenizer has {vocab_size} tokens but the backbone {backbone} embeds "
                f"{encoder.config.vocab_size}; use the backbone's own tokenizer")
        return encoder
    if config is None:
        raise ConfigError("set model.backbone (a checkpoint folder or .ckpt) or model.config "
                          "(a preset: tiny, mini, small, medium, base, large)")
    if vocab_size is None:
        raise ConfigError("model.vocab_size is unknown: it comes from the data module's tokenizer")
    if isinstance(config, str):
        bert_config = BertConfig.from_preset(config, vocab_size=vocab_size)
    else:
        values = dict(config)
        preset = values.pop("preset", None)
        values.setdefault("vocab_size", vocab_size)
        bert_config = (BertConfig.from_preset(preset, **values) if preset
                       else BertConfig.from_dict(values))
    return BertEncoder(bert_config, add_pooler=add_pooler)


# ------------------------------------------------------------------------------ optimisation
def parameter_groups(module: nn.Module, weight_decay: float, learning_rate: float,
                     layerwise_lr_decay: float = 1.0, num_layers: int = 0) -> list[dict[str, Any]]:
    """AdamW parameter groups: no weight decay on biases and LayerNorm parameters; with
    `layerwise_lr_decay` < 1, depth d gets lr * decay ** (num_layers + 1 - d), where the
    embeddings are depth 0, layer i is depth i + 1 and everything above the encoder (pooler,
    heads) is depth num_layers + 1 and keeps the full rate."""
    no_decay = {id(p) for m in module.modules() if isinstance(m, nn.LayerNorm)
                for p in m.parameters(recurse=False)}
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (name.endswith("bias") or id(param) in no_decay)
        depth = _depth(name, num_layers) if layerwise_lr_decay != 1.0 else num_layers + 1
        if (depth, decay) not in groups:
            groups[(depth, decay)] = {
                "params": [], "weight_decay": weight_decay if decay else 0.0,
                "lr": learning_rate * layerwise_lr_decay ** (num_layers + 1 - depth)}
        groups[(depth, decay)]["params"].append(param)
    return list(groups.values())


def _depth(name: str, num_layers: int) -> int:
    parts = name.split(".")
    if "embeddings" in parts:
        return 0
    if "layers" in parts:
        return int(parts[parts.index("layers") + 1]) + 1
    return num_layers + 1


def warmup_then_linear_decay(warmup_steps: int, total_steps: int):
    """lr multiplier: 0 -> 1 over `warmup_steps`, then 1 -> 0 at `total_steps` (BERT's)."""
    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return multiplier


def share_of_global_mean(local_mean: torch.Tensor, count: int) -> torch.Tensor:
    """This process's term of a mean over every process's `count` items (masked tokens, tagged
    tokens), given the mean over its own.

    DDP averages gradients over the W processes, so each must return sum_r * W / global count
    for the average to be the global mean; a plain per-process mean weights a process holding
    few items as much as one holding many, and the run then differs from one process on the
    same global batch. One all-reduce of the count; with a single process the mean is returned
    unchanged. Every process must call it at the same step (training steps are equal in number
    everywhere: the batch sampler drops an incomplete last global batch under DDP).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) \
            or torch.distributed.get_world_size() == 1:
        return local_mean
    world_size = torch.distributed.get_world_size()
    global_count = torch.tensor(count, dtype=torch.long, device=local_mean.device)
    torch.distributed.all_reduce(global_count)
    return local_mean * (count * world_size / max(1, int(global_count)))


# ------------------------------------------------------------------------------ base module
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

    Subclasses build `self.encoder` with `build_encoder(...)`, their heads, and a
    `MetricCollection` per stage via `self.metrics = self.stage_metrics(collection)`.
    """

    def __init__(self, learning_rate: float = 5e-5, weight_decay: float = 0.01,
                 warmup: float = 0.1, adam_epsilon: float = 1e-6,
                 adam_betas: tuple[float, float] = (0.9, 0.999),
                 layerwise_lr_decay: float = 1.0, compile: bool | dict[str, Any] = False):
        super().__init__()
        self.compile_options = ({} if compile is True else dict(compile)) if compile else None
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup = warmup
        self.adam_epsilon = adam_epsilon
        self.adam_betas = tuple(adam_betas)
        self.layerwise_lr_decay = layerwise_lr_decay
        self.tokenizer = None  # a tokenizers.Tokenizer, from the data module or the checkpoint
        if warmup < 0:
            raise ConfigError(f"model.warmup must be >= 0 (a fraction of the steps if < 1, else a "
                              f"number of steps), got {warmup}")

    # -- metrics: one MetricCollection per stage, logged under "<stage>/<name>" everywhere
    @staticmethod
    def stage_metrics(collection) -> "StageMetrics":
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
        if self.compile_options is not None and not getattr(self, "_compiled", False):
            for layer in self.encoder.layers:
                layer.compile(**{"dynamic": True, **self.compile_options})
            self._compiled = True

    # -- tokenizer travels with the model
    def setup(self, stage: str) -> None:
        if self._trainer is not None and self.trainer.strategy.root_device.type == "cpu":
            tune_cpu_process()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
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
        from bertzoo.checkpoint import CheckpointError
        source = (getattr(self.trainer, "ckpt_path", None) if self._trainer else None) \
            or "this checkpoint"
        info = checkpoint.get(CKPT_KEY)
        if info is None:
            raise CheckpointError(f"{source} was not written by a bertzoo module (no 'bertzoo' "
                                  f"entry); pass it as model.backbone rather than --ckpt_path")
        refuse_another_modules_checkpoint(info.get("module"), type(self), source)
        if info.get("tokenizer") and self.tokenizer is None:
            from tokenizers import Tokenizer
            self.tokenizer = Tokenizer.from_str(info["tokenizer"])

    def on_train_start(self) -> None:
        # Lightning (2.6) restores the training data loader's position only when it builds the
        # loader after restoring the checkpoint; `configure_optimizers` asking for
        # `estimated_stepping_batches` (the schedule's length, without max_steps) builds it
        # before, and the resumed run then restarted the epoch from its first batch. Apply the
        # saved position now, before the first batch is drawn.
        loop = self.trainer.fit_loop
        if getattr(loop, "_combined_loader_states_to_load", None) and loop.restarting \
                and loop._combined_loader is not None and loop._data_fetcher is not None:
            loop._load_combined_loader_states()
            iter(loop._data_fetcher)  # a new iterator, starting where the checkpoint was

    # -- randomness that resumes exactly
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Re-seed torch's generator (dropout) from (seed, global step, rank), so that dropout
        is a pure function of where training is: a run resumed from a checkpoint draws the same
        masks as one that never stopped (Lightning does not checkpoint RNG states)."""
        seed = getattr(self, "seed", None)
        seed = seed if seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
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
        optimizer = torch.optim.AdamW(groups, lr=self.learning_rate, betas=self.adam_betas,
                                      eps=self.adam_epsilon, fused=fused or None)
        total = int(self.trainer.estimated_stepping_batches)
        if not math.isfinite(total) or total <= 0:
            raise ConfigError("cannot schedule the learning rate: set trainer.max_steps or "
                              "trainer.max_epochs")
        warmup_steps = int(self.warmup * total) if self.warmup < 1 else int(self.warmup)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_then_linear_decay(warmup_steps, total))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}


# ---------------------------------------------------------------------------------- callbacks
class BestCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose monitored metric a module may choose for itself through a
    `checkpoint_monitor = (metric, "min" | "max")` attribute, for when it depends on the
    configuration (a classification model doing regression keeps the best val/pearson, not
    val/accuracy)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        chosen = getattr(pl_module, "checkpoint_monitor", None)
        if chosen and tuple(chosen) != (self.monitor, self.mode):
            self.monitor, self.mode = chosen
            self.kth_value = torch.tensor(float("inf") if self.mode == "min" else float("-inf"))
        super().setup(trainer, pl_module, stage)

    # Lightning (2.6) rewrites last.ckpt only when it also saves a best checkpoint (an
    # improvement), and at the end only if no last.ckpt was ever saved: last.ckpt lagged
    # behind, and `--ckpt_path last` redid the steps after it. bertzoo's last.ckpt is the
    # state at every validation (or epoch end, without validation) and at the end of training.
    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_new(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_new(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save_last_if_new(trainer)
        super().on_train_end(trainer, pl_module)

    def _save_last_if_new(self, trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class TokensPerSecond(Callback):
    """Shows and logs training throughput in real (non-padding) tokens per second, counted
    from each batch's `attention_mask`, over the last `window` steps."""

    def __init__(self, window: int = 20):
        self.window = window
        self._times: list[float] = []
        self._tokens: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self._times:
            self._times.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        if mask is None:
            return
        self._tokens.append(int(mask.sum()) * trainer.world_size)
        self._times.append(time.perf_counter())
        if len(self._tokens) > self.window:
            self._tokens.pop(0)
            self._times.pop(0)
        elapsed = self._times[-1] - self._times[0]
        if elapsed > 0:
            pl_module.log("tokens_per_sec", sum(self._tokens) / elapsed, prog_bar=True,
                          on_step=True, on_epoch=False, rank_zero_only=True)

    def on_train_epoch_start(self, trainer, pl_module):
        self._times.clear()
        self._tokens.clear()


# ------------------------------------------------------------------------------------ loggers
class _AppendingWriter(ExperimentWriter):
    """Keeps the rows of an existing metrics.csv (Lightning's writer deletes the file), minus
    those at or after the first step this run logs: a run resumed from a checkpoint in its own
    folder continues its curves."""

    def _check_log_dir_exists(self) -> None:
        self._resumed_rows = None
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                reader = csv.DictReader(file)
                self._resumed_rows = list(reader)
                self.metrics_keys = list(reader.fieldnames or [])

    def save(self) -> None:
        if self._resumed_rows is not None and self.metrics:
            first_new = min(int(m["step"]) for m in self.metrics)
            kept = [r for r in self._resumed_rows if r.get("step") and int(r["step"]) < first_new]
            self._record_new_keys()
            with self._fs.open(self.metrics_file_path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
            self._resumed_rows = None
        super().save()


class AppendingCSVLogger(CSVLogger):
    """`CSVLogger` that continues the metrics.csv of a run resumed in its own folder."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


# ------------------------------------------------------------------------------- reliability
def _describe_module(qualified_name: str) -> str:
    """'bertzoo.tasks.ner.NerModule' -> "bertzoo.tasks.ner.NerModule (task 'ner')"."""
    commands = {"bertzoo.pretraining.module.PretrainingModule": "bertzoo pretrain"}
    try:
        from bertzoo.tasks.registry import list_tasks
        for task in list_tasks():
            if task.spec is not None:
                module = task.spec.module
                commands.setdefault(f"{module.__module__}.{module.__qualname__}",
                                    f"task {task.name!r}")
    except Exception:  # naming the task is a courtesy; a broken registry must not hide the error
        pass
    command = commands.get(qualified_name)
    return f"{qualified_name} ({command})" if command else qualified_name


def refuse_another_modules_checkpoint(written_by: str | None, module_class: type,
                                      source: str) -> None:
    """--ckpt_path resumes (or evaluates) the module that wrote the checkpoint: one of another
    task is refused, naming both. Checked by the CLI before Lightning merges the checkpoint's
    hyper-parameters, and by `BertModule.on_load_checkpoint` for runs outside the CLI."""
    from bertzoo.checkpoint import CheckpointError
    mine = f"{module_class.__module__}.{module_class.__qualname__}"
    if written_by and written_by != mine:
        raise CheckpointError(
            f"{source} was written by {_describe_module(written_by)}, but this run is "
            f"{_describe_module(mine)}: --ckpt_path resumes or evaluates the module that wrote "
            f"it; to start a new task from that checkpoint, pass it as --model.backbone")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary name in the same folder, flushed to disk, then
    renamed over the old file (`bertzoo.checkpoint.atomic_write`): a crash or a full disk while
    saving leaves the previous checkpoint whole, and no temporary file behind. (Lightning's own
    writer serialises the whole checkpoint into memory first, a second copy of it.)

    Loading reads with `torch.load(weights_only=True)` (tensors and plain containers only; a
    bertzoo checkpoint holds nothing else) and names the file when it cannot be read.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote: fsspec
        from bertzoo.checkpoint import atomic_write

        def write(tmp: str) -> None:
            torch.save(checkpoint, tmp)
            with open(tmp, "rb") as file:
                os.fsync(file.fileno())  # on disk before the rename makes it the checkpoint

        atomic_write(path, write)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None):
        from bertzoo.checkpoint import CheckpointError, describe_load_error
        if "://" not in str(path) and not Path(path).is_file():
            raise FileNotFoundError(f"no such checkpoint: {path}")
        try:
            return super().load_checkpoint(
                path, map_location=map_location or "cpu",
                weights_only=True if weights_only is None else weights_only)
        except Exception as err:  # truncated, not a checkpoint, or a pickle of arbitrary objects
            raise CheckpointError(f"{path} is not a readable checkpoint "
                                  f"({describe_load_error(err)})") from err


def save_logs(trainer) -> None:
    """Write what the loggers hold (CSVLogger writes every 100 steps) before a run stops with
    an exception, so that metrics.csv has every step up to there and a resumed run continues
    it."""
    for logger in trainer.loggers:
        try:
            logger.save()
        except Exception:  # the run is stopping for another reason: that one is reported
            pass


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names the stage, metric and step."""


class StopOnNonFiniteLoss(Callback):
    """Stops the run at the first non-finite training loss (every step) or validation loss
    (every validation), before any checkpoint of that state is written: checkpoint callbacks
    run after all others, so last.ckpt stays the last good state. Under DDP the decision is
    shared, so that every process stops at the same step."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(not finite, all=False):
            value = loss.detach().float().flatten()[0].item() if loss.numel() else "empty"
            self._stop(trainer, f"train/loss is {value}" if not finite
                       else "train/loss is non-finite on another process",
                       f"at step {trainer.global_step} (epoch {trainer.current_epoch}, batch "
                       f"{batch_idx} of the epoch)")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        bad = sorted(name for name, value in trainer.callback_metrics.items()
                     if name.startswith("val/") and "loss" in name
                     and isinstance(value, torch.Tensor) and not bool(torch.isfinite(value).all()))
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            named = ", ".join(f"{n} is {trainer.callback_metrics[n].item()}" for n in bad)
            self._stop(trainer, named or "a validation loss is non-finite",
                       f"in the validation after step {trainer.global_step}")

    @staticmethod
    def _stop(trainer, what: str, where: str) -> None:
        save_logs(trainer)
        checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
        kept = (f"the last good checkpoint is {checkpoint}" if checkpoint and
                Path(checkpoint).is_file() else "no checkpoint was saved before it")
        raise NonFiniteLossError(
            f"{what} {where}; stopped without saving this state ({kept}). Usual causes: a "
            f"learning rate too high for the batch size (lower model.learning_rate or lengthen "
            f"model.warmup), fp16 overflow (try trainer.precision=bf16-mixed or 32), or no "
            f"gradient clipping (trainer.gradient_clip_val=1.0)")


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C (or SIGTERM) once the current step finished and was checkpointed."""

    def __init__(self, message: str, checkpoint: str | None):
        super().__init__(message)
        self.checkpoint = checkpoint


class SaveOnInterrupt(Callback):
    """Ctrl-C during training finishes the current step, writes checkpoints/last.ckpt (a state
    `--ckpt_path last` resumes exactly), and stops; a second Ctrl-C stops at once without
    saving. A SIGTERM (a scheduler preempting the job) is handled the same way through
    Lightning's own flag.

    The checkpoint is written at the end of a training step, where Lightning's periodic
    checkpoints are written too, so the loop counters, the data loader's position and the
    optimizer agree; an interrupt in the middle of a step would save a state that does not.
    Under DDP every process stops at the same step: the flag is shared each step (a one-element
    all-reduce)."""

    def __init__(self):
        self.requested: str | None = None
        self._previous_handler = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.requested = None
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        if self.requested:  # the second Ctrl-C: stop now, save nothing
            self._restore()
            raise KeyboardInterrupt
        self.requested = "Ctrl-C"
        print("\nCtrl-C: finishing this training step, then saving a checkpoint to resume from "
              "(press Ctrl-C again to stop at once without saving)", flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        requested = self.requested or ("SIGTERM" if trainer.received_sigterm else None)
        if not trainer.strategy.reduce_boolean_decision(requested is not None, all=False):
            return
        path = None
        callback = trainer.checkpoint_callback
        if callback is not None and callback.dirpath:
            path = str(Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}"
                                                f"{callback.FILE_EXTENSION}")
            # Recorded before saving: the resumed run's callback then knows last.ckpt as its
            # own and overwrites it (an unknown one would make it write last-v1.ckpt).
            callback.last_model_path = path
            trainer.save_checkpoint(path)
            callback._last_global_step_saved = trainer.global_step  # nothing newer to save
        self._restore()
        # This step's metrics go to the loggers after this hook, which the exception skips:
        # hand them over now (as the loop would), so the resumed run's curves have no gap.
        connector = getattr(trainer, "_logger_connector", None)
        if connector is not None:
            connector.on_batch_end()
            connector.update_train_step_metrics()
        save_logs(trainer)
        raise TrainingInterrupted(
            f"{requested or 'interrupt'} at step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}); " + (f"saved {path}. Resume with the same command and "
                                             f"--ckpt_path last (or --ckpt_path {path})"
                                             if path else "checkpointing is off: nothing saved"),
            path)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None
