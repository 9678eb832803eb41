"""Chinese: sentence splitting, whole-word masking with jieba, and a tiny pretraining run, on
the Chinese article about BERT in the local data copy (../shared/data/zh beside the
repository; see its SOURCES.md). Without the copy these tests fail, naming where it belongs."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import jieba
import numpy as np
import pytest

from bertzoo.cli import main
from bertzoo.config import ConfigError
from bertzoo.model import IGNORE_INDEX
from bertzoo.pretraining import MaskingCollator, PretrainingDataModule
from bertzoo.pretraining.chinese import is_chinese_char, mark_words
from bertzoo.pretraining.corpus import split_sentences, text_to_sentences
from bertzoo.pretraining.datamodule import tokenize_documents
from bertzoo.pretraining.masking import WORD_CONTINUES
from bertzoo.tokenizer import train_tokenizer

ARTICLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "zh" / \
    "bert-article.txt"
TERMINATED = 47  # sentences ending in 。！？ in the article (its terminator runs)
UNTERMINATED = 24  # headings, lead-ins ending in "：", two formulas: each a paragraph of its own


@pytest.fixture(scope="module")
def article() -> str:
    if not ARTICLE.is_file():
        pytest.fail(f"the Chinese sample is missing: expected {ARTICLE} (the shared data copy "
                    f"beside the repository, ../shared/data/zh/bert-article.txt)")
    return ARTICLE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tokenizer(article):
    return train_tokenizer(texts=text_to_sentences(article), vocab_size=1200, min_frequency=1)


# --------------------------------------------------------------------------- sentence splitting
def test_chinese_sentences_end_at_full_width_marks_and_their_quotes():
    assert split_sentences("他说：“你好！”然后走了。真的吗？！是的……对。") == [
        "他说：“你好！”", "然后走了。", "真的吗？！", "是的……对。"]
    assert split_sentences("（见下文。）下一句」。") == ["（见下文。）", "下一句」。"]
    # English is split as before; mixed text splits at both kinds of boundary.
    assert split_sentences("BERT是模型。It was released in 2018. Then came RoBERTa！好。") == [
        "BERT是模型。", "It was released in 2018.", "Then came RoBERTa！", "好。"]


def test_the_articles_sentences_are_counted_as_written(article):
    sentences = text_to_sentences(article)
    ends = re.compile("[。！？][”’」』）)]*$")
    terminated = [s for s in sentences if ends.search(s)]
    assert len(re.findall("[。！？]+", article)) == TERMINATED == len(terminated)
    assert len(sentences) == TERMINATED + UNTERMINATED
    assert not any(re.search("[。！？].", s.rstrip("”’」』）)")) for s in sentences), \
        "a sentence holds the end of another"
    # Each unterminated piece is a paragraph's end: a heading, a lead-in or a formula.
    for piece in (s for s in sentences if not ends.search(s)):
        assert piece.startswith(("#", "$$", "**")) or piece.endswith(("：", ":")), piece


# --------------------------------------------------------------------------- whole-word masking
def words_and_tokens(sentence: str, tokenizer):
    encoding = tokenizer.encode(sentence, add_special_tokens=False)
    ids = mark_words(sentence, encoding.ids, encoding.offsets,
                     lambda text: list(jieba.cut(text)))
    word_of = [n for n, word in enumerate(jieba.cut(sentence)) for _ in word]
    token_words = [word_of[start] if end - start == 1 and is_chinese_char(sentence[start])
                   else None for start, end in encoding.offsets]
    return np.asarray(ids), token_words


def test_every_masked_chinese_word_is_masked_whole(article, tokenizer):
    """On every sentence of the article, masked 200 times: a multi-character word's
    characters are selected all together or not at all, never split."""
    collator = MaskingCollator.for_tokenizer(tokenizer, whole_word_mask=True,
                                             mlm_probability=0.3, seed=1)
    whole = partial = 0
    for k, sentence in enumerate(text_to_sentences(article)):
        ids, token_words = words_and_tokens(sentence, tokenizer)
        assert (ids & WORD_CONTINUES).any() or not any(token_words), sentence
        for draw in range(200):
            masked, labels = collator.mask(ids, collator.rng(draw, k))
            assert masked.max() < collator.vocab_size  # the marks never reach the model
            selected = labels != IGNORE_INDEX
            for word in {w for w in token_words if w is not None}:
                positions = [i for i, w in enumerate(token_words) if w == word]
                if len(positions) < 2 or not selected[positions].any():
                    continue
                if selected[positions].all():
                    whole += 1
                else:
                    partial += 1
    assert partial == 0, f"{partial} Chinese words were split by the masking"
    assert whole > 1000  # the check looked at many masked words


def test_the_pipeline_marks_words_and_the_collator_takes_the_marks_off(article, tokenizer):
    documents = {"sentences": [text_to_sentences(article)]}
    marked = tokenize_documents(documents, tokenizer, word_segmenter="jieba")["sentence_ids"]
    plain = tokenize_documents(documents, tokenizer)["sentence_ids"]
    flat_marked = np.concatenate([np.asarray(s) for s in marked[0]])
    flat_plain = np.concatenate([np.asarray(s) for s in plain[0]])
    assert (flat_marked & ~WORD_CONTINUES == flat_plain).all()
    assert 0.2 < ((flat_marked & WORD_CONTINUES) != 0).mean() < 0.6  # most words: 2 characters
    collator = MaskingCollator.for_tokenizer(tokenizer, seed=0)  # no whole-word masking
    batch = collator([{"input_ids": flat_marked[:64], "token_type_ids": np.zeros(64),
                       "nsp_label": -100, "index": 0, "epoch": 0}])
    assert int(batch["input_ids"].max()) < collator.vocab_size


def test_without_jieba_the_error_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "jieba", None)  # `import jieba` raises ImportError
    message = ("data.word_segmenter: jieba is not installed; install the Chinese extra: "
               "pip install 'bertzoo[zh]'")
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        PretrainingDataModule(whole_word_mask=True, word_segmenter="jieba")
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--data.whole_word_mask=true", "--data.word_segmenter=jieba",
                 "--trainer.max_steps=1"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"bertzoo pretrain: error: {message}"
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.ckpt"))


# --------------------------------------------------------------------------- a tiny offline run
def test_the_chinese_recipe_runs_offline_on_the_article(article, tmp_path, monkeypatch):
    """recipes/pretrain/zh-wikipedia.yaml with its header's local-files override pointed at
    the article, and a tiny model: a few steps of whole-word-masked MLM, a checkpoint whose
    tokenizer knows the article's characters."""
    import json

    import torch
    import yaml
    recipe = Path(__file__).resolve().parents[1] / "recipes/pretrain/zh-wikipedia.yaml"
    assert yaml.safe_load(recipe.read_text())["data"]["dataset_config"] == "20231101.zh"
    monkeypatch.chdir(tmp_path)
    tiny = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 64}
    assert main(["pretrain", "--config", str(recipe), "--data.dataset", "null",
                 "--data.dataset_config", "null", "--data.streaming", "false",
                 "--data.train_files", str(ARTICLE), "--data.format", "text",
                 "--data.validation_documents", "0", "--data.num_workers", "0",
                 "--data.tokenizer_vocab_size", "1500", "--data.max_seq_length", "64",
                 "--data.batch_size", "8", "--model.config", json.dumps(tiny),
                 "--trainer.max_steps", "3", "--model.warmup", "0.1",
                 "--global_batch_size", "null", "--trainer.devices", "1",
                 "--trainer.accelerator", "cpu", "--trainer.log_every_n_steps", "1",
                 "--trainer.enable_progress_bar", "false"]) == 0
    run = tmp_path / "runs/pretrain/version_0"
    checkpoint = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_str(checkpoint["bertzoo"]["tokenizer"])
    encoded = tokenizer.encode("预训练语言模型", add_special_tokens=False).tokens
    assert encoded == list("预训练语言模型")  # one token per character, none unknown
    losses = [float(r["train/loss_step"]) for r in csv.DictReader((run / "metrics.csv").open())
              if r.get("train/loss_step")]
    assert len(losses) == 3 and all(np.isfinite(losses))
