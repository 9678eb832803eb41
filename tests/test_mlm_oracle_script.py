"""docs/quality/mlm_oracle.py at toy size: every mode runs on a small WikiText-layout folder and
prints what its docstring promises, and the attention figures it reports mean what the README
says they mean (uniform attention reads as ln n and 1/n)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from bertzoo.synthetic import documents
from doc_scripts import load_doc_script

TOY = ["--vocab", "200", "--seq", "32", "--batch", "8", "--hidden", "64", "--warmup", "1"]


@pytest.fixture(scope="module")
def wikitext(tmp_path_factory) -> Path:
    """WikiText-2's two files in their own layout: ` = Title = ` starts an article."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "wikitext-2"
    folder.mkdir()
    for name, seed in (("wiki.valid.tokens", 0), ("wiki.test.tokens", 1)):
        lines = []
        for i, doc in enumerate(documents(30, seed=seed, min_sentences=6, max_sentences=10)):
            lines += ["", f" = Article {seed} {i} = ", "", " " + " ".join(doc), ""]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def run(monkeypatch, capsys, data: Path, *args: str) -> list[str]:
    script = load_doc_script("quality/mlm_oracle.py")
    monkeypatch.setattr(sys, "argv", ["mlm_oracle.py", "--data", str(data), *TOY, *args])
    script.main()
    return capsys.readouterr().out.strip().splitlines()


@pytest.mark.parametrize("impl,collator", [("bertzoo", "bertzoo"), ("hf", "hf"),
                                           ("hf", "bertzoo")])
def test_training_reports_every_figure(wikitext, monkeypatch, capsys, impl, collator):
    lines = run(monkeypatch, capsys, wikitext, "--impl", impl, "--collator", collator,
                "--steps", "4", "--eval-every", "2")
    header, *evals = (json.loads(line) for line in lines)
    assert header["vocab"] <= 200 and header["train_rows"] > 0 and header["val_batches"] > 0
    assert [e["step"] for e in evals] == [2, 4]
    for e in evals:
        assert 0.0 <= e["val_acc_at_mask"] <= 1.0 and 0.0 <= e["val_acc"] <= 1.0
        assert math.isfinite(e["val_loss"]) and e["val_loss"] > 0
        # Attention is read from bertzoo's encoder only: two layers, (entropy, previous).
        assert len(e["attention_entropy_and_previous"]) == (2 if impl == "bertzoo" else 0)


def test_baselines_and_show(wikitext, monkeypatch, capsys):
    (line,) = run(monkeypatch, capsys, wikitext, "--baselines")
    counts = json.loads(line)
    assert counts["masked"] > 0 and counts["unigram_ce"] > 0
    # The synthetic text is highly predictable from the left neighbour (after "the" comes an
    # adjective, then a noun): the bigram guess must beat always guessing the most frequent
    # token by far, not only by the copies of unchanged tokens.
    assert counts["copy_or_bigram_accuracy"] > 1.5 * counts["unigram_accuracy"]

    lines = run(monkeypatch, capsys, wikitext, "--show", "2")
    assert [line.startswith("nsp_label ") for line in lines] == [True, False, False] * 2
    tokens = lines[1].split()
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]|B"


def test_uniform_attention_reads_as_ln_n_and_one_over_n():
    """With the query and key projections zeroed every token attends uniformly: entropy ln n
    and 1/n to the previous token, on rows with no padding."""
    script = load_doc_script("quality/mlm_oracle.py")
    from bertzoo.config import BertConfig
    from bertzoo.model import BertForPreTraining
    model = BertForPreTraining(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=64,
                                          max_position_embeddings=16), nsp=False)
    with torch.no_grad():
        for layer in model.encoder.layers:
            layer.attention.qkv.weight[:64] = 0  # the query and key rows of the fused projection
            layer.attention.qkv.bias[:64] = 0
    n = 12
    batch = {"input_ids": torch.randint(5, 50, (3, n)),
             "token_type_ids": torch.zeros(3, n, dtype=torch.long),
             "attention_mask": torch.ones(3, n, dtype=torch.long)}
    for entropy, previous in script.attention(model.encoder, batch):
        assert entropy == pytest.approx(math.log(n), abs=0.01)
        assert previous == pytest.approx(1 / n, abs=0.001)
