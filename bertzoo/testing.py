"""Helpers for tests of bertzoo and of task plugins: small synthetic text and a tiny backbone.

Nothing here downloads anything. A plugin's tests can build a backbone folder in a temporary
directory with `tiny_backbone(tmp_path)` and point its task at it.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from bertzoo.config import BertConfig
from bertzoo.model import BertEncoder
from bertzoo.tokenizer import train_tokenizer

# A small closed vocabulary: enough structure for a WordPiece trainer and for toy tasks.
NOUNS = ("cat dog bird fish horse river mountain city village forest garden kitchen teacher "
         "doctor farmer child market window table letter engine storm winter summer book "
         "song ship road bridge castle island").split()
VERBS = ("sees finds likes carries builds paints watches follows opens closes helps visits "
         "crosses remembers describes").split()
ADJECTIVES = ("small large quiet noisy old young bright dark happy sad green golden cold warm "
              "distant gentle").split()
NAMES = "Alice Bob Carol Dmitri Eve Farah Gustav Hiro Ines Jonas".split()
PLACES = "Paris Lagos Lima Oslo Kyoto Cairo Quito Perth".split()


def sentence(rng: random.Random) -> str:
    """One short grammatical sentence, e.g. 'Alice sees the small cat near the river.'"""
    subject = rng.choice(NAMES) if rng.random() < 0.4 else f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    obj = f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    tail = f" in {rng.choice(PLACES)}" if rng.random() < 0.3 else f" near the {rng.choice(NOUNS)}"
    return f"{subject} {rng.choice(VERBS)} {obj}{tail}."


def sentences(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [sentence(rng) for _ in range(count)]


def documents(count: int, seed: int = 0, min_sentences: int = 2,
              max_sentences: int = 8) -> list[list[str]]:
    """Documents (lists of sentences); each document keeps to one topic noun, so that a true
    next sentence is more alike its predecessor than a random one (NSP has signal)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        topic = rng.choice(NOUNS)
        doc = []
        for _ in range(rng.randint(min_sentences, max_sentences)):
            text = sentence(rng)
            doc.append(text.replace(" near the ", f" near the {topic} and the ", 1))
        docs.append(doc)
    return docs


def write_bert_corpus(path: str | Path, docs: list[list[str]]) -> Path:
    """`docs` in google-research/bert's pretraining layout: a sentence per line, a blank line
    between documents (`format: bert`)."""
    path = Path(path)
    path.write_text("\n\n".join("\n".join(doc) for doc in docs) + "\n", encoding="utf-8")
    return path


def tiny_config(vocab_size: int, **overrides) -> BertConfig:
    """A BERT small enough for a unit test: 2 layers of width 32."""
    values = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    values.update(overrides)
    return BertConfig(**values)


def tiny_tokenizer(vocab_size: int = 200, seed: int = 0):
    """A WordPiece vocabulary trained on the synthetic sentences."""
    return train_tokenizer(texts=sentences(2000, seed), vocab_size=vocab_size, min_frequency=1)


def tiny_backbone(directory: str | Path, seed: int = 0, **config_overrides) -> Path:
    """Write a random tiny BERT with its tokenizer as a Hugging Face folder; return the path."""
    tokenizer = tiny_tokenizer(seed=seed)
    torch.manual_seed(seed)
    encoder = BertEncoder(tiny_config(tokenizer.get_vocab_size(), **config_overrides))
    encoder.save_pretrained(directory, tokenizer=tokenizer)
    return Path(directory)
