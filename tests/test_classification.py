"""Sequence classification: data reading and labels, bad input, metrics against scikit-learn
and SciPy, prediction from a checkpoint alone, export to Hugging Face's
`BertForSequenceClassification` (same logits), and any checkpoint as a backbone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from bertzoo.cli import main
from bertzoo.tasks.base import DataError
from bertzoo.tasks.classification import (ClassificationDataModule, ClassificationModule,
                                          sort_labels)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def datamodule(backbone, **kwargs) -> ClassificationDataModule:
    return ClassificationDataModule(tokenizer=str(backbone), batch_size=4, **kwargs)


def model_for(dm: ClassificationDataModule, backbone) -> ClassificationModule:
    return ClassificationModule(backbone=str(backbone), vocab_size=dm.vocab_size,
                                num_labels=dm.num_labels, label_names=dm.label_names,
                                problem_type=dm.problem_type)


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, use_distributed_sampler=False,
                     num_sanity_val_steps=0, **kwargs)


# ------------------------------------------------------------------------------- data, labels
def test_label_order_is_numeric_for_numbers_else_alphabetical():
    assert sort_labels({"10", "2", "1"}) == ["1", "2", "10"]
    assert sort_labels({"neutral", "contradiction", "entailment"}) == [
        "contradiction", "entailment", "neutral"]


def test_single_sentence_tsv_in_glue_layout(tiny_backbone_dir, tmp_path):
    # GLUE's TSVs are unquoted: a double quote is part of the text.
    train = write(tmp_path / "train.tsv", 'sentence\tlabel\nthe cat " sees\t1\na dog\t0\n'
                                          "the bird\t1\n")
    dm = datamodule(tiny_backbone_dir, train_file=train, max_length=6)
    assert dm.label_names == ["0", "1"] and dm.num_labels == 2
    dm.setup("fit")
    rows = dm.datasets["train"]
    assert rows["labels"] == [1, 0, 1]
    assert rows["index"] == [0, 1, 2]
    assert rows["sentence"][0] == 'the cat " sees'
    tokenizer = dm.tokenizer
    expected = tokenizer.encode('the cat " sees').ids
    assert rows["input_ids"][0] == expected[:5] + [expected[-1]]  # truncated, [SEP] kept
    assert all(len(ids) <= 6 for ids in rows["input_ids"])


def test_sentence_pairs_get_segment_ids_and_longest_first_truncation(tiny_backbone_dir,
                                                                    tmp_path):
    train = write(tmp_path / "train.csv",
                  "first,second,label\n"
                  "the small cat sees the old dog near the river,a bird,same\n"
                  "a cat,the dog,different\n")
    dm = datamodule(tiny_backbone_dir, train_file=train, text_column="first",
                    text_pair_column="second", max_length=10)
    assert dm.label_names == ["different", "same"]
    dm.setup("fit")
    row = dm.datasets["train"][0]
    assert len(row["input_ids"]) == 10
    assert set(row["token_type_ids"]) == {0, 1}
    tokenizer = dm.tokenizer
    second = tokenizer.encode("a bird", add_special_tokens=False).ids
    # The longer first text lost tokens; the short second text is whole.
    assert row["input_ids"][-len(second) - 1:-1] == second
    assert row["labels"] == 1


def test_multi_label_from_json_lists_and_separated_strings(tiny_backbone_dir, tmp_path):
    train = write(tmp_path / "train.jsonl", "".join(json.dumps(r) + "\n" for r in [
        {"text": "a cat", "tags": ["animal", "small"]},
        {"text": "a city", "tags": ["place"]},
        {"text": "nothing", "tags": []}]))
    dm = datamodule(tiny_backbone_dir, train_file=train, text_column="text",
                    label_column="tags", problem_type="multi_label")
    assert dm.label_names == ["animal", "place", "small"]
    dm.setup("fit")
    assert dm.datasets["train"]["labels"] == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    csv_train = write(tmp_path / "train.csv", "text,tags\na cat,animal|small\na city,place\n")
    dm = datamodule(tiny_backbone_dir, train_file=csv_train, text_column="text",
                    label_column="tags", problem_type="multi_label", label_separator="|")
    assert dm.label_names == ["animal", "place", "small"]


def test_regression_labels_are_numbers(tiny_backbone_dir, tmp_path):
    train = write(tmp_path / "train.tsv", "s1\ts2\tscore\na cat\ta dog\t3.5\nthe sun\tx\t0\n")
    dm = datamodule(tiny_backbone_dir, train_file=train, text_column="s1",
                    text_pair_column="s2", label_column="score", problem_type="regression")
    assert dm.label_names == [] and dm.num_labels == 1
    dm.setup("fit")
    assert dm.datasets["train"]["labels"] == [3.5, 0.0]


def test_explicit_labels_fix_the_order(tiny_backbone_dir, tmp_path):
    train = write(tmp_path / "train.tsv", "sentence\tlabel\na\tpos\nb\tneg\n")
    dm = datamodule(tiny_backbone_dir, train_file=train, labels=["pos", "neg"])
    dm.setup("fit")
    assert dm.label_names == ["pos", "neg"]
    assert dm.datasets["train"]["labels"] == [0, 1]


def test_max_train_samples_draws_rows_at_random_and_errors_name_the_file_line(
        tiny_backbone_dir, tmp_path):
    lines = ["sentence\tlabel"] + [f"row {i}\t{i % 2}" for i in range(20)]
    lines[13] = "row 12\tmaybe"  # line 14 of the file
    train = write(tmp_path / "train.tsv", "\n".join(lines) + "\n")
    dm = datamodule(tiny_backbone_dir, train_file=train, labels=["0", "1"],
                    max_train_samples=19)
    with pytest.raises(DataError, match=rf"{train}, line 14: label 'maybe' was not seen in "
                                        rf"training \(column 'label'\); known labels: 0, 1"):
        dm.setup("fit")
    dm = datamodule(tiny_backbone_dir, train_file=train, labels=["0", "1", "maybe"],
                    max_train_samples=5, seed=3)
    dm.setup("fit")
    kept = dm.datasets["train"]["sentence"]
    assert len(kept) == 5 and kept != [f"row {i}" for i in range(5)]


# --------------------------------------------------------------------------------- bad input
def test_label_in_dev_not_seen_in_training(tiny_backbone_dir, tmp_path):
    train = write(tmp_path / "train.tsv", "sentence\tlabel\na\t0\nb\t1\n")
    dev = write(tmp_path / "dev.tsv", "sentence\tlabel\nc\t1\nd\t2\n")
    dm = datamodule(tiny_backbone_dir, train_file=train, validation_file=dev)
    with pytest.raises(DataError, match=rf"^{dev}, line 3: label '2' was not seen in training "
                                        rf"\(column 'label'\); known labels: 0, 1$"):
        dm.setup("fit")


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("sentence\tlabel\n", "has no rows (empty or header only)"),
])
def test_empty_and_header_only_files(tiny_backbone_dir, tmp_path, content, message):
    train = write(tmp_path / "train.tsv", content)
    dm = datamodule(tiny_backbone_dir, train_file=train)
    with pytest.raises(DataError, match=rf"^{re.escape(train)} {re.escape(message)}"):
        dm.setup("fit")


def test_missing_text_column_suggests_the_closest(tiny_backbone_dir, tmp_path):
    train = write(tmp_path / "train.tsv", "sentense\tlabel\na\t0\nb\t1\n")
    dm = datamodule(tiny_backbone_dir, train_file=train)
    with pytest.raises(DataError, match=r"train.tsv: missing column\(s\) 'sentence' \(did you "
                                        r"mean 'sentense'\?\); the file has \['sentense', "
                                        r"'label'\]"):
        dm.setup("fit")


def test_missing_label_column_and_single_label(tiny_backbone_dir, tmp_path):
    train = write(tmp_path / "train.tsv", "sentence\tstars\na\t0\n")
    with pytest.raises(DataError, match=r"missing column\(s\) 'label'"):
        datamodule(tiny_backbone_dir, train_file=train).label_names
    one = write(tmp_path / "one.tsv", "sentence\tlabel\na\tpos\nb\tpos\n")
    with pytest.raises(DataError, match=r"holds a single label \['pos'\]; classification needs "
                                        r"two or more"):
        datamodule(tiny_backbone_dir, train_file=one).label_names


def test_text_that_is_not_text_and_a_regression_label_that_is_no_number(tiny_backbone_dir,
                                                                       tmp_path):
    train = write(tmp_path / "train.jsonl", '{"sentence": "a", "label": 0}\n'
                                            '{"sentence": null, "label": 1}\n')
    with pytest.raises(DataError, match=r"train.jsonl, line 2: column 'sentence' should hold "
                                        r"text, found None"):
        datamodule(tiny_backbone_dir, train_file=train).setup("fit")
    scores = write(tmp_path / "scores.tsv", "sentence\tlabel\na\t0.5\nb\thigh\n")
    with pytest.raises(DataError, match=r"scores.tsv, line 3: label 'high' in column 'label' is "
                                        r"not a number \(problem_type: regression\)"):
        datamodule(tiny_backbone_dir, train_file=scores, problem_type="regression").setup("fit")


def test_malformed_tsv_and_missing_file(tiny_backbone_dir, tmp_path):
    bad = write(tmp_path / "bad.tsv", "sentence\tlabel\na\t0\nb\t1\textra\tcells\n")
    with pytest.raises(DataError, match=r"bad.tsv is not valid TSV: .*Expected 2 fields in "
                                        r"line 3, saw 4"):
        datamodule(tiny_backbone_dir, train_file=bad).setup("fit")
    with pytest.raises(DataError, match=r"data.train_file: no such file: .*nowhere.tsv"):
        datamodule(tiny_backbone_dir, train_file=str(tmp_path / "nowhere.tsv")).setup("fit")


def test_labels_unknown_without_training_data(tiny_backbone_dir, tmp_path):
    dm = datamodule(tiny_backbone_dir, predict_file=write(tmp_path / "p.tsv", "sentence\na\n"))
    with pytest.raises(DataError, match="the label names are unknown: set data.train_file"):
        dm.label_names


# ----------------------------------------------------------------------------------- metrics
def _update(model: ClassificationModule, logits: torch.Tensor, labels: torch.Tensor,
            batches: int = 3) -> dict[str, float]:
    collection = model.metrics["val"]
    for chunk_logits, chunk_labels in zip(logits.chunk(batches), labels.chunk(batches)):
        collection.update(*model.metric_update(chunk_logits, {"labels": chunk_labels}))
    return {k: float(v) for k, v in collection.compute().items()}


def test_single_label_metrics_equal_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
    model = ClassificationModule(config="tiny", vocab_size=50, num_labels=3)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(30, 3, generator=generator)
    labels = torch.randint(0, 3, (30,), generator=generator)
    got = _update(model, logits, labels)
    predicted = logits.argmax(-1).numpy()
    assert got["val/accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert got["val/macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert got["val/matthews"] == pytest.approx(matthews_corrcoef(labels, predicted), abs=1e-6)


def test_multi_label_metrics_equal_scikit_learn():
    from sklearn.metrics import f1_score, matthews_corrcoef
    model = ClassificationModule(config="tiny", vocab_size=50, num_labels=4,
                                 problem_type="multi_label")
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(30, 4, generator=generator)
    labels = torch.randint(0, 2, (30, 4), generator=generator).float()
    got = _update(model, logits, labels)
    predicted = (torch.sigmoid(logits) > 0.5).long().numpy()
    truth = labels.long().numpy()
    assert got["val/accuracy"] == pytest.approx((predicted == truth).mean())
    assert got["val/macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert got["val/matthews"] == pytest.approx(matthews_corrcoef(truth.ravel(),
                                                                  predicted.ravel()), abs=1e-6)


def test_regression_metrics_equal_scipy():
    from scipy.stats import pearsonr, spearmanr
    model = ClassificationModule(config="tiny", vocab_size=50, num_labels=1,
                                 problem_type="regression")
    assert model.checkpoint_monitor == ("val/pearson", "max")
    generator = torch.Generator().manual_seed(2)
    labels = torch.rand(30, generator=generator) * 5
    logits = (labels + torch.randn(30, generator=generator)).unsqueeze(-1)
    got = _update(model, logits, labels)
    predicted = logits.squeeze(-1).numpy()
    assert got["val/pearson"] == pytest.approx(pearsonr(predicted, labels.numpy())[0], abs=1e-5)
    assert got["val/spearman"] == pytest.approx(spearmanr(predicted, labels.numpy())[0],
                                                abs=1e-5)
    assert got["val/mse"] == pytest.approx(float(np.mean((predicted - labels.numpy()) ** 2)),
                                           rel=1e-5)


def test_decode_names_labels():
    model = ClassificationModule(config="tiny", vocab_size=50, num_labels=2,
                                 label_names=["negative", "positive"])
    batch = {"index": torch.tensor([4, 7]), "sentence": ["bad", "good"]}
    rows = model.decode(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), batch)
    assert [r["label"] for r in rows] == ["negative", "positive"]
    assert rows[1]["index"] == 7 and rows[1]["sentence"] == "good"
    assert rows[0]["probabilities"]["negative"] == pytest.approx(
        torch.tensor([2.0, 0.0]).softmax(0)[0].item())
    multi = ClassificationModule(config="tiny", vocab_size=50, num_labels=3,
                                 label_names=["a", "b", "c"], problem_type="multi_label")
    rows = multi.decode(torch.tensor([[3.0, -3.0, 0.5]]), {"index": torch.tensor([0])})
    assert rows[0]["labels"] == ["a", "c"]


# --------------------------------------------------------------- training, checkpoints, export
@pytest.fixture(scope="module")
def trained(tiny_backbone_dir, tmp_path_factory):
    """A classifier fitted for a few steps on pair data with string labels, its checkpoint."""
    folder = tmp_path_factory.mktemp("pairs")
    rows = ["premise\thypothesis\tlabel"] + [
        f"the {a} cat sees a dog\tthe cat is {a}\t{'yes' if a in ('happy', 'warm') else 'no'}"
        for a in ("happy", "sad", "warm", "cold") * 4]
    train = write(folder / "train.tsv", "\n".join(rows) + "\n")
    dm = datamodule(tiny_backbone_dir, train_file=train, validation_file=train,
                    text_column="premise", text_pair_column="hypothesis")
    model = model_for(dm, tiny_backbone_dir)
    fit = trainer(max_steps=3)
    fit.fit(model, dm)
    path = folder / "model.ckpt"
    fit.save_checkpoint(path)
    return model, dm, path, train


def test_predict_from_the_checkpoint_alone(trained, tmp_path, monkeypatch):
    _, _, checkpoint, train = trained
    predict = write(tmp_path / "new.tsv", "premise\thypothesis\na cat\tthe cat\nb\tc\nd\te\n")
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--task", "classification", "--ckpt_path", str(checkpoint),
                 "--data.predict_file", predict, "--data.text_column", "premise",
                 "--data.text_pair_column", "hypothesis",
                 "--trainer.enable_progress_bar=false"]) == 0
    lines = (tmp_path / "runs/classification/version_0/predictions.jsonl").read_text()
    rows = [json.loads(line) for line in lines.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert all(r["label"] in ("no", "yes") for r in rows)
    assert rows[0]["premise"] == "a cat" and rows[0]["hypothesis"] == "the cat"
    assert set(rows[0]["probabilities"]) == {"no", "yes"}


def test_export_matches_transformers_sequence_classification(trained, tmp_path):
    from transformers import BertForSequenceClassification

    from bertzoo.export import export
    model, dm, checkpoint, _ = trained
    out = export(checkpoint, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "no", "1": "yes"}
    assert config["problem_type"] == "single_label_classification"
    reference = BertForSequenceClassification.from_pretrained(out).eval()
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    model.eval()
    with torch.no_grad():
        ours = model(batch)
        theirs = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           token_type_ids=batch["token_type_ids"]).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_any_checkpoint_is_a_backbone(trained, tmp_path):
    """A task checkpoint (here a pair classifier) starts another task: its encoder is reused."""
    model, _, checkpoint, _ = trained
    train = write(tmp_path / "train.tsv", "sentence\tlabel\na cat\t0.5\nthe dog\t1.5\n")
    dm = datamodule(checkpoint, train_file=train, problem_type="regression")
    regression = ClassificationModule(backbone=str(checkpoint), vocab_size=dm.vocab_size,
                                      num_labels=1, problem_type="regression")
    for name, value in model.encoder.state_dict().items():
        torch.testing.assert_close(regression.encoder.state_dict()[name], value)


def test_regression_run_keeps_the_best_pearson_checkpoint(tiny_backbone_dir, tmp_path,
                                                          monkeypatch):
    import csv

    import torchmetrics
    rows = ["sentence\tscore"] + [f"the {w} cat\t{i % 5}" for i, w in
                                  enumerate(["happy", "sad", "warm", "cold", "old"] * 3)]
    train = write(tmp_path / "train.tsv", "\n".join(rows) + "\n")
    # Four validations whose Pearson rises, then falls (the best is the second, not the
    # last); real Pearson values from a few steps would not say which one is the best. (No
    # training metrics, so that every Pearson computed is a validation's.)
    monkeypatch.setattr(ClassificationModule, "train_metrics", False)
    scripted = iter([0.2, 0.8, 0.5, 0.3])
    monkeypatch.setattr(torchmetrics.PearsonCorrCoef, "compute",
                        lambda self: torch.tensor(next(scripted)))
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--task", "classification", f"--model.backbone={tiny_backbone_dir}",
                 f"--data.train_file={train}", f"--data.validation_file={train}",
                 "--data.label_column=score", "--data.problem_type=regression",
                 "--data.batch_size=8", "--trainer.max_epochs=4",
                 "--trainer.num_sanity_val_steps=0",
                 "--trainer.enable_progress_bar=false"]) == 0
    run = tmp_path / "runs/classification/version_0"
    with (run / "metrics.csv").open() as f:
        logged = [(float(r["val/pearson"]), int(r["step"])) for r in csv.DictReader(f)
                  if r.get("val/pearson")]
    assert [round(p, 6) for p, _ in logged] == [0.2, 0.8, 0.5, 0.3]
    best_pearson = max(p for p, _ in logged)
    # One validation per epoch of 2 steps: at global steps 2, 4, 6 and 8 (metrics.csv's step
    # column counts from 0, hence 1, 3, 5, 7 there).
    last = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 8 and [step for _, step in logged] == [1, 3, 5, 7]
    best_step = 2 * (1 + [p for p, _ in logged].index(best_pearson))
    assert best_step == 4 < last["global_step"]  # the best is not the last
    best = list((run / "checkpoints").glob("best-*.ckpt"))
    assert [p.name for p in best] == [f"best-{best_step}.ckpt"]
    kept = torch.load(best[0], weights_only=True)
    assert kept["global_step"] == best_step
    state = next(v for k, v in kept["callbacks"].items() if k.startswith("BestCheckpoint{"))
    assert state["monitor"] == "val/pearson"
    assert float(state["best_model_score"]) == pytest.approx(best_pearson)
    # the weights of that step, not of the end of training
    assert not torch.equal(kept["state_dict"]["classifier.weight"],
                           last["state_dict"]["classifier.weight"])


def test_mean_pooling_reads_the_real_tokens_only(tiny_backbone_dir):
    model = ClassificationModule(backbone=str(tiny_backbone_dir), num_labels=2, pooling="mean")
    assert model.encoder.pooler is None  # not trained, so not kept
    model.eval()
    ids = torch.tensor([[2, 40, 41, 42, 3], [2, 50, 3, 0, 0]])
    mask = (ids != 0).long()
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        logits = model(batch)
        hidden = model.encoder(ids, mask).last_hidden_state
        alone = model.encoder(ids[1:, :3]).last_hidden_state  # the short row without padding
    expected = torch.stack([hidden[0].mean(0), alone[0].mean(0)])
    torch.testing.assert_close(logits, model.classifier(expected))
    hparams = {"num_labels": 2, "label_names": ["a", "b"], "pooling": "mean"}
    assert ClassificationModule.hf_export({}, hparams) is None  # exported as the encoder alone
    with pytest.raises(ValueError, match="model.pooling must be 'cls' or 'mean'"):
        ClassificationModule(config="tiny", vocab_size=50, num_labels=2, pooling="max")
