"""Rules between options, checked once the model, the data module and the Trainer are built and
before any data is read: what each option's type cannot say alone (`options.py` holds those).

    length     the data's longest input fits the model's position table
    warm-up    a warm-up counted in steps shorter than the run (a warning: a smoke test of a
               recipe with `--trainer.max_steps 1` is a fair thing to run)
    together   options that contradict each other

Each failure is a ConfigError naming the options and their values.
"""

from __future__ import annotations

import warnings
from typing import Any

from bertzoo.config import ConfigError


class BertzooWarning(UserWarning):
    """A warning of bertzoo's own (never filtered by bertzoo's noise filters)."""


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


def check_warmup(model, trainer) -> None:
    warmup = getattr(model, "warmup", None)
    max_steps = getattr(trainer, "max_steps", -1)
    if isinstance(warmup, (int, float)) and warmup >= 1 and max_steps and max_steps > 0 \
            and warmup > max_steps:
        warnings.warn(f"model.warmup ({warmup:g} steps) is longer than the run "
                      f"(trainer.max_steps={max_steps}): the learning rate never reaches "
                      f"model.learning_rate; give model.warmup as a fraction of the run "
                      f"(e.g. 0.1) or lower it", BertzooWarning, stacklevel=2)


def check_together(model, datamodule) -> None:
    if datamodule is None:
        return
    text, pair = (getattr(datamodule, "text_column", None),
                  getattr(datamodule, "text_pair_column", None))
    if pair is not None and text == pair:
        raise ConfigError(f"data.text_pair_column is data.text_column ({text!r}): a pair needs "
                          f"two columns (or set text_pair_column to null for single texts)")


def check_run(model, datamodule, trainer) -> None:
    """Every rule above, for a run about to start (any stage)."""
    check_length(model, datamodule)
    check_together(model, datamodule)
    if trainer is not None:
        check_warmup(model, trainer)
