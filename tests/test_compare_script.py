"""docs/quality/compare_transformers.py's data splits: the evaluation split is the one the
README's table names, the tuning split (for choosing recipe defaults) never reads the rows
that split is judged on, and the transformers side runs each recipe's hyper-parameters."""

from __future__ import annotations

import random
from pathlib import Path

import yaml

from doc_scripts import load_doc_script

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    return load_doc_script("quality/compare_transformers.py")


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_squad_splits(tmp_path):
    script = load_script()
    assert script.SPLIT == "eval"
    args = script.data_overrides("squad", tmp_path, tmp_path)
    assert (option(args, "--data.train_articles"), option(args, "--data.validation_articles")) \
        == ("0-37", "38-47")
    script.SPLIT = "tune"
    args = script.data_overrides("squad", tmp_path, tmp_path)
    train, validation = option(args, "--data.train_articles"), option(args, "--data.validation_articles")
    assert (train, validation) == ("0-31", "32-37")
    # both tuning ranges lie inside the evaluation split's training articles
    (first, end), _ = script.SQUAD_ARTICLES["eval"]
    for low, high in (r.split("-") for r in (train, validation)):
        assert first <= int(low) <= int(high) < end


def sst2_rows(count: int) -> list[str]:
    """GLUE SST-2's layout: sentences of 10-14 words, each followed by two of its phrases (a
    row of its own each), and some short rows."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(500)]
    rows = []
    for i in range(count):
        sentence = [rng.choice(words) for _ in range(rng.randint(10, 14))]
        rows += [" ".join(sentence), " ".join(sentence[2:6]), " ".join(sentence[:-1])]
        if i % 5 == 0:
            rows.append(f"{rng.choice(words)} {rng.choice(words)}")
    return [f"{row}\t{i % 2}\n" for i, row in enumerate(rows)]


def test_sst2_tune_split_holds_out_sentences_and_their_phrases(tmp_path):
    script = load_script()
    data, out = tmp_path / "data", tmp_path / "out"
    (data / "SST-2").mkdir(parents=True)
    script.TUNE_DEV_ROWS = 100  # of 300 sentences: quick, and most rows stay for training
    rows = sst2_rows(300)
    (data / "SST-2/train.tsv").write_text("sentence\tlabel\n" + "".join(rows), encoding="utf-8")
    assert script.sst2_files(data, out) == (data / "SST-2/train.tsv", data / "SST-2/dev.tsv")
    script.SPLIT = "tune"
    train, dev = script.sst2_files(data, out)
    assert out.resolve() in train.parents and out.resolve() in dev.parents
    train_rows = train.read_text(encoding="utf-8").splitlines(keepends=True)
    dev_rows = dev.read_text(encoding="utf-8").splitlines(keepends=True)
    assert train_rows[0] == dev_rows[0] == "sentence\tlabel\n"
    assert len(dev_rows) - 1 == script.TUNE_DEV_ROWS
    assert set(train_rows[1:] + dev_rows[1:]) <= set(rows)
    held = [f" {r.split(chr(9))[0]} " for r in dev_rows[1:]]
    assert all(len(h.split()) >= script.TUNE_MIN_WORDS for h in held)
    for row in train_rows[1:]:  # no held-out sentence in training, whole or in pieces
        text = f" {row.split(chr(9))[0]} "
        assert not any(text in h or h in text for h in held), row
    # what is not related to a held-out sentence stays for training
    related = {r for r in rows if any(f" {r.split(chr(9))[0]} " in h or h in f" {r.split(chr(9))[0]} "
                                      for h in held)}
    assert set(train_rows[1:]) == set(rows) - related
    # the same draw every time (a fresh folder draws again)
    again = script.sst2_files(data, tmp_path / "other")
    assert again[1].read_text(encoding="utf-8") == dev.read_text(encoding="utf-8")
    args = script.data_overrides("sst2", data, out)
    assert (option(args, "--data.train_file"), option(args, "--data.validation_file")) \
        == (str(train), str(dev))


def test_transformers_side_uses_the_recipes_hyper_parameters():
    script = load_script()
    for task, recipe_path in script.RECIPES.items():
        recipe = yaml.safe_load((ROOT / recipe_path).read_text())
        expected = dict(epochs=recipe["trainer"]["max_epochs"], batch_size=recipe["data"]["batch_size"],
                        lr=recipe["model"]["learning_rate"],
                        weight_decay=recipe["model"].get("weight_decay", 0.0),
                        max_length=recipe["data"]["max_length"],
                        max_train_samples=recipe["data"].get("max_train_samples"))
        assert script.SETTINGS[task] == expected, task
