"""Multiple-choice fine-tuning for bertzoo: a task plugin registered through the `bertzoo.tasks`
entry point group (see pyproject.toml), exactly as any third-party task would be."""

from bertzoo_multiple_choice.task import (TASK, MultipleChoiceDataModule,
                                          MultipleChoiceModule)

__all__ = ["TASK", "MultipleChoiceDataModule", "MultipleChoiceModule"]
