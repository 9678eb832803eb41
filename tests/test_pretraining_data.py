"""Pretraining data: readers, sentence splitting, NSP instances, dynamic masking, bad input.

Statistics are measured on generated data (bertzoo.testing), never on fixed expected numbers:
masking over >= 100k tokens, NSP over thousands of instances.
"""

from __future__ import annotations

import numpy as np
import pytest

from bertzoo.config import ConfigError
from bertzoo.model import IGNORE_INDEX
from bertzoo.pretraining.corpus import (CorpusError, documents_from_files, read_bert_format,
                                        read_text_format, read_wikitext_format, split_sentences)
from bertzoo.pretraining.datamodule import PretrainingDataModule, tokenize_documents
from bertzoo.pretraining.instances import (IS_NEXT, NOT_NEXT, DocumentPool, InstanceConfig,
                                           build_instances, document_instances)
from bertzoo.pretraining.masking import MaskingCollator
from bertzoo.testing import documents as synthetic_documents
from bertzoo.testing import write_bert_corpus
from bertzoo.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    # A small vocabulary, so that many words split into ## pieces (whole-word masking).
    texts = [s for doc in synthetic_documents(400, seed=1) for s in doc]
    return train_tokenizer(texts=texts, vocab_size=120, min_frequency=1)


@pytest.fixture(scope="module")
def tokenized_documents(tokenizer):
    docs = synthetic_documents(600, seed=2, min_sentences=1, max_sentences=10)
    return tokenize_documents({"sentences": docs}, tokenizer)["sentence_ids"]


# ------------------------------------------------------------------------------------ readers
def test_split_sentences_rules():
    text = ("Dr. Smith met J. Doe in the U.S. yesterday. They talked, e.g. about trains! "
            "Was it late? \"Yes.\" It was 5 p.m. Then 3 more came.")
    assert split_sentences(text) == [
        "Dr. Smith met J. Doe in the U.S. yesterday.", "They talked, e.g. about trains!",
        "Was it late?", "\"Yes.\"", "It was 5 p.m.", "Then 3 more came."]
    assert split_sentences("  no   end\nmark ") == ["no end mark"]
    assert split_sentences("version 3.11 is out. next one") == ["version 3.11 is out. next one"]


def test_bert_text_and_wikitext_readers(tmp_path):
    bert = tmp_path / "corpus.txt"
    bert.write_text("First sentence.\nSecond one.\n\n\nOther doc.\n  \nThird doc line.\n")
    assert [d["sentences"] for d in read_bert_format(str(bert))] == [
        ["First sentence.", "Second one."], ["Other doc."], ["Third doc line."]]

    text = tmp_path / "prose.txt"
    text.write_text("A first paragraph. It has\ntwo sentences.\n\nAnother paragraph here.\n")
    assert [d["sentences"] for d in read_text_format(str(text))] == [
        ["A first paragraph.", "It has two sentences.", "Another paragraph here."]]

    wiki = tmp_path / "wiki.tokens"
    wiki.write_text(" \n = Lobster = \n \n Lobsters are big . They live 1 @,@ 000 m deep in "
                    "<unk> seas . \n \n = = Biology = = \n \n A well @-@ known fact . \n"
                    " = Second Article = \n Text of it . More text . \n")
    assert [d["sentences"] for d in read_wikitext_format(str(wiki))] == [
        ["Lobsters are big .", "They live 1,000 m deep in [UNK] seas .", "A well-known fact ."],
        ["Text of it .", "More text ."]]


def test_documents_from_files_are_cached_and_refreshed(tmp_path):
    path = write_bert_corpus(tmp_path / "c.txt", [["a b.", "c d."], ["e f."]])
    first = documents_from_files(str(path))
    assert first["sentences"] == [["a b.", "c d."], ["e f."]]
    assert documents_from_files(str(path))._fingerprint == first._fingerprint
    write_bert_corpus(path, [["changed."], ["text."], ["here."]])
    assert len(documents_from_files(str(path))) == 3  # a changed file is read again


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match=r"data.train_files: no such file: .*nope.txt"):
        documents_from_files(str(tmp_path / "nope.txt"))
    with pytest.raises(CorpusError, match="no such file"):
        documents_from_files(str(tmp_path / "*.missing"))


# ---------------------------------------------------------------------------------- instances
def _instances(tokenized_documents, max_seq_length=64, seed=7, duplicates=1, **config):
    config = InstanceConfig(max_seq_length=max_seq_length, seed=seed, **config)
    out = build_instances({"sentence_ids": tokenized_documents},
                          list(range(len(tokenized_documents))), config,
                          pool=DocumentPool(tokenized_documents), duplicates=duplicates)
    return [dict(zip(out, values)) for values in zip(*out.values())], config


def _span_starts(tokens, document):
    """Where `tokens` occurs as a contiguous run of the document's concatenated tokens."""
    flat = [t for sentence in document for t in sentence]
    n = len(tokens)
    return [i for i in range(len(flat) - n + 1) if flat[i:i + n] == tokens]


def _is_span(tokens, document):
    return bool(_span_starts(tokens, document))


def _follows(tokens_a, tokens_b, document):
    """Whether B comes after A in the document (trimming may cut tokens between them)."""
    return any(a + len(tokens_a) <= b for a in _span_starts(tokens_a, document)
               for b in _span_starts(tokens_b, document))


def test_nsp_statistics_and_layout(tokenized_documents):
    docs = [d for d in tokenized_documents if len(d) >= 2]  # one-sentence docs: see below
    instances, config = _instances(docs, max_seq_length=48, duplicates=3)
    assert len(instances) > 5000
    is_next = np.mean([i["nsp_label"] == IS_NEXT for i in instances])
    print(f"{len(instances)} instances, IsNext {is_next:.4f}")  # the figure, with `pytest -s`
    assert abs(is_next - 0.5) <= 0.02, is_next
    for instance in instances:
        ids, types = instance["input_ids"], instance["token_type_ids"]
        assert len(ids) <= config.max_seq_length
        sep = [k for k, t in enumerate(ids) if t == config.sep_id]
        assert ids[0] == config.cls_id and len(sep) == 2 and sep[1] == len(ids) - 1
        assert types == [0] * (sep[0] + 1) + [1] * (len(ids) - sep[0] - 1)
        tokens_a, tokens_b = ids[1:sep[0]], ids[sep[0] + 1:-1]
        assert tokens_a and tokens_b
        a_doc, b_doc = docs[instance["a_document"]], docs[instance["b_document"]]
        assert _is_span(tokens_a, a_doc) and _is_span(tokens_b, b_doc)
        if instance["nsp_label"] == NOT_NEXT:
            assert instance["b_document"] != instance["a_document"]
        else:
            assert instance["b_document"] == instance["a_document"]
            assert _follows(tokens_a, tokens_b, a_doc)  # B continues A
    lengths = np.array([len(i["input_ids"]) for i in instances])
    # Most instances fill the target (google's algorithm); short_seq_prob makes some short.
    assert np.mean(lengths >= config.max_seq_length - 8) > 0.6


def test_short_seq_prob_and_one_sentence_documents(tokenized_documents):
    long_only, config = _instances(tokenized_documents, max_seq_length=64, short_seq_prob=0.0)
    assert all(len(i["input_ids"]) <= 64 for i in long_only)
    short, _ = _instances(tokenized_documents, max_seq_length=64, short_seq_prob=1.0)
    assert np.mean([len(i["input_ids"]) for i in short]) < np.mean(
        [len(i["input_ids"]) for i in long_only]) - 10
    # A document of one sentence gives one NotNext instance, B from another document.
    single = [[list(range(10, 20))], [list(range(30, 40)), list(range(40, 45))]]
    rng = np.random.default_rng(0)
    instances = document_instances(single[0], 0, DocumentPool(single), config, rng)
    assert len(instances) == 1 and instances[0]["nsp_label"] == NOT_NEXT
    assert instances[0]["b_document"] == 1


def test_instances_are_deterministic_and_independent_of_batching(tokenized_documents):
    import datasets
    docs = tokenized_documents[:200]
    dataset = datasets.Dataset.from_dict({"sentence_ids": docs})
    config = InstanceConfig(max_seq_length=40, seed=3)
    pool = DocumentPool(docs)
    kwargs = dict(batched=True, with_indices=True, remove_columns=["sentence_ids"],
                  fn_kwargs={"config": config, "pool": pool})
    big = dataset.map(build_instances, batch_size=1000, **kwargs)
    small = dataset.map(build_instances, batch_size=7, **kwargs)
    assert big["input_ids"] == small["input_ids"] and big["nsp_label"] == small["nsp_label"]
    other_seed = dataset.map(build_instances, batch_size=1000, **{
        **kwargs, "fn_kwargs": {"config": InstanceConfig(max_seq_length=40, seed=4), "pool": pool}})
    assert other_seed["input_ids"] != big["input_ids"]


def test_stream_blocks_draw_notnext_from_the_block(tokenized_documents):
    """StreamedInstances builds a stream's instances a block of `pool_size` documents at a
    time; NotNext segments come from another document of the same block."""
    import datasets

    from bertzoo.pretraining.datamodule import StreamedInstances
    config = InstanceConfig(max_seq_length=48, seed=1)

    def blocks_of(documents, pool_size):
        stream = datasets.Dataset.from_dict({"sentence_ids": documents}).to_iterable_dataset()
        return StreamedInstances(stream, config, pool_size=pool_size, duplicates=1, seed=0)

    out = list(blocks_of(tokenized_documents[100:150], pool_size=50)._pass(0, 0, 1))
    assert {row["a_document"] for row in out} <= set(range(50))
    assert all(0 <= row["b_document"] < 50 for row in out)
    assert all(row["a_document"] != row["b_document"] for row in out
               if row["nsp_label"] == NOT_NEXT)
    assert any(row["nsp_label"] == NOT_NEXT for row in out)
    with pytest.raises(CorpusError, match="single document"):
        list(blocks_of(tokenized_documents[100:101], pool_size=50)._pass(0, 0, 1))


# ------------------------------------------------------------------------------------ masking
def _rows(tokenized_documents, max_seq_length=64, duplicates=1):
    instances, _ = _instances(tokenized_documents, max_seq_length=max_seq_length,
                              duplicates=duplicates)
    return [{"input_ids": np.array(i["input_ids"]), "token_type_ids": np.array(i["token_type_ids"]),
             "nsp_label": i["nsp_label"], "index": k, "epoch": 0}
            for k, i in enumerate(instances)]


def test_masking_statistics_over_100k_tokens(tokenizer, tokenized_documents):
    collator = MaskingCollator.for_tokenizer(tokenizer, seed=5)
    rows = _rows(tokenized_documents, duplicates=2)
    special = set(collator.replacement_ids.tolist()) ^ set(range(collator.vocab_size))
    maskable = selected = masked = unchanged = replaced = 0
    for start in range(0, len(rows), 64):
        chunk = rows[start:start + 64]
        batch = collator(chunk)
        original = np.full(batch["input_ids"].shape, -1)
        for b, row in enumerate(chunk):
            original[b, :len(row["input_ids"])] = row["input_ids"]
        labels, inputs = batch["mlm_labels"].numpy(), batch["input_ids"].numpy()
        is_maskable = (original >= 0) & ~np.isin(original, list(special))
        chosen = labels != IGNORE_INDEX
        assert not (chosen & ~is_maskable).any(), "a special or padding token was selected"
        assert (labels[chosen] == original[chosen]).all()
        assert (inputs[~chosen & (original >= 0)] == original[~chosen & (original >= 0)]).all()
        assert (inputs[original < 0] == collator.pad_id).all()
        maskable += is_maskable.sum()
        selected += chosen.sum()
        masked += (inputs[chosen] == collator.mask_id).sum()
        unchanged += (inputs[chosen] == original[chosen]).sum()
        replaced += ((inputs[chosen] != original[chosen])
                     & (inputs[chosen] != collator.mask_id)).sum()
        replacements = inputs[chosen & (inputs != original) & (inputs != collator.mask_id)]
        assert not np.isin(replacements, list(special)).any()
    print(f"maskable {maskable}, selected {selected / maskable:.4f}, of them [MASK] "
          f"{masked / selected:.4f}, random {replaced / selected:.4f}, unchanged "
          f"{unchanged / selected:.4f}")  # the figures, with `pytest -s`
    assert maskable >= 100_000
    assert abs(selected / maskable - 0.15) <= 0.005, selected / maskable
    # A random replacement may draw the original token (1 in ~115 here): that one counts as
    # unchanged, as it is in effect.
    assert abs(masked / selected - 0.8) <= 0.01
    assert abs(replaced / selected - 0.1) <= 0.01
    assert abs(unchanged / selected - 0.1) <= 0.01


def test_whole_word_masking_never_splits_a_word(tokenizer, tokenized_documents):
    collator = MaskingCollator.for_tokenizer(tokenizer, whole_word_mask=True, seed=9)
    rows = _rows(tokenized_documents)[:600]
    words_seen = pieces_seen = 0
    total_selected = total_maskable = 0
    for row in rows:
        ids = row["input_ids"]
        _, labels = collator.mask(ids, collator.rng(0, row["index"]))
        chosen = labels != IGNORE_INDEX
        maskable = ~collator.is_special[ids]
        total_selected += chosen.sum()
        total_maskable += maskable.sum()
        for k in range(1, len(ids)):
            if collator.is_continuation[ids[k]] and maskable[k - 1] and maskable[k]:
                pieces_seen += 1
                assert chosen[k] == chosen[k - 1], "a word was split"
        words_seen += (maskable & ~collator.is_continuation[ids]).sum()
    assert pieces_seen > 1000 and words_seen > 1000  # the vocabulary really splits words
    assert 0.13 <= total_selected / total_maskable <= 0.155


def test_masking_is_a_pure_function_of_seed_epoch_and_index(tokenizer, tokenized_documents):
    collator = MaskingCollator.for_tokenizer(tokenizer, seed=11)
    rows = _rows(tokenized_documents)[:16]
    together = collator(rows)
    alone = [collator([row]) for row in rows]
    for b, (row, single) in enumerate(zip(rows, alone)):
        n = len(row["input_ids"])
        assert (together["input_ids"][b, :n] == single["input_ids"][0]).all()
        assert (together["mlm_labels"][b, :n] == single["mlm_labels"][0]).all()
    again = MaskingCollator.for_tokenizer(tokenizer, seed=11)(rows)
    assert all((again[k] == together[k]).all() for k in together)
    next_epoch = collator([{**row, "epoch": 1} for row in rows])
    assert not (next_epoch["mlm_labels"] == together["mlm_labels"]).all()


def test_masking_options(tokenizer, tokenized_documents):
    rows = _rows(tokenized_documents)[:200]
    capped = MaskingCollator.for_tokenizer(tokenizer, max_predictions_per_seq=3)(rows)
    assert ((capped["mlm_labels"] != IGNORE_INDEX).sum(1) <= 3).all()
    pad_id = tokenizer.token_to_id("[PAD]")
    padded = MaskingCollator.for_tokenizer(tokenizer, pad_to_multiple_of=8)(rows[:5])
    width = padded["input_ids"].shape[1]
    longest = max(len(row["input_ids"]) for row in rows[:5])
    assert width % 8 == 0 and longest <= width < longest + 8
    # Each row is its own tokens then padding: the mask counts the row's length, and past it
    # every position is [PAD], token type 0 and never a prediction.
    lengths = [len(row["input_ids"]) for row in rows[:5]]
    assert padded["attention_mask"].sum(1).tolist() == lengths
    for b, length in enumerate(lengths):
        assert (padded["attention_mask"][b, :length] == 1).all()
        assert (padded["input_ids"][b, length:] == pad_id).all()
        assert (padded["token_type_ids"][b, length:] == 0).all()
        assert (padded["mlm_labels"][b, length:] == IGNORE_INDEX).all()
    assert any(length < width for length in lengths)  # there is padding to check
    all_mask = MaskingCollator.for_tokenizer(tokenizer, mask_token_prob=1.0,
                                             random_token_prob=0.0)(rows)
    chosen = all_mask["mlm_labels"] != IGNORE_INDEX
    assert (all_mask["input_ids"][chosen] == tokenizer.token_to_id("[MASK]")).all()
    with pytest.raises(ValueError, match="mlm_probability"):
        MaskingCollator.for_tokenizer(tokenizer, mlm_probability=0.0)
    with pytest.raises(ValueError, match="sum to at most 1"):
        MaskingCollator.for_tokenizer(tokenizer, mask_token_prob=0.8, random_token_prob=0.3)


# -------------------------------------------------------------------------------- data module
def test_datamodule_end_to_end_on_files(tmp_path):
    corpus = write_bert_corpus(tmp_path / "train.txt", synthetic_documents(120, seed=4))
    dm = PretrainingDataModule(train_files=str(corpus), tokenizer_vocab_size=150,
                               max_seq_length=32, batch_size=8, validation_documents=10)
    assert dm.vocab_size <= 150
    dm.setup("fit")
    assert len(dm.instances["validation"]) > 0
    train_docs = set(dm.instances["train"]["a_document"])
    assert train_docs and len(dm.documents()["validation"]) == 10
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "mlm_labels",
                          "nsp_labels"}
    assert batch["input_ids"].shape[0] == 8 and batch["input_ids"].shape[1] <= 32
    # The validation batches are masked the same way every time they are drawn.
    first = [b["input_ids"] for b in dm.val_dataloader()]
    second = [b["input_ids"] for b in dm.val_dataloader()]
    assert all((a == b).all() for a, b in zip(first, second))
    # A second data module with the same inputs reads the caches: same instances.
    again = PretrainingDataModule(train_files=str(corpus), tokenizer_vocab_size=150,
                                  max_seq_length=32, batch_size=8, validation_documents=10)
    again.setup("fit")
    assert again.instances["train"]._fingerprint == dm.instances["train"]._fingerprint


def test_streaming_corpus(tmp_path):
    corpus = write_bert_corpus(tmp_path / "train.txt", synthetic_documents(80, seed=5))
    dm = PretrainingDataModule(train_files=str(corpus), tokenizer_vocab_size=150,
                               max_seq_length=32, batch_size=4, streaming=True,
                               validation_documents=6, pool_size=20)
    dm.setup("fit")
    import itertools
    batches = list(itertools.islice(dm.train_dataloader(), 40))  # the stream repeats
    assert len(batches) == 40
    assert all(b["input_ids"].shape[1] <= 32 for b in batches)
    assert len(dm.instances["validation"]) > 0
    with pytest.raises(ConfigError, match="as a count"):
        PretrainingDataModule(train_files=str(corpus), streaming=True, validation_documents=0.1)


def test_bad_corpora_fail_before_training(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(CorpusError, match="empty.txt has no documents"):
        PretrainingDataModule(train_files=str(empty), validation_documents=0).vocab_size
    single = write_bert_corpus(tmp_path / "single.txt", [["Only one document.", "Two lines."]])
    with pytest.raises(CorpusError, match="single document; next sentence prediction needs "
                                          "at least two"):
        PretrainingDataModule(train_files=str(single), validation_documents=0).vocab_size
    with pytest.raises(CorpusError, match="too few to hold out"):
        PretrainingDataModule(train_files=str(single), validation_documents=0.5).vocab_size
    with pytest.raises(CorpusError, match="no such file"):
        PretrainingDataModule(train_files=str(tmp_path / "missing.txt")).vocab_size
    with pytest.raises(ValueError, match="max_seq_length must be at least 5"):
        PretrainingDataModule(max_seq_length=4)


def test_tokenizer_without_mask_token_is_refused(tmp_path):
    from tokenizers import Tokenizer

    from bertzoo.tokenizer import TokenizerError, save_tokenizer
    corpus = write_bert_corpus(tmp_path / "train.txt", synthetic_documents(30, seed=6))
    trained = train_tokenizer(texts=[s for d in synthetic_documents(30) for s in d],
                              vocab_size=100, min_frequency=1)
    vocab = {t: i for t, i in trained.get_vocab().items() if t != "[MASK]"}
    from tokenizers import models
    broken = Tokenizer(models.WordPiece({t: k for k, t in enumerate(sorted(vocab, key=vocab.get))},
                                        unk_token="[UNK]"))
    broken.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    save_tokenizer(broken, tmp_path / "tok")
    dm = PretrainingDataModule(train_files=str(corpus), tokenizer=str(tmp_path / "tok"),
                               validation_documents=0)
    with pytest.raises(TokenizerError, match=r"no \[MASK\] token"):
        dm.setup("fit")


def test_embedded_corpus_extraction(tmp_path):
    """Module documents from docstrings and prose comments (code comments dropped); a class
    with enough to say is its own document; help topics split at their headings."""
    from bertzoo.pretraining.embedded import module_documents, topic_documents
    source = tmp_path / "example.py"
    source.write_text('''"""Tools for parsing widgets. The parser is fast."""

# This comment explains the design. It reads as prose.
x = 1  # trailing
# y = compute(x)


def parse(text):
    """Parse one widget. Return a tree."""


class Widget:
    """A widget on the screen. It has a size."""

    # Widgets are drawn lazily. Drawing is cached.
    def draw(self):
        """Draw the widget. Nothing is returned."""


class Small:
    """Too small to stand alone."""
''')
    module, widget = list(module_documents(source))
    assert module == ["Tools for parsing widgets.", "The parser is fast.",
                      "This comment explains the design.", "It reads as prose.",
                      "Parse one widget.", "Return a tree.", "Too small to stand alone."]
    assert widget == ["A widget on the screen.", "It has a size.", "Widgets are drawn lazily.",
                      "Drawing is cached.", "Draw the widget.", "Nothing is returned."]
    topics = list(topic_documents())
    assert len(topics) > 79 and all(isinstance(s, str) for doc in topics for s in doc)
