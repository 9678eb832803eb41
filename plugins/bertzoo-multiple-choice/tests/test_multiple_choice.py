"""The multiple-choice plugin: bertzoo's checks for every task (`bertzoo.testing.check_task`),
found through its entry point, SWAG data read into (B, C, T) batches, rows with different
numbers of choices, clear errors, and the exported head giving Hugging Face's
`BertForMultipleChoice` the same scores."""

from __future__ import annotations

import importlib.metadata
import json

import lightning as L
import pytest
import torch

from bertzoo.tasks import DataError, get_task, list_tasks
from bertzoo.testing import check_task
from bertzoo_multiple_choice.task import (TASK, MultipleChoiceDataModule, MultipleChoiceModule,
                                          example_data)


def test_bertzoo_checks_every_task_passes(backbone, tmp_path):
    """Exactly what bertzoo's own suite runs over every registered task: fit, checkpoint,
    reload, identical predictions, predict, --help."""
    check_task(TASK, tmp_path, backbone=backbone)


def test_registered_only_through_its_entry_point():
    entry_points = importlib.metadata.entry_points(group="bertzoo.tasks", name="multiple_choice")
    (entry_point,) = entry_points
    assert entry_point.value == "bertzoo_multiple_choice.task:TASK"
    assert entry_point.dist.metadata["Name"] == "bertzoo-multiple-choice"
    assert get_task("multiple_choice") is TASK
    listed = {t.name: t for t in list_tasks()}["multiple_choice"]
    assert (listed.distribution, listed.status) == ("bertzoo-multiple-choice", "ok")


def test_swag_rows_become_choice_batches(backbone, tmp_path):
    data = MultipleChoiceDataModule(tokenizer=str(backbone), batch_size=3, **example_data(tmp_path))
    data.setup("fit")
    row = data.datasets["train"][0]
    assert len(row["input_ids"]) == 4  # one sequence per ending
    tokenizer = data.tokenizer
    first = tokenizer.decode(row["input_ids"][0])
    assert first.startswith(data.raw("train")[0]["sent1"].lower().rstrip("."))
    assert set(row["token_type_ids"][0]) == {0, 1}
    batch = next(iter(data.train_dataloader()))
    B, C, T = batch["input_ids"].shape
    assert (B, C) == (3, 4)
    assert batch["attention_mask"].shape == batch["token_type_ids"].shape == (B, C, T)
    assert batch["choice_mask"].all() and batch["labels"].shape == (B,)


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_rows_with_different_numbers_of_choices(backbone, tmp_path):
    train = write_jsonl(tmp_path / "arc.jsonl", [
        {"question": "What do cats like?", "choices": ["fish", "rocks"], "answer": 0},
        {"question": "Which is a city?", "choices": ["Lima", "blue", "seven", "tree"],
         "answer": 0},
        {"question": "Which is warm?", "choices": ["ice", "snow", "summer"], "answer": 2}])
    data = MultipleChoiceDataModule(tokenizer=str(backbone), validation_file=train,
                                    context_column="question", question_column=None,
                                    choices_column="choices", label_column="answer",
                                    batch_size=3, group_by_length=False)
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))  # in file order
    assert batch["input_ids"].shape[:2] == (3, 4)
    assert batch["choice_mask"].tolist() == [[True, True, False, False], [True] * 4,
                                             [True, True, True, False]]
    model = MultipleChoiceModule(backbone=str(backbone), vocab_size=data.vocab_size).eval()
    with torch.no_grad():
        scores = model(batch)
    assert torch.isfinite(model.loss(scores, batch))
    assert scores[0, 2:].eq(torch.finfo(scores.dtype).min).all()
    rows = model.decode(scores, batch)
    assert [len(r["probabilities"]) for r in rows] == [2, 4, 3]
    assert all(sum(r["probabilities"]) == pytest.approx(1.0) for r in rows)


def test_bad_labels_and_too_few_choices(backbone, tmp_path):
    bad_label = write_jsonl(tmp_path / "bad.jsonl", [
        {"q": "a", "choices": ["x", "y"], "label": 0},
        {"q": "b", "choices": ["x", "y"], "label": 2}])
    data = MultipleChoiceDataModule(tokenizer=str(backbone), train_file=bad_label,
                                    context_column="q", question_column=None,
                                    choices_column="choices")
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: label 2 in column 'label' is not "
                                        r"a choice index 0-1"):
        data.setup("fit")
    one_choice = write_jsonl(tmp_path / "one.jsonl", [{"q": "a", "choices": ["x"], "label": 0}])
    data = MultipleChoiceDataModule(tokenizer=str(backbone), train_file=one_choice,
                                    context_column="q", question_column=None,
                                    choices_column="choices")
    with pytest.raises(DataError, match=r"one.jsonl, line 1: expected two or more text "
                                        r"choices, found \['x'\]"):
        data.setup("fit")
    missing = tmp_path / "swag.csv"
    missing.write_text("sent1,sent2,ending0,ending1,label\na,b,c,d,0\n")
    data = MultipleChoiceDataModule(tokenizer=str(backbone), train_file=str(missing))
    with pytest.raises(DataError, match=r"missing column\(s\) 'ending2', 'ending3'; the file "
                                        r"has \['sent1', 'sent2', 'ending0', 'ending1', 'label'\]"):
        data.setup("fit")


def test_export_gives_transformers_the_same_scores(backbone, tmp_path):
    from transformers import BertForMultipleChoice

    from bertzoo.export import export
    data = MultipleChoiceDataModule(tokenizer=str(backbone), batch_size=4,
                                    **example_data(tmp_path))
    model = MultipleChoiceModule(backbone=str(backbone), vocab_size=data.vocab_size)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(model, data)
    trainer.save_checkpoint(tmp_path / "mc.ckpt")
    out = export(tmp_path / "mc.ckpt", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForMultipleChoice"]
    reference = BertForMultipleChoice.from_pretrained(out).eval()
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))
    model.eval()
    with torch.no_grad():
        ours = model(batch)
        theirs = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           token_type_ids=batch["token_type_ids"]).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
