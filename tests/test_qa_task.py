"""The QA task wired into Lightning, on a tiny random backbone and generated SQuAD files: training
and evaluation (v1.1 and v2.0), `predict` writing the official `{id: answer}` JSON, the CLI with
its data -> model link, export to Hugging Face's BertForQuestionAnswering, and bad input."""

import json
import logging
import math
import random
import re
import statistics
import string
from collections import Counter
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


# ------------------------------------------------------------- the official scoring scripts
# The rules of evaluate-v1.1.py and evaluate-v2.0.py (rajpurkar.github.io/SQuAD-explorer),
# copied as they are, to score the answers a model predicted independently of bertzoo's
# metric (which goes through torchmetrics).
def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def v1_f1(prediction: str, ground_truth: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def v1_exact(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def v2_tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def v2_exact(prediction: str, gold: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(prediction))


def v2_f1(prediction: str, gold: str) -> float:
    gold_toks, pred_toks = v2_tokens(gold), v2_tokens(prediction)
    common = Counter(gold_toks) & Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)  # no answer: 1 if both say so, else 0
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def official_scores(squad_file: Path, predictions: dict[str, str], version_2: bool
                    ) -> dict[str, float]:
    """What the official script of that version prints for `predictions` (only the questions
    predicted count, as when the script is given the validation articles alone)."""
    exact, f1, has_answer = {}, {}, {}
    for article in json.loads(squad_file.read_text())["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                if qa["id"] not in predictions:
                    continue
                prediction = predictions[qa["id"]]
                if version_2:
                    gold = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])]
                    gold = gold or [""]
                    exact[qa["id"]] = max(v2_exact(prediction, g) for g in gold)
                    f1[qa["id"]] = max(v2_f1(prediction, g) for g in gold)
                    has_answer[qa["id"]] = bool(qa["answers"])
                else:  # metric_max_over_ground_truths
                    gold = [a["text"] for a in qa["answers"]]
                    exact[qa["id"]] = max(v1_exact(prediction, g) for g in gold)
                    f1[qa["id"]] = max(v1_f1(prediction, g) for g in gold)
    assert exact.keys() == predictions.keys(), "a prediction for a question not in the file"

    def percent(ids, scores):
        return 100.0 * sum(scores[i] for i in ids) / len(ids) if ids else float("nan")

    result = {"exact_match": percent(exact, exact), "f1": percent(f1, f1)}
    if version_2:
        for group, wanted in (("HasAns", True), ("NoAns", False)):
            ids = [i for i in exact if has_answer[i] == wanted]
            result[f"{group}_exact_match"] = percent(ids, exact)
            result[f"{group}_f1"] = percent(ids, f1)
    return result


def predicted_answers(model, datamodule_args: dict, folder: Path) -> dict[str, str]:
    """`bertzoo predict`'s {question id: answer} for the questions of `datamodule_args`."""
    folder.mkdir()
    datamodule = SquadDataModule(**datamodule_args)
    trainer(callbacks=[PredictionWriter(str(folder))]).predict(model, datamodule)
    return json.loads((folder / "predictions.json").read_text())


def trainer(**kwargs) -> L.Trainer:
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, use_distributed_sampler=False,
                    num_sanity_val_steps=0)
    return L.Trainer(**{**defaults, **kwargs})


def test_fit_and_validate_v1(tmp_path, tiny_backbone_dir):
    L.seed_everything(0)
    data = example_data(tmp_path)
    # The example data has contexts longer than one window.
    datamodule = SquadDataModule(tokenizer=str(tiny_backbone_dir), **data)
    datamodule.setup("validate")
    assert len(datamodule.datasets["validation"]) > len(datamodule.raw("validation"))
    assert len(datamodule.raw("validation")) == 9  # article 1 only: 3 paragraphs x 3 questions

    # Scored against the official rules: the model learns the training article (so that some
    # answers are exact, some partial, some wrong) and is validated on the same questions with
    # several gold answers each, as SQuAD's dev set has, so that the best over them matters:
    # first the last three words of the answer's sentence ("road in Cairo."), then the answer
    # itself ("Cairo"), then each sentence of the context.
    content = json.loads(Path(data["train_file"]).read_text())
    content["data"] = content["data"][:1]
    for paragraph in content["data"][0]["paragraphs"]:
        context = paragraph["context"]
        sentences = [(m.start(), m.group()) for m in re.finditer(r"[^ ][^.]*\.", context)]
        for qa in paragraph["qas"]:
            answer = qa["answers"][0]
            end = context.index(".", answer["answer_start"]) + 1
            start = end - len(" ".join(context[:end].split()[-3:]))
            qa["answers"] = [{"text": context[start:end], "answer_start": start}, answer] + [
                {"text": text, "answer_start": at} for at, text in sentences]
    validation_file = tmp_path / "validation.json"
    validation_file.write_text(json.dumps(content))
    data = {**data, "train_articles": "0", "validation_file": str(validation_file),
            "validation_articles": None}
    datamodule = SquadDataModule(tokenizer=str(tiny_backbone_dir), **data)
    model = QuestionAnsweringModule(backbone=str(tiny_backbone_dir), learning_rate=1e-2)
    trainer(max_steps=12).fit(model, datamodule)
    (metrics,) = trainer().validate(model, datamodule)
    assert set(metrics) == {"val/loss", "val/exact_match", "val/f1"}
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))
    # The logged scores are evaluate-v1.1.py's on the answers the model gives.
    predictions = predicted_answers(
        model, {"tokenizer": str(tiny_backbone_dir), **data,
                "predict_file": str(validation_file), "predict_articles": None},
        tmp_path / "predicted")
    assert len(predictions) == 9 and all(predictions.values())
    expected = official_scores(validation_file, predictions, version_2=False)
    assert expected["f1"] > 0  # measured: EM 67 to 78, F1 72 to 83
    assert metrics["val/exact_match"] == pytest.approx(expected["exact_match"], abs=1e-4)
    assert metrics["val/f1"] == pytest.approx(expected["f1"], abs=1e-4)


def test_fit_validate_v2_reports_the_has_and_no_answer_split(tmp_path, tiny_backbone_dir):
    L.seed_everything(0)
    path = write_squad(tmp_path / "v2.json", version_2=True)
    data = dict(tokenizer=str(tiny_backbone_dir), train_file=str(path),
                validation_file=str(path), version_2_with_negative=True, max_length=48,
                doc_stride=16, batch_size=4)
    datamodule = SquadDataModule(**data)
    model = QuestionAnsweringModule(backbone=str(tiny_backbone_dir), version_2_with_negative=True)
    datamodule.setup("fit")
    labels = datamodule.datasets["train"]["start_positions"]
    assert 0 in labels and any(labels)  # unanswerable windows point at [CLS]
    # A no-answer threshold at the median of how much each question's no-answer score beats
    # its best span, so that the model answers about half the questions and says "no answer"
    # to the rest.
    model.eval()
    best, null = {}, {}
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            spans = model.window_spans(model(batch), batch)
            for i, span, no_answer in zip(batch["index"].tolist(), spans["span_score"].tolist(),
                                          spans["null_score"].tolist()):
                best[i] = max(best.get(i, -math.inf), span)
                null[i] = min(null.get(i, math.inf), no_answer)
    threshold = statistics.median(null[i] - best[i] for i in best)
    weights = model.state_dict()
    model = QuestionAnsweringModule(backbone=str(tiny_backbone_dir), version_2_with_negative=True,
                                    null_score_diff_threshold=threshold)
    model.load_state_dict(weights)
    (metrics,) = trainer().validate(model, datamodule)
    assert {"val/HasAns_exact_match", "val/HasAns_f1", "val/NoAns_exact_match",
            "val/NoAns_f1"} <= set(metrics)
    has = sum(bool(a["text"]) for a in datamodule.raw("validation")["answers"])
    total = len(datamodule.raw("validation"))
    mixed = (has * metrics["val/HasAns_f1"] + (total - has) * metrics["val/NoAns_f1"]) / total
    assert metrics["val/f1"] == pytest.approx(mixed, rel=1e-5)
    # Each logged score is evaluate-v2.0.py's on the answers the model gives ("" = no answer).
    predictions = predicted_answers(
        model, {**data, "predict_file": str(path)}, tmp_path / "predicted")
    assert len(predictions) == total and 0 < has < total
    assert "" in predictions.values() and any(predictions.values())
    expected = official_scores(path, predictions, version_2=True)
    for name, value in expected.items():
        assert metrics[f"val/{name}"] == pytest.approx(value, abs=1e-4), name


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
    assert main(["fit", "--task", "qa", "--model.backbone", str(tiny_backbone_dir),
                 "--data.train_file", str(path), "--data.validation_file", str(path),
                 "--data.version_2_with_negative", "true", "--data.max_length", "48",
                 "--data.doc_stride", "16", "--data.batch_size", "8",
                 "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                 "--trainer.enable_progress_bar", "false"]) == 0
    run = tmp_path / "runs" / "qa" / "version_0"
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/f1", "val/HasAns_f1", "val/NoAns_f1"} <= set(header)
    (best,) = (run / "checkpoints").glob("best*.ckpt")
    checkpoint = torch.load(best, weights_only=True)
    assert checkpoint["hyper_parameters"]["version_2_with_negative"] is True
    # restored (as `--ckpt_path` does) without v2.0 by mistake: said, not silently different
    model = QuestionAnsweringModule(backbone=str(tiny_backbone_dir))
    with caplog.at_level(logging.WARNING, logger="bertzoo"):
        model.on_load_checkpoint(checkpoint)
    assert "trained with version_2_with_negative=True" in caplog.text


def test_export_is_huggingface_bert_for_question_answering(tmp_path, tiny_backbone_dir):
    import transformers

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
