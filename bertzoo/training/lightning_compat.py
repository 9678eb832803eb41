"""The two places where bertzoo needs a part of Lightning that has no public API. Nothing else
in bertzoo touches a private attribute of Lightning; `tests/test_lightning_compat.py` checks that
and checks each use below against the installed release, failing with the attribute's name when
a release changes it.

1. `flush_step_metrics`: Ctrl-C (or SIGTERM) stops training by raising from
   `on_train_batch_end`, the one point where the checkpoint, the loop counters and the data
   loader's position agree. The step's logged values reach the loggers only after that hook,
   so they are handed over here first, as the loop would have done: without it the resumed
   run's metrics.csv has a gap at that step. (Setting `trainer.should_stop` instead would let
   the step finish, but Lightning then runs a validation before stopping, and raises its own
   `SIGTERMException` before any later hook on SIGTERM.)
2. `set_logging_step`: the step the loggers number rows with (the epoch loop's
   `_batches_that_stepped`) is counted after the validation that runs at the end of a training
   step, so a checkpoint saved at the end of that validation holds one less than the steps
   taken, and a run resumed from it logged every later step one too low. The count stored in
   the checkpoint is set to the one the resumed run must continue from. (A checkpoint saved in
   `on_train_batch_end`, as Ctrl-C saves it, needs nothing: the loop counts that step itself
   on restart, which Lightning 2.4 did not.)
"""

from __future__ import annotations

from typing import Any

# The private names used below, listed once so that the tests can check them.
LOGGER_CONNECTOR = "_logger_connector"  # Trainer attribute
LOGGER_CONNECTOR_METHODS = ("on_batch_end", "update_train_step_metrics")
EPOCH_LOOP_STATE = "epoch_loop.state_dict"  # key of checkpoint["loops"]["fit_loop"]
LOGGING_STEP = "_batches_that_stepped"  # key of that state, and _TrainingEpochLoop attribute


def flush_step_metrics(trainer) -> None:
    """Hand the values logged during the current training step to the loggers, as the training
    loop does after `on_train_batch_end`. Call it only from `on_train_batch_end`."""
    connector = getattr(trainer, LOGGER_CONNECTOR)
    connector.on_batch_end()
    connector.update_train_step_metrics()


def set_logging_step(checkpoint: dict[str, Any], step: int) -> None:
    """Make a fit checkpoint's logging step `step` (see the module docstring)."""
    state = checkpoint.get("loops", {}).get("fit_loop", {}).get(EPOCH_LOOP_STATE)
    if state is not None:
        state[LOGGING_STEP] = step

