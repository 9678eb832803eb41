"""`bertzoo.load` and ONNX export beyond the generated checks. The generated ones
(`bertzoo.testing.check_load_export_onnx`, run over the registry by
tests/test_registered_tasks.py, plugins included): a checkpoint, a run folder, a `bertzoo
export` and an ONNX export each give the rows `bertzoo predict` writes for the task's example
data (within 1e-4). Here: the ONNX graph against PyTorch on a real BERT (all-MiniLM-L6-v2) and
real sentences of different lengths, int8, bad inputs, transformers.pipeline on an export,
and the bench row."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bertzoo.checkpoint import CheckpointError
from bertzoo.export import TASK_RECORD, export
from bertzoo.inference import load
from bertzoo.onnx_export import export_onnx, max_difference
from bertzoo.tasks.inputs import InputError
from bertzoo.tasks.registry import get_task
from bertzoo.testing import TASK_CHECKS, check_load_export_onnx, expect_close, fit_and_predict


@dataclass
class Trained:
    name: str
    run: Path  # runs/NAME/version_0: one training step
    data_args: dict
    inputs: list  # the example predict split as raw inputs
    predicted: dict[str, str]  # the files `bertzoo predict` wrote

    @property
    def checkpoint(self) -> Path:
        return self.run / "checkpoints" / "last.ckpt"


def train_and_predict(name: str, folder: Path, backbone: Path, **data) -> Trained:
    """One `bertzoo fit` step on the task's example data, then `bertzoo predict` from it."""
    spec = get_task(name)
    run, predicted = fit_and_predict(spec, folder, backbone, **data)
    return Trained(name, run, predicted["data_args"],
                   spec.inputs.examples(predicted["data_args"]), predicted["written"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_backbone_dir):
    cache: dict[str, Trained] = {}

    def get(name: str) -> Trained:
        if name not in cache:
            cache[name] = train_and_predict(name, tmp_path_factory.mktemp(name),
                                            tiny_backbone_dir)
        return cache[name]

    return get


def parse(name: str, text: str):
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines()]
    return json.loads(text)


def assert_close(ours, theirs, where: str = "", tolerance: float = 1e-4) -> None:
    expect_close(ours, theirs, where, tolerance)


def test_every_task_is_checked_by_check_task():
    """The generated checks (tests/test_registered_tasks.py runs TASK_CHECKS over the registry,
    plugins included; a plugin's CI runs them with check_task) include loading and ONNX."""
    assert check_load_export_onnx in TASK_CHECKS


def test_int8_quantized_onnx_export_runs(trained, tmp_path):
    task = trained("classification")
    folder, difference = export_onnx(task.checkpoint, tmp_path / "int8", quantize="int8")
    record = json.loads((folder / TASK_RECORD).read_text())
    assert record["onnx"]["quantized"] == "int8"
    assert math.isfinite(difference)
    rows = load(folder)(task.inputs)
    assert [set(r) for r in rows] == [set(r) for r in parse(
        "predictions.jsonl", task.predicted["predictions.jsonl"])]


REAL_SENTENCES = [
    "a gripping , funny film .",
    "it 's a charming and often affecting journey .",
    "the movie is so bad that it 's almost worth seeing , if only to marvel at how a cast "
    "this talented could be wasted on a script this lazy and a director this indifferent .",
    "unflinchingly bleak and desperate",
    "no .",
]


def test_onnx_matches_pytorch_on_a_real_bert(minilm_path, tmp_path):
    """all-MiniLM-L6-v2 under a classification head: the graph's logits equal PyTorch's
    within 1e-4 on real sentences of different lengths, batched with padding."""
    task = train_and_predict("classification", tmp_path, Path(minilm_path))
    folder, _ = export_onnx(task.checkpoint, tmp_path / "onnx")
    eager, graph = load(task.checkpoint, batch_size=5), load(folder, batch_size=5)
    _, batches = eager.batches(eager.rows(REAL_SENTENCES))
    batch = next(batches)
    assert batch["attention_mask"].sum(1).unique().numel() == len(REAL_SENTENCES)
    with torch.inference_mode():
        expected = eager.module(batch)
    got = graph._forward(batch)
    difference = max_difference(expected, got, batch["attention_mask"])
    print(f"all-MiniLM-L6-v2 classification: ONNX max |diff| vs PyTorch {difference:.2e}")
    assert difference <= 1e-4
    for ours, theirs in zip(eager(REAL_SENTENCES), graph(REAL_SENTENCES)):
        assert_close(ours, theirs)


def test_bad_inputs_and_paths_are_named(trained, tmp_path):
    predictor = load(trained("classification").checkpoint)
    with pytest.raises(InputError, match=r"inputs\[1\]: expected a text, or \{\"text\""):
        predictor(["fine", 5])
    with pytest.raises(InputError, match=r"inputs\[0\]\.text_pair: expected no second text"):
        predictor([{"text": "a", "text_pair": "b"}])
    with pytest.raises(InputError, match=r"inputs: expected a list of inputs"):
        predictor("a single text")
    with pytest.raises(CheckpointError, match=r"is not a trained task model"):
        load(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no such file or folder"):
        load(tmp_path / "nowhere")


def test_bench_onnx_section_runs(capsys):
    from bertzoo.bench import main as bench_main
    assert bench_main(["--presets", "test", "--sections", "onnx", "--repeats", "1",
                       "--warmup", "0", "--finetune-batch-size", "4", "--vocab-size",
                       "200"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines()
           if line.startswith("| onnx |")]
    assert len(row) == 1 and "onnxruntime vs bertzoo eager" in row[0], row


def test_transformers_pipeline_reads_a_classification_export(trained, tmp_path):
    """What the README shows: `transformers.pipeline` on an export answers as bertzoo does."""
    from transformers import pipeline
    task = trained("classification")
    folder = export(task.checkpoint, tmp_path / "export")
    classify = pipeline("text-classification", model=str(folder), device="cpu")
    ours = load(folder)(task.inputs)
    for answer, row in zip(classify(task.inputs), ours):
        assert answer["label"] == row["label"]
        assert math.isclose(answer["score"], row["probabilities"][row["label"]], abs_tol=1e-4)
