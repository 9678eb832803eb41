"""bertzoo uses Lightning through its public API, except in `bertzoo.training.lightning_compat`.

Each use there is checked against the installed Lightning: a release that renames or changes
one fails here, naming the attribute, rather than as a wrong metrics.csv or a resumed run that
logs one step off. The last test keeps every other module of bertzoo off Lightning's (and
jsonargparse's) private attributes.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import jsonargparse
import lightning
import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import Logger

from bertzoo.training import lightning_compat

RELEASE = f"Lightning {lightning.__version__}"
BERTZOO = Path(__file__).resolve().parents[1] / "bertzoo"


class RecordingLogger(Logger):
    """Every `log_metrics` call, as (step, names)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, set[str]]] = []

    name, version = "recording", 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, set(metrics)))


class LoggingModel(BoringModel):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("train/value", float(self.global_step), on_step=True, on_epoch=False)
        return out


class StopAfterFlushAt(L.Callback):
    """Calls `flush_step_metrics` in `on_train_batch_end` of step `step` (from 1), then stops
    the run with an exception, as SaveOnInterrupt does."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            lightning_compat.flush_step_metrics(trainer)
            raise InterruptedError


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False,
                     log_every_n_steps=1, **kwargs)


def test_the_private_names_exist_in_this_release():
    fit = trainer(logger=False, max_steps=1)
    connector = getattr(fit, lightning_compat.LOGGER_CONNECTOR, None)
    assert connector is not None, \
        f"{RELEASE}: Trainer.{lightning_compat.LOGGER_CONNECTOR} is gone: flush_step_metrics " \
        f"needs another way to hand a step's metrics to the loggers"
    for method in lightning_compat.LOGGER_CONNECTOR_METHODS:
        assert callable(getattr(connector, method, None)), \
            f"{RELEASE}: Trainer.{lightning_compat.LOGGER_CONNECTOR}.{method}() is gone"
    epoch_loop = fit.fit_loop.epoch_loop
    assert isinstance(getattr(epoch_loop, lightning_compat.LOGGING_STEP, None), int), \
        f"{RELEASE}: the training epoch loop has no {lightning_compat.LOGGING_STEP} (the " \
        f"logging step set_logging_step writes into checkpoints)"


def test_flush_step_metrics_hands_the_current_step_to_the_loggers():
    """Without the flush, a run stopped in on_train_batch_end never logs that step (checked
    too: the step is missing when the flush is skipped)."""
    def logged_steps(flush: bool) -> list[int]:
        logger = RecordingLogger()
        callback = StopAfterFlushAt(3)
        if not flush:
            callback.on_train_batch_end = lambda trainer, *args: (
                (_ for _ in ()).throw(InterruptedError) if trainer.global_step == 3 else None)
        with pytest.raises(InterruptedError):
            trainer(logger=logger, max_steps=10, callbacks=[callback]).fit(LoggingModel())
        return [step for step, names in logger.calls if "train/value" in names]

    assert logged_steps(flush=True) == [0, 1, 2], \
        f"{RELEASE}: flush_step_metrics ({lightning_compat.LOGGER_CONNECTOR}."\
        f"{'/'.join(lightning_compat.LOGGER_CONNECTOR_METHODS)}) no longer logs the step"
    assert logged_steps(flush=False) == [0, 1]


class StopAtStep(L.Callback):
    """Stops training after `step` steps through `trainer.should_stop`, as a preempted job or
    bertzoo's tests do: Lightning then validates, and the run's last checkpoint is written at
    the end of that validation."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


class SaveAtValidationEnd(L.Callback):
    def __init__(self, path: Path, fix: bool):
        self.path, self.fix = path, fix

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            trainer.save_checkpoint(self.path)
            if self.fix:
                checkpoint = torch.load(self.path, weights_only=False)
                lightning_compat.set_logging_step(checkpoint, trainer.global_step)
                torch.save(checkpoint, self.path)


def test_set_logging_step_continues_the_logging_step_of_a_run_resumed_from_a_validation(
        tmp_path):
    """A run stopped after 2 steps (its checkpoint written at the end of the validation that
    follows) and resumed logs its third step at step 2 only with set_logging_step; without
    it, one step low (the mistake the compat function corrects)."""
    def resumed_steps(fix: bool) -> list[int]:
        path = tmp_path / f"at-validation-{fix}.ckpt"
        options = dict(max_steps=6, val_check_interval=3, check_val_every_n_epoch=None,
                       limit_val_batches=1, num_sanity_val_steps=0)
        trainer(logger=False, callbacks=[StopAtStep(2), SaveAtValidationEnd(path, fix)],
                **options).fit(LoggingModel())
        checkpoint = torch.load(path, weights_only=False)
        assert checkpoint["global_step"] == 2
        state = checkpoint["loops"]["fit_loop"].get(lightning_compat.EPOCH_LOOP_STATE)
        assert state is not None and lightning_compat.LOGGING_STEP in state, \
            f"{RELEASE}: checkpoint['loops']['fit_loop'][{lightning_compat.EPOCH_LOOP_STATE!r}]" \
            f"[{lightning_compat.LOGGING_STEP!r}] is gone"
        logger = RecordingLogger()
        trainer(logger=logger, **options).fit(LoggingModel(), ckpt_path=path)
        return [step for step, names in logger.calls if "train/value" in names]

    assert resumed_steps(fix=True) == [2, 3, 4, 5], \
        f"{RELEASE}: set_logging_step ({lightning_compat.LOGGING_STEP}) no longer sets the step " \
        f"a resumed run logs from"
    # If this starts failing, Lightning counts the step right itself: drop set_logging_step.
    assert resumed_steps(fix=False) == [1, 2, 3, 4], \
        f"{RELEASE} now restores the logging step of a checkpoint saved at validation end " \
        f"itself: drop lightning_compat.set_logging_step"


class SaveAndStopAtBatchEnd(L.Callback):
    """Saves a checkpoint in `on_train_batch_end` of step `step` (from 1), then stops the run
    with an exception, as SaveOnInterrupt does."""

    def __init__(self, path: Path, step: int):
        self.path, self.step = path, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            raise InterruptedError


def test_a_run_interrupted_at_batch_end_resumes_its_logging_step_unaided(tmp_path):
    """Stopped in on_train_batch_end of step 3 and resumed: Lightning itself logs the fourth
    step at step 3, so SaveOnInterrupt needs no set_logging_step (Lightning 2.4 logged it
    at step 2)."""
    path = tmp_path / "at-batch-end.ckpt"
    with pytest.raises(InterruptedError):
        trainer(logger=False, max_steps=6, callbacks=[SaveAndStopAtBatchEnd(path, 3)]
                ).fit(LoggingModel())
    logger = RecordingLogger()
    trainer(logger=logger, max_steps=6).fit(LoggingModel(), ckpt_path=path)
    assert [step for step, names in logger.calls if "train/value" in names] == [3, 4, 5], \
        f"{RELEASE} no longer counts the step of a checkpoint saved in on_train_batch_end " \
        f"on restart: SaveOnInterrupt must store it (lightning_compat.set_logging_step)"


# ------------------------------------------------------------------ no private use elsewhere
def _base_name(node: ast.expr) -> str | None:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and len(name) > 1


def _defined_privates(packages) -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    """For each class of the packages: the private attributes and methods it defines
    (`self._x = ...`, `def _x`), and its bases, by class name."""
    defined: dict[str, set[str]] = {}
    bases: dict[str, list[str]] = {}
    for package in packages:
        source = Path(package.__file__)
        for path in source.parent.rglob("*.py") if source.name == "__init__.py" else [source]:
            try:
                tree = ast.parse(path.read_text(errors="ignore"))
            except SyntaxError:
                continue
            aliases = {a.asname: a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                       for a in n.names if a.asname}  # `import _ExperimentWriter as ...`
            for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
                names = defined.setdefault(cls.name, set())
                bases.setdefault(cls.name, []).extend(
                    aliases.get(b, b) for b in map(_base_name, cls.bases) if b)
                for node in ast.walk(cls):
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                            and _private(node.name) and node in cls.body:
                        names.add(node.name)
                    elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                            and isinstance(node.value, ast.Name) and node.value.id == "self" \
                            and _private(node.attr):
                        names.add(node.attr)
    return defined, bases


def _inherited(name: str, defined, bases, seen=None) -> set[str]:
    seen = set() if seen is None else seen
    if name in seen or name not in defined:
        return set()
    seen.add(name)
    names = set(defined[name])
    for base in bases.get(name, ()):
        names |= _inherited(base, defined, bases, seen)
    return names


def _names_used_as_keys(tree: ast.Module) -> list[ast.Constant]:
    """String constants used as a key (`d["_x"]`, `{"_x": ...}`) or an attribute name
    (`getattr(obj, "_x")`)."""
    keys: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript):
            keys.append(node.slice)
        elif isinstance(node, ast.Dict):
            keys.extend(k for k in node.keys if k is not None)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
                "getattr", "setattr", "hasattr", "delattr") and len(node.args) > 1:
            keys.append(node.args[1])
    return [k for k in keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]


@functools.lru_cache(maxsize=1)
def _lightning_privates():
    import argparse
    return _defined_privates([lightning, jsonargparse, argparse])


def private_uses(root: Path, allowed: set[str]) -> list[str]:
    """`x._name` where `_name` is a private attribute of a Lightning, jsonargparse or argparse
    class: on another object anywhere, and on `self` in a subclass of the class defining it
    (overriding a private method counts too); and the name as a string (a checkpoint key)."""
    defined, bases = _lightning_privates()
    everything = set().union(*defined.values())
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name in allowed:
            continue
        tree = ast.parse(path.read_text())
        own_bases = {c.name: [b for b in map(_base_name, c.bases) if b]
                     for c in ast.walk(tree) if isinstance(c, ast.ClassDef)}

        def inherited(cls_name: str) -> set[str]:
            names: set[str] = set()
            for base in own_bases.get(cls_name, ()):
                names |= inherited(base) if base in own_bases else \
                    _inherited(base, defined, bases)
            return names

        def where(node) -> str:
            return f"{path.relative_to(root.parent)}:{node.lineno}"

        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            theirs = inherited(cls.name)
            for node in ast.walk(cls):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                        and node.value.id in ("self", "cls") and node.attr in theirs:
                    found.append(f"{where(node)} self.{node.attr}")
                elif isinstance(node, ast.FunctionDef) and node in cls.body \
                        and node.name in theirs:
                    found.append(f"{where(node)} def {node.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in everything and not (
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{where(node)} .{node.attr}")
        for key in _names_used_as_keys(tree):
            if key.value in everything:
                found.append(f"{where(key)} {key.value!r}")
    return sorted(set(found))


def test_no_private_lightning_attribute_outside_the_compat_module():
    found = private_uses(BERTZOO, allowed={"lightning_compat.py"})
    assert not found, ("private Lightning/jsonargparse attributes used outside "
                       "bertzoo/training/lightning_compat.py:\n  " + "\n  ".join(found))


def test_the_private_attribute_check_finds_one(tmp_path):
    """The check above can fail: a module that reaches into the fit loop is reported."""
    (tmp_path / "bertzoo").mkdir()
    (tmp_path / "bertzoo" / "resume.py").write_text(
        "def position(trainer):\n    return trainer.fit_loop._combined_loader\n")
    (tmp_path / "bertzoo" / "checkpoints.py").write_text(
        "from lightning.pytorch.callbacks import ModelCheckpoint\n"
        "class Last(ModelCheckpoint):\n"
        "    def on_train_end(self, trainer, pl_module):\n"
        "        self._save_last_checkpoint(trainer, {})\n")
    assert private_uses(tmp_path / "bertzoo", allowed=set()) == [
        "bertzoo/checkpoints.py:4 self._save_last_checkpoint",
        "bertzoo/resume.py:2 ._combined_loader"]
