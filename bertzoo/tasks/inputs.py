"""What a task takes from the users of a trained model: its raw-input schema.

`bertzoo.load(...)` and `bertzoo serve` accept, per task, the inputs a person would write (a
sentence, a question with its context, ...) rather than rows of a data file. A task declares
how one such input becomes one row of the columns its data module reads for prediction
(`TaskSpec.inputs`, a `RawInputs`); the row then goes through the task's own `preprocess`,
`collate`, `decode` and `finalize_predictions`, exactly as a row of `bertzoo predict`'s file
does. A plugin that adds a task gets `load`, `serve` and ONNX export by filling this in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


MISSING = object()  # the `found` of a required key that is absent


class InputError(ValueError):
    """A raw input that does not follow its task's schema. `field` is where, relative to the
    input ("" for the input itself, "text", "choices[2]"), `expected` what should be there."""

    def __init__(self, field: str, expected: str, found: Any = None):
        self.field = field
        self.expected = expected
        self.found = found
        super().__init__(f"{field or 'input'}: expected {expected}, found {describe(found)}")

    def at(self, prefix: str) -> "InputError":
        """The same error located under `prefix` (e.g. "inputs[3]")."""
        where = f"{prefix}.{self.field}" if self.field else prefix
        return InputError(where, self.expected, self.found)


class Found(str):
    """What was found, already in words ("200000 characters"): shown as is."""


def describe(value: Any) -> str:
    """A value as an error message shows it: its JSON type, and the value when short."""
    if isinstance(value, Found):
        return str(value)
    if value is MISSING:
        return "nothing (the key is missing)"
    kind = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value),
                                                                      type(value).__name__)
    text = repr(value)
    return kind if len(text) > 40 or value is None else f"{kind} {text}"


@dataclass(frozen=True)
class RawInputs:
    """A task's raw-input schema.

    Args:
        description: One input as users write it, for error messages and docs, e.g.
            '"a text", or {"text": ..., "text_pair": ...}'.
        json_schema: JSON Schema of one input (the server's OpenAPI page shows it).
        to_row: `to_row(value, data, position) -> dict`: one input -> one row of the columns
            the task's data module reads for prediction. `data` holds the data module's
            arguments (its column names, say), `position` is the input's place in the call.
            Raises `InputError` naming the field.
        examples: `examples(data_args) -> list`: the predict split that `example_data` wrote
            (given the arguments it returned), as raw inputs. The generated tests check that
            `bertzoo.load` answers them with the rows `bertzoo predict` writes.
        data: Data module arguments the rows need (e.g. the column names `to_row` writes);
            they override the ones the model was trained with.
    """

    description: str
    json_schema: dict[str, Any]
    to_row: Callable[[Any, dict[str, Any], int], dict[str, Any]]
    examples: Callable[[dict[str, Any]], list[Any]]
    data: dict[str, Any] = field(default_factory=dict)

    # The helpers below, for a plugin's `to_row` (it imports `RawInputs` from bertzoo.tasks).
    @staticmethod
    def text(value: Any, field: str = "") -> str:
        return text(value, field)

    @staticmethod
    def texts(value: Any, field: str, minimum: int = 1) -> list[str]:
        return texts(value, field, minimum)

    @staticmethod
    def fields(value: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()
               ) -> dict[str, Any]:
        return fields(value, required, optional)

    def validate(self) -> list[str]:
        problems = []
        if not isinstance(self.description, str) or not self.description.strip():
            problems.append("inputs.description must be a non-empty string")
        if not isinstance(self.json_schema, dict):
            problems.append("inputs.json_schema must be a dict (a JSON Schema)")
        for name in ("to_row", "examples"):
            if not callable(getattr(self, name)):
                problems.append(f"inputs.{name} must be callable")
        if not isinstance(self.data, dict):
            problems.append("inputs.data must be a dict of data module arguments")
        return problems


# ------------------------------------------------------------------- helpers for to_row
def text(value: Any, field: str = "") -> str:
    """`value` if it is a string, else an InputError for `field`."""
    if not isinstance(value, str):
        raise InputError(field, "a string", value)
    return value


def texts(value: Any, field: str, minimum: int = 1) -> list[str]:
    """`value` if it is a list of at least `minimum` strings, else an InputError."""
    if not isinstance(value, list) or len(value) < minimum:
        raise InputError(field, f"a list of {minimum} or more strings", value)
    for i, item in enumerate(value):
        text(item, f"{field}[{i}]")
    return value


def fields(value: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()
           ) -> dict[str, Any]:
    """`value` if it is an object with the `required` keys and no keys besides those and
    `optional`, else an InputError naming the missing or unknown key."""
    wanted = ", ".join(f'"{k}"' for k in required)
    if not isinstance(value, dict):
        raise InputError("", f"an object with {wanted}", value)
    for key in required:
        if key not in value:
            raise InputError(key, f"a value (the input needs {wanted})", MISSING)
    unknown = [k for k in value if k not in required + optional]
    if unknown:
        allowed = ", ".join(f'"{k}"' for k in required + optional)
        raise InputError(str(unknown[0]), f"no such key (an input has {allowed})",
                         value[unknown[0]])
    return value
