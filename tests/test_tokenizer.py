"""`load_tokenizer` against transformers' BertTokenizerFast on the same folder."""

import shutil

import pytest
import transformers

from bertzoo import TokenizerError, load_tokenizer, save_tokenizer, train_tokenizer

TEXTS = [
    "Hello, world! This is BERT.",
    "Crème brûlée à la française, naïve façade, Ångström.",  # accents (stripped when uncased)
    "北京是中国的首都。東京も大きい。",  # CJK characters are split one by one
    "Emoji 😀👍🏽 and symbols ™ © ∑ in text",
    "Visit https://example.com/path?query=1&x=y or mail me@example.org",
    "Supercalifragilisticexpialidocious" * 6,  # > 100 characters: a single [UNK]
    "",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nand\u00a0nbsp and zero\u200bwidth",
    "UPPER lower MiXeD 12,345.67 dollars; co-operate (parenthesised) \"quoted\"",
]
PAIRS = [(TEXTS[i], TEXTS[-1 - i]) for i in range(len(TEXTS))]


@pytest.fixture(scope="module")
def reference_tokenizer(minilm_path):
    return transformers.BertTokenizerFast.from_pretrained(minilm_path)


@pytest.fixture
def tokenizers_pair(minilm_path, reference_tokenizer):
    return load_tokenizer(minilm_path), reference_tokenizer


def _check_same(ours, reference, first, second=None, max_length=None):
    if max_length:
        ours.enable_truncation(max_length=max_length, strategy="longest_first")
    else:
        ours.no_truncation()
    got = ours.encode(first, second) if second is not None else ours.encode(first)
    # Batch form: for a single call, transformers treats an empty second text as "no pair".
    want = reference([first], [second] if second is not None else None,
                     truncation=bool(max_length), max_length=max_length,
                     return_special_tokens_mask=True)
    want = {key: values[0] for key, values in want.items()}
    assert got.ids == want["input_ids"], (first, second)
    assert got.type_ids == want["token_type_ids"]
    assert got.special_tokens_mask == want["special_tokens_mask"]
    cls, sep = reference.cls_token_id, reference.sep_token_id
    assert got.ids[0] == cls and got.ids[-1] == sep


@pytest.mark.parametrize("text", TEXTS)
def test_single_sentences_match_transformers(tokenizers_pair, text):
    _check_same(*tokenizers_pair, text)


@pytest.mark.parametrize("pair", PAIRS)
def test_pairs_match_transformers(tokenizers_pair, pair):
    _check_same(*tokenizers_pair, *pair)


@pytest.mark.parametrize("max_length", [8, 16, 33])
def test_pairs_with_truncation_match_transformers(tokenizers_pair, max_length):
    ours, reference = tokenizers_pair
    for first, second in PAIRS:
        _check_same(ours, reference, first, second, max_length=max_length)


def test_special_cases(tokenizers_pair):
    ours, _ = tokenizers_pair
    enc = ours.encode("Supercalifragilisticexpialidocious" * 6)
    assert enc.tokens == ["[CLS]", "[UNK]", "[SEP]"]
    assert ours.encode("café").tokens == ["[CLS]", "cafe", "[SEP]"]
    assert ours.encode("北京").tokens == ["[CLS]", "北", "京", "[SEP]"]
    assert ours.encode("").tokens == ["[CLS]", "[SEP]"]
    pieces = ours.encode("unaffable").tokens
    assert any(p.startswith("##") for p in pieces)


def test_offsets_point_into_the_original_text(tokenizers_pair):
    ours, _ = tokenizers_pair
    text = "Crème  brûlée in Zürich, 2024!"
    enc = ours.encode(text)
    for token, (start, end), special in zip(enc.tokens, enc.offsets, enc.special_tokens_mask):
        if special:
            continue
        piece = token[2:] if token.startswith("##") else token
        assert piece == text[start:end].lower().replace("è", "e").replace("û", "u").replace(
            "é", "e").replace("ü", "u")


def test_loaded_tokenizer_has_no_stored_truncation_or_padding(tokenizers_pair):
    # all-MiniLM-L6-v2's tokenizer.json pads and truncates to 128; we must not.
    ours, _ = tokenizers_pair
    assert len(ours.encode("word " * 300).ids) == 302
    assert len(ours.encode("word").ids) == 3


def test_vocab_txt_alone_gives_the_same_tokenizer(tmp_path, minilm_path, tokenizers_pair):
    ours, _ = tokenizers_pair
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(f"{minilm_path}/{name}", tmp_path / name)
    from_vocab = load_tokenizer(tmp_path)
    for first, second in PAIRS:
        assert from_vocab.encode(first, second).ids == ours.encode(first, second).ids


def test_save_then_load_in_transformers(tmp_path):
    trained = train_tokenizer(texts=["the cat sat on the mat"] * 50 + ["a dog ran far"] * 50,
                              vocab_size=60, min_frequency=1)
    save_tokenizer(trained, tmp_path)
    reference = transformers.BertTokenizerFast.from_pretrained(tmp_path)
    slow = transformers.BertTokenizer.from_pretrained(tmp_path)  # reads vocab.txt
    for text in ["the cat ran", "A DOG sat on the mat!"]:
        want = trained.encode(text).ids
        assert reference(text)["input_ids"] == want
        assert slow(text)["input_ids"] == want
    assert load_tokenizer(tmp_path).get_vocab() == trained.get_vocab()


def test_train_tokenizer_from_files(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["Running runners run quickly."] * 30 + ["Ünïcode wörds"] * 30))
    tokenizer = train_tokenizer([corpus], vocab_size=80, min_frequency=1)
    vocab = tokenizer.get_vocab()
    assert all(t in vocab for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))
    assert vocab["[PAD]"] == 0
    assert tokenizer.encode("unicode").tokens[1].startswith("u")  # lower-cased, accents stripped


def test_bad_tokenizer_folders(tmp_path):
    with pytest.raises(TokenizerError, match="neither tokenizer.json nor vocab.txt"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.txt").write_text("")
    with pytest.raises(TokenizerError, match="vocab.txt is empty"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.txt").write_text("a\nb\nc\n")
    with pytest.raises(TokenizerError, match=r"no \[UNK\]"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json is not a valid"):
        load_tokenizer(tmp_path)
