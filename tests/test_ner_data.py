"""NER data: CoNLL reading, bad input, label alignment through word ids, windows over long
sentences, Hugging Face datasets with ClassLabel tags, raw text to predict."""

import json
import random

import pytest

from bertzoo.tasks.base import DataError
from bertzoo.tasks.conll import read_conll, scheme_labels
from bertzoo.tasks.ner import IGNORE_INDEX, NerDataModule, best_windows, plan_windows


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------------------------ reading
def test_conll_separators_docstart_and_line_numbers(tmp_path):
    # WNUT-17's train file separates most sentences with a line holding one TAB.
    path = write(tmp_path / "a.conll",
                 "-DOCSTART-\tO\n\nEmpire\tB-location\nState\tI-location\n\t\n"
                 "@paul\tO\n.\tO\n   \nLast\tB-person\n")
    columns = read_conll(path)
    assert columns["tokens"] == [["Empire", "State"], ["@paul", "."], ["Last"]]
    assert columns["tags"] == [["B-location", "I-location"], ["O", "O"], ["B-person"]]
    assert columns["line"] == [3, 6, 9]


def test_conll_tag_column_whitespace_and_iob1(tmp_path):
    # CoNLL-2003's original layout: token POS chunk NER, space separated, IOB1 tags.
    path = write(tmp_path / "eng.train",
                 "-DOCSTART- -X- -X- O\n\nEU NNP I-NP I-ORG\nrejects VBZ I-VP O\n"
                 "German JJ I-NP I-MISC\n\n")
    assert read_conll(path, "IOB1")["tags"] == [["I-ORG", "O", "I-MISC"]]
    assert read_conll(path, "IOB1", tag_column=2)["tags"] == [["I-NP", "I-VP", "I-NP"]]


def test_untagged_conll_has_no_tags(tmp_path):
    columns = read_conll(write(tmp_path / "p.conll", "Hello\nworld\n\nBye\n"))
    assert columns["tokens"] == [["Hello", "world"], ["Bye"]] and "tags" not in columns


@pytest.mark.parametrize("text, scheme, message", [
    ("a\tO\nb\n", "IOB2", r"x\.conll:2: is the tag missing\? expected 2 column"),
    ("a\tO\nb\tE-PER\n", "IOB2", r"x\.conll:2: tag 'E-PER' is not a valid IOB2 tag"),
    ("a\tO\n\nb\tPER\n", "BIOES", r"x\.conll:3: tag 'PER' is not a valid BIOES tag"),
    ("a\tO\nb\tB-\n", "IOB2", r"x\.conll:2: tag 'B-' is not a valid IOB2 tag"),
    ("a\tO\tx\n", "IOB2", None),  # fine: 3 columns, tag in the last
    ("\n\n\t\n", "IOB2", r"x\.conll holds no tokens"),
])
def test_bad_conll_lines_name_file_and_line(tmp_path, text, scheme, message):
    path = write(tmp_path / "x.conll", text)
    if message is None:
        with pytest.raises(DataError, match="not a valid IOB2 tag"):
            read_conll(path, scheme)  # 'x' is the last column, not a tag
        assert read_conll(path, scheme, tag_column=1)["tags"] == [["O"]]
        return
    with pytest.raises(DataError, match=message):
        read_conll(path, scheme)


def test_bad_tag_column_and_scheme(tmp_path):
    path = write(tmp_path / "x.conll", "a\tO\n")
    with pytest.raises(DataError, match=r"x\.conll:1: data.tag_column=0 but the file has 2"):
        read_conll(path, tag_column=0)
    with pytest.raises(DataError, match="unknown tag scheme 'IOE2'; expected one of BIO, "):
        read_conll(path, "IOE2")


def test_scheme_labels():
    assert scheme_labels(["PER", "LOC"], "bio") == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert scheme_labels(["PER"], "IOBES") == ["O", "B-PER", "I-PER", "E-PER", "S-PER"]
    assert scheme_labels(["PER"], "IOB1") == ["O", "I-PER", "B-PER"]


# ------------------------------------------------------------------------ the data module
def datamodule(tokenizer_dir, **kwargs):
    kwargs.setdefault("batch_size", 4)
    return NerDataModule(tokenizer=str(tokenizer_dir), **kwargs)


def test_dev_tag_of_unseen_type_names_file_and_line(tmp_path, tiny_backbone_dir):
    train = write(tmp_path / "train.conll", "Bob\tB-person\nsees\tO\n")
    dev = write(tmp_path / "dev.conll", "Bob\tB-person\n\nthe\tO\nOslo\tB-location\n")
    dm = datamodule(tiny_backbone_dir, train_file=train, validation_file=dev)
    assert dm.label_names == ["O", "B-person", "I-person"]
    with pytest.raises(DataError, match=r"dev\.conll:4: tag 'B-location' is not among the "
                                        r"labels the model predicts"):
        dm.setup("fit")


def test_explicit_labels_and_tagless_file(tmp_path, tiny_backbone_dir):
    train = write(tmp_path / "train.conll", "Bob\nsees\n")
    dm = datamodule(tiny_backbone_dir, train_file=train)
    with pytest.raises(DataError, match="has one column .tokens only.; train data needs a tag"):
        dm.label_names
    with pytest.raises(DataError, match="data.labels: tag 'X-PER' is not a valid IOB2 tag"):
        datamodule(tiny_backbone_dir, labels=["O", "X-PER"]).label_names
    with pytest.raises(DataError, match="the label set is unknown"):
        datamodule(tiny_backbone_dir, predict_file=train).label_names
    with pytest.raises(DataError, match="data.stride must be >= 0 and below max_length - 2"):
        datamodule(tiny_backbone_dir, max_length=10, stride=8)


def test_first_piece_carries_the_label(tmp_path, tiny_backbone_dir):
    # 'Dmitri' and 'Ouagadougou' split into several pieces in the tiny vocabulary.
    train = write(tmp_path / "train.conll",
                  "Dmitri\tB-person\nvisits\tO\nOuagadougou\tB-location\n.\tO\n")
    for label_all_tokens in (False, True):
        dm = datamodule(tiny_backbone_dir, train_file=train, label_all_tokens=label_all_tokens)
        dm.setup("fit")
        row = dm.datasets["train"][0]
        encoding = dm.tokenizer.encode(["Dmitri", "visits", "Ouagadougou", "."],
                                       is_pretokenized=True)
        assert row["input_ids"] == encoding.ids  # [CLS] pieces [SEP]
        word_ids = encoding.word_ids
        assert word_ids.count(2) > 1  # the test needs a word of several pieces
        names = dm.label_names
        expected_labels, expected_words = [], []
        for position, word in enumerate(word_ids):
            first = word is not None and word_ids[position - 1] != word
            tag = ["B-person", "O", "B-location", "O"][word] if word is not None else None
            if first:
                expected_labels.append(names.index(tag))
            elif word is not None and label_all_tokens:
                expected_labels.append(names.index(tag.replace("B-", "I-")))
            else:
                expected_labels.append(IGNORE_INDEX)
            expected_words.append(word if first else IGNORE_INDEX)
        assert row["labels"] == expected_labels
        assert row["word_index"] == expected_words


def test_word_without_pieces_becomes_unk(tmp_path, tiny_backbone_dir):
    # U+FE0F (a variation selector, as in WNUT-17) normalises to nothing.
    train = write(tmp_path / "train.conll", "Bob\tB-person\n\ufe0f\tO\nsees\tO\n")
    dm = datamodule(tiny_backbone_dir, train_file=train)
    dm.setup("fit")
    row = dm.datasets["train"][0]
    unk = dm.tokenizer.token_to_id("[UNK]")
    assert [w for w in row["word_index"] if w >= 0] == [0, 1, 2]
    assert row["input_ids"][row["word_index"].index(1)] == unk


@pytest.mark.parametrize("budget, stride", [(6, 0), (6, 3), (10, 4), (4, 3)])
def test_plan_windows_cover_every_word_once(budget, stride):
    rng = random.Random(budget * 10 + stride)
    for _ in range(50):
        counts = [rng.randint(1, min(3, budget)) for _ in range(rng.randint(1, 30))]
        windows = plan_windows(counts, budget, stride)
        assert windows[0][0] == 0 and windows[-1][1] == len(counts)
        for (start, end), (next_start, next_end) in zip(windows, windows[1:]):
            assert start < next_start <= end < next_end  # moves on, no gap
            assert sum(counts[next_start:end]) <= stride
        assert all(sum(counts[s:e]) <= budget for s, e in windows)
        owners = best_windows(counts, windows)
        for word, owner in enumerate(owners):
            start, end = windows[owner]
            assert start <= word < end


def test_long_sentence_is_windowed_not_truncated(tmp_path, tiny_backbone_dir):
    rng = random.Random(0)
    words = [rng.choice(["Bob", "sees", "the", "cat", "Ouagadougou", "river"])
             for _ in range(60)]
    tags = ["B-person" if w == "Bob" else "O" for w in words]
    train = write(tmp_path / "train.conll",
                  "".join(f"{w}\t{t}\n" for w, t in zip(words, tags)) + "\nBob\tB-person\n")
    dm = datamodule(tiny_backbone_dir, train_file=train, max_length=16, stride=5)
    dm.setup("fit")
    rows = [r for r in dm.datasets["train"] if r["index"] == 0]
    assert len(rows) > 5
    assert all(len(r["input_ids"]) <= 16 for r in rows)
    predicted = sorted(w for r in rows for w in r["word_index"] if w >= 0)
    assert predicted == list(range(60))  # every word predicted by exactly one window
    labelled = sum(1 for r in rows for label in r["labels"] if label != IGNORE_INDEX)
    assert labelled > 60  # words in overlaps are trained on in both windows


def test_hugging_face_dataset_with_class_labels(tmp_path, tiny_backbone_dir):
    import datasets
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    features = datasets.Features({
        "tokens": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names))})
    folder = tmp_path / "hf"
    folder.mkdir()
    for split, rows in {"train": [(["Bob", "sees", "Oslo"], [1, 0, 3])],
                        "validation": [(["Carol", "Eve", "runs"], [1, 2, 0])]}.items():
        datasets.Dataset.from_dict({"tokens": [r[0] for r in rows],
                                    "ner_tags": [r[1] for r in rows]},
                                   features=features).to_parquet(str(folder / f"{split}.parquet"))
    dm = datamodule(tiny_backbone_dir, dataset=str(folder))
    assert dm.label_names == names
    dm.setup("fit")
    labels = [x for x in dm.datasets["validation"][0]["labels"] if x != IGNORE_INDEX]
    assert labels == [1, 2, 0]
    # Labels given in another order (a checkpoint's) are mapped by name.
    dm = datamodule(tiny_backbone_dir, dataset=str(folder), labels=list(reversed(names)))
    dm.setup("validate")
    labels = [x for x in dm.datasets["validation"][0]["labels"] if x != IGNORE_INDEX]
    assert [dm.label_names[x] for x in labels] == ["B-PER", "I-PER", "O"]


def test_jsonl_string_tags_and_predict_text(tmp_path, tiny_backbone_dir):
    train = write(tmp_path / "train.jsonl", json.dumps(
        {"tokens": ["Bob", "sees", "Oslo"], "tags": ["S-PER", "O", "S-LOC"]}) + "\n")
    text = "Bob  sees\tCafé Müller, in Kyoto!"
    predict = write(tmp_path / "predict.jsonl", json.dumps({"text": text}) + "\n"
                    + json.dumps({"text": ""}) + "\n")
    dm = datamodule(tiny_backbone_dir, train_file=train, predict_file=predict, scheme="BIOES")
    assert dm.label_names == ["O", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "B-PER", "I-PER",
                              "E-PER", "S-PER"]
    dm.setup("predict")
    first, empty = dm.datasets["predict"][0], dm.datasets["predict"][1]
    assert first["words"] == ["Bob", "sees", "Café", "Müller", ",", "in", "Kyoto", "!"]
    assert [text[s:e] for s, e in first["word_offsets"]] == first["words"]
    assert empty["words"] == [] and len(empty["input_ids"]) == 2  # [CLS] [SEP]
    bad = write(tmp_path / "bad.jsonl", json.dumps({"tokens": ["a"], "tags": [3]}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 1: tag 3 is a number without "
                                        r"label names"):
        datamodule(tiny_backbone_dir, train_file=bad).label_names
