"""Small synthetic English: a closed vocabulary and sentences built from it, for the tasks'
example data, the test helpers (`bertzoo.testing`), the demo and the benchmarks. Deterministic
for a seed; nothing is downloaded."""

from __future__ import annotations

import random

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
    subject = (rng.choice(NAMES) if rng.random() < 0.4
               else f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}")
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
