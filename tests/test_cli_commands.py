"""`bertzoo validate`, `bertzoo test` and `bertzoo export --encoder-only` as a user runs them.

validate and test: the return code, and the metrics they print and write to metrics.csv equal
an evaluation done here by hand from the checkpoint's logits (cross-entropy, accuracy, macro F1
and Matthews correlation by their textbook formulas). export --encoder-only: the BertModel
layout without any head, which transformers.BertModel loads without a missing or unexpected
key and which gives the encoder's outputs.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file

from bertzoo.cli import main
from bertzoo.tasks.classification import ClassificationDataModule, ClassificationModule

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
LABELS = ["calm", "angry", "glad"]


def write_rows(path: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    words = ["cat", "dog", "tree", "road", "sun", "city", "river", "book"]
    lines = ["sentence\tlabel"]
    for i in range(count):
        lines.append(f"the {rng.choice(words)} and {rng.choice(words)} are here\t"
                     f"{LABELS[i % len(LABELS)]}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, tiny_backbone_dir) -> dict:
    """A 3-class classifier checkpoint (one training step through `bertzoo fit`) whose
    classifier is then redrawn so that its predictions vary: every metric has a value that a
    mistake would change."""
    folder = tmp_path_factory.mktemp("classifier")
    train = write_rows(folder / "train.tsv", 12, seed=0)
    dev = write_rows(folder / "dev.tsv", 30, seed=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("BERTZOO_RUN_VERSION", raising=False)
        assert main(["fit", "--task", "classification", f"--model.backbone={tiny_backbone_dir}",
                     f"--data.train_file={train}", f"--data.validation_file={dev}",
                     "--data.batch_size=4", "--trainer.max_steps=1",
                     "--trainer.limit_val_batches=1", *QUIET]) == 0
    last = folder / "runs/classification/version_0/checkpoints/last.ckpt"
    # One step leaves every row in one class: a classifier drawn at random over the pooled
    # outputs of the dev rows, centred and scaled, spreads them over the classes.
    model = ClassificationModule.load_from_checkpoint(str(last), map_location="cpu").eval()
    datamodule = ClassificationDataModule(tokenizer=str(tiny_backbone_dir), train_file=str(train),
                                          validation_file=str(dev), batch_size=1000)
    datamodule.setup("validate")
    (batch,) = list(datamodule.val_dataloader())
    with torch.no_grad():
        pooled = model.encoder(batch["input_ids"], batch["attention_mask"],
                               batch["token_type_ids"]).pooler_output  # (rows, H)
    # The one step's weights differ from run to run; of the classifiers drawn, the first whose
    # metrics are all away from their degenerate values (a Matthews correlation of exactly 0
    # happens on 30 rows) is kept.
    path = folder / "varied.ckpt"
    for seed in range(20):
        weight = torch.randn(len(LABELS), pooled.shape[1],
                             generator=torch.Generator().manual_seed(seed))
        weight *= 3.0 / float(((pooled - pooled.mean(0)) @ weight.T).std())
        checkpoint = torch.load(last, weights_only=True)
        checkpoint["state_dict"]["classifier.weight"] = weight
        checkpoint["state_dict"]["classifier.bias"] = -pooled.mean(0) @ weight.T
        torch.save(checkpoint, path)
        expected = by_hand(path, tiny_backbone_dir, train, dev)
        if 0 < expected["accuracy"] < 1 and expected["macro_f1"] > 0 \
                and math.isfinite(expected["matthews"]) and expected["matthews"] != 0:
            break
    return {"ckpt": path, "train": train, "dev": dev, "folder": folder}


def by_hand(ckpt: Path, backbone: Path, train: Path, dev: Path) -> dict[str, float]:
    """Loss, accuracy, macro F1 and Matthews correlation of the checkpoint on `dev`."""
    model = ClassificationModule.load_from_checkpoint(str(ckpt), map_location="cpu").eval()
    # batches of 8 as in the command (the padding of a batch moves logits by float rounding)
    datamodule = ClassificationDataModule(tokenizer=str(backbone), train_file=str(train),
                                          validation_file=str(dev), batch_size=8)
    datamodule.setup("validate")
    assert datamodule.label_names == model.label_names
    batches = list(datamodule.val_dataloader())
    with torch.no_grad():
        logits = torch.cat([model(batch) for batch in batches])
    gold = torch.cat([batch["labels"] for batch in batches])
    index = torch.cat([batch["index"] for batch in batches])
    # the labels are the file's: each row's own, each row once
    with dev.open() as f:
        labels = [row["label"] for row in csv.DictReader(f, delimiter="\t")]
    assert sorted(index.tolist()) == list(range(len(labels)))
    assert [model.label_names[i] for i in gold.tolist()] == [labels[i] for i in index.tolist()]
    predicted = logits.argmax(-1)
    classes = len(model.label_names)
    confusion = torch.zeros(classes, classes, dtype=torch.float64)  # [gold, predicted]
    for g, p in zip(gold.tolist(), predicted.tolist()):
        confusion[g, p] += 1
    true_positive = confusion.diag()
    f1 = [float(2 * true_positive[k] / (confusion[k].sum() + confusion[:, k].sum()))
          for k in range(classes)]  # every class has gold rows: no 0/0
    total, correct = confusion.sum(), true_positive.sum()
    gold_counts, predicted_counts = confusion.sum(1), confusion.sum(0)
    # Matthews correlation for K classes (Gorodkin 2004)
    matthews = float((correct * total - (gold_counts * predicted_counts).sum())
                     / math.sqrt((total ** 2 - (predicted_counts ** 2).sum())
                                 * (total ** 2 - (gold_counts ** 2).sum())))
    return {"loss": float(F.cross_entropy(logits, gold)),
            "accuracy": float(correct / total), "macro_f1": sum(f1) / classes,
            "matthews": matthews,
            **({"f1": f1[1]} if classes == 2 else {})}  # two labels: the second one's F1


def printed_metrics(text: str, prefix: str) -> dict[str, float]:
    """The metric table Lightning prints: `│ val/accuracy │ 0.5 │` rows (or, without rich,
    `val/accuracy   0.5`)."""
    return {name: float(value) for name, value in
            re.findall(rf"{prefix}/(\w+)[\s│|]+([-+0-9.e]+)", text)}


@pytest.mark.parametrize("command, prefix, split", [("validate", "val", "validation"),
                                                    ("test", "test", "test")])
def test_validate_and_test_equal_an_evaluation_by_hand(command, prefix, split, classifier,
                                                       tiny_backbone_dir, tmp_path,
                                                       monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BERTZOO_RUN_VERSION", raising=False)
    expected = by_hand(classifier["ckpt"], tiny_backbone_dir, classifier["train"],
                       classifier["dev"])
    # not a degenerate case: some right, some wrong, more than one class predicted
    assert 0 < expected["accuracy"] < 1 and expected["macro_f1"] > 0
    assert math.isfinite(expected["matthews"]) and expected["matthews"] != 0
    capsys.readouterr()
    assert main([command, "--task", "classification", "--ckpt_path", str(classifier["ckpt"]),
                 f"--data.{split}_file={classifier['dev']}", "--data.batch_size=8",
                 *QUIET]) == 0
    printed = printed_metrics(capsys.readouterr().out, prefix)
    with (tmp_path / "runs/classification/version_0/metrics.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    logged = {key.split("/", 1)[1]: float(value) for key, value in row.items()
              if key.startswith(f"{prefix}/")}
    assert printed.keys() == logged.keys() == expected.keys()
    for name, value in expected.items():
        assert logged[name] == pytest.approx(value, abs=1e-5), name
        assert printed[name] == pytest.approx(value, abs=1e-5), name


def test_validate_with_a_bad_checkpoint_fails_with_status_1(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torn = tmp_path / "torn.ckpt"
    torn.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    assert main(["validate", "--task", "classification", "--ckpt_path", str(torn)]) == 1
    assert "--ckpt_path" in capsys.readouterr().err


# ------------------------------------------------------------------------- export --encoder-only
@pytest.fixture(scope="module")
def pretraining_checkpoint(tmp_path_factory) -> Path:
    """A pretraining checkpoint (encoder, pooler, MLM and NSP heads) after one step."""
    from bertzoo.pretraining import PretrainingDataModule, PretrainingModule
    from bertzoo.testing import documents, write_bert_corpus
    folder = tmp_path_factory.mktemp("pretraining")
    corpus = write_bert_corpus(folder / "corpus.txt", documents(30, seed=2))
    datamodule = PretrainingDataModule(train_files=str(corpus), tokenizer_vocab_size=150,
                                       max_seq_length=32, batch_size=4, validation_documents=4)
    model = PretrainingModule(config={"hidden_size": 32, "num_hidden_layers": 2,
                                      "num_attention_heads": 2, "intermediate_size": 64,
                                      "max_position_embeddings": 64},
                              vocab_size=datamodule.vocab_size, learning_rate=1e-2, warmup=1)
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(folder))
    trainer.fit(model, datamodule)
    trainer.save_checkpoint(folder / "pretrain.ckpt")
    return folder / "pretrain.ckpt"


@pytest.mark.parametrize("source", ["pretraining", "classification"])
def test_export_encoder_only_is_a_bert_model(source, pretraining_checkpoint, classifier,
                                             tmp_path, capsys):
    from bertzoo.model import BertEncoder
    ckpt = pretraining_checkpoint if source == "pretraining" else classifier["ckpt"]
    out = tmp_path / "encoder"
    assert main(["export", str(ckpt), str(out), "--encoder-only"]) == 0
    assert str(out) in capsys.readouterr().out

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertModel"]
    names = set(load_file(out / "model.safetensors"))
    reference = transformers.BertModel(transformers.BertConfig.from_pretrained(out))
    # The BertModel layout exactly: no bert. prefix, no cls./classifier/qa_outputs head.
    assert names == set(reference.state_dict()) - {"embeddings.position_ids"}, \
        sorted(names ^ set(reference.state_dict()))
    loaded, info = transformers.BertModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    # Equal outputs: the trained encoder (not an initialised one) came through.
    encoder = BertEncoder.from_pretrained(ckpt).eval()
    reread = BertEncoder.from_pretrained(out).eval()
    loaded.eval()
    ids = torch.randint(5, config["vocab_size"], (2, 12),
                        generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    with torch.no_grad():
        ours = encoder(ids, mask)
        theirs = loaded(input_ids=ids, attention_mask=mask)
        again = reread(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(theirs.last_hidden_state[real], ours.last_hidden_state[real],
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(theirs.pooler_output, ours.pooler_output, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(again.last_hidden_state, ours.last_hidden_state)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    word = next(v for k, v in state.items() if k.endswith("embeddings.word.weight"))
    assert torch.equal(loaded.embeddings.word_embeddings.weight, word)
