"""Whole-word masking for Chinese: a word segmenter says which characters form one word.

BERT's WordPiece tokenizer puts spaces around every CJK character, so Chinese text becomes one
token per character and no token is a `##` piece: whole-word masking by `##` alone masks single
characters. Chinese-BERT-wwm (Cui et al. 2019, "Pre-Training with Whole Word Masking for
Chinese BERT") segments the text into words and masks all characters of a chosen word
together; here jieba (`pip install 'bertzoo[zh]'`) segments, and every character token that
continues the word of the character before it gets the `WORD_CONTINUES` mark on its id, which
`MaskingCollator` reads as it reads a `##` piece. Only Chinese characters are marked (as
Chinese-BERT-wwm): English words inside Chinese text keep their `##` grouping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bertzoo.config import ConfigError
from bertzoo.pretraining.masking import WORD_CONTINUES

SEGMENTERS = ("jieba",)


def is_chinese_char(char: str) -> bool:
    """The CJK Unified Ideographs blocks, as google-research/bert's `_is_chinese_char`."""
    cp = ord(char)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def segmenter(name: str) -> Callable[[str], list[str]]:
    """A function text -> words (their concatenation is the text)."""
    if name not in SEGMENTERS:
        raise ConfigError(f"data.word_segmenter must be one of {', '.join(SEGMENTERS)} or null, "
                          f"got {name!r}")
    try:
        import jieba
    except ImportError:
        raise ConfigError("data.word_segmenter: jieba is not installed; install the Chinese "
                          "extra: pip install 'bertzoo[zh]'") from None
    jieba.setLogLevel(60)  # no "Building prefix dict" chatter on every process
    return lambda text: list(jieba.cut(text, HMM=True))


def word_of_chars(words: Sequence[str]) -> list[int]:
    """Word number of each character of the text that `words` segments."""
    out: list[int] = []
    for number, word in enumerate(words):
        out.extend([number] * len(word))
    return out


def mark_words(text: str, ids: Sequence[int], offsets: Sequence[tuple[int, int]],
               cut: Callable[[str], list[str]]) -> list[int]:
    """Token ids of `text` with `WORD_CONTINUES` set on each Chinese character token that
    continues the word (per `cut`) of the Chinese character token before it."""
    word_of = word_of_chars(cut(text))
    marked = list(ids)
    previous = None  # word number of the previous token, if a Chinese character
    for k, (start, end) in enumerate(offsets):
        chinese = end - start == 1 and start < len(word_of) and is_chinese_char(text[start])
        word = word_of[start] if chinese else None
        if chinese and word == previous:
            marked[k] |= WORD_CONTINUES
        previous = word
    return marked
