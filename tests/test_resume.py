"""Exact resume, interrupts and atomic checkpoints, through `bertzoo` as a user runs it.

A run interrupted mid-epoch (Ctrl-C, delivered as a real SIGINT) and resumed with
`--ckpt_path last` ends with the same weights, bit for bit, as a run that never stopped: the
data order (the batch sampler's position, saved by the stateful data loader), the masking
(seeded per (seed, epoch, row)), dropout (re-seeded per (seed, step, rank)), the optimizer, the
learning-rate schedule and the step counters all come back from the checkpoint. On CPU nothing
else varies between two runs, so equality is exact (`torch.equal`), not within a tolerance.
"""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from bertzoo.cli import main
from bertzoo.testing import documents as synthetic_documents
from bertzoo.testing import write_bert_corpus

TINY_MODEL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 64}
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


class CtrlCAtStep(L.Callback):
    """Sends this process a real SIGINT while step `step` (counting from 1) is running, as a
    user pressing Ctrl-C would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def callback(cls, **init_args) -> str:
    return "--trainer.callbacks+=" + json.dumps(
        {"class_path": f"{__name__}.{cls.__name__}", "init_args": init_args})


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


def assert_same_optimizer_state(a: dict, b: dict) -> None:
    for state_a, state_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        assert state_a["state"].keys() == state_b["state"].keys()
        for index, tensors in state_a["state"].items():
            assert_bitwise_equal(tensors, state_b["state"][index])
    assert a["lr_schedulers"] == b["lr_schedulers"]


def train_losses(metrics_csv: Path) -> list[tuple[int, str]]:
    rows = csv.DictReader(metrics_csv.open())
    return [(int(r["step"]), r["train/loss_step"]) for r in rows if r.get("train/loss_step")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    docs = synthetic_documents(120, seed=3, min_sentences=3, max_sentences=10)
    return write_bert_corpus(path, docs)


def test_pretraining_interrupted_mid_epoch_resumes_bitwise(tmp_path, corpus, monkeypatch,
                                                           capsys):
    """7 steps straight vs. Ctrl-C during step 3 then `--ckpt_path last`: equal weights,
    optimizer moments and schedule; dropout and masking are on (the default 0.1 and 15%)."""
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "seed_everything": 7,
        # 7 steps, validation every 4: the last step is not followed by a validation, so the
        # final last.ckpt must come from the end of training itself.
        "trainer": {"max_steps": 7, "val_check_interval": 4, "check_val_every_n_epoch": None,
                    "num_sanity_val_steps": 0, "log_every_n_steps": 1, **QUIET},
        "model": {"config": TINY_MODEL, "learning_rate": 3e-3, "warmup": 2},
        "data": {"train_files": str(corpus), "tokenizer_vocab_size": 200,
                 "max_seq_length": 48, "batch_size": 8, "validation_documents": 16}}))
    runs = tmp_path / "runs/pretrain"
    assert main(["pretrain", "--config", str(recipe)]) == 0
    straight = load(runs / "version_0/checkpoints/last.ckpt")
    assert straight["global_step"] == 7

    assert main(["pretrain", "--config", str(recipe), callback(CtrlCAtStep, step=3)]) == 130
    err = capsys.readouterr().err
    saved = runs / "version_1/checkpoints/last.ckpt"
    assert f"stopped: Ctrl-C at step 3 (epoch 0); saved {saved.relative_to(tmp_path)}" in err
    assert "--ckpt_path last" in err
    interrupted = load(saved)
    assert interrupted["global_step"] == 3
    # The epoch holds more batches than that: the stop was mid-epoch.
    [loader_state] = interrupted["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state["_index_sampler_state"]["epoch"] == 0
    assert loader_state["_index_sampler_state"]["position"] == 3
    assert not loader_state["_iterator_finished"]
    assert not list(runs.glob("version_1/checkpoints/.*.tmp"))

    assert main(["pretrain", "--config", str(recipe), "--ckpt_path", "last"]) == 0
    resumed = load(saved)
    assert resumed["global_step"] == 7
    assert_bitwise_equal(straight["state_dict"], resumed["state_dict"])
    assert_same_optimizer_state(straight, resumed)
    # The resumed run continued the interrupted run's metrics.csv: every step's training loss
    # is there once, equal to the uninterrupted run's.
    losses = [train_losses(runs / f"version_{v}/metrics.csv") for v in (0, 1)]
    assert losses[0] == losses[1] and [step for step, _ in losses[0]] == list(range(7))
    # Proof that the comparison can fail: training moved the weights.
    assert not torch.equal(interrupted["state_dict"]["model.encoder.embeddings.word.weight"],
                           resumed["state_dict"]["model.encoder.embeddings.word.weight"])


def test_classification_interrupted_mid_epoch_resumes_bitwise(tiny_backbone_dir, tmp_path,
                                                              monkeypatch, capsys):
    """A task resumes exactly too: the data loader's position and per-step dropout seeds are
    shared by every task through TaskDataModule and BertModule."""
    from bertzoo.tasks.classification import example_data
    data = example_data(tmp_path)  # 24 training rows: 6 batches of 4 per epoch
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--task", "classification", f"--model.backbone={tiny_backbone_dir}",
            f"--data.train_file={data['train_file']}",
            f"--data.validation_file={data['validation_file']}", "--data.batch_size=4",
            "--seed_everything=3", "--model.learning_rate=1e-3", "--trainer.max_epochs=2",
            "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false"]
    runs = tmp_path / "runs/classification"
    assert main(args) == 0
    straight = load(runs / "version_0/checkpoints/last.ckpt")
    assert straight["global_step"] == 12

    assert main([*args, callback(CtrlCAtStep, step=9)]) == 130  # epoch 1, its third batch
    assert "stopped: Ctrl-C at step 9 (epoch 1)" in capsys.readouterr().err
    assert load(runs / "version_1/checkpoints/last.ckpt")["global_step"] == 9

    assert main([*args, "--ckpt_path", "last"]) == 0
    resumed = load(runs / "version_1/checkpoints/last.ckpt")
    assert resumed["global_step"] == 12
    assert_bitwise_equal(straight["state_dict"], resumed["state_dict"])
    assert_same_optimizer_state(straight, resumed)


# ------------------------------------------------------------------------ interrupts, NaN, atomic
class SignalAtStep(L.Callback):
    """Sends this process `signal_name` `times` times while step `step` (from 1) runs."""

    def __init__(self, step: int, signal_name: str = "SIGINT", times: int = 1):
        self.step, self.signal_name, self.times = step, signal_name, times

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step + 1 == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), getattr(signal, self.signal_name))


class PoisonAt(L.Callback):
    """Fills the classifier's weights with NaN before training step `step` (from 1), or before
    the validation that follows it with `validation=True`."""

    def __init__(self, step: int, validation: bool = False):
        self.step, self.validation = step, validation

    def _poison(self, trainer, pl_module):
        with torch.no_grad():
            pl_module.classifier.weight.fill_(float("nan"))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.validation and trainer.global_step + 1 == self.step:
            self._poison(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module):
        if self.validation and trainer.global_step == self.step:
            self._poison(trainer, pl_module)


@pytest.fixture
def classification_args(tiny_backbone_dir, tmp_path, monkeypatch) -> list[str]:
    from bertzoo.tasks.classification import example_data
    data = example_data(tmp_path)  # 24 training rows: 6 batches of 4 per epoch
    monkeypatch.chdir(tmp_path)
    return ["fit", "--task", "classification", f"--model.backbone={tiny_backbone_dir}",
            f"--data.train_file={data['train_file']}",
            f"--data.validation_file={data['validation_file']}", "--data.batch_size=4",
            "--trainer.max_epochs=2", "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def test_sigterm_saves_like_ctrl_c_and_a_second_ctrl_c_stops_without_saving(
        classification_args, tmp_path, capsys):
    checkpoints = tmp_path / "runs/classification/version_0/checkpoints"
    assert main([*classification_args, callback(SignalAtStep, step=2,
                                                  signal_name="SIGTERM")]) == 130
    assert "stopped: SIGTERM at step 2 (epoch 0)" in capsys.readouterr().err
    assert load(checkpoints / "last.ckpt")["global_step"] == 2

    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's own KeyboardInterrupt exit
            main([*classification_args, callback(SignalAtStep, step=2, times=2)])
    finally:
        signal.signal(signal.SIGINT, previous)  # Lightning ignores SIGINT while shutting down
    assert not (tmp_path / "runs/classification/version_1/checkpoints/last.ckpt").exists()


@pytest.mark.parametrize("validation", [False, True], ids=["train-loss", "val-loss"])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(classification_args,
                                                                  validation, tmp_path, capsys):
    """NaN weights from step 8 (epoch 1) on: the run stops with the step and metric named;
    last.ckpt is still the end of epoch 0 (step 6), finite, and resumable."""
    assert main([*classification_args, callback(PoisonAt, step=8, validation=validation),
                 "--trainer.val_check_interval=2" if validation else "--trainer.max_epochs=2"]
                ) == 1
    err = capsys.readouterr().err
    last = tmp_path / "runs/classification/version_0/checkpoints/last.ckpt"
    where = ("val/loss is nan in the validation after step 8" if validation
             else "train/loss is nan at step 8 (epoch 1, batch 1 of the epoch)")
    assert f"bertzoo fit: error: {where}; stopped without saving this state (the last good " \
           f"checkpoint is {last.relative_to(tmp_path)})" in err
    kept = load(last)
    assert kept["global_step"] == 6
    assert all(bool(torch.isfinite(t).all()) for t in kept["state_dict"].values())
    assert not list(last.parent.glob("*8*.ckpt"))


def test_a_crash_while_saving_leaves_the_previous_checkpoint_whole(classification_args,
                                                                   tmp_path, monkeypatch):
    """torch.save writes half a file and fails (a full disk, a killed job) while the second
    last.ckpt is written: the first last.ckpt is untouched and resumable; no temporary file
    is left beside it."""
    real_save = torch.save
    calls = {"last": 0}

    def failing_save(obj, f, *args, **kwargs):
        if "last.ckpt" in str(f):
            calls["last"] += 1
            if calls["last"] == 2:
                Path(f).write_bytes(b"PK\x03\x04" + b"\0" * 100)  # a torn zip archive
                raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left on device"):
        main(classification_args)
    monkeypatch.setattr(torch, "save", real_save)
    checkpoints = tmp_path / "runs/classification/version_0/checkpoints"
    assert calls["last"] == 2
    names = sorted(p.name for p in checkpoints.iterdir())  # hidden temporary files too
    assert len(names) == 2 and names[0].startswith("best-") and names[1] == "last.ckpt", names
    assert load(checkpoints / "last.ckpt")["global_step"] == 6
    assert main([*classification_args, "--ckpt_path", "last"]) == 0  # and it resumes
    assert load(checkpoints / "last.ckpt")["global_step"] == 12


class Payload:
    """Any object a pickle would construct (and could run code while doing so); harmless here."""


def test_checkpoint_io_reads_with_weights_only_and_names_a_bad_file(tmp_path):
    from bertzoo.checkpoint import CheckpointError
    from bertzoo.training import AtomicCheckpointIO
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"a": (1, 2)}},
                       tmp_path / "good.ckpt")
    assert torch.equal(io.load_checkpoint(tmp_path / "good.ckpt")["state_dict"]["w"],
                       torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["good.ckpt"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "good.ckpt").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600

    torch.save({"state_dict": {}, "payload": Payload()}, tmp_path / "objects.ckpt")
    with pytest.raises(CheckpointError, match=r"objects.ckpt is not a readable checkpoint "
                                              r"\(UnpicklingError: Weights only load failed: "
                                              r"it would construct test_resume.Payload"):
        io.load_checkpoint(tmp_path / "objects.ckpt")
    (tmp_path / "torn.ckpt").write_bytes((tmp_path / "good.ckpt").read_bytes()[:300])
    with pytest.raises(CheckpointError, match="torn.ckpt is not a readable checkpoint"):
        io.load_checkpoint(tmp_path / "torn.ckpt")
