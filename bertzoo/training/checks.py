"""Rules between options, checked once the model, the data module and the Trainer are built and
before any data is read: what each option's type cannot say alone (`options.py` holds those).

    length        the data's longest input fits the model's position table
    warm-up       `model.warmup` is a fraction of the run (< 1) or a whole number of steps, and
                  a warm-up in steps is no longer than the run: checked against
                  `trainer.max_steps` here, and again against the run's real length (epochs x
                  optimizer steps per epoch) once the data is read, before the first step
                  (`check_warmup_fits`, called where the schedule is built)
    global batch  `global_batch_size` is data.batch_size x devices x nodes x a whole number of
                  accumulated batches; `trainer.accumulate_grad_batches` is derived from it
    together      options that contradict each other

Each failure is a ConfigError naming the options and their values.
"""

from __future__ import annotations

from typing import Any

from bertzoo.config import ConfigError
from bertzoo.training.optim import warmup_steps_of

# Schedules that have no warm-up (`model.warmup` is not used by them).
WITHOUT_WARMUP = ("constant",)


def _encoder_config(model) -> Any:
    encoder = getattr(model, "encoder", None)
    return getattr(encoder, "config", None)


def check_length(model, datamodule) -> None:
    config = _encoder_config(model)
    if config is None or datamodule is None:
        return
    positions = config.max_position_embeddings
    multiple = getattr(datamodule, "pad_to_multiple_of", None) or \
        (getattr(datamodule, "masking_options", None) or {}).get("pad_to_multiple_of")
    for key in ("max_length", "max_seq_length"):
        length = getattr(datamodule, key, None)
        if not isinstance(length, int):
            continue
        if length > positions:
            raise ConfigError(f"data.{key} ({length}) exceeds the model's "
                              f"max_position_embeddings ({positions}); "
                              f"lower it or build the model with more positions")
        if multiple and -(-length // multiple) * multiple > positions:
            raise ConfigError(f"data.pad_to_multiple_of ({multiple}) pads a batch of "
                              f"data.{key} ({length}) to {-(-length // multiple) * multiple} "
                              f"tokens, more than the model's max_position_embeddings "
                              f"({positions}); use a smaller multiple")


# ---------------------------------------------------------------------------------- warm-up
def _warmup_of(model) -> tuple[float | None, str | None]:
    """(model.warmup, model.scheduler) of a bertzoo module; (None, None) for another module."""
    warmup = getattr(model, "warmup", None)
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)):
        return None, None
    return warmup, getattr(model, "scheduler_name", None)


def _too_long(warmup: float, run: str) -> ConfigError:
    return ConfigError(f"model.warmup ({warmup:g} steps) is longer than the run ({run}): the "
                       f"learning rate would never reach model.learning_rate; give model.warmup "
                       f"as a fraction of the run (e.g. 0.1), lower it, or train longer")


def check_warmup(model, trainer) -> None:
    """Before data is read: a warm-up in steps (>= 1) is a whole number and no longer than
    `trainer.max_steps` (when set: the run is at most that long)."""
    warmup, scheduler = _warmup_of(model)
    if warmup is None or scheduler in WITHOUT_WARMUP or warmup < 1:
        return  # a fraction of the run always fits in it
    if not float(warmup).is_integer():
        raise ConfigError(f"model.warmup ({warmup:g}) is neither a fraction of the run (< 1) "
                          f"nor a whole number of steps; give {int(warmup)} steps or a fraction "
                          f"such as 0.1")
    max_steps = getattr(trainer, "max_steps", -1)
    if isinstance(max_steps, int) and max_steps > 0 and warmup > max_steps:
        raise _too_long(warmup, f"trainer.max_steps={max_steps}")


def check_warmup_fits(warmup: float, scheduler: str, total_steps: int, trainer) -> None:
    """Once the run's length is known (the schedule is built from it, after the data is read
    and before the first step): the warm-up, in steps, is no longer than `total_steps`. The
    run's length is named the way it was set: `trainer.max_steps`, or epochs x optimizer steps
    per epoch."""
    if scheduler in WITHOUT_WARMUP or warmup_steps_of(warmup, total_steps) <= total_steps:
        return
    max_steps = getattr(trainer, "max_steps", -1)
    if max_steps == total_steps:
        raise _too_long(warmup, f"trainer.max_steps={max_steps}")
    epochs = max(getattr(trainer, "max_epochs", 1) or 1, 1)
    accumulate = getattr(trainer, "accumulate_grad_batches", 1)
    per_step = (f", each of trainer.accumulate_grad_batches={accumulate} batches"
                if accumulate > 1 else "")
    raise _too_long(warmup, f"{total_steps} optimizer steps: trainer.max_epochs={epochs} x "
                            f"{total_steps // epochs} steps per epoch of the training data"
                            f"{per_step}")


# ----------------------------------------------------------------------------- global batch
def accumulation_for(global_batch_size: int, batch_size: int, devices: int, nodes: int,
                     accumulate: int, accumulate_given: bool) -> int:
    """The `trainer.accumulate_grad_batches` that makes `global_batch_size` sequences per
    optimizer step: global = batch_size x devices x nodes x accumulate. A global batch that is
    not a whole number of those batches is refused, and so is an accumulation given
    explicitly (`accumulate_given`) that gives another global batch."""
    per_batch = batch_size * devices * nodes
    shape = (f"data.batch_size ({batch_size}) x {devices} device(s) (trainer.devices) x "
             f"{nodes} node(s) (trainer.num_nodes)")
    if global_batch_size % per_batch:
        below, above = global_batch_size // per_batch * per_batch, \
            -(-global_batch_size // per_batch) * per_batch
        closest = " or ".join(str(n) for n in (below, above) if n > 0)
        raise ConfigError(f"global_batch_size ({global_batch_size}) is not a multiple of "
                          f"{shape} = {per_batch}: no whole number of accumulated batches "
                          f"makes it; use {closest}, or another data.batch_size")
    derived = global_batch_size // per_batch
    if accumulate_given and accumulate != derived:
        raise ConfigError(f"trainer.accumulate_grad_batches ({accumulate}) contradicts "
                          f"global_batch_size ({global_batch_size}): {shape} x {accumulate} = "
                          f"{per_batch * accumulate} sequences per step; leave "
                          f"trainer.accumulate_grad_batches out (global_batch_size makes it "
                          f"{derived}), or global_batch_size out")
    return derived


def apply_global_batch(global_batch_size: int | None, datamodule, trainer,
                       accumulate_given: bool) -> int | None:
    """Set `trainer.accumulate_grad_batches` from `global_batch_size` (None: nothing to do)
    for a training run, before anything is read; returns the accumulation set."""
    if global_batch_size is None:
        return None
    batch_size = getattr(datamodule, "batch_size", None)
    if not isinstance(batch_size, int):
        raise ConfigError(f"global_batch_size is set, but the data module "
                          f"({type(datamodule).__name__}) has no data.batch_size to divide it by")
    derived = accumulation_for(global_batch_size, batch_size, trainer.num_devices,
                               trainer.num_nodes, trainer.accumulate_grad_batches,
                               accumulate_given)
    trainer.accumulate_grad_batches = derived
    return derived


# -------------------------------------------------------------------------------- together
def check_together(model, datamodule) -> None:
    if datamodule is None:
        return
    text, pair = (getattr(datamodule, "text_column", None),
                  getattr(datamodule, "text_pair_column", None))
    if pair is not None and text == pair:
        raise ConfigError(f"data.text_pair_column is data.text_column ({text!r}): a pair needs "
                          f"two columns (or set text_pair_column to null for single texts)")


def check_run(model, datamodule, trainer, stage: str = "fit") -> None:
    """Every rule above that applies to a run of `stage` about to start ("fit", "validate",
    "test", "predict"): the warm-up only matters to training."""
    check_length(model, datamodule)
    check_together(model, datamodule)
    if trainer is not None and stage == "fit":
        check_warmup(model, trainer)
