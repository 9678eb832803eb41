"""Exact resume, interrupts and atomic checkpoints, through `bertzoo` as a user runs it.

A run interrupted mid-epoch (Ctrl-C, delivered as a real SIGINT) and resumed with
`--ckpt_path last` ends with the same weights, bit for bit, as a run that never stopped: the
data order (the batch sampler's position, saved by the stateful data loader), the masking
(seeded per (seed, epoch, row)), dropout (re-seeded per (seed, step, rank)), the optimizer, the
learning-rate schedule and the step counters all come back from the checkpoint. On CPU nothing
else varies between two runs, so equality is exact (`torch.equal`), not within a tolerance.
"""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    docs = synthetic_documents(120, seed=3, min_sentences=3, max_sentences=10)
    path.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    return path


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
