"""PretrainingModule and `bertzoo pretrain`: metrics against their references, the CLI end to end
on a generated corpus (checkpoint -> BertEncoder.from_pretrained, `bertzoo export` ->
transformers.BertForPreTraining), exact resume with `--ckpt_path last`, continued pretraining from
a Hugging Face folder without heads, errors before training, and every pretraining recipe."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from bertzoo import BertEncoder
from bertzoo.cli import main
from bertzoo.testing import documents as synthetic_documents
from bertzoo.testing import write_bert_corpus

RECIPES = sorted((Path(__file__).parents[1] / "recipes" / "pretrain").glob("*.yaml"))
TINY_MODEL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 64}


class StopAtStep(L.Callback):
    """Stops training after `step` optimizer steps, as a preempted job would (Lightning then
    validates and saves last.ckpt)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    docs = synthetic_documents(160, seed=3, min_sentences=3, max_sentences=10)
    return write_bert_corpus(path, docs)


def recipe(tmp_path: Path, corpus: Path, name: str = "recipe", **sections) -> Path:
    """A small pretraining recipe: the generated corpus, a width-32 BERT, 6 steps."""
    config = {
        "seed_everything": 7,
        "trainer": {"max_steps": 6, "val_check_interval": 3, "check_val_every_n_epoch": None,
                    "num_sanity_val_steps": 0, "log_every_n_steps": 1,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "model": {"config": TINY_MODEL, "learning_rate": 3e-3, "warmup": 2},
        "data": {"train_files": str(corpus), "tokenizer_vocab_size": 200, "max_seq_length": 48,
                 "batch_size": 8, "validation_documents": 16},
    }
    for section, values in sections.items():
        config[section].update(values)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def last_row_with(metrics_csv: Path, key: str) -> dict[str, str]:
    rows = [r for r in csv.DictReader(metrics_csv.open()) if r.get(key)]
    return rows[-1]


def test_pretrain_resume_checkpoint_and_export(tmp_path, corpus, monkeypatch):
    from safetensors.torch import load_file

    from bertzoo.pretraining import PretrainingModule
    monkeypatch.chdir(tmp_path)
    config = recipe(tmp_path, corpus)
    assert main(["pretrain", "--config", str(config)]) == 0
    straight = tmp_path / "runs/pretrain/version_0"

    # The same run, stopped after 2 steps (mid-epoch) and resumed from last.ckpt.
    stop = json.dumps({"class_path": f"{__name__}.StopAtStep", "init_args": {"step": 2}})
    assert main(["pretrain", "--config", str(config), f"--trainer.callbacks+={stop}"]) == 0
    interrupted = tmp_path / "runs/pretrain/version_1"
    assert torch.load(interrupted / "checkpoints/last.ckpt", weights_only=True,
                      map_location="cpu")["global_step"] == 2
    assert main(["pretrain", "--config", str(config), "--ckpt_path", "last"]) == 0

    final = {}
    for name, run in (("straight", straight), ("resumed", interrupted)):
        ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=True, map_location="cpu")
        final[name] = (ckpt, last_row_with(run / "metrics.csv", "val/mlm_loss"))
    (a, a_metrics), (b, b_metrics) = final["straight"], final["resumed"]
    assert a["global_step"] == b["global_step"] == 6
    assert a_metrics["step"] == b_metrics["step"]
    for key in ("val/mlm_loss", "val/mlm_accuracy", "val/nsp_loss", "val/nsp_accuracy"):
        assert float(a_metrics[key]) == pytest.approx(float(b_metrics[key]), abs=1e-6), key
    for key, value in a["state_dict"].items():  # bitwise: nothing varies between runs on CPU
        assert torch.equal(b["state_dict"][key], value), key
    # Training moved the weights and the validation loss.
    first_val = [r for r in csv.DictReader((straight / "metrics.csv").open()) if r["val/mlm_loss"]]
    assert float(first_val[-1]["val/mlm_loss"]) < float(first_val[0]["val/mlm_loss"])

    # `bertzoo plot` draws the resumed run's whole history.
    assert main(["plot", str(interrupted), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from bertzoo.plot import read_series
    val_steps = [step for step, _ in read_series(interrupted / "metrics.csv")["mlm_loss"]["val"]]
    assert val_steps == [1, 2, 5]  # validations after steps 2 (stop), 3 and 6, 0-based
    assert main(["plot", str(tmp_path / "nowhere")]) == 1

    # The checkpoint is a backbone, and exports to a folder transformers reads.
    ckpt_path = straight / "checkpoints/last.ckpt"
    module = PretrainingModule(config=a["bertzoo"]["config"]).eval()
    module.load_state_dict(a["state_dict"])
    encoder = BertEncoder.from_pretrained(ckpt_path)
    ids = torch.randint(5, a["bertzoo"]["config"]["vocab_size"], (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0
    types = torch.zeros_like(ids)
    types[:, 10:] = 1
    with torch.no_grad():
        ours = module.model(ids, mask, types)
        torch.testing.assert_close(encoder(ids, mask, types).last_hidden_state,
                                   module.encoder(ids, mask, types).last_hidden_state)
    export_dir = tmp_path / "export"
    assert main(["export", str(ckpt_path), str(export_dir)]) == 0
    assert (export_dir / "tokenizer.json").is_file() and (export_dir / "vocab.txt").is_file()
    assert any(k.startswith("cls.predictions") for k in load_file(export_dir / "model.safetensors"))
    import transformers
    reference = transformers.BertForPreTraining.from_pretrained(export_dir).eval()
    with torch.no_grad():
        theirs = reference(input_ids=ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    torch.testing.assert_close(ours.mlm_logits[real], theirs.prediction_logits[real],
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.nsp_logits, theirs.seq_relationship_logits,
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(BertEncoder.from_pretrained(export_dir)(ids, mask, types)
                               .last_hidden_state, encoder(ids, mask, types).last_hidden_state)


def test_metrics_match_their_references():
    from torchmetrics.text import Perplexity as ReferencePerplexity

    from bertzoo.pretraining.module import MajorityAccuracy, Perplexity
    torch.manual_seed(0)
    ours, reference = Perplexity(), ReferencePerplexity()
    for size in (7, 30, 3):
        logits, targets = torch.randn(size, 50), torch.randint(0, 50, (size,))
        loss = torch.nn.functional.cross_entropy(logits, targets)
        ours.update(loss, weight=size)
        reference.update(logits[None], targets[None])
    torch.testing.assert_close(ours.compute(), reference.compute(), rtol=1e-5, atol=0)
    majority = MajorityAccuracy(10)
    majority.update(torch.tensor([1, 1, 2, 3]))
    majority.update(torch.tensor([3, 3, 3]))
    assert majority.compute().item() == pytest.approx(4 / 7)


def test_training_step_logs_every_metric(tmp_path):
    """A short fit on a generated corpus: every metric is logged in both stages, and the
    majority baseline is what counting the validation labels gives."""
    from bertzoo.pretraining import PretrainingDataModule, PretrainingModule
    corpus = tmp_path / "c.txt"
    docs = synthetic_documents(60, seed=8)
    write_bert_corpus(corpus, docs)
    dm = PretrainingDataModule(train_files=str(corpus), tokenizer_vocab_size=150,
                               max_seq_length=32, batch_size=8, validation_documents=8)
    module = PretrainingModule(config=TINY_MODEL, vocab_size=dm.vocab_size, max_seq_length=32,
                               learning_rate=1e-3, warmup=1)
    trainer = L.Trainer(max_steps=3, val_check_interval=3, check_val_every_n_epoch=None,
                        log_every_n_steps=1,
                        logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, use_distributed_sampler=False)
    trainer.fit(module, dm)
    logged = trainer.callback_metrics
    for stage in ("train", "val"):
        for name in ("mlm_loss", "mlm_accuracy", "perplexity", "nsp_loss", "nsp_accuracy",
                     "mlm_majority_accuracy"):
            key = f"{stage}/{name}" + ("_epoch" if stage == "train" else "")
            assert key in logged or f"{stage}/{name}" in logged, key
    counts = torch.zeros(dm.vocab_size, dtype=torch.long)
    for batch in dm.val_dataloader():
        labels = batch["mlm_labels"][batch["mlm_labels"] != -100]
        counts += torch.bincount(labels, minlength=dm.vocab_size)
    assert logged["val/mlm_majority_accuracy"].item() == pytest.approx(
        (counts.max() / counts.sum()).item())
    assert logged["val/perplexity"].item() == pytest.approx(
        torch.exp(logged["val/mlm_loss"]).item(), rel=1e-5)
    assert logged["val/loss"].item() == pytest.approx(
        (logged["val/mlm_loss"] + logged["val/nsp_loss"]).item(), rel=1e-6)


def test_bad_inputs_fail_before_training(tmp_path, corpus, monkeypatch, capsys):
    """Each bad input is one line on stderr naming what is wrong, exit status 1, no run."""
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    single = tmp_path / "single.txt"
    single.write_text("One document.\nOf two sentences.\n")
    cases = {
        "max_seq_length (128) exceeds the model's max_position_embeddings (64)":
            recipe(tmp_path, corpus, "long", data={"max_seq_length": 128}),  # 64 positions
        "the tokenizer has 200 tokens but model.config has vocab_size 999":
            recipe(tmp_path, corpus, "vocab", model={"config": {**TINY_MODEL, "vocab_size": 999}}),
        "empty.txt has no documents":
            recipe(tmp_path, empty, "empty", data={"validation_documents": 0}),
        "single.txt has a single document; next sentence prediction needs at least two":
            recipe(tmp_path, single, "single", data={"validation_documents": 0}),
        "no such file":
            recipe(tmp_path, tmp_path / "missing.txt", "missing"),
    }
    for message, config in cases.items():
        assert main(["pretrain", "--config", str(config)]) == 1, message
        assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("runs/pretrain/*/checkpoints/*.ckpt"))
    assert not list(tmp_path.glob("runs/pretrain/*/metrics.csv"))


def test_continued_pretraining_from_a_folder_without_heads(tmp_path, corpus, tiny_backbone_dir,
                                                           monkeypatch):
    from bertzoo.pretraining import PretrainingModule
    from bertzoo.tokenizer import load_tokenizer
    module = PretrainingModule(backbone=str(tiny_backbone_dir))
    backbone = BertEncoder.from_pretrained(tiny_backbone_dir)
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(module.encoder.state_dict()[key], value)
    # The MLM decoder is the word-embedding matrix itself (no second copy to keep tied).
    hidden = torch.randn(4, module.model.config.hidden_size)
    word = module.encoder.embeddings.word.weight
    logits = module.model.mlm_head(hidden, word)
    logits.sum().backward()
    assert word.grad is not None and word.grad.abs().sum() > 0
    assert not any("decoder" in name for name, _ in module.named_parameters())

    # Through the CLI: the backbone's tokenizer is used for the corpus.
    monkeypatch.chdir(tmp_path)
    config = recipe(tmp_path, corpus, model={"config": None, "backbone": str(tiny_backbone_dir)},
                    trainer={"max_steps": 2, "val_check_interval": 2})
    assert main(["pretrain", "--config", str(config)]) == 0
    ckpt = torch.load(tmp_path / "runs/pretrain/version_0/checkpoints/last.ckpt",
                      weights_only=True, map_location="cpu")
    assert ckpt["bertzoo"]["tokenizer"] == load_tokenizer(tiny_backbone_dir).to_str()


@pytest.mark.parametrize("recipe_path", RECIPES, ids=[p.stem for p in RECIPES])
def test_pretraining_recipe_runs_with_tiny_overrides(recipe_path, tmp_path, corpus,
                                                     tiny_backbone_dir, monkeypatch):
    """Every recipe parses and runs one step with the data pointed at a generated corpus and
    the model at a tiny config (or the tiny backbone, for recipes that start from one)."""
    monkeypatch.chdir(tmp_path)
    text = recipe_path.read_text()
    assert text.startswith("#"), "a recipe opens with its comment block"
    loaded = yaml.safe_load(text)
    model = ["--model.backbone", str(tiny_backbone_dir), "--model.config", "null"] \
        if loaded["model"].get("backbone") else ["--model.config", json.dumps(TINY_MODEL)]
    args = ["pretrain", "--config", str(recipe_path), *model,
            "--data.dataset", "null", "--data.train_files", str(corpus), "--data.format", "bert",
            "--data.tokenizer_vocab_size", "200", "--data.max_seq_length", "48",
            "--data.batch_size", "4", "--data.validation_documents", "8",
            "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
            "--trainer.val_check_interval", "1", "--trainer.enable_progress_bar", "false"]
    if loaded["data"].get("tokenizer"):
        args += ["--data.tokenizer", "null"]
    if loaded.get("global_batch_size"):  # one batch of 4 per step, not 256 sequences
        args += ["--global_batch_size", "null"]
    if loaded["model"].get("warmup", 0) >= 1:  # in steps: the same share of the one-step run
        share = loaded["model"]["warmup"] / loaded["trainer"]["max_steps"]
        args += ["--model.warmup", str(share)]
    assert main(args) == 0
    assert list(tmp_path.glob("runs/pretrain/version_0/checkpoints/last.ckpt"))


def test_demo_runs_the_tiny_recipe_and_exports(tmp_path, corpus, monkeypatch, capsys):
    """`make demo` (python -m bertzoo.demo) with the corpus and model shrunk by overrides."""
    from bertzoo.demo import main as demo
    monkeypatch.chdir(tmp_path)
    assert demo(["--data.train_files", str(corpus), "--data.tokenizer_vocab_size", "200",
                 "--model.config", json.dumps(TINY_MODEL), "--data.max_seq_length", "48",
                 "--trainer.max_steps", "2", "--model.warmup", "1",
                 "--trainer.val_check_interval", "2",
                 "--trainer.enable_progress_bar", "false"]) == 0
    out = capsys.readouterr().out
    assert "mlm_accuracy" in out and "nsp_accuracy" in out and "mlm baseline" in out
    export_dir = tmp_path / "runs/pretrain/version_0/export"
    assert f"export       {Path('runs/pretrain/version_0/export')}" in out
    assert BertEncoder.from_pretrained(export_dir).config.hidden_size == 32
