"""`bertzoo.load`, generated over the registry (built-in tasks and installed plugins alike):
a checkpoint, a run folder, a `bertzoo export` folder and an ONNX export each give the rows
`bertzoo predict` writes for the task's example data (numbers within 1e-4). The ONNX graph's
outputs carry Hugging Face's names and match PyTorch within 1e-4, also on a real BERT
(all-MiniLM-L6-v2) and real sentences of different lengths."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bertzoo.checkpoint import CheckpointError
from bertzoo.cli import cmd_task, main
from bertzoo.export import TASK_RECORD, export
from bertzoo.inference import load
from bertzoo.onnx_export import export_onnx, max_difference
from bertzoo.tasks.inputs import InputError
from bertzoo.tasks.registry import REGISTRY, get_task

TASK_NAMES = REGISTRY.names()
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


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
    data_args = {"batch_size": 4, **spec.example_data(folder), **data}
    arguments = [f"--data.{k}={v if isinstance(v, str) else json.dumps(v)}"
                 for k, v in data_args.items()]
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        cmd_task("fit", ["--task", name, f"--model.backbone={backbone}", *arguments,
                         "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
                         "--trainer.limit_val_batches=1", *QUIET])
        assert main(["predict", "--task", name, "--ckpt_path", "last", *arguments,
                     *QUIET]) == 0
    finally:
        os.chdir(cwd)
    runs = folder / "runs" / name
    predicted = {p.name: p.read_text() for p in (runs / "version_1").iterdir()
                 if p.suffix in (".json", ".jsonl")}
    assert predicted, f"{name}: bertzoo predict wrote no predictions"
    return Trained(name, runs / "version_0", data_args, spec.inputs.examples(data_args),
                   predicted)


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
    if isinstance(theirs, float) or isinstance(ours, float):
        assert math.isclose(ours, theirs, rel_tol=0, abs_tol=tolerance), \
            f"{where}: {ours} != {theirs}"
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and ours.keys() == theirs.keys(), \
            f"{where}: keys {sorted(ours)} != {sorted(theirs)}"
        for key in theirs:
            assert_close(ours[key], theirs[key], f"{where}.{key}", tolerance)
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), f"{where}: lengths differ"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_close(a, b, f"{where}[{i}]", tolerance)
    else:
        assert ours == theirs, f"{where}: {ours!r} != {theirs!r}"


def assert_predicts_like_the_cli(predictor, task: Trained) -> None:
    """The predictor's rows, written as `bertzoo predict` writes them, equal its files."""
    rows = predictor(task.inputs)
    assert len(rows) == len(task.inputs)
    written = predictor.module.prediction_files(rows)
    assert written.keys() == task.predicted.keys()
    for name, text in written.items():
        assert_close(parse(name, text), parse(name, task.predicted[name]), name)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_load_checkpoint_and_run_folder_give_the_rows_of_predict(name, trained):
    task = trained(name)
    predictor = load(task.checkpoint)
    assert predictor.task == name and predictor.runtime == "pytorch"
    assert_predicts_like_the_cli(predictor, task)
    assert_predicts_like_the_cli(load(task.run), task)  # its best checkpoint


@pytest.mark.parametrize("name", TASK_NAMES)
def test_load_export_gives_the_rows_of_predict(name, trained, tmp_path):
    task = trained(name)
    folder = export(task.checkpoint, tmp_path / "export")
    record = json.loads((folder / TASK_RECORD).read_text())
    assert record["module"] == (f"{get_task(name).module.__module__}."
                                f"{get_task(name).module.__qualname__}")
    predictor = load(folder)
    assert predictor.task == name
    assert_predicts_like_the_cli(predictor, task)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_load_onnx_export_gives_the_rows_of_predict(name, trained, tmp_path):
    import transformers
    task = trained(name)
    folder, difference = export_onnx(task.checkpoint, tmp_path / "onnx")
    print(f"{name}: ONNX max |diff| vs PyTorch {difference:.2e}")
    assert difference <= 1e-4
    predictor = load(folder)
    assert predictor.task == name and predictor.runtime == "onnxruntime"
    assert_predicts_like_the_cli(predictor, task)
    # Outputs named as the Hugging Face head of the same export names its outputs.
    hf = export(task.checkpoint, tmp_path / "hf")
    architecture = json.loads((hf / "config.json").read_text())["architectures"][0]
    reference = getattr(transformers, architecture).from_pretrained(hf).eval()
    batch = next(predictor.batches(predictor.rows(task.inputs[:2]))[1])
    with torch.no_grad():
        out = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        token_type_ids=batch["token_type_ids"])
    record = json.loads((folder / TASK_RECORD).read_text())
    assert record["onnx"]["outputs"] == [k for k in out.keys() if k != "loss"]
    assert record["onnx"]["inputs"][:3] == ["input_ids", "attention_mask", "token_type_ids"]


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
