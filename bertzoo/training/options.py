"""The value ranges of bertzoo's options, as types jsonargparse checks when it parses.

An option annotated `PositiveInt` instead of `int` is refused by the parser, before anything is
built or read, with its key, the value given and the range, and `--help` prints the range as
the option's type: each type is named for its range, `(type: float in [0, 1], default: 0.1)`.
The parser hands the module a plain `int` or `float` (what checkpoints store and read back with
`weights_only=True`).

In Python these names are callables that check: `PositiveInt(0)` raises `ConfigError`; a
module built by hand is not refused by its annotations, so the constructors whose options must
hold in Python too call `check_range`.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
import types
import typing
from collections.abc import Mapping

from jsonargparse.typing import register_type

from bertzoo.config import ConfigError

# Integers torch and numpy hold: a larger seed or size fails deep inside them.
INT_MAX = 2**63 - 1


class _Range:
    """One numeric range; `name` is what --help and the error messages show."""

    def __init__(self, name: str, base: type, low: float, high: float, low_open: bool,
                 high_open: bool):
        self.name, self.base = name, base
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def parse(self, value):
        """`value` (a number, or its text from the command line) as a plain int/float within
        the range, or ValueError saying why not."""
        if isinstance(value, bool):
            raise ValueError(f"expected {self.name}, got {value!r}")
        if isinstance(value, str):
            text = value.strip()
            try:
                value = int(text) if self.base is int else float(text)
            except ValueError:
                raise ValueError(f"expected {self.name}, got {value!r}") from None
        if not isinstance(value, numbers.Real):
            raise ValueError(f"expected {self.name}, got {value!r}")
        if self.base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"expected {self.name}, got {value!r}")
            number = int(value) if math.isfinite(value) else value
        else:
            number = float(value)
        above = number > self.low if self.low_open else number >= self.low
        below = number < self.high if self.high_open else number <= self.high
        if not (above and below):  # nan fails both
            raise ValueError(f"expected {self.name}, got {value!r}")
        return number


def _range(name: str, base: type, low: float, high: float, low_open: bool = False,
           high_open: bool = False) -> type:
    """A subclass of `base` named `name`, registered with jsonargparse so that parsing checks
    the range and yields a plain `base` value; calling it checks too."""
    checker = _Range(name, base, low, high, low_open, high_open)

    def new(cls, value=0):
        try:
            return checker.parse(value)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    kind = type(name, (base,), {"__new__": new, "__module__": __name__, "range": checker,
                                "__doc__": f"A {base.__name__} in the range {name}."})
    register_type(kind, serializer=base, deserializer=checker.parse)
    return kind


PositiveInt = _range("int >= 1", int, 1, INT_MAX)
NonNegativeInt = _range("int >= 0", int, 0, INT_MAX)
AtLeastTwoInt = _range("int >= 2", int, 2, INT_MAX)
Seed = _range("int in [0, 2**32 - 1]", int, 0, 2**32 - 1)
PositiveFloat = _range("float > 0", float, 0, math.inf, low_open=True, high_open=True)
NonNegativeFloat = _range("float >= 0", float, 0, math.inf, high_open=True)
FiniteFloat = _range("float (finite)", float, -math.inf, math.inf, True, True)
Probability = _range("float in [0, 1]", float, 0, 1)
OpenProbability = _range("float in (0, 1)", float, 0, 1, low_open=True, high_open=True)
DropoutRate = _range("float in [0, 1)", float, 0, 1, high_open=True)
Fraction = _range("float in (0, 1]", float, 0, 1, low_open=True)
# The shortest input worth a model's time: [CLS] A [SEP] B [SEP] with one token on each side.
SequenceLength = _range("int >= 5", int, 5, INT_MAX)
# A port a server may listen on without privileges (LitServe refuses the rest).
Port = _range("int in [1024, 65535]", int, 1024, 65535)


def check_range(key: str, value, kind: type) -> None:
    """Refuse `value` for option `key` unless it is in `kind`'s range: the check the parser
    makes, for a value given in Python (None passes: "not set")."""
    if value is None:
        return
    try:
        kind.range.parse(value)
    except ValueError:
        raise ConfigError(f"{key} must be {kind.__name__}, got {value!r}") from None


def option_types(cls) -> dict[str, typing.Any]:
    """{argument: type annotation} of `cls(...)`, following `**kwargs` up to the base classes'
    __init__ as the parser does (inspect.Parameter.empty where there is none)."""
    found: dict[str, typing.Any] = {}
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        try:
            hints = typing.get_type_hints(init)
        except (NameError, TypeError):  # an annotation that does not resolve: the parser's
            hints = {}
        parameters = inspect.signature(init).parameters.values()
        for p in parameters:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                found.setdefault(p.name, hints.get(p.name, inspect.Parameter.empty))
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return found


def accepts_none(annotation) -> bool:
    if annotation in (None, type(None), typing.Any, inspect.Parameter.empty):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(accepts_none(arg) for arg in typing.get_args(annotation))
    return False


def describe_type(annotation) -> str:
    """'float >= 0' for a range type, 'int' for a builtin, the annotation's text otherwise."""
    if isinstance(annotation, type):
        return annotation.__name__
    return re.sub(r"\b(?:typing|[a-z_]+(?:\.[a-z_]+)*)\.(?=[A-Za-z])", "", str(annotation))


def refuse_null_values(section: str, cls, values: Mapping) -> None:
    """A recipe's `key: null` (or an empty `key:`) for an option of `cls` whose type has no
    null. The parser does not check a null from a config file (it stands for "not set" there)
    and passes it on: the module met it as a TypeError in arithmetic, a traceback."""
    annotations = option_types(cls)
    for key, value in values.items():
        if value is None and key in annotations and not accepts_none(annotations[key]):
            raise ConfigError(f"{section}.{key}: expected {describe_type(annotations[key])}, got "
                              f"null (an empty value in the recipe); give a value, or leave "
                              f"the key out for its default")


def argparse_type(kind: type):
    """`kind` as an argparse `type=`: the plain number, or argparse's own error naming the
    option, the range and the value (`argument --workers: expected int >= 1, got '0'`)."""
    import argparse

    def parse(text: str):
        try:
            return kind.range.parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = kind.__name__
    return parse


def one_line_parser_error(message: str) -> str:
    """jsonargparse's error message (several indented lines for a value of the wrong type, more
    for a union such as `int >= 1 | null`) as one line: `key: expected TYPE, got VALUE`."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    key = re.match(r'Parser key "([^"]+)":$', lines[0]) if lines else None
    if not key:
        return " ".join(lines)
    expected, given = [], None
    for line in lines[1:]:
        found = re.match(r"(?:- )?Not of type ([^:]+): (expected .+, got (.+))$", line)
        plain = re.match(r"(?:- )?Expected a <class '([\w.]+)'>(?:\. Got value: (.*))?$", line)
        choice = re.match(r"(?:- )?Expected a typing\.Literal\[(.*)\]$", line)
        if choice:
            expected.append(f"one of {choice.group(1)}")
        elif found:
            expected.append(found.group(1))
            given = given if given is not None else found.group(3)
        elif plain:
            expected.append("null" if plain.group(1) == "NoneType" else plain.group(1))
            given = plain.group(2) if plain.group(2) is not None else given
        elif line.startswith("Given value:"):
            given = line.split(":", 1)[1].strip()
        elif line.startswith("- ") and not line.startswith("- Expected"):
            expected.append(line[2:])
    if not expected:
        return f"{key.group(1)}: " + " ".join(lines[1:])
    unique = list(dict.fromkeys(expected))
    return f"{key.group(1)}: expected {' or '.join(unique)}" + (
        f", got {given}" if given is not None else "")
