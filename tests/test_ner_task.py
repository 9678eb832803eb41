"""The NER task end to end on a tiny backbone: logged metrics equal seqeval on the decoded
predictions (with sentences cut into windows), the CLI trains, predicts without the training
file, and the export is Hugging Face's BertForTokenClassification."""

import json
import warnings
from pathlib import Path

import lightning as L
import pytest
import seqeval.metrics as seqeval_metrics
import torch
import transformers

from bertzoo.tasks.conll import read_conll
from bertzoo.tasks.ner import NerDataModule, NerModule, example_data


def trainer():
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, use_distributed_sampler=False)


def test_logged_metrics_equal_seqeval_on_predictions(tmp_path, tiny_backbone_dir):
    files = example_data(tmp_path / "data")
    # max_length 8 cuts most sentences into overlapping windows, spread over batches.
    dm = NerDataModule(tokenizer=str(tiny_backbone_dir), train_file=files["train_file"],
                       validation_file=files["validation_file"],
                       predict_file=files["validation_file"], max_length=8, stride=2,
                       batch_size=4)
    torch.manual_seed(0)
    model = NerModule(label_names=dm.label_names, backbone=str(tiny_backbone_dir),
                      vocab_size=dm.vocab_size)
    torch.nn.init.normal_(model.classifier.weight, std=3.0)  # varied tags, some of them right
    logged = trainer().validate(model, dm, verbose=False)[0]
    dm.setup("validate")
    assert len(dm.datasets["validation"]) > 2 * len(dm.raw("validation"))  # windows
    rows = [r for batch in trainer().predict(model, dm) for r in batch]
    predicted = [row["tags"] for row in model.finalize_predictions(rows)]
    gold = read_conll(files["validation_file"])["tags"]
    assert [len(p) for p in predicted] == [len(g) for g in gold]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = seqeval_metrics.classification_report(gold, predicted, output_dict=True)
        expected = {"val/f1": seqeval_metrics.f1_score(gold, predicted),
                    "val/precision": seqeval_metrics.precision_score(gold, predicted),
                    "val/recall": seqeval_metrics.recall_score(gold, predicted),
                    "val/accuracy": seqeval_metrics.accuracy_score(gold, predicted)}
    assert 0 < expected["val/precision"] < 1 and 0 < expected["val/recall"] < 1
    for entity_type in ("person", "location"):
        row = report.get(entity_type, {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
        expected[f"val/f1_{entity_type}"] = row["f1-score"]
        expected[f"val/precision_{entity_type}"] = row["precision"]
    for name, value in expected.items():
        assert logged[name] == pytest.approx(value, abs=1e-6), name


def test_cli_fit_predict_and_export(tmp_path, tiny_backbone_dir, monkeypatch):
    from bertzoo.cli import main
    files = example_data(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BERTZOO_RUN_VERSION", raising=False)
    quiet = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    assert main(["fit", "--task", "ner", "--model.backbone", str(tiny_backbone_dir),
                 "--data.train_file", files["train_file"],
                 "--data.validation_file", files["validation_file"], "--data.batch_size", "8",
                 "--trainer.max_epochs", "1", *quiet]) == 0
    metrics = (tmp_path / "runs/ner/version_0/metrics.csv").read_text()
    assert "val/f1" in metrics.splitlines()[0]
    # predict needs no training file: the label names come from the checkpoint
    assert main(["predict", "--task", "ner", "--ckpt_path", "last",
                 "--data.predict_file", files["predict_file"], *quiet]) == 0
    assert (tmp_path / "runs/ner/version_1/predictions.jsonl").is_file()
    # One epoch on a tiny backbone tags (almost) everything O: predict again with a classifier
    # drawn wide, so that there are entities, some of several words, to check against the text.
    ckpt = tmp_path / "runs/ner/version_0/checkpoints/last.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    weight = checkpoint["state_dict"]["classifier.weight"]
    checkpoint["state_dict"]["classifier.weight"] = torch.randn(
        weight.shape, generator=torch.Generator().manual_seed(0)) * 3.0
    torch.save(checkpoint, tmp_path / "varied.ckpt")
    assert main(["predict", "--task", "ner", "--ckpt_path", str(tmp_path / "varied.ckpt"),
                 "--data.predict_file", files["predict_file"], *quiet]) == 0
    written = tmp_path / "runs/ner/version_2/predictions.jsonl"
    texts = [json.loads(line)["text"] for line in Path(files["predict_file"]).open()]
    rows = [json.loads(line) for line in written.open()]
    assert [row["text"] for row in rows] == texts
    entities = [entity for row in rows for entity in row["entities"]]
    assert entities and any(e["end_word"] - e["start_word"] > 1 for e in entities)
    for row in rows:
        assert len(row["tags"]) == len(row["words"])
        for entity in row["entities"]:
            assert entity["text"] == row["text"][entity["start_char"]:entity["end_char"]]
            span = row["words"][entity["start_word"]:entity["end_word"]]
            assert entity["text"].startswith(span[0]) and entity["text"].endswith(span[-1])

    # The export is a BertForTokenClassification giving our logits.
    assert main(["export", str(ckpt), str(tmp_path / "hf")]) == 0
    hf = transformers.BertForTokenClassification.from_pretrained(str(tmp_path / "hf")).eval()
    ours = NerModule.load_from_checkpoint(str(ckpt), map_location="cpu").eval()
    assert hf.config.id2label == dict(enumerate(ours.label_names))
    input_ids = torch.tensor([[2, 40, 41, 42, 3], [2, 50, 3, 0, 0]])
    attention_mask = (input_ids != 0).long()
    batch = {"input_ids": input_ids, "attention_mask": attention_mask,
             "token_type_ids": torch.zeros_like(input_ids)}
    with torch.no_grad():
        expected = hf(**batch).logits
        logits = ours(batch)
    keep = attention_mask.bool()
    torch.testing.assert_close(logits[keep], expected[keep], atol=1e-5, rtol=1e-4)
