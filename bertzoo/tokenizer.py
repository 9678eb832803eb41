"""WordPiece tokenization through the `tokenizers` library (the Rust implementation HF uses).

BERT's pipeline (Devlin et al. 2018, Section 3; google-research/bert `tokenization.py`):
BasicTokenizer normalisation (clean control characters, split CJK characters, lower-case and strip
accents when uncased), split on whitespace and punctuation, then greedy longest-match-first
WordPiece with `##` continuation pieces and `[UNK]` for words of more than 100 characters or
with no decomposition. `tokenizers` implements each step (`BertNormalizer`, `BertPreTokenizer`,
`WordPiece`); this module only assembles and persists them, so offsets for NER/QA come for free.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from bertzoo.files import CKPT_KEY, atomic_write, read_lightning_checkpoint, resolve

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                   "special_tokens_map.json")


class TokenizerError(ValueError):
    """A tokenizer that cannot be used for BERT; the message names the file and the problem."""


@dataclass(frozen=True)
class SpecialIds:
    """Ids of BERT's special tokens in one vocabulary."""
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int | None  # only pretraining needs [MASK]

    @property
    def all(self) -> tuple[int, ...]:
        return tuple(i for i in (self.pad, self.unk, self.cls, self.sep, self.mask) if i is not None)


def special_ids(tokenizer: Tokenizer, source: str = "the tokenizer") -> SpecialIds:
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if ids[t] is None]
    if missing:
        raise TokenizerError(f"{source} has no {', '.join(missing)} token; a BERT vocabulary "
                             f"needs {', '.join(SPECIAL_TOKENS[:4])}")
    return SpecialIds(ids["[PAD]"], ids["[UNK]"], ids["[CLS]"], ids["[SEP]"], ids["[MASK]"])


def _bert_pipeline(tokenizer: Tokenizer, lowercase: bool, strip_accents: bool | None,
                   chinese_chars: bool = True) -> Tokenizer:
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=chinese_chars, strip_accents=strip_accents,
        lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _add_post_processor(tokenizer: Tokenizer) -> Tokenizer:
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tokenizer


def from_vocab(vocab_file: str | os.PathLike, lowercase: bool = True,
               strip_accents: bool | None = None, chinese_chars: bool = True) -> Tokenizer:
    """BERT's tokenizer from a `vocab.txt` (one token per line; the line number is the id)."""
    path = Path(vocab_file)
    with open(path, encoding="utf-8") as f:
        vocab = {}
        for index, line in enumerate(f):
            vocab[line.rstrip("\n")] = index
    if not vocab:
        raise TokenizerError(f"{path} is empty; expected one WordPiece token per line")
    if "[UNK]" not in vocab:
        raise TokenizerError(f"{path} has no [UNK] token; a BERT vocabulary needs "
                             f"{', '.join(SPECIAL_TOKENS[:4])}")
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    _bert_pipeline(tokenizer, lowercase, strip_accents, chinese_chars)
    tokenizer.add_special_tokens([t for t in SPECIAL_TOKENS if t in vocab])
    special_ids(tokenizer, str(path))
    return _add_post_processor(tokenizer)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A BERT tokenizer from a folder (tokenizer.json, else vocab.txt + tokenizer_config.json),
    one of those files, or a bertzoo Lightning `.ckpt` (which carries its tokenizer).

    Truncation and padding stored in a tokenizer.json are switched off: callers choose them per
    call, as Hugging Face's tokenizers do.
    """
    path = resolve(path)
    if path.is_file() and path.suffix == ".ckpt":
        info = read_lightning_checkpoint(path)[CKPT_KEY]
        if not info.get("tokenizer"):
            raise TokenizerError(f"{path} carries no tokenizer; pass the tokenizer folder instead")
        tokenizer = Tokenizer.from_str(info["tokenizer"])
    elif path.is_file() and path.name.endswith(".json"):
        tokenizer = _from_json(path)
    elif path.is_file():
        tokenizer = from_vocab(path, **_casing(path.parent))
    elif (path / "tokenizer.json").is_file():
        tokenizer = _from_json(path / "tokenizer.json")
    elif (path / "vocab.txt").is_file():
        tokenizer = from_vocab(path / "vocab.txt", **_casing(path))
    else:
        raise TokenizerError(f"{path} has neither tokenizer.json nor vocab.txt; a BERT tokenizer "
                             f"folder needs one of them")
    tokenizer.no_truncation()
    tokenizer.no_padding()
    special_ids(tokenizer, str(path))
    return tokenizer


def _from_json(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust side raises a bare Exception
        raise TokenizerError(f"{path} is not a valid tokenizer.json: {err}") from err


def _casing(folder: Path) -> dict:
    """Casing options from a Hugging Face `tokenizer_config.json`, BERT's defaults without one."""
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    return dict(lowercase=config.get("do_lower_case", True),
                strip_accents=config.get("strip_accents"),
                chinese_chars=config.get("tokenize_chinese_chars", True))


def is_lowercase(tokenizer: Tokenizer) -> bool:
    normalizer = json.loads(tokenizer.to_str()).get("normalizer") or {}
    return bool(normalizer.get("lowercase", False))


def train_tokenizer(files: Iterable[str | os.PathLike] | None = None, vocab_size: int = 30522,
                    *, texts: Iterable[str] | None = None, lowercase: bool = True,
                    min_frequency: int = 2, limit_alphabet: int = 1000) -> Tokenizer:
    """Train a BERT WordPiece vocabulary on text files or an iterable of strings.

    Args:
        files: Plain-text files to learn from.
        vocab_size: Size of the vocabulary, the five special tokens included.
        texts: Strings to learn from instead of (or besides) files.
        lowercase: Lower-case and strip accents, as BERT's uncased models do.
        min_frequency: A merge must be seen this often to enter the vocabulary.
        limit_alphabet: Most distinct characters kept as single-character tokens.
    """
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    _bert_pipeline(tokenizer, lowercase, None)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, limit_alphabet=limit_alphabet,
        special_tokens=list(SPECIAL_TOKENS), continuing_subword_prefix="##")
    files = [str(f) for f in files or []]
    if texts is not None:
        tokenizer.train_from_iterator(_chain_files(files, texts), trainer)
    elif files:
        tokenizer.train(files, trainer)
    else:
        raise ValueError("train_tokenizer needs files or texts")
    return _add_post_processor(tokenizer)


def _chain_files(files: list[str], texts: Iterable[str]) -> Iterator[str]:
    for file in files:
        with open(file, encoding="utf-8") as f:
            yield from f
    yield from texts


def save_tokenizer(tokenizer: Tokenizer, directory: str | os.PathLike,
                   model_max_length: int = 512) -> None:
    """Write tokenizer.json, vocab.txt, tokenizer_config.json and special_tokens_map.json, the
    files Hugging Face's `BertTokenizer(Fast).from_pretrained` reads."""
    directory = Path(directory)
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    by_id = sorted(vocab.items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise TokenizerError("the vocabulary ids are not contiguous; vocab.txt cannot represent it")
    lowercase = is_lowercase(tokenizer)
    config = {
        "tokenizer_class": "BertTokenizer", "do_lower_case": lowercase,
        "tokenize_chinese_chars": True, "strip_accents": None,
        "model_max_length": model_max_length, "unk_token": "[UNK]", "sep_token": "[SEP]",
        "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
    }
    special = {k: config[k] for k in ("unk_token", "sep_token", "pad_token", "cls_token",
                                      "mask_token")}
    clean = Tokenizer.from_str(tokenizer.to_str())
    clean.no_truncation()
    clean.no_padding()
    atomic_write(directory / "tokenizer.json", lambda tmp: clean.save(tmp))
    atomic_write(directory / "vocab.txt", lambda tmp: Path(tmp).write_text(
        "".join(token + "\n" for token, _ in by_id), encoding="utf-8"))
    atomic_write(directory / "tokenizer_config.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    atomic_write(directory / "special_tokens_map.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(special, indent=2) + "\n"))
