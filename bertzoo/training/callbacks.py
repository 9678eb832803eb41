"""The callbacks every bertzoo run has: the best and the last checkpoint, throughput, a stop at
the first non-finite loss, and Ctrl-C that saves where training was."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from bertzoo.training import lightning_compat
from bertzoo.training.module import BertModule


# ------------------------------------------------------------------------------ checkpoints
class BestCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose monitored metric a module may choose for itself through
    `BertModule.checkpoint_monitor`, for when it depends on the configuration (a classification
    model doing regression keeps the best val/pearson, not val/accuracy)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        chosen = pl_module.checkpoint_monitor if isinstance(pl_module, BertModule) else None
        if chosen and tuple(chosen) != (self.monitor, self.mode):
            self.monitor, self.mode = chosen
            self.kth_value = torch.tensor(float("inf") if self.mode == "min" else float("-inf"))
        super().setup(trainer, pl_module, stage)


class LastCheckpoint(Checkpoint):
    """checkpoints/last.ckpt: the state at every validation (or at the end of each epoch, when
    validation runs once at the end of each epoch or not at all, as `ModelCheckpoint` decides
    for its own checkpoints) and at the end of training; `--ckpt_path last` resumes from it.
    (Lightning's `save_last` rewrites last.ckpt only when it also saves a best checkpoint.)

    Written into the folder of the run's `ModelCheckpoint` (the logger's
    `<save_dir>/<name>/version_<n>/checkpoints`), after it: last.ckpt then holds the best
    checkpoint's updated record. Always the same name: a run resumed in its own folder
    overwrites it.
    """

    FILE_NAME = "last.ckpt"

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath
        self.step_saved = 0  # no need to save when no steps were taken

    def path(self, trainer) -> str:
        dirpath = self.dirpath
        if dirpath is None:
            best = next((c for c in trainer.checkpoint_callbacks
                         if isinstance(c, ModelCheckpoint) and c.dirpath), None)
            if best is not None:
                dirpath = best.dirpath
            elif trainer.loggers:
                logger = trainer.loggers[0]
                version = logger.version if isinstance(logger.version, str) \
                    else f"version_{logger.version}"
                dirpath = os.path.join(logger.save_dir or trainer.default_root_dir,
                                       str(logger.name), version, "checkpoints")
            else:
                dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        return os.path.join(dirpath, self.FILE_NAME)

    def save(self, trainer) -> str:
        """Write last.ckpt now (every process calls it, as `trainer.save_checkpoint` needs)."""
        path = self.path(trainer)
        trainer.save_checkpoint(path)
        self.step_saved = trainer.global_step
        return path

    def _save_if_new(self, trainer) -> None:
        if not (trainer.fast_dev_run or trainer.state.fn != TrainerFn.FITTING
                or trainer.sanity_checking or self.step_saved == trainer.global_step):
            self.save(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not saves_at_epoch_end(trainer):
            self._save_if_new(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if saves_at_epoch_end(trainer):
            self._save_if_new(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save_if_new(trainer)


def saves_at_epoch_end(trainer) -> bool:
    """ModelCheckpoint's rule (`save_on_train_epoch_end=None`): save at the end of each training
    epoch when validation runs once at the end of every epoch or not at all, else at the end of
    each validation."""
    if trainer.check_val_every_n_epoch != 1:
        return False
    batches = trainer.num_val_batches
    if (sum(batches) if isinstance(batches, list) else batches) == 0:
        return True
    return trainer.val_check_interval == 1.0


def last_checkpoint(trainer) -> LastCheckpoint | None:
    return next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)


# ----------------------------------------------------------------------------------- logging
class TokensPerSecond(Callback):
    """Shows and logs training throughput in real (non-padding) tokens per second, counted
    from each batch's `attention_mask`, over the last `window` steps."""

    def __init__(self, window: int = 20):
        self.window = window
        self.times: list[float] = []
        self.tokens: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.times:
            self.times.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        if mask is None:
            return
        self.tokens.append(int(mask.sum()) * trainer.world_size)
        self.times.append(time.perf_counter())
        if len(self.tokens) > self.window:
            self.tokens.pop(0)
            self.times.pop(0)
        elapsed = self.times[-1] - self.times[0]
        if elapsed > 0:
            pl_module.log("tokens_per_sec", sum(self.tokens) / elapsed, prog_bar=True,
                          on_step=True, on_epoch=False, rank_zero_only=True)

    def on_train_epoch_start(self, trainer, pl_module):
        self.times.clear()
        self.tokens.clear()


def save_logs(trainer) -> None:
    """Write what the loggers hold (the CSV logger writes every 100 steps) before a run stops
    with an exception, so that metrics.csv has every step up to there and a resumed run
    continues it."""
    for logger in trainer.loggers:
        try:
            logger.save()
        except Exception:  # the run is stopping for another reason: that one is reported
            pass


# ------------------------------------------------------------------------------- reliability
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
        last = last_checkpoint(trainer)
        checkpoint = last.path(trainer) if last is not None else ""
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
        self.previous_handler = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.requested = None
        if threading.current_thread() is threading.main_thread():
            self.previous_handler = signal.getsignal(signal.SIGINT)
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
        last = last_checkpoint(trainer)
        path = last.save(trainer) if last is not None else None
        self._restore()
        # This step's metrics go to the loggers after this hook, which the exception skips:
        # hand them over now (as the loop would), so the resumed run's curves have no gap.
        lightning_compat.flush_step_metrics(trainer)
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
        if self.previous_handler is not None:
            signal.signal(signal.SIGINT, self.previous_handler)
            self.previous_handler = None
