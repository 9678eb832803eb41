"""Tasks: the plugin registry and everything a task, built-in or third-party, builds on.

A task plugin imports from here alone (and from `bertzoo.testing` in its tests):

    TaskSpec, register, get_task, list_tasks   the registry (entry point group `bertzoo.tasks`)
    TaskModule, TaskDataModule                 the base classes a task subclasses
    DataError                                  bad task data (the message names file and line)
    PredictionWriter                           the callback that writes `bertzoo predict` output
    pad_to                                     (B, T) tensor from rows of different lengths
    SpecialIds, special_ids                    [PAD]/[UNK]/[CLS]/[SEP]/[MASK] ids of a tokenizer
                                               (also `TaskDataModule.special_ids`)
    PositiveInt, Probability, ...              option types that carry their range: the
                                               parser refuses a value outside it, and
                                               `--help` shows it
    RawInputs, InputError                      the raw inputs a trained task takes
                                               (`TaskSpec.inputs`: bertzoo.load, serve, ONNX)
"""

from bertzoo.data import pad_to
from bertzoo.tasks.base import DataError, PredictionWriter, TaskDataModule, TaskModule
from bertzoo.tasks.inputs import InputError, RawInputs
from bertzoo.tasks.registry import (ENTRY_POINT_GROUP, RegisteredTask, TaskError, TaskSpec,
                                    get_task, list_tasks, register)
from bertzoo.tokenizer import SpecialIds, special_ids
from bertzoo.training.options import (AtLeastTwoInt, DropoutRate, FiniteFloat, Fraction,
                                      NonNegativeFloat, NonNegativeInt, OpenProbability,
                                      PositiveFloat, PositiveInt, Probability, Seed,
                                      SequenceLength, check_range)

__all__ = ["ENTRY_POINT_GROUP", "RegisteredTask", "TaskError", "TaskSpec", "get_task",
           "list_tasks", "register", "TaskModule", "TaskDataModule", "DataError",
           "PredictionWriter", "pad_to", "SpecialIds", "special_ids", "RawInputs", "InputError",
           "AtLeastTwoInt", "DropoutRate", "FiniteFloat", "Fraction", "NonNegativeFloat",
           "NonNegativeInt", "OpenProbability", "PositiveFloat", "PositiveInt", "Probability",
           "Seed", "SequenceLength", "check_range"]
