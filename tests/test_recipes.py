"""Every recipe in the repository, found recursively (recipes/**, plugins/*/recipes/**): none is
skipped, and no error is swallowed.

For each one:
    - it opens with a comment block: a one-line summary (what `bertzoo recipes` shows), the
      command that runs that very file, and for a recipe reading a Hugging Face dataset the
      one-line override to local files;
    - it names public sources only: a Hugging Face dataset id (and config) the test knows the
      layout of, never this repository's test data copy (../shared);
    - it parses as it is, through the command it is meant for (`--print_config`: unknown keys,
      wrong types and unknown tasks fail here);
    - it reads its hub dataset as written: `datasets.load_dataset` and
      `datasets.get_dataset_split_names` are replaced by a stand-in that serves a few rows in
      that dataset's real layout (column names, ClassLabel encodings, split names), so the
      data module's own choice of split and columns is exercised with no network and no
      download, through one training step;
    - it runs with its header's local-files override: the files are cut from the local data
      copy (../shared/data beside the repository, see its SOURCES.md) where it holds that
      dataset, else written by the task's `example_data` in the header's layout (also when the
      copy is absent). Only what a test cannot have is replaced on top: the backbone by a tiny
      random BERT, the run length by one step, worker/process counts by none.
"""

from __future__ import annotations

import csv
import json
import random
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import datasets
import pytest
import torch
import yaml

from bertzoo.cli import class_path_from_args, main, resolve_class
from bertzoo.recipe_catalog import find_recipe, list_recipes
from bertzoo.tasks.registry import get_task, list_tasks

ROOT = Path(__file__).resolve().parents[1]
DATA_COPY = ROOT.parent / "shared" / "data"  # the tests' local copy of public datasets
RECIPES = sorted([*(ROOT / "recipes").rglob("*.yaml"), *(ROOT / "recipes").rglob("*.yml"),
                  *(path for plugin in (ROOT / "plugins").iterdir() if plugin.is_dir()
                    for path in (plugin / "recipes").rglob("*.y*ml"))])
RECIPE_IDS = [str(p.relative_to(ROOT)) for p in RECIPES]
LOCAL_MARKER = "Local files instead of the Hub"


def load(recipe: Path) -> dict:
    loaded = yaml.safe_load(recipe.read_text())
    assert isinstance(loaded, dict), f"{recipe} is not a YAML mapping"
    return loaded


def section(config: dict, name: str) -> dict:
    values = config.get(name) or {}
    return values.get("init_args", values)


def command_of(recipe: Path) -> str:
    """`pretrain` for recipes/pretrain/**, else `fit` (a task recipe)."""
    return "pretrain" if (ROOT / "recipes" / "pretrain") in recipe.parents else "fit"


def task_of(recipe: Path, config: dict):
    """The TaskSpec a task recipe is for: its `task:` key, or the class its `model:` names."""
    if config.get("task"):
        return get_task(config["task"])
    list_tasks()
    module_class = resolve_class(class_path_from_args(["--config", str(recipe)], "model"))
    assert module_class is not None, f"{recipe} names neither a task nor a model class_path"
    return next(t.spec for t in list_tasks() if t.spec and issubclass(module_class, t.spec.module))


def arguments(section_name: str, values: dict) -> list[str]:
    return [f"--{section_name}.{key}={value if isinstance(value, str) else json.dumps(value)}"
            for key, value in values.items()]


def header_of(recipe: Path) -> list[str]:
    header = []
    for line in recipe.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    return header


def local_override(recipe: Path) -> list[str]:
    """The arguments of the header's "Local files instead of the Hub" block: the `#   --...`
    lines under that line."""
    header = header_of(recipe)
    start = next((i for i, line in enumerate(header) if LOCAL_MARKER in line), None)
    if start is None:
        return []
    lines = []
    for line in header[start + 1:]:
        text = line.lstrip("#").strip()
        if not text.startswith("--"):
            if lines:
                break
            continue  # the marker's own sentence may wrap onto the next comment line
        lines.append(text.rstrip("\\").strip())
    return shlex.split(" ".join(lines))


def option_values(args: list[str]) -> dict[str, str]:
    """{"data.train_file": "glue_data/SST-2/train.tsv", ...} from `--key value` pairs."""
    values, i = {}, 0
    while i < len(args):
        assert args[i].startswith("--") and i + 1 < len(args), f"not a --key value pair: {args[i:]}"
        values[args[i][2:]] = args[i + 1]
        i += 2
    return values


# -------------------------------------------------------------------------- collection, header
def test_recipes_are_found_in_every_folder():
    folders = {p.parent.relative_to(ROOT).as_posix() for p in RECIPES}
    assert {"recipes/classification", "recipes/ner", "recipes/qa", "recipes/pretrain",
            "plugins/bertzoo-multiple-choice/recipes"} <= folders
    every_yaml = {p for p in (ROOT / "recipes").rglob("*") if p.suffix in (".yaml", ".yml")}
    assert every_yaml <= set(RECIPES)


def test_the_catalog_lists_every_recipe_of_the_recipes_folder():
    listed = {recipe.name for recipe in list_recipes()}
    on_disk = {p.relative_to(ROOT / "recipes").with_suffix("").as_posix()
               for p in RECIPES if (ROOT / "recipes") in p.parents}
    assert listed == on_disk


@pytest.mark.parametrize("recipe", RECIPES, ids=RECIPE_IDS)
def test_recipe_opens_with_a_comment_block_that_runs_it(recipe):
    header = header_of(recipe)
    assert len(header) >= 5, f"{recipe}: no comment block (what, what first, command, override)"
    summary = header[0].lstrip("#").strip()
    assert summary and header[1].strip() == "#" and len(header[0]) <= 100, \
        f"{recipe}: the header's first line should be a one-line summary (then a `#` line)"
    text = "\n".join(header)
    relative = recipe.relative_to(ROOT).as_posix()
    assert f"bertzoo {command_of(recipe)}" in text and relative in text, \
        f"{recipe}: the header shows no `bertzoo {command_of(recipe)} ... {relative}` command"
    if (ROOT / "recipes") in recipe.parents:
        assert find_recipe(relative.removeprefix("recipes/")).description == summary


@pytest.mark.parametrize("recipe", RECIPES, ids=RECIPE_IDS)
def test_recipe_names_no_local_test_data(recipe):
    text = recipe.read_text()
    for fragment in ("../shared", "shared/data", "/work/"):
        assert fragment not in text, f"{recipe} names {fragment!r}, a folder only this " \
                                     f"repository's test setup has"


@pytest.mark.parametrize("recipe", RECIPES, ids=RECIPE_IDS)
def test_recipe_parses_as_written(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # recipes' relative paths are relative to the repository root
    with pytest.raises(SystemExit) as exit_:
        main([command_of(recipe), "--config", str(recipe), "--print_config"])
    assert exit_.value.code == 0, capsys.readouterr().err
    printed = yaml.safe_load(capsys.readouterr().out)
    written = load(recipe)
    for name in ("model", "data", "trainer"):
        for key, value in (written.get(name) or {}).items():
            if key in ("class_path", "init_args"):
                continue
            assert key in printed[name] or key in printed[name].get("init_args", {}), \
                f"{recipe}: {name}.{key} vanished while parsing"


# ------------------------------------------------------------------- the hub datasets' layouts
@dataclass
class HubLayout:
    """A Hugging Face dataset as `datasets` loads it (from its dataset card): split names,
    features, and a few generated rows in that layout. `script` names the loading script of a
    repository that still has one (datasets >= 4 refuses to run it)."""
    splits: tuple[str, ...]
    features: datasets.Features
    rows: Callable[[str, int], list[dict[str, Any]]]
    script: str | None = None
    unlabelled: tuple[str, ...] = field(default=())  # GLUE/SWAG test splits: label -1


def _words(rng: random.Random, count: int) -> list[str]:
    from bertzoo.testing import sentences
    return " ".join(sentences(count, seed=rng.randrange(10**6))).replace(".", " .").split()


def _glue_rows(pair: bool, regression: bool, positive="positive"):
    def rows(split: str, count: int) -> list[dict[str, Any]]:
        rng = random.Random(split)
        out = []
        for i in range(count):
            label = i % 2
            row = {"sentence1" if pair else "sentence": " ".join(_words(rng, 1)),
                   "label": (3.5 if label else 1.0) if regression else label, "idx": i}
            if pair:
                row["sentence2"] = " ".join(_words(rng, 1))
            out.append(row)
        return out
    return rows


def _glue_columns_rows(first: str, second: str | None, classes: int):
    """GLUE rows with other column names (QQP question1/2, MNLI premise/hypothesis, ...)."""
    def rows(split: str, count: int) -> list[dict[str, Any]]:
        rng = random.Random(split)
        out = []
        for i in range(count):
            row = {first: " ".join(_words(rng, 1)), "label": i % classes, "idx": i}
            if second:
                row[second] = " ".join(_words(rng, 1))
            out.append(row)
        return out
    return rows


def _glue_layout(splits: tuple[str, ...], first: str, second: str | None,
                 names: list[str]) -> HubLayout:
    columns = {first: _string, **({second: _string} if second else {})}
    return HubLayout(splits, datasets.Features({**columns, "label": datasets.ClassLabel(
        names=names), "idx": datasets.Value("int32")}), _glue_columns_rows(first, second,
                                                                           len(names)),
                     unlabelled=tuple(s for s in splits if s.startswith("test")))


def _tagging_rows(names: list[str]):
    types = sorted({name[2:] for name in names if name != "O"})

    def rows(split: str, count: int) -> list[dict[str, Any]]:
        rng = random.Random(split)
        out = []
        for i in range(count):
            tokens = _words(rng, 1)[:12]
            tags = [0] * len(tokens)
            start = rng.randrange(len(tokens) - 1)
            kind = types[i % len(types)]
            tags[start] = names.index(f"B-{kind}")
            tags[start + 1] = names.index(f"I-{kind}")
            out.append({"id": str(i), "tokens": tokens, "ner_tags": tags})
        return out
    return rows


def _conll_rows(split: str, count: int) -> list[dict[str, Any]]:
    rows = _tagging_rows(CONLL_TAGS)(split, count)
    for row in rows:
        row["pos_tags"] = [0] * len(row["tokens"])
        row["chunk_tags"] = [0] * len(row["tokens"])
    return rows


def _squad_rows(version_2: bool):
    def rows(split: str, count: int) -> list[dict[str, Any]]:
        rng = random.Random(split)
        out = []
        for i in range(count):
            words = _words(rng, 3)
            context = " ".join(words)
            answer = words[rng.randrange(len(words))]
            answers = {"text": [answer], "answer_start": [context.index(answer)]}
            if version_2 and i % 3 == 2:
                answers = {"text": [], "answer_start": []}
            out.append({"id": f"{split}-{i}", "title": f"article {i // 4}", "context": context,
                        "question": f"what is {words[0]} ?", "answers": answers})
        return out
    return rows


def _swag_rows(split: str, count: int) -> list[dict[str, Any]]:
    rng = random.Random(split)
    return [{"video-id": f"v{i}", "fold-ind": str(i), "startphrase": "someone walks",
             "sent1": " ".join(_words(rng, 1)), "sent2": "someone then",
             "gold-source": "gold", **{f"ending{k}": " ".join(_words(rng, 1)) for k in range(4)},
             "label": i % 4} for i in range(count)]


def _page_rows(split: str, count: int) -> list[dict[str, Any]]:
    from bertzoo.testing import documents
    return [{"page": f" = Article {i} = \n\n " + " ".join(doc) + " \n\n = = Section = = \n\n "
             + " ".join(reversed(doc)) + " \n"}
            for i, doc in enumerate(documents(count, seed=len(split), min_sentences=4))]


def _zh_page_rows(split: str, count: int) -> list[dict[str, Any]]:
    # Chinese with English words the tiny test vocabulary knows (it has no Chinese: a text of
    # [UNK] alone would give nothing to mask).
    sentences = ["BERT是一个the small cat模型。", "Alice sees the dog！", "下一句the bird吗？",
                 "微调the green river很简单。"]
    return [{"id": str(i), "url": f"https://zh.wikipedia.org/wiki?curid={i}", "title": f"条目{i}",
             "text": "".join(sentences[i % 4:] + sentences[:i % 4]) + "\n\n" + sentences[0]}
            for i in range(count)]


WNUT_TAGS = ["O", "B-corporation", "I-corporation", "B-creative-work", "I-creative-work",
             "B-group", "I-group", "B-location", "I-location", "B-person", "I-person",
             "B-product", "I-product"]
CONLL_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
_string = datasets.Value("string")
_squad = datasets.Features({
    "id": _string, "title": _string, "context": _string, "question": _string,
    "answers": {"text": datasets.Sequence(_string),
                "answer_start": datasets.Sequence(datasets.Value("int32"))}})
HUB: dict[tuple[str, str | None], HubLayout] = {
    ("nyu-mll/glue", "sst2"): HubLayout(
        ("train", "validation", "test"),
        datasets.Features({"sentence": _string,
                           "label": datasets.ClassLabel(names=["negative", "positive"]),
                           "idx": datasets.Value("int32")}),
        _glue_rows(pair=False, regression=False), unlabelled=("test",)),
    ("nyu-mll/glue", "mrpc"): HubLayout(
        ("train", "validation", "test"),
        datasets.Features({"sentence1": _string, "sentence2": _string,
                           "label": datasets.ClassLabel(names=["not_equivalent", "equivalent"]),
                           "idx": datasets.Value("int32")}),
        _glue_rows(pair=True, regression=False), unlabelled=("test",)),
    ("nyu-mll/glue", "stsb"): HubLayout(
        ("train", "validation", "test"),
        datasets.Features({"sentence1": _string, "sentence2": _string,
                           "label": datasets.Value("float32"), "idx": datasets.Value("int32")}),
        _glue_rows(pair=True, regression=True), unlabelled=("test",)),
    ("nyu-mll/glue", "cola"): _glue_layout(("train", "validation", "test"), "sentence", None,
                                           ["unacceptable", "acceptable"]),
    ("nyu-mll/glue", "qqp"): _glue_layout(("train", "validation", "test"), "question1",
                                          "question2", ["not_duplicate", "duplicate"]),
    ("nyu-mll/glue", "mnli"): _glue_layout(
        ("train", "validation_matched", "validation_mismatched", "test_matched",
         "test_mismatched"), "premise", "hypothesis", ["entailment", "neutral", "contradiction"]),
    ("nyu-mll/glue", "qnli"): _glue_layout(("train", "validation", "test"), "question",
                                           "sentence", ["entailment", "not_entailment"]),
    ("nyu-mll/glue", "rte"): _glue_layout(("train", "validation", "test"), "sentence1",
                                          "sentence2", ["entailment", "not_entailment"]),
    ("nyu-mll/glue", "wnli"): _glue_layout(("train", "validation", "test"), "sentence1",
                                           "sentence2", ["not_entailment", "entailment"]),
    ("leondz/wnut_17", None): HubLayout(
        ("train", "validation", "test"),
        datasets.Features({"id": _string, "tokens": datasets.Sequence(_string),
                           "ner_tags": datasets.Sequence(datasets.ClassLabel(names=WNUT_TAGS))}),
        _tagging_rows(WNUT_TAGS), script="wnut_17.py"),
    ("eriktks/conll2003", None): HubLayout(
        ("train", "validation", "test"),
        # pos_tags/chunk_tags are ClassLabels too on the hub; NER never reads them.
        datasets.Features({"id": _string, "tokens": datasets.Sequence(_string),
                           "pos_tags": datasets.Sequence(datasets.Value("int32")),
                           "chunk_tags": datasets.Sequence(datasets.Value("int32")),
                           "ner_tags": datasets.Sequence(datasets.ClassLabel(names=CONLL_TAGS))}),
        _conll_rows, script="conll2003.py"),
    ("rajpurkar/squad", None): HubLayout(("train", "validation"), _squad,
                                         _squad_rows(version_2=False)),
    ("rajpurkar/squad_v2", None): HubLayout(("train", "validation"), _squad,
                                            _squad_rows(version_2=True)),
    ("allenai/swag", "regular"): HubLayout(
        ("train", "validation", "test"),
        datasets.Features({"video-id": _string, "fold-ind": _string, "startphrase": _string,
                           "sent1": _string, "sent2": _string, "gold-source": _string,
                           **{f"ending{k}": _string for k in range(4)},
                           "label": datasets.ClassLabel(names=["0", "1", "2", "3"])}),
        _swag_rows, unlabelled=("test",)),
    ("wikimedia/wikipedia", "20231101.zh"): HubLayout(
        ("train",), datasets.Features({"id": _string, "url": _string, "title": _string,
                                       "text": _string}), _zh_page_rows),
    ("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1"): HubLayout(
        ("train", "validation", "test"), datasets.Features({"page": _string}), _page_rows),
}
SCRIPTS_REFUSED = int(datasets.__version__.split(".")[0]) >= 4
PARQUET_EXPORT = "refs/convert/parquet"  # where the hub keeps a script repository's data


class FakeHub:
    """Stands in for `datasets.get_dataset_split_names` / `datasets.load_dataset` on hub ids:
    answers from HUB, records what was asked, and refuses a loading-script repository the
    way datasets >= 4 does unless its parquet export is asked for."""

    def __init__(self, split_names, load_dataset):
        self.calls: list[tuple[str, str | None, str | None, str | None]] = []
        self.real = {"split_names": split_names, "load_dataset": load_dataset}

    @staticmethod
    def on_hub(path) -> bool:
        """A hub id ("owner/name"), not a packaged builder ("csv") or a local folder."""
        return isinstance(path, str) and path.count("/") == 1 and not Path(path).exists()

    def layout(self, path: str, name: str | None, revision: str | None) -> HubLayout:
        assert (path, name) in HUB, f"no layout known for hub dataset {path!r} config {name!r}"
        layout = HUB[(path, name)]
        if layout.script and SCRIPTS_REFUSED and revision != PARQUET_EXPORT:
            raise RuntimeError(f"Dataset scripts are no longer supported, but found "
                               f"{layout.script}")
        return layout

    def split_names(self, path, config_name=None, revision=None, **kwargs):
        if not self.on_hub(path):
            return self.real["split_names"](path, config_name, revision=revision, **kwargs)
        return list(self.layout(path, config_name, revision).splits)

    def load_dataset(self, path, name=None, split=None, revision=None, streaming=False,
                     **kwargs):
        if not self.on_hub(path):
            return self.real["load_dataset"](path, name, split=split, revision=revision,
                                             streaming=streaming, **kwargs)
        layout = self.layout(path, name, revision)
        assert split in layout.splits, f"{path} has no split {split!r}"
        self.calls.append((path, name, split, revision))
        rows = layout.rows(split, 16)
        if split in layout.unlabelled:
            rows = [{**row, "label": -1} for row in rows]
        loaded = datasets.Dataset.from_list(rows, features=layout.features)
        return loaded.to_iterable_dataset() if streaming else loaded


@pytest.fixture
def fake_hub(monkeypatch):
    hub = FakeHub(datasets.get_dataset_split_names, datasets.load_dataset)
    monkeypatch.setattr(datasets, "get_dataset_split_names", hub.split_names)
    monkeypatch.setattr(datasets, "load_dataset", hub.load_dataset)
    return hub


HUB_RECIPES = [r for r in RECIPES if section(load(r), "data").get("dataset")]
HUB_IDS = [str(p.relative_to(ROOT)) for p in HUB_RECIPES]


def test_recipes_with_public_data_name_it_by_hub_id():
    """Every fine-tuning recipe, and each pretraining recipe on a public corpus, reads a
    Hugging Face dataset by its id; the others pretrain on the embedded corpus or on the
    user's own (google's layout, no hub copy)."""
    named = {p.relative_to(ROOT).as_posix() for p in HUB_RECIPES}
    for recipe in RECIPES:
        relative = recipe.relative_to(ROOT).as_posix()
        if command_of(recipe) == "fit" or relative in ("recipes/pretrain/wikitext.yaml",
                                                       "recipes/pretrain/continue.yaml"):
            assert relative in named, f"{relative} names no data.dataset"
    for recipe in HUB_RECIPES:
        data = section(load(recipe), "data")
        assert (data["dataset"], data.get("dataset_config")) in HUB, \
            f"{recipe}: {data['dataset']} / {data.get('dataset_config')} has no known layout"
        assert local_override(recipe), f"{recipe}: no `{LOCAL_MARKER}` override in its header"
        if HUB[(data["dataset"], data.get("dataset_config"))].script:
            # datasets >= 4 refuses the script; whatever datasets is installed, ask for the export
            assert data.get("dataset_revision") == PARQUET_EXPORT, \
                f"{recipe}: {data['dataset']} is a loading script; read its Parquet export " \
                f"(data.dataset_revision: {PARQUET_EXPORT})"


def run_overrides(recipe: Path, config: dict, backbone: Path) -> list[str]:
    """What a test cannot have: a real backbone, a long run, worker processes."""
    model, data = section(config, "model"), section(config, "data")
    overrides = ["--trainer.max_time=null", "--trainer.limit_val_batches=1",
                 "--trainer.accumulate_grad_batches=1", "--trainer.log_every_n_steps=1",
                 "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    if model.get("config") and not model.get("backbone"):
        # Random initialisation: keep it, at the smallest size, on the tiny vocabulary.
        overrides += ["--model.config=tiny", f"--data.tokenizer={backbone}"]
    else:
        overrides += [f"--model.backbone={backbone}"]
    for key in ("num_workers", "num_proc"):
        if key in data:
            overrides.append(f"--data.{key}={0 if key == 'num_workers' else 'null'}")
    if "global_batch_size" in config:  # BERT's 256 sequences: one batch of 4 per step here
        overrides.append("--global_batch_size=null")
    if command_of(recipe) == "pretrain":
        warmup = model.get("warmup")
        if isinstance(warmup, (int, float)) and warmup >= 1:
            # A warm-up in steps longer than the one-step run is refused: the same share of it.
            overrides.append(f"--model.warmup={warmup / config['trainer']['max_steps']}")
        return overrides + ["--trainer.max_steps=1", "--trainer.val_check_interval=1",
                            "--trainer.check_val_every_n_epoch=null",
                            "--data.validation_documents=2", "--data.max_seq_length=64",
                            "--data.batch_size=4", "--data.eval_batch_size=4"]
    if task_of(recipe, config).name == "qa":  # the tiny BERT has 128 positions
        overrides += ["--data.max_length=128", "--data.doc_stride=32"]
    return overrides + ["--trainer.max_steps=-1", "--trainer.max_epochs=1",
                        "--trainer.limit_train_batches=1"]


def finished_run(tmp_path: Path, recipe: Path, config: dict) -> dict:
    name = "pretrain" if command_of(recipe) == "pretrain" else task_of(recipe, config).name
    run = tmp_path / "runs" / name / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file(), f"{recipe}: no checkpoint in {run}"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["limit_val_batches"] == 1  # the overrides were applied on top
    return saved


@pytest.mark.parametrize("recipe", HUB_RECIPES, ids=HUB_IDS)
def test_recipe_reads_its_hub_dataset_as_written(recipe, fake_hub, tiny_backbone_dir, tmp_path,
                                                 monkeypatch):
    """The recipe's own data section (hub id, config, columns) through its data module, on
    rows in the hub dataset's real layout; nothing is downloaded."""
    config = load(recipe)
    data = section(config, "data")
    monkeypatch.chdir(tmp_path)
    args = [command_of(recipe), "--config", str(recipe),
            *run_overrides(recipe, config, tiny_backbone_dir)]
    assert main(args) == 0
    finished_run(tmp_path, recipe, config)
    asked = {(path, name, revision) for path, name, _, revision in fake_hub.calls}
    assert asked == {(data["dataset"], data.get("dataset_config"), data.get("dataset_revision"))}
    splits = {split for _, _, split, _ in fake_hub.calls}
    if command_of(recipe) == "pretrain":
        assert splits == {data["dataset_split"]}
        return
    renamed = data.get("dataset_splits") or {}  # MNLI's validation_matched
    assert splits == {renamed.get("train", "train"), renamed.get("validation", "validation")}
    layout = HUB[(data["dataset"], data.get("dataset_config"))]
    checkpoint = tmp_path / "runs" / task_of(recipe, config).name / "version_0" / \
        "checkpoints" / "last.ckpt"
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=False)["hyper_parameters"]
    tags = layout.features.get("ner_tags")
    if tags is not None:  # NER: the ClassLabel names are the label set, in their order
        assert hparams["label_names"] == tags.feature.names
    elif isinstance(layout.features.get("label"), datasets.ClassLabel) \
            and "label_names" in hparams:
        # Classification keeps the stored class ids ("0", "1"), as read from GLUE's own TSVs.
        assert hparams["label_names"] == [str(i) for i in
                                          range(layout.features["label"].num_classes)]


# ------------------------------------------------------- the header's override to local files
def _head_lines(source: Path, target: Path, lines: int) -> None:
    with source.open(encoding="utf-8") as f:
        target.write_text("".join(line for _, line in zip(range(lines), f)), encoding="utf-8")


def _head_conll(source: Path, target: Path, sentences: int) -> None:
    out, seen = [], 0
    for line in source.read_text(encoding="utf-8").splitlines(keepends=True):
        out.append(line)
        if not line.strip():
            seen += 1
            if seen == sentences:
                break
    target.write_text("".join(out), encoding="utf-8")


def _small_squad(articles: list[dict], version_2: bool) -> dict:
    """Each article's first paragraph with its first two questions (article positions kept);
    for version 2.0, the second question made unanswerable."""
    small = []
    for article in articles:
        paragraph = dict(article["paragraphs"][0])
        qas = [dict(qa) for qa in paragraph["qas"][:2]]
        if version_2:
            for i, qa in enumerate(qas):
                qa["is_impossible"] = i == 1
                if i == 1:
                    qa["answers"] = []
        small.append({"title": article["title"], "paragraphs": [{**paragraph, "qas": qas}]})
    return {"version": "v2.0" if version_2 else "1.1", "data": small}


def _generated_squad(folder: Path) -> list[dict]:
    """48 articles (as many as the local SQuAD copy) from the qa task's example data."""
    source = json.loads(Path(get_task("qa").example_data(folder)["train_file"]).read_text())
    base = source["data"]
    articles = []
    for i in range(48):
        article = json.loads(json.dumps(base[i % len(base)]))
        article["title"] = f"article {i}"
        for p, paragraph in enumerate(article["paragraphs"]):
            for qa in paragraph["qas"]:
                qa["id"] = f"{i}-{p}-{qa['id']}"
        articles.append(article)
    return articles


def _to_iob1_four_columns(source: Path, target: Path) -> None:
    """token POS chunk tag lines, IOB1 (B- only between two entities of one type): the
    original CoNLL-2003 layout."""
    out, previous = [], "O"
    for line in source.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            out.append("")
            previous = "O"
            continue
        token, tag = line.split()[0], line.split()[-1]
        if tag.startswith("B-") and previous[2:] != tag[2:]:
            tag = "I-" + tag[2:]
        out.append(f"{token} NN I-NP {tag}")
        previous = tag
    target.write_text("\n".join(out) + "\n", encoding="utf-8")


def _wikitext(path: Path) -> None:
    from bertzoo.testing import documents
    lines = []
    for i, doc in enumerate(documents(8, seed=3, min_sentences=4)):
        lines += ["", f" = Article {i} = ", "", " " + " ".join(doc), "", " = = Part = = ", "",
                  " " + " ".join(reversed(doc))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def provide_local_files(recipe: Path, config: dict, values: dict[str, str], folder: Path,
                        work: Path) -> str:
    """Write every file the local override names, under `work` (the run's folder), from the
    local data copy where it has that dataset, else generated in the override's layout.
    Returns where they came from."""
    wanted = {key.split(".", 1)[1]: path for key, path in values.items()
              if key.startswith("data.") and key.endswith(("_file", "_files"))}
    for path in wanted.values():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
    copy = DATA_COPY.is_dir()
    if copy and any("SST-2" in p for p in wanted.values()):
        for key, path in wanted.items():
            name = "train.tsv" if key == "train_file" else "dev.tsv"
            _head_lines(DATA_COPY / "SST-2" / name, work / path, 201)
        return "local copy"
    if copy and any(p.startswith("wnut17/") for p in wanted.values()):
        for path in wanted.values():
            _head_conll(DATA_COPY / "wnut17" / Path(path).name, work / path, 40)
        return "local copy"
    if any(p.startswith("squad/") for p in wanted.values()):
        articles = (json.loads((DATA_COPY / "squad" / "dev-v1.1.reconstructed.json")
                               .read_text())["data"] if copy else _generated_squad(folder))
        for path in wanted.values():
            small = _small_squad(articles, version_2="v2.0" in path)
            (work / path).write_text(json.dumps(small), encoding="utf-8")
        return "local copy" if copy else "generated"
    if any(p.startswith("zh/") for p in wanted.values()):
        # One article per file: the Chinese article's sections (or generated text).
        article = ((DATA_COPY / "zh" / "bert-article.txt").read_text(encoding="utf-8") if copy
                   else "\n".join(row["text"] for row in _zh_page_rows("train", 4)))
        parts = article.split("\n## ") if copy else article.split("\n")
        for i, part in enumerate(p for p in parts if p.strip()):
            (work / "zh" / f"part-{i}.txt").write_text(part, encoding="utf-8")
        return "local copy" if copy else "generated"
    if any(p.startswith("wikitext-2/") for p in wanted.values()):
        for path in wanted.values():
            if copy:
                _head_lines(DATA_COPY / "wikitext-2" / Path(path).name, work / path, 400)
            else:
                _wikitext(work / path)
        return "local copy" if copy else "generated"
    # No local copy of this dataset: the task's example data, in the override's layout.
    spec = task_of(recipe, config)
    like = {**section(config, "data"), **{k.split(".", 1)[1]: v for k, v in values.items()
                                           if k.startswith("data.")}}
    made = spec.example_data(folder, like=like)
    for key, path in wanted.items():
        source = Path(made[key] if key in made else made["validation_file"])
        if like.get("scheme") == "IOB1":  # CoNLL-2003's original files
            _to_iob1_four_columns(source, work / path)
        else:
            shutil.copyfile(source, work / path)
    return "generated"


LOCAL_RECIPES = [r for r in RECIPES if local_override(r)]
LOCAL_IDS = [str(p.relative_to(ROOT)) for p in LOCAL_RECIPES]


@pytest.mark.parametrize("recipe", LOCAL_RECIPES, ids=LOCAL_IDS)
def test_recipe_runs_with_its_local_files_override(recipe, tiny_backbone_dir, tmp_path,
                                                   monkeypatch):
    config = load(recipe)
    override = local_override(recipe)
    values = option_values(override)
    assert values.get("data.dataset") == "null", \
        f"{recipe}: the local override must switch the hub dataset off (--data.dataset null)"
    folder, work = tmp_path / "generated", tmp_path / "run"
    folder.mkdir()
    work.mkdir()
    provide_local_files(recipe, config, values, folder, work)
    monkeypatch.chdir(work)  # the override's paths are relative, as a user would type them
    args = [command_of(recipe), "--config", str(recipe), *override,
            *run_overrides(recipe, config, tiny_backbone_dir)]
    assert main(args) == 0
    saved = finished_run(work, recipe, config)
    data = saved["data"].get("init_args", saved["data"])
    assert data["dataset"] is None
    for key, path in values.items():
        if key.startswith("data.") and key.endswith("_file"):
            assert data[key.split(".", 1)[1]] == path


def test_local_files_come_from_the_data_copy_when_present(tmp_path):
    """The smoke runs read the real files where this machine has them (and say so when not:
    then every file is generated, which the runs above exercise too)."""
    recipe = ROOT / "recipes" / "classification" / "sst2.yaml"
    values = option_values(local_override(recipe))
    (tmp_path / "g").mkdir()
    source = provide_local_files(recipe, load(recipe), values, tmp_path / "g", tmp_path)
    assert source == ("local copy" if DATA_COPY.is_dir() else "generated")
    header = (tmp_path / values["data.train_file"]).read_text().splitlines()[0]
    assert header.split("\t") == ["sentence", "label"]


# ------------------------------------------------------------ tiny runs with generated data
def tiny_overrides(recipe: Path, config: dict, backbone: Path, folder: Path) -> list[str]:
    """The run overrides plus generated data in the recipe's own layout (as files)."""
    overrides = run_overrides(recipe, config, backbone)
    data = section(config, "data")
    if command_of(recipe) == "pretrain":
        from bertzoo.testing import documents, write_bert_corpus
        corpus = write_bert_corpus(folder / "corpus.txt", documents(12, min_sentences=3))
        return overrides + [f"--data.train_files={corpus}", "--data.format=bert",
                            "--data.dataset=null", "--data.validation_files=null"]
    spec = task_of(recipe, config)
    data_args = spec.example_data(folder, like=data)
    if data.get("dataset"):
        overrides += ["--data.dataset=null", "--data.dataset_config=null"]
    return overrides + arguments("data", data_args)


# The recipes with a local-files override run above, twice (hub layout, local files).
GENERATED_RECIPES = [r for r in RECIPES if r not in LOCAL_RECIPES]


@pytest.mark.parametrize("recipe", GENERATED_RECIPES,
                         ids=[str(p.relative_to(ROOT)) for p in GENERATED_RECIPES])
def test_recipe_runs_with_tiny_overrides(recipe, tiny_backbone_dir, tmp_path, monkeypatch):
    config = load(recipe)
    folder = tmp_path / "data"
    folder.mkdir()
    overrides = tiny_overrides(recipe, config, tiny_backbone_dir, folder)
    monkeypatch.chdir(tmp_path)
    assert main([command_of(recipe), "--config", str(recipe), *overrides]) == 0
    finished_run(tmp_path, recipe, config)
