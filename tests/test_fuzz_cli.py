"""The command line under generated bad input: whatever a recipe or a data file holds, `bertzoo`
either runs or exits non-zero with one line `bertzoo <cmd>: error: ...` on stderr. Never a
traceback, never a hang, never a checkpoint of a failed run, never a run folder left claimed.

Hypothesis generates, for `pretrain` and for every registered task (plugins included, read from
the registry):
    recipes          a working recipe with keys dropped, values of the wrong type or out of
                     range, unknown keys added
    damaged recipes  the working recipe's YAML file truncated, binary, in another encoding,
                     with renamed keys, ragged lines, or empty
    damaged files    the task's example training file (the corpus for pretraining) truncated,
                     binary, in another encoding, with renamed columns, ragged rows, or empty

The runs go through `bertzoo.cli.main`, the console script's entry point, in this process (the
parser is built in 0.3 s; a subprocess would pay seconds of imports per example).

Bounds: BERTZOO_FUZZ_EXAMPLES examples per command and kind (default 6: about a minute in all
on two cores); `BERTZOO_FUZZ_EXAMPLES=200 pytest tests/test_fuzz_cli.py` is the long run
(docs/errors.md).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import re
import shutil
import signal
import traceback
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertzoo.cli import main
from bertzoo.tasks import list_tasks
from bertzoo.testing import tiny_backbone, write_bert_corpus
from bertzoo.synthetic import documents

EXAMPLES = int(os.environ.get("BERTZOO_FUZZ_EXAMPLES", "6"))
# A run that takes longer than this is a hang (a valid generated recipe trains one step).
HANG_SECONDS = int(os.environ.get("BERTZOO_FUZZ_HANG_SECONDS", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 6,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])
TASKS = sorted(t.name for t in list_tasks() if t.spec is not None)
COMMANDS = ["pretrain", *TASKS]
TINY_MODEL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 128}
QUICK_TRAINER = {"max_steps": 1, "max_epochs": 1, "limit_val_batches": 1,
                 "num_sanity_val_steps": 0, "val_check_interval": 1,
                 "check_val_every_n_epoch": None, "enable_progress_bar": False,
                 "enable_model_summary": False, "log_every_n_steps": 1}
# Values that do not fit an option of a number type (wrong type, or outside any usual range).
BAD_VALUES = ["lots", "", "1e3x", [], [1, 2], {"a": 1}, True, None, -1, 0, -0.5, 1.5, 2**70,
              float("nan"), float("inf"), float("-inf"), 10**30]
# Options whose valid values start processes or allocate by the value: generated small.
RESOURCE_OPTIONS = {"num_workers", "num_proc"}
# Numeric options at the top level of a recipe (bertzoo's own; the Trainer's are Lightning's).
TOP_LEVEL_NUMERIC = ["global_batch_size"]


# --------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    tiny_backbone(root / "backbone")
    write_bert_corpus(root / "corpus.txt", documents(40, seed=1, min_sentences=3,
                                                     max_sentences=6))
    return root


def base_recipe(command: str, root: Path) -> dict:
    """A recipe that runs (one step) for `command`: "pretrain" or a task name."""
    if command == "pretrain":
        return {"model": {"config": dict(TINY_MODEL), "warmup": 0.1},
                "data": {"train_files": str(root / "corpus.txt"), "tokenizer_vocab_size": 200,
                         "max_seq_length": 32, "batch_size": 4, "validation_documents": 4},
                "trainer": dict(QUICK_TRAINER)}
    spec = next(t.spec for t in list_tasks() if t.name == command)
    folder = root / command
    folder.mkdir(exist_ok=True)
    data = dict(spec.example_data(folder))
    data.update(num_workers=0, batch_size=4)
    return {"task": command, "model": {"backbone": str(root / "backbone")}, "data": data,
            "trainer": dict(QUICK_TRAINER)}


def numeric_options(command: str) -> dict[str, list[str]]:
    """{"model": [...], "data": [...]}: the options of a number type, read from the classes'
    signatures (following **kwargs to the base classes, as the parser does)."""
    if command == "pretrain":
        from bertzoo.pretraining import PretrainingDataModule, PretrainingModule
        classes = {"model": PretrainingModule, "data": PretrainingDataModule}
    else:
        spec = next(t.spec for t in list_tasks() if t.name == command)
        classes = {"model": spec.module, "data": spec.datamodule}
    found: dict[str, list[str]] = {}
    for section, cls in classes.items():
        names = []
        for klass in cls.__mro__:
            if "__init__" not in vars(klass):
                continue
            init = vars(klass)["__init__"]
            hints = typing.get_type_hints(init)
            parameters = inspect.signature(init).parameters.values()
            for p in parameters:
                hint = str(hints.get(p.name, ""))
                if p.name not in ("self", "vocab_size", "num_labels") \
                        and re.search(r"\bint\b|\bfloat\b|options\.", hint) \
                        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                    names.append(p.name)
            if not any(p.kind is p.VAR_KEYWORD for p in parameters):
                break
        found[section] = sorted(set(names))
    return found


# ---------------------------------------------------------------------------- the property
class Hang(Exception):
    pass


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `bertzoo ARGS`; an exception escaping `main` (other
    than the parser's SystemExit) fails the test with its traceback."""
    out, err = io.StringIO(), io.StringIO()

    def on_alarm(signum, frame):
        raise Hang(f"bertzoo {' '.join(args)} ran past {HANG_SECONDS}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(HANG_SECONDS)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(args)
            except SystemExit as exit_:
                status = exit_.code if isinstance(exit_.code, int) else 1
    except Hang:
        raise
    except BaseException:  # the property: nothing else escapes main()
        pytest.fail(f"bertzoo {' '.join(args)} raised instead of reporting an error:\n"
                    f"{traceback.format_exc()}\nstderr:\n{err.getvalue()}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return status, out.getvalue(), err.getvalue()


def assert_runs_or_fails_cleanly(args: list[str], folder: Path, case: str) -> tuple[int, str]:
    """The property, for one generated case; returns (status, the error line or "")."""
    command = "pretrain" if args[0] == "pretrain" else args[0]
    status, out, err = run_cli(args)
    assert "Traceback (most recent call last)" not in err + out, f"{case}\n{err}"
    runs = folder / "runs"
    if status == 0:
        return 0, ""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(rf"bertzoo {command}: error: \S", line)]
    assert len(errors) == 1 and lines[-1] == errors[0], \
        f"{case}: exit {status} without one final `bertzoo {command}: error:` line:\n{err}"
    assert not list(runs.glob("**/*.ckpt")), f"{case}: a failed run left a checkpoint"
    assert not list(runs.glob("**/.*.tmp")), f"{case}: a failed run left a temporary file"
    claimed = list(runs.glob("*/version_*"))
    assert not claimed, f"{case}: a failed run left its folder claimed: {claimed}\n{err}"
    return status, errors[0]


def assert_damaged_file_named(args: list[str], folder: Path, case: str, path: Path, kind: str,
                              content: bytes) -> None:
    """`assert_runs_or_fails_cleanly` for a run given a damaged file at `path`; a refusal of
    text that is not UTF-8 (or holds NUL bytes) must name that file."""
    status, line = assert_runs_or_fails_cleanly(args, folder, case)
    foreign = kind in ("utf-16", "latin-1") or b"\x00" in content
    if status and foreign:
        assert str(path) in line, f"{case}: the error does not name {path}: {line}"


def fresh(folder: Path) -> None:
    shutil.rmtree(folder / "runs", ignore_errors=True)


def _set(recipe: dict, dotted: str, value) -> None:
    section, _, key = dotted.partition(".")
    if key:
        recipe.setdefault(section, {})[key] = value
    else:
        recipe[section] = value


def _drop(recipe: dict, dotted: str) -> None:
    section, _, key = dotted.partition(".")
    if key:
        recipe.get(section, {}).pop(key, None)
    else:
        recipe.pop(section, None)


# --------------------------------------------------------------------------------- recipes
@st.composite
def mutated_recipes(draw, command: str, root: Path):
    recipe = base_recipe(command, root)
    numbers = numeric_options(command)
    keys = [f"{s}.{k}" for s in ("model", "data") for k in recipe.get(s, {})]
    numeric_keys = [f"{s}.{k}" for s, names in numbers.items() for k in names] + \
        TOP_LEVEL_NUMERIC
    changes = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["drop", "wrong", "range", "unknown", "valid"]))
        if kind == "drop":
            # (not the trainer section: without it a valid recipe trains for real, which is
            # a long run, not a bad input)
            key = draw(st.sampled_from(keys + ["model", "data"]))
            _drop(recipe, key)
        elif kind in ("wrong", "range"):
            key = draw(st.sampled_from(numeric_keys))
            value = draw(st.sampled_from(BAD_VALUES) if kind == "wrong"
                         else st.one_of(st.integers(-3, 3), st.sampled_from([2**31, 2**63])))
            _set(recipe, key, value)
        elif kind == "unknown":
            section = draw(st.sampled_from(["model", "data", "trainer", ""]))
            name = draw(st.from_regex(r"[a-z][a-z_]{1,12}", fullmatch=True))
            key = f"{section}.{name}" if section else name
            value = draw(st.one_of(st.integers(-2, 2), st.text(max_size=4), st.none()))
            _set(recipe, key, value)
        else:  # a valid value, small
            key = draw(st.sampled_from(numeric_keys))
            limit = 4 if key.split(".")[-1] in RESOURCE_OPTIONS else 600
            # (sampled, not st.floats: a CPU run may switch on flush-to-zero for subnormals,
            # which Hypothesis's float generator refuses to work under)
            value = draw(st.one_of(st.integers(0, limit),
                                   st.sampled_from([0.0, 1e-4, 0.01, 0.1, 0.5, 0.9, 0.999, 1.0])))
            _set(recipe, key, value)
        changes.append((kind, key))
    return recipe, changes


@pytest.mark.parametrize("command", COMMANDS)
def test_generated_recipes_run_or_fail_with_one_line(command, fuzz_root, monkeypatch):
    monkeypatch.chdir(fuzz_root)
    outcomes: list[int] = []

    @FUZZ
    @given(case=mutated_recipes(command, fuzz_root))
    def check(case):
        recipe, changes = case
        fresh(fuzz_root)
        path = fuzz_root / f"recipe-{command}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        verb = "pretrain" if command == "pretrain" else "fit"
        status, _ = assert_runs_or_fails_cleanly([verb, "--config", str(path)], fuzz_root,
                                                 f"{command} recipe {changes}")
        outcomes.append(status)

    check()
    assert outcomes, "no example ran"


# --------------------------------------------------------------------------- damaged files
def _train_file(command: str, recipe: dict) -> Path:
    data = recipe["data"]
    return Path(data["train_files"] if command == "pretrain" else data["train_file"])


@st.composite
def damaged(draw, original: bytes):
    kind = draw(st.sampled_from(["truncated", "binary", "latin-1", "utf-16", "columns",
                                 "ragged", "empty", "header", "nul"]))
    lines = original.split(b"\n")
    if kind == "truncated":
        return kind, original[: draw(st.integers(0, max(len(original) - 1, 0)))]
    if kind == "binary":
        return kind, draw(st.binary(min_size=1, max_size=400))
    if kind == "latin-1":
        return kind, original.decode("utf-8").replace("e", "\u00e9").encode("latin-1")
    if kind == "utf-16":
        return kind, original.decode("utf-8").encode("utf-16")
    if kind == "columns":  # the first line's names (a CSV header, a JSON key, a first token)
        first = re.sub(rb"[A-Za-z_]+", lambda m: m.group(0)[::-1] + b"x", lines[0])
        return kind, b"\n".join([first, *lines[1:]])
    if kind == "ragged":
        at = draw(st.integers(0, max(len(lines) - 1, 0)))
        extra = draw(st.sampled_from([b"\tmore\tfields", b",more,fields", b"", b" } ] ,"]))
        lines[at] = lines[at][: len(lines[at]) // 2] + extra
        return kind, b"\n".join(lines)
    if kind == "empty":
        return kind, b""
    if kind == "header":
        return kind, lines[0] + b"\n"
    at = draw(st.integers(0, max(len(original) - 1, 0)))
    return kind, original[:at] + b"\x00" + original[at:]


@pytest.mark.parametrize("command", COMMANDS)
def test_damaged_files_run_or_fail_with_one_line(command, fuzz_root, monkeypatch):
    monkeypatch.chdir(fuzz_root)
    recipe = base_recipe(command, fuzz_root)
    original = _train_file(command, recipe).read_bytes()
    verb = "pretrain" if command == "pretrain" else "fit"

    @FUZZ
    @given(case=damaged(original))
    def check(case):
        kind, content = case
        fresh(fuzz_root)
        bad = fuzz_root / f"damaged-{command}{_train_file(command, recipe).suffix}"
        bad.write_bytes(content)
        broken = yaml.safe_load(yaml.safe_dump(recipe))
        broken["data"]["train_files" if command == "pretrain" else "train_file"] = str(bad)
        path = fuzz_root / f"damaged-{command}.yaml"
        path.write_text(yaml.safe_dump(broken))
        assert_damaged_file_named([verb, "--config", str(path)], fuzz_root,
                                  f"{command}: {kind} train file", bad, kind, content)

    check()


@pytest.mark.parametrize("command", COMMANDS)
def test_damaged_recipes_run_or_fail_with_one_line(command, fuzz_root, monkeypatch):
    """The working recipe's file damaged as the data files are. The quick Trainer settings
    follow on the command line, so that a cut recipe that still parses cannot start a long
    run (a recipe without its trainer section trains for Lightning's 1,000 epochs)."""
    monkeypatch.chdir(fuzz_root)
    recipe = base_recipe(command, fuzz_root)
    original = yaml.safe_dump(recipe).encode()
    verb = "pretrain" if command == "pretrain" else "fit"
    quick = [f"--trainer.{key}={json.dumps(value)}" for key, value in QUICK_TRAINER.items()]

    @FUZZ
    @given(case=damaged(original))
    def check(case):
        kind, content = case
        fresh(fuzz_root)
        path = fuzz_root / f"damaged-recipe-{command}.yaml"
        path.write_bytes(content)
        assert_damaged_file_named([verb, "--config", str(path), *quick], fuzz_root,
                                  f"{command}: {kind} recipe", path, kind, content)

    check()
