"""BERT's two pretraining phases as a chain, on a tiny configuration: phase 1 at T=32
(recipes/pretrain/bert-base-phase1.yaml), then phase 2 at T=64 from phase 1's `last.ckpt`
through `model.backbone` (recipes/pretrain/bert-base-phase2.yaml), each recipe run as written
with only its size and length scaled down."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from bertzoo.cli import main
from bertzoo.testing import documents as synthetic_documents
from bertzoo.testing import write_bert_corpus
from bertzoo.training import warmup_then_linear_decay

ROOT = Path(__file__).resolve().parents[1]
PHASE1 = ROOT / "recipes/pretrain/bert-base-phase1.yaml"
PHASE2 = ROOT / "recipes/pretrain/bert-base-phase2.yaml"
TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64}
PHASE1_STEPS, PHASE2_STEPS, PHASE2_WARMUP = 6, 10, 2


class WeightsAtStart(L.Callback):
    """Writes the model's weights as training starts (after any backbone was loaded)."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module):
        torch.save({k: v.detach().clone() for k, v in pl_module.state_dict().items()}, self.path)


def common(corpus: Path, start: Path) -> list[str]:
    callback = {"class_path": f"{__name__}.WeightsAtStart", "init_args": {"path": str(start)}}
    return [f"--data.train_files={corpus}", "--data.num_workers=0", "--data.num_proc=null",
            "--data.validation_documents=8", "--trainer.devices=1", "--trainer.accelerator=cpu",
            "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", "--trainer.num_sanity_val_steps=0",
            "--trainer.accumulate_grad_batches=1", "--global_batch_size=null",
            "--trainer.callbacks+=" + json.dumps(callback)]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_phase_two_continues_phase_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = write_bert_corpus(tmp_path / "corpus.txt",
                               synthetic_documents(80, seed=5, min_sentences=4, max_sentences=12))
    runs = tmp_path / "runs/pretrain"
    assert main(["pretrain", "--config", str(PHASE1), *common(corpus, tmp_path / "start1.pt"),
                 "--model.config=" + json.dumps(TINY), "--data.tokenizer_vocab_size=300",
                 "--data.max_seq_length=32", "--data.max_predictions_per_seq=5",
                 "--data.batch_size=8", f"--trainer.max_steps={PHASE1_STEPS}",
                 f"--trainer.val_check_interval={PHASE1_STEPS}", "--model.warmup=2"]) == 0
    phase1 = load(runs / "version_0/checkpoints/last.ckpt")
    assert phase1["global_step"] == PHASE1_STEPS

    header = "\n".join(line for line in PHASE2.read_text().splitlines() if line.startswith("#"))
    recipe = yaml.safe_load(PHASE2.read_text())
    # What the header says, and the recipe does: 100,000 steps at 512 tokens, a short warm-up
    # to 1e-5, then linear decay to zero (which the tiny run below follows, scaled down).
    assert "100,000" in header and "512-token" in header and "1e-5" in header
    assert recipe["trainer"]["max_steps"] == 100000 and recipe["data"]["max_seq_length"] == 512
    assert recipe["model"]["learning_rate"] == 1e-5
    assert recipe["model"]["warmup"] / recipe["trainer"]["max_steps"] <= 0.01
    assert re.search(r"warms up briefly to that rate and decays to zero", header.replace("#", "")
                     .replace("\n", " ").replace("  ", " "))
    last1 = runs / "version_0/checkpoints/last.ckpt"
    assert main(["pretrain", "--config", str(PHASE2), *common(corpus, tmp_path / "start2.pt"),
                 f"--model.backbone={last1}", "--data.max_seq_length=64",
                 "--data.max_predictions_per_seq=10", "--data.batch_size=4",
                 f"--trainer.max_steps={PHASE2_STEPS}", f"--model.warmup={PHASE2_WARMUP}",
                 f"--trainer.val_check_interval={PHASE2_STEPS}"]) == 0
    phase2 = load(runs / "version_1/checkpoints/last.ckpt")
    assert phase2["global_step"] == PHASE2_STEPS
    start1, start2 = load(tmp_path / "start1.pt"), load(tmp_path / "start2.pt")

    # Phase 2 starts from everything phase 1 ended with: encoder, MLM and NSP heads (not
    # re-initialised), and the same tokenizer.
    heads = [k for k in phase1["state_dict"] if k.startswith(("model.mlm_head.",
                                                               "model.nsp_head."))]
    assert heads and start2.keys() == phase1["state_dict"].keys()
    for key, value in phase1["state_dict"].items():
        assert torch.equal(start2[key], value), f"{key} did not come from phase 1"
    assert phase2["bertzoo"]["tokenizer"] == phase1["bertzoo"]["tokenizer"]

    # Positions 32-63: unused in phase 1 (no gradient: only weight decay touched them), learned
    # in phase 2.
    key = "model.encoder.embeddings.position.weight"
    moved1 = (phase1["state_dict"][key] - start1[key]).abs()
    moved2 = (phase2["state_dict"][key] - start2[key]).abs()
    assert moved1[:32].max() > 1e-5  # positions phase 1 used did move
    # Decay alone: lr x weight decay x |w| x steps = 1e-4 x 0.01 x ~0.05 x 6, ~3e-7 at most.
    assert moved1[32:].max() < 1e-6
    assert moved2[32:].mean(dim=1).min() > 10 * moved1[32:].max()  # every such row learned

    # The logged steps and learning rate: warm-up to 1e-5 then linear decay to zero.
    rows = list(csv.DictReader((runs / "version_1/metrics.csv").open()))
    lr_column = next(c for c in rows[0] if c.startswith("lr"))
    logged = [(int(r["step"]), float(r[lr_column])) for r in rows if r.get(lr_column)]
    multiplier = warmup_then_linear_decay(PHASE2_WARMUP, PHASE2_STEPS)
    assert [step for step, _ in logged] == list(range(PHASE2_STEPS))
    for step, lr in logged:
        assert lr == pytest.approx(1e-5 * multiplier(step), rel=1e-6), step
    assert max(lr for _, lr in logged) == pytest.approx(1e-5 * multiplier(PHASE2_WARMUP))
