"""`bertzoo glue` and what it needs from classification: the nine tasks on small files in GLUE's
own download layout (file names, headers or none, columns, label vocabularies, MNLI's two dev
and two test files, the diagnostic set), the results table and the GLUE server's submission
files, a failing task that does not stop the others, --resume, SST-2 on its real files; GLUE's
metrics (F1 of MRPC/QQP against scikit-learn), CoLA's header-less TSVs, hub split names; and a
backbone too short for data.max_length, a config.json as model.config."""

from __future__ import annotations

import csv
import json
import random
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from bertzoo import glue
from bertzoo.cli import cmd_task, main
from bertzoo.tasks.base import DataError
from bertzoo.tasks.classification import ClassificationDataModule, ClassificationModule

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "SST-2"  # real GLUE SST-2 train and dev (no test)
GOOD = ("happy", "bright", "warm", "gentle", "kind")
BAD = ("sad", "dark", "cold", "noisy", "cruel")
NOUNS = ("cat", "dog", "house", "river", "city", "tree", "bird", "car")
SUBMISSION_FILES = {"CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv",
                    "MNLI-mm.tsv", "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv"}
# Each test file's rows (a different count per file: a submission written from the wrong
# file shows), and what the GLUE server reads in each submission file.
TEST_ROWS = {"CoLA.tsv": 7, "SST-2.tsv": 6, "MRPC.tsv": 5, "STS-B.tsv": 9, "QQP.tsv": 4,
             "MNLI-m.tsv": 6, "MNLI-mm.tsv": 5, "QNLI.tsv": 7, "RTE.tsv": 3, "WNLI.tsv": 4,
             "AX.tsv": 8}
SERVER_LABELS = {"CoLA.tsv": {"0", "1"}, "SST-2.tsv": {"0", "1"}, "MRPC.tsv": {"0", "1"},
                 "QQP.tsv": {"0", "1"}, "WNLI.tsv": {"0", "1"},
                 "MNLI-m.tsv": {"entailment", "neutral", "contradiction"},
                 "MNLI-mm.tsv": {"entailment", "neutral", "contradiction"},
                 "AX.tsv": {"entailment", "neutral", "contradiction"},
                 "QNLI.tsv": {"entailment", "not_entailment"},
                 "RTE.tsv": {"entailment", "not_entailment"}}


# --------------------------------------------------------------- GLUE's download, generated
def _text(rng: random.Random, positive: bool) -> str:
    words = GOOD if positive else BAD
    return f"the {rng.choice(words)} {rng.choice(NOUNS)} is {rng.choice(words)} ."


def _tsv(path: Path, header: list[str] | None, rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(str(c) for c in row)
                                                       for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_glue_download(root: Path, train: int = 16, dev: int = 8) -> Path:
    """GLUE's download script's layout, small: each task's folder, file names, header line (or
    none: CoLA's train and dev), columns, and label values as GLUE distributes them."""
    rng = random.Random(0)
    MNLI = ("entailment", "neutral", "contradiction")

    def split_rows(count: int, make) -> list[list]:
        return [make(i, i % 2 == 1) for i in range(count)]

    # CoLA: no header; source, label, original label ('*' marks unacceptable), sentence
    for split, count in (("train", train), ("dev", dev)):
        _tsv(root / "CoLA" / f"{split}.tsv", None, split_rows(count, lambda i, p: [
            "gj04", int(p), "" if p else "*", _text(rng, p)]))
    _tsv(root / "CoLA" / "test.tsv", ["index", "sentence"],
         [[i, _text(rng, i % 2 == 0)] for i in range(TEST_ROWS["CoLA.tsv"])])
    # SST-2
    for split, count in (("train", train), ("dev", dev)):
        _tsv(root / "SST-2" / f"{split}.tsv", ["sentence", "label"],
             split_rows(count, lambda i, p: [_text(rng, p), int(p)]))
    _tsv(root / "SST-2" / "test.tsv", ["index", "sentence"],
         [[i, _text(rng, i % 2 == 0)] for i in range(TEST_ROWS["SST-2.tsv"])])
    # MRPC
    mrpc = ["#1 ID", "#2 ID", "#1 String", "#2 String"]
    for split, count in (("train", train), ("dev", dev)):
        _tsv(root / "MRPC" / f"{split}.tsv", ["Quality", *mrpc], split_rows(
            count, lambda i, p: [int(p), 100 + i, 200 + i, _text(rng, p), _text(rng, True)]))
    _tsv(root / "MRPC" / "test.tsv", ["index", *mrpc], [
        [i, 100 + i, 200 + i, _text(rng, True), _text(rng, False)]
        for i in range(TEST_ROWS["MRPC.tsv"])])
    # STS-B
    stsb = ["index", "genre", "filename", "year", "old_index", "source1", "source2",
            "sentence1", "sentence2"]
    for split, count in (("train", train), ("dev", dev)):
        _tsv(root / "STS-B" / f"{split}.tsv", [*stsb, "score"], split_rows(
            count, lambda i, p: [i, "main-news", "headlines", "2015", i, "none", "none",
                                 _text(rng, p), _text(rng, True), 4.2 if p else 0.8]))
    _tsv(root / "STS-B" / "test.tsv", stsb, [
        [i, "main-news", "headlines", "2016", i, "none", "none", _text(rng, True),
         _text(rng, False)] for i in range(TEST_ROWS["STS-B.tsv"])])
    # QQP
    for split, count in (("train", train), ("dev", dev)):
        _tsv(root / "QQP" / f"{split}.tsv",
             ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], split_rows(
                 count, lambda i, p: [i, 2 * i, 2 * i + 1, _text(rng, p) + " ?",
                                      _text(rng, True) + " ?", int(p)]))
    _tsv(root / "QQP" / "test.tsv", ["id", "question1", "question2"],
         [[i, _text(rng, True), _text(rng, False)] for i in range(TEST_ROWS["QQP.tsv"])])
    # MNLI: parses, genre, one annotator label (train) or five (dev), gold_label
    parses = ["sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse",
              "sentence2_parse"]
    mnli = ["index", "promptID", "pairID", "genre", *parses, "sentence1", "sentence2"]

    def mnli_row(i: int, annotators: int) -> list:
        label = MNLI[i % 3]
        s1, s2 = _text(rng, label != "contradiction"), _text(rng, label == "entailment")
        return [i, 1000 + i, f"{1000 + i}e", "fiction", f"( {s1} )", f"( {s2} )",
                f"(ROOT {s1})", f"(ROOT {s2})", s1, s2, *([label] * annotators), label]
    _tsv(root / "MNLI" / "train.tsv", [*mnli, "label1", "gold_label"],
         [mnli_row(i, 1) for i in range(train)])
    for name in ("dev_matched", "dev_mismatched"):
        _tsv(root / "MNLI" / f"{name}.tsv",
             [*mnli, *(f"label{k}" for k in range(1, 6)), "gold_label"],
             [mnli_row(i, 5) for i in range(dev)])
    for name, key in (("test_matched", "MNLI-m.tsv"), ("test_mismatched", "MNLI-mm.tsv")):
        _tsv(root / "MNLI" / f"{name}.tsv", mnli,
             [mnli_row(i, 0)[:-1] for i in range(TEST_ROWS[key])])
    _tsv(root / "diagnostic" / "diagnostic.tsv", ["index", "sentence1", "sentence2"],
         [[i, _text(rng, True), _text(rng, i % 2 == 0)] for i in range(TEST_ROWS["AX.tsv"])])
    # QNLI, RTE (string labels), WNLI (0/1)
    for folder, columns, labels in (
            ("QNLI", ["question", "sentence"], ("entailment", "not_entailment")),
            ("RTE", ["sentence1", "sentence2"], ("entailment", "not_entailment")),
            ("WNLI", ["sentence1", "sentence2"], (1, 0))):
        for split, count in (("train", train), ("dev", dev)):
            _tsv(root / folder / f"{split}.tsv", ["index", *columns, "label"], split_rows(
                count, lambda i, p: [i, _text(rng, p), _text(rng, True), labels[int(not p)]]))
        _tsv(root / folder / "test.tsv", ["index", *columns],
             [[i, _text(rng, True), _text(rng, False)]
              for i in range(TEST_ROWS[f"{folder}.tsv"])])
    return root


# Only what a test cannot have: a tiny backbone, one training step, one validation batch.
def quick(backbone: Path) -> list[str]:
    return [f"--model.backbone={backbone}", "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
            "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", "--data.batch_size=4"]


def read_submission(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


class Recorder:
    """`cmd_task` that remembers which commands ran, for which recipe."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    def __call__(self, command: str, args: list[str]):
        recipe = Path(args[args.index("--config") + 1]).stem
        self.calls.append((recipe, command))
        return cmd_task(command, args)


@pytest.fixture(scope="module")
def suite(tiny_backbone_dir, tmp_path_factory):
    """All nine tasks on the generated download, once for the tests below."""
    work = tmp_path_factory.mktemp("glue")
    data = write_glue_download(work / "glue_data")
    cwd = Path.cwd()
    import os
    os.chdir(work)
    try:
        recorder = Recorder()
        status = glue.main(["--data_dir", str(data), "--output_dir", "out",
                            *quick(tiny_backbone_dir)], run_task=recorder)
    finally:
        os.chdir(cwd)
    return work, data, status, recorder


def test_every_task_runs_and_writes_glues_submission_files(suite):
    work, data, status, recorder = suite
    assert status == 0
    out = work / "out"
    assert {p.name for p in out.glob("*.tsv")} == SUBMISSION_FILES
    for name, rows in TEST_ROWS.items():
        lines = read_submission(out / name)
        assert lines[0] == ["index", "prediction"], name
        assert [int(index) for index, _ in lines[1:]] == list(range(rows)), name
        predictions = [prediction for _, prediction in lines[1:]]
        if name == "STS-B.tsv":
            assert all(0.0 <= float(p) <= 5.0 for p in predictions)
        else:
            assert set(predictions) <= SERVER_LABELS[name], (name, set(predictions))
    # fit, validate on each dev set, predict each test set: MNLI twice and the diagnostic set
    expected = [(task, command) for task in glue.TASKS for command in
                ["fit", "validate"] + (["validate"] if task == "mnli" else [])
                + ["predict"] * (3 if task == "mnli" else 1)]
    assert recorder.calls == expected


def test_the_results_table_has_each_tasks_official_metric(suite):
    work, *_ = suite
    results = json.loads((work / "out" / "glue_results.json").read_text())
    tasks = results["tasks"]
    assert set(tasks) == set(glue.TASKS) and all(t["status"] == "done" for t in tasks.values())
    assert set(tasks["mnli"]["dev"]) == {"m", "mm"}
    official = {"cola": {"matthews"}, "mrpc": {"f1", "accuracy"}, "qqp": {"f1", "accuracy"},
                "stsb": {"pearson", "spearman"}, "sst2": {"accuracy"}, "qnli": {"accuracy"},
                "rte": {"accuracy"}, "wnli": {"accuracy"}}
    for name, metrics in official.items():
        (scores,) = tasks[name]["dev"].values()
        assert metrics <= set(scores), name
    for name, entry in tasks.items():  # each task is a normal run folder with its checkpoint
        assert (Path(work) / entry["run"] / "metrics.csv").is_file()
        assert Path(work / entry["checkpoint"]).is_file()
    table = (work / "out" / "glue_results.md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| MNLI-m"))
    assert header == ("| MNLI-m | MNLI-mm | QQP | QNLI | SST-2 | CoLA | STS-B | MRPC | RTE | "
                      "WNLI | Average |")
    row = table[table.index(header) + 2].strip("| ").split(" | ")
    mrpc = tasks["mrpc"]["dev"][""]
    assert row[7] == f"{100 * mrpc['f1']:.1f}/{100 * mrpc['accuracy']:.1f}"
    assert row[0] == f"{100 * tasks['mnli']['dev']['m']['accuracy']:.1f}"
    firsts = [100 * tasks[n]["dev"][k][glue.TASKS[n].metrics[0]] for _, n, k in glue.TABLE]
    assert row[-1] == f"{sum(firsts) / 9:.1f}"


def test_a_failing_task_is_reported_and_resume_runs_only_the_rest(tiny_backbone_dir, tmp_path,
                                                                  monkeypatch):
    data = write_glue_download(tmp_path / "glue_data")
    monkeypatch.chdir(tmp_path)
    rte_dev = data / "RTE" / "dev.tsv"
    good = rte_dev.read_text()
    rte_dev.write_text(good.replace("not_entailment", "contradiction", 1))  # never trained on
    first = Recorder()
    args = ["--data_dir", str(data), "--output_dir", "out", "--tasks", "wnli,rte,sst2",
            *quick(tiny_backbone_dir)]
    assert glue.main(args, run_task=first) == 1
    results = json.loads((tmp_path / "out" / "glue_results.json").read_text())["tasks"]
    assert results["wnli"]["status"] == results["sst2"]["status"] == "done"
    assert results["rte"]["status"] == "failed"
    assert "label 'contradiction' was not seen in training" in results["rte"]["error"]
    assert {p.name for p in (tmp_path / "out").glob("*.tsv")} == {"WNLI.tsv", "SST-2.tsv"}
    table = (tmp_path / "out" / "glue_results.md").read_text()
    assert "| RTE | failed: DataError:" in table and "RTE/dev.tsv, line 2: label" in table
    assert ("sst2", "fit") in first.calls  # the task after the failing one still ran

    rte_dev.write_text(good)
    second = Recorder()
    assert glue.main([*args, "--resume"], run_task=second) == 0
    assert {task for task, _ in second.calls} == {"rte"}
    results = json.loads((tmp_path / "out" / "glue_results.json").read_text())["tasks"]
    assert all(entry["status"] == "done" for entry in results.values())
    assert (tmp_path / "out" / "RTE.tsv").is_file()


def test_unknown_task_names_are_refused(capsys):
    assert main(["glue", "--model.backbone", "my-bert", "--tasks", "cola,sts"]) == 1
    assert capsys.readouterr().err.strip() == (
        "bertzoo glue: error: --tasks: unknown GLUE task(s) sts; the tasks are cola, sst2, "
        "mrpc, stsb, qqp, mnli, qnli, rte, wnli")
    with pytest.raises(glue.GlueError, match=r"--tasks: unknown GLUE task\(s\) sts; the tasks "
                                             r"are cola, sst2, mrpc, stsb, qqp, mnli, qnli, "
                                             r"rte, wnli"):
        glue.main(["--tasks", "cola,sts"], run_task=cmd_task)
    assert [t.name for t in glue.parse_tasks("SST-2,MNLI")] == ["sst2", "mnli"]


@pytest.mark.skipif(not SST2.is_dir(), reason="no local copy of GLUE SST-2 beside the "
                                              "repository (see ../shared/data/SOURCES.md)")
def test_sst2_on_its_real_files(tiny_backbone_dir, tmp_path, monkeypatch):
    """SST-2's real train (its first 400 rows) and dev files; the copy has no test file, so the
    dev sentences stand in for one (GLUE's test layout: index, sentence) to check the
    submission file. Dev is used for scoring only."""
    folder = tmp_path / "glue_data" / "SST-2"
    folder.mkdir(parents=True)
    with (SST2 / "train.tsv").open(encoding="utf-8") as f:
        (folder / "train.tsv").write_text("".join(line for _, line in zip(range(401), f)))
    dev = (SST2 / "dev.tsv").read_text(encoding="utf-8")
    (folder / "dev.tsv").write_text(dev)
    sentences = [line.split("\t")[0] for line in dev.splitlines()[1:]]
    (folder / "test.tsv").write_text("index\tsentence\n" + "".join(
        f"{i}\t{s}\n" for i, s in enumerate(sentences)))
    monkeypatch.chdir(tmp_path)
    assert glue.main(["--data_dir", str(tmp_path / "glue_data"), "--output_dir", "out",
                      "--tasks", "sst2", *quick(tiny_backbone_dir)], run_task=cmd_task) == 0
    lines = read_submission(tmp_path / "out" / "SST-2.tsv")
    assert len(lines) == 1 + 872 and {p for _, p in lines[1:]} <= {"0", "1"}
    results = json.loads((tmp_path / "out" / "glue_results.json").read_text())
    assert 0.0 <= results["tasks"]["sst2"]["dev"][""]["accuracy"] <= 1.0


# ------------------------------------------------------------------ submissions, recipes
def test_hub_class_ids_become_the_servers_label_strings():
    rows = [{"index": 1, "label": "2"}, {"index": 0, "label": "0"}]
    assert [glue.submission_label(glue.TASKS["mnli"], r) for r in rows] == [
        "contradiction", "entailment"]
    assert glue.submission_label(glue.TASKS["rte"], {"label": "1"}) == "not_entailment"
    assert glue.submission_label(glue.TASKS["rte"], {"label": "entailment"}) == "entailment"
    assert glue.submission_label(glue.TASKS["cola"], {"label": "1"}) == "1"
    assert glue.submission_label(glue.TASKS["stsb"], {"score": 5.7}) == "5.000"
    with pytest.raises(ValueError, match=r"MRPC: predicted label 'yes' is not one that GLUE's "
                                         r"server reads \(0, 1\)"):
        glue.submission_label(glue.TASKS["mrpc"], {"label": "yes"})


def test_each_recipe_documents_the_grid_the_metric_and_glues_local_layout():
    for name, task in glue.TASKS.items():
        recipe = glue.recipe_path(task)
        text = recipe.read_text()
        header = " ".join(line.lstrip("#").strip() for line in text.splitlines()
                          if line.startswith("#"))
        assert "batch 32, 3 epochs" in header and "5e-5, 3e-5 and 2e-5" in header, name
        assert "nyu-mll/glue" in header and f"config {name}" in header
        assert "model.optimizer: adamw" in header and "model.scheduler: linear" in header
        for metric in task.metrics:
            assert f"val/{metric}" in header, (name, metric)
        # the header's local override reads the same files and columns as
        # `bertzoo glue --data_dir glue_data` does
        data = yaml.safe_load(text)["data"]
        lines = text.splitlines()
        marker = next(i for i, line in enumerate(lines) if "Local files instead of the Hub" in line)
        shown = shlex.split(" ".join(line.lstrip("#").strip() for line in lines[marker + 1:]
                                     if line.startswith("#   --")))
        from_header = {**data, **{k.removeprefix("--data."): yaml.safe_load(v)
                                  for k, v in zip(shown[::2], shown[1::2])}}
        used = {**data, **{k: yaml.safe_load(v) for k, v in (
            option.removeprefix("--data.").split("=", 1)
            for option in task.local_overrides("glue_data"))}}
        assert from_header == used, name


# ------------------------------------------------------------ classification for GLUE
def test_second_label_f1_equals_scikit_learn():
    from sklearn.metrics import f1_score
    model = ClassificationModule(config="tiny", vocab_size=50, num_labels=2)
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(40, 2, generator=generator)
    labels = torch.randint(0, 2, (40,), generator=generator)
    collection = model.metrics["val"]
    for chunk_logits, chunk_labels in zip(logits.chunk(3), labels.chunk(3)):
        collection.update(*model.metric_update(chunk_logits, {"labels": chunk_labels}))
    got = {k: float(v) for k, v in collection.compute().items()}
    assert got["val/f1"] == pytest.approx(f1_score(labels, logits.argmax(-1), pos_label=1))
    three = ClassificationModule(config="tiny", vocab_size=50, num_labels=3)
    assert "f1" not in three.build_metrics()


def test_cola_files_without_a_header(tiny_backbone_dir, tmp_path):
    data = write_glue_download(tmp_path, train=6, dev=4)
    dm = ClassificationDataModule(
        tokenizer=str(tiny_backbone_dir), train_file=str(data / "CoLA" / "train.tsv"),
        validation_file=str(data / "CoLA" / "dev.tsv"),
        predict_file=str(data / "CoLA" / "test.tsv"),
        column_names=["source", "label", "original_label", "sentence"])
    assert dm.label_names == ["0", "1"]
    assert len(dm.raw("train")) == 6  # the first line is a row, not a header
    assert dm.raw("train")["original_label"][:2] == ["*", ""]
    assert dm.raw("predict").column_names == ["index", "sentence"]  # test.tsv has a header
    assert dm.location("train", 0) == f"{data / 'CoLA' / 'train.tsv'}, line 1"
    bad = tmp_path / "bad.tsv"
    bad.write_text("gj04\t1\tsentence only three fields\n")
    dm.files["train"] = str(bad)
    dm._raw.clear()
    with pytest.raises(DataError, match=r"bad.tsv, line 1: 3 fields, but data.column_names "
                                        r"names 4 \(source, label, original_label, sentence\)"):
        dm.raw("train")


def test_hub_split_names_and_their_check(tiny_backbone_dir, monkeypatch):
    import datasets
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda *a, **k: [
        "train", "validation_matched", "validation_mismatched", "test_matched"])
    dm = ClassificationDataModule(tokenizer=str(tiny_backbone_dir), dataset="nyu-mll/glue",
                                  dataset_config="mnli",
                                  dataset_splits={"validation": "validation_mismatched"})
    assert dm._hf_split("validation") == "validation_mismatched"
    assert dm._hf_split("train") == "train"
    assert dm.has_split("validation")
    with pytest.raises(DataError, match=r"data.dataset_splits: unknown split\(s\) \['dev'\]"):
        ClassificationDataModule(dataset_splits={"dev": "validation_matched"})


# ------------------------------------------------------------ fine-tuning as a new user would
def test_a_backbone_shorter_than_max_length_is_refused_before_the_first_step(tmp_path,
                                                                            monkeypatch, capsys):
    """`make demo`'s export has 64 positions; the SST-2 recipe asks for 128: refused with both
    numbers before any step (no checkpoint, no metrics), not a traceback from the model."""
    from bertzoo.testing import tiny_backbone
    short = tiny_backbone(tmp_path / "short", max_position_embeddings=64)
    data = write_glue_download(tmp_path / "glue_data", train=8, dev=4)
    monkeypatch.chdir(tmp_path)
    code = main(["fit", "--config", str(glue.recipe_path(glue.TASKS["sst2"])),
                 *glue.TASKS["sst2"].local_overrides(data), *quick(short)])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "bertzoo fit: error: data.max_length (128) exceeds the model's max_position_embeddings "
        "(64); lower it or build the model with more positions")
    assert not list(tmp_path.glob("runs/**/*.ckpt")) and not list(tmp_path.glob("runs/**/metrics.csv"))
    # the same backbone with max_length within its positions trains
    assert main(["fit", "--config", str(glue.recipe_path(glue.TASKS["sst2"])),
                 *glue.TASKS["sst2"].local_overrides(data), *quick(short),
                 "--data.max_length=64"]) == 0


def test_a_config_json_as_model_config(tiny_backbone_dir, tmp_path, monkeypatch):
    """A Hugging Face config.json (random initialisation of a known architecture) is accepted
    where a preset name is; its sizes are used, and a missing file is a clear error."""
    from bertzoo.config import BertConfig, ConfigError
    hf = json.loads((tiny_backbone_dir / "config.json").read_text())
    hf.update(hidden_size=48, num_attention_heads=3, intermediate_size=96)
    config_json = tmp_path / "arch" / "config.json"
    config_json.parent.mkdir()
    config_json.write_text(json.dumps(hf))
    made = BertConfig.from_preset_or_file(str(config_json), vocab_size=999)
    assert (made.hidden_size, made.num_attention_heads, made.vocab_size) == (
        48, 3, hf["vocab_size"])  # the file's vocabulary, not the default given
    assert BertConfig.from_preset_or_file(config_json.parent).hidden_size == 48  # its folder
    with pytest.raises(ConfigError, match=r"model.config: no such file: nowhere/config.json"):
        BertConfig.from_preset_or_file("nowhere/config.json")
    with pytest.raises(ConfigError, match=r"unknown BERT preset 'huge'; known presets: tiny, "
                                          r"mini, small, medium, base, large \(or a path to a "
                                          r"Hugging Face config.json\)"):
        BertConfig.from_preset_or_file("huge")
    data = write_glue_download(tmp_path / "glue_data", train=8, dev=4)
    monkeypatch.chdir(tmp_path)
    args = [a for a in quick(tiny_backbone_dir) if not a.startswith("--model.backbone")]
    assert main(["fit", "--config", str(glue.recipe_path(glue.TASKS["sst2"])),
                 *glue.TASKS["sst2"].local_overrides(data), *args, "--model.backbone=null",
                 f"--model.config={config_json}", f"--data.tokenizer={tiny_backbone_dir}"]) == 0
    checkpoint = next(tmp_path.glob("runs/classification/version_0/checkpoints/last.ckpt"))
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)["bertzoo"]["config"]
    assert stored["hidden_size"] == 48 and stored["num_attention_heads"] == 3
