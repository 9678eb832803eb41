"""The QA task wired into Lightning, on a tiny random backbone and generated SQuAD files: training
and evaluation (v1.1 and v2.0), `predict` writing the official `{id: answer}` JSON, the CLI with
its data -> model link, export to Hugging Face's BertForQuestionAnswering, and bad input."""

import json
import logging
import random
from pathlib import Path

import lightning as L
import pytest
import torch

from bertzoo.tasks.base import DataError, PredictionWriter
from bertzoo.tasks.qa import QuestionAnsweringModule, SquadDataModule, example_data
from bertzoo.testing import sentences


def write_squad(path: Path, version_2: bool = False, articles: int = 2, seed: int = 0) -> Path:
    """Synthetic SQuAD: the answer to "where is NAME ?" is the place after "in" in the context."""
    rng = random.Random(seed)
    data = []
    for a in range(articles):
        paragraphs = []
        for p in range(2):
            text = sentences(5, seed=100 * seed + 10 * a + p)
            context = " ".join(text)
            qas = []
            for q, sentence in enumerate(text):
                qid = f"{a}-{p}-{q}"
                words = sentence.rstrip(".").split()
                if " in " in sentence:
                    answer = words[-1]
                    qas.append({"id": qid, "question": f"where is {words[0]} ?",
                                "answers": [{"text": answer,
                                             "answer_start": context.index(sentence)
                                             + sentence.rindex(answer)}]})
                elif version_2 and rng.random() < 0.7:
                    qas.append({"id": qid, "question": f"where is {words[0]} ?", "answers": [],
                                "is_impossible": True})
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"t{a}", "paragraphs": paragraphs})
    path.write_text(json.dumps({"version": "2.0" if version_2 else "1.1", "data": data}))
    return path


def trainer(**kwargs) -> L.Trainer:
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, use_distributed_sampler=False,
                    num_sanity_val_steps=0)
    return L.Trainer(**{**defaults, **kwargs})


def test_fit_and_validate_v1(tmp_path, tiny_backbone_dir):
    data = example_data(tmp_path)
    datamodule = SquadDataModule(tokenizer=str(tiny_backbone_dir), **data)
    model = QuestionAnsweringModule(backbone=str(tiny_backbone_dir), learning_rate=1e-3)
    trainer(max_steps=3).fit(model, datamodule)
    # the example data has contexts longer than one window
    validation = datamodule.datasets["validation"]
    assert len(validation) > len(datamodule.raw("validation"))
    assert len(datamodule.raw("validation")) == 9  # article 1 only: 3 paragraphs x 3 questions
    (metrics,) = trainer().validate(model, datamodule)
    assert set(metrics) == {"val/loss", "val/exact_match", "val/f1"}
    assert 0 <= metrics["val/exact_match"] <= metrics["val/f1"] <= 100
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))


def test_fit_validate_v2_reports_the_has_and_no_answer_split(tmp_path, tiny_backbone_dir):
    path = write_squad(tmp_path / "v2.json", version_2=True)
    datamodule = SquadDataModule(tokenizer=str(tiny_backbone_dir), train_file=str(path),
                                 validation_file=str(path), version_2_with_negative=True,
                                 max_length=48, doc_stride=16, batch_size=4)
    model = QuestionAnsweringModule(backbone=str(tiny_backbone_dir), version_2_with_negative=True)
    datamodule.setup("fit")
    labels = datamodule.datasets["train"]["start_positions"]
    assert 0 in labels and any(labels)  # unanswerable windows point at [CLS]
    (metrics,) = trainer().validate(model, datamodule)
    assert {"val/HasAns_exact_match", "val/HasAns_f1", "val/NoAns_exact_match",
            "val/NoAns_f1"} <= set(metrics)
    has = sum(bool(a["text"]) for a in datamodule.raw("validation")["answers"])
    total = len(datamodule.raw("validation"))
    mixed = (has * metrics["val/HasAns_f1"] + (total - has) * metrics["val/NoAns_f1"]) / total
    assert metrics["val/f1"] == pytest.approx(mixed, rel=1e-5)


def test_predict_writes_the_official_json(tmp_path, tiny_backbone_dir):
    data = example_data(tmp_path)
    datamodule = SquadDataModule(tokenizer=str(tiny_backbone_dir), **data)
    model = QuestionAnsweringModule(backbone=str(tiny_backbone_dir))
    writer = PredictionWriter(str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    trainer(callbacks=[writer]).predict(model, datamodule)
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    raw = datamodule.raw("predict")
    assert list(predictions) == raw["id"]  # every question once, in file order
    for question_id, context in zip(raw["id"], raw["context"]):
        assert predictions[question_id] in context and predictions[question_id]


def test_cli_links_version_2_from_the_data_to_the_model(tmp_path, tiny_backbone_dir,
                                                        monkeypatch, caplog):
    from bertzoo.cli import main
    path = write_squad(tmp_path / "v2.json", version_2=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BERTZOO_RUN_VERSION", raising=False)
    main(["fit", "--task", "qa", "--model.backbone", str(tiny_backbone_dir),
          "--data.train_file", str(path), "--data.validation_file", str(path),
          "--data.version_2_with_negative", "true", "--data.max_length", "48",
          "--data.doc_stride", "16", "--data.batch_size", "8", "--trainer.max_epochs", "1",
          "--trainer.limit_train_batches", "2",
          "--trainer.enable_progress_bar", "false"])
    run = tmp_path / "runs" / "qa" / "version_0"
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/f1", "val/HasAns_f1", "val/NoAns_f1"} <= set(header)
    best = next((run / "checkpoints").glob("best*.ckpt"))
    checkpoint = torch.load(best, weights_only=True)
    assert checkpoint["hyper_parameters"]["version_2_with_negative"] is True
    # restored (as `--ckpt_path` does) without v2.0 by mistake: said, not silently different
    model = QuestionAnsweringModule(backbone=str(tiny_backbone_dir))
    with caplog.at_level(logging.WARNING, logger="bertzoo"):
        model.on_load_checkpoint(checkpoint)
    assert "trained with version_2_with_negative=True" in caplog.text


def test_export_is_huggingface_bert_for_question_answering(tmp_path, tiny_backbone_dir):
    transformers = pytest.importorskip("transformers")
    from bertzoo.export import export
    data = example_data(tmp_path)
    datamodule = SquadDataModule(tokenizer=str(tiny_backbone_dir), **data)
    model = QuestionAnsweringModule(backbone=str(tiny_backbone_dir), learning_rate=1e-2)
    fit = trainer(max_steps=2, enable_checkpointing=True, default_root_dir=str(tmp_path))
    fit.fit(model, datamodule)
    fit.save_checkpoint(tmp_path / "qa.ckpt")
    export(tmp_path / "qa.ckpt", tmp_path / "hf")
    reference = transformers.BertForQuestionAnswering.from_pretrained(tmp_path / "hf").eval()
    row = datamodule.datasets["validation"][0]
    batch = datamodule.collate([row])
    model.eval()
    with torch.no_grad():
        ours = model(batch)
        theirs = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           token_type_ids=batch["token_type_ids"])
    torch.testing.assert_close(ours["start_logits"], theirs.start_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours["end_logits"], theirs.end_logits, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------- bad input
def test_articles_are_chosen_before_max_train_samples(tmp_path, tiny_backbone_dir):
    path = write_squad(tmp_path / "s.json", articles=4)
    datamodule = SquadDataModule(tokenizer=str(tiny_backbone_dir), train_file=str(path),
                                 train_articles="1-2", max_train_samples=3, max_length=48,
                                 doc_stride=16)
    train = datamodule.raw("train")
    assert len(train) == 3 and set(train["article"]) <= {1, 2}


def test_bad_data_settings_are_clear_errors(tmp_path, tiny_backbone_dir):
    path = write_squad(tmp_path / "s.json")
    with pytest.raises(DataError, match=r"doc_stride \(60\) must be smaller"):
        SquadDataModule(train_file=str(path), max_length=48, doc_stride=60)
    with pytest.raises(DataError, match="data.train_articles: .*expected indices and inclusive"):
        SquadDataModule(train_file=str(path), train_articles="zero-3")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": "a", "question": "q?", "context": "c"}) + "\n")
    datamodule = SquadDataModule(tokenizer=str(tiny_backbone_dir), train_file=str(rows),
                                 train_articles="0")
    with pytest.raises(DataError, match="selecting articles needs an official SQuAD JSON file"):
        datamodule.raw("train")
    datamodule = SquadDataModule(tokenizer=str(tiny_backbone_dir), train_file=str(rows))
    with pytest.raises(DataError, match=r"missing column\(s\) 'answers'"):
        datamodule.setup("fit")
    text = tmp_path / "data.csv"
    text.write_text("id,question\n")
    with pytest.raises(DataError, match=r"unsupported file type '.csv'"):
        SquadDataModule(tokenizer=str(tiny_backbone_dir), train_file=str(text)).raw("train")


def test_hugging_face_row_layout_as_json_lines(tmp_path, tiny_backbone_dir):
    rows = tmp_path / "rows.jsonl"
    context = "Alice sees the small cat in Paris."
    rows.write_text(json.dumps({"id": "a", "title": "t", "question": "where ?",
                                "context": context,
                                "answers": {"text": ["Paris"], "answer_start": [28]}}) + "\n")
    datamodule = SquadDataModule(tokenizer=str(tiny_backbone_dir), train_file=str(rows),
                                 max_length=48, doc_stride=16)
    datamodule.setup("fit")
    window = datamodule.datasets["train"][0]
    start, end = window["start_positions"], window["end_positions"]
    assert context[window["offset_start"][start]:window["offset_end"][end]] == "Paris"
