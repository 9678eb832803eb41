"""docs/quality/transfer.py end to end at toy size: pretraining on the SST-2 training sentences,
then both fine-tunings, their plots, the side-by-side PNG and results.jsonl. The `bertzoo`
commands run in this process (a subprocess would spend its time importing Lightning); what the
script builds (options, recipes, folders) is what runs.

The pretrained arm must start from the pretraining's encoder and the random arm from the same
configuration and tokenizer; the SST-2 dev sentences must never reach the pretraining corpus."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import torch
import yaml

from bertzoo.cli import main as bertzoo_main
from bertzoo.files import CKPT_KEY, read_lightning_checkpoint
from bertzoo.testing import sentences
from doc_scripts import load_doc_script

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    return load_doc_script("quality/transfer.py")


def write_sst2(folder: Path) -> tuple[list[str], list[str]]:
    """A small SST-2 in GLUE's layout: (training sentences, dev sentences), no overlap."""
    text = sentences(300, seed=3)
    train, dev = text[:200], [f"{s} dev only" for s in text[200:]]
    folder.mkdir(parents=True)
    for name, rows in (("train.tsv", train), ("dev.tsv", dev)):
        with open(folder / name, "w", newline="") as f:
            f.write("sentence\tlabel\n")
            f.writelines(f"{s}\t{i % 2}\n" for i, s in enumerate(rows))
    return train, dev


def test_transfer_script_runs_both_arms_from_one_pretraining(tmp_path, monkeypatch, capsys):
    script = load_script()
    train, dev = write_sst2(tmp_path / "data" / "SST-2")
    calls = []

    def in_process(args, cwd, log):
        calls.append(args)
        monkeypatch.chdir(cwd)
        assert bertzoo_main(args) == 0, capsys.readouterr().err

    monkeypatch.setattr(script, "bertzoo", in_process)
    monkeypatch.chdir(ROOT)
    out, png = tmp_path / "out", tmp_path / "curves.png"
    monkeypatch.setattr(sys, "argv", [
        "transfer.py", "--corpus", "sst2", "--mlm-only", "--pretrain-steps", "2",
        "--labels", "32", "--rows-seen", "64", "--val-every", "1", "--pooling", "mean",
        "--seed", "7", "--dropout", "0.2",
        "--data", str(tmp_path / "data"), "--out", str(out), "--png", str(png),
        "--pretrain-args", "--data.validation_documents 2 --data.batch_size 8 "
                           "--data.eval_batch_size 8 --trainer.val_check_interval 1 "
                           "--model.warmup 0.5 --data.tokenizer_vocab_size 300 "
                           "--trainer.enable_progress_bar false"])
    script.main()

    assert [c[0] for c in calls] == ["pretrain", "fit", "plot", "fit", "plot"]
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["labels"], r["init"]) for r in results] == [(32, "pretrained"), (32, "random")]
    for r in results:
        assert r["epochs"] == 2 and len(r["curve"]) == 2  # 64 rows seen, validated each step
        assert 0.0 <= r["final_accuracy"] <= r["best_accuracy"] <= 1.0
        assert r["pretrain_val_mlm_accuracy"] is not None
        assert list(Path(r["run_dir"]).glob("*.png")), "bertzoo plot wrote nothing"
    assert png.is_file() and png.stat().st_size > 1000

    # The pretraining read the training sentences and no dev sentence.
    corpus = (out / "sst2-train-sentences.txt").read_text()
    assert all(s in corpus for s in train) and not any(s in corpus for s in dev)

    # Pretrained arm: the pretraining's encoder and tokenizer. Random arm: the same
    # configuration (--dropout's rate included) and tokenizer, other weights.
    pretraining = read_lightning_checkpoint(
        next((out / "pretrain-sst2-2-mlm-drop0.2" / "runs" / "pretrain").glob("version_*"))
        / "checkpoints" / "last.ckpt")
    pretrained_encoder = {k.removeprefix("model.encoder."): v
                          for k, v in pretraining["state_dict"].items()
                          if k.startswith("model.encoder.")}
    for r in results:
        config = yaml.safe_load((Path(r["run_dir"]) / "config.yaml").read_text())
        first = read_lightning_checkpoint(next(Path(r["run_dir"]).glob("checkpoints/*.ckpt")))
        assert first[CKPT_KEY]["config"] == pretraining[CKPT_KEY]["config"]
        assert first[CKPT_KEY]["config"]["hidden_dropout_prob"] == 0.2
        assert first[CKPT_KEY]["config"]["attention_probs_dropout_prob"] == 0.2
        assert first[CKPT_KEY]["tokenizer"] == pretraining[CKPT_KEY]["tokenizer"]
        # Both arms read the same pooling and get the same fine-tuning seed.
        assert (config["model"]["pooling"], config["seed_everything"]) == ("mean", 7)
        assert (r["pooling"], r["seed"]) == ("mean", 7)
        if r["init"] == "pretrained":
            assert config["model"]["backbone"].endswith("last.ckpt")
        else:
            assert config["model"]["backbone"] is None
    # Fine-tuning moved the weights, so compare where each arm started: rebuild both modules
    # from their run's saved config (the same code path as the run itself).
    from bertzoo.tasks.classification import ClassificationModule
    for r in results:
        model = yaml.safe_load((Path(r["run_dir"]) / "config.yaml").read_text())["model"]
        module = ClassificationModule(**{k: v for k, v in model.items()
                                         if k in ("backbone", "config")},
                                      vocab_size=len(pretrained_encoder["embeddings.word.weight"]),
                                      num_labels=2)
        state = module.encoder.state_dict()
        same = [torch.equal(state[k], v) for k, v in pretrained_encoder.items()]
        assert all(same) if r["init"] == "pretrained" else not any(same[:1])
