"""Numbers against Hugging Face transformers (the reference; a test dependency only).

Both the unpadded path (the default) and the padded path are held to the same tolerance.
"""

import pytest
import torch
import transformers
from torch.testing import assert_close

from bertzoo import BertConfig, BertEncoder, BertForPreTraining

SENTENCES = [
    ("The quick brown fox jumps over the lazy dog.", "It was not amused."),
    ("Résumé of the café meeting in Zürich", "naïve coöperation"),
    ("Short", "pair"),
    ("A considerably longer first segment that talks about encoders, attention heads, "
     "LayerNorm placement and how padding is handled in batched inference.", "Then more."),
]


@pytest.fixture(scope="module")
def minilm_pair(minilm_path):
    ours = BertEncoder.from_pretrained(minilm_path)
    reference = transformers.BertModel.from_pretrained(minilm_path, attn_implementation="sdpa").eval()
    tokenizer = transformers.BertTokenizerFast.from_pretrained(minilm_path)
    return ours, reference, tokenizer


@pytest.mark.parametrize("unpad", [True, False], ids=["unpadded", "padded"])
@pytest.mark.parametrize("pairs", [True, False], ids=["pairs", "single"])
def test_minilm_matches_transformers(minilm_pair, unpad, pairs):
    ours, reference, tokenizer = minilm_pair
    first, second = zip(*SENTENCES)
    batch = tokenizer(list(first), list(second) if pairs else None, padding=True,
                      return_tensors="pt")
    assert batch["attention_mask"].min() == 0, "the batch must contain padding"
    if pairs:
        assert batch["token_type_ids"].max() == 1
    ours.unpad = unpad
    with torch.no_grad():
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        want = reference(**batch)
    real = batch["attention_mask"].bool()
    assert_close(got.last_hidden_state[real], want.last_hidden_state[real], atol=1e-4, rtol=0)
    assert_close(got.pooler_output, want.pooler_output, atol=1e-4, rtol=0)


def test_unpadded_equals_padded_in_training_mode_gradients(minilm_pair):
    """Same loss and gradients through both paths (dropout off so they are comparable)."""
    ours, _, tokenizer = minilm_pair
    batch = tokenizer([s for s, _ in SENTENCES], padding=True, return_tensors="pt")
    grads = []
    for unpad in (True, False):
        ours.zero_grad()
        ours.unpad = unpad
        out = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        real = batch["attention_mask"].bool()
        (out.last_hidden_state[real].pow(2).mean() + out.pooler_output.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in ours.named_parameters()})
    ours.zero_grad()
    ours.unpad = True
    for name in grads[0]:
        assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def _random_pair(seed=0):
    hf_config = transformers.BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=3,
                                        num_attention_heads=4, intermediate_size=128,
                                        max_position_embeddings=64)
    torch.manual_seed(seed)
    return transformers.BertForPreTraining(hf_config).eval()


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 500, (3, 20), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 14:] = 0
    attention_mask[2, 6:] = 0
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 8:] = 1
    return input_ids, attention_mask, token_type_ids


@pytest.mark.parametrize("unpad", [True, False], ids=["unpadded", "padded"])
def test_pretraining_heads_from_transformers(tmp_path, unpad):
    reference = _random_pair()
    reference.save_pretrained(tmp_path)
    ours = BertForPreTraining.from_pretrained(tmp_path)
    ours.encoder.unpad = unpad
    input_ids, attention_mask, token_type_ids = _inputs()
    with torch.no_grad():
        got = ours(input_ids, attention_mask, token_type_ids)
        want = reference(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids)
    real = attention_mask.bool()
    assert_close(got.mlm_logits[real], want.prediction_logits[real], atol=1e-4, rtol=0)
    assert_close(got.nsp_logits, want.seq_relationship_logits, atol=1e-4, rtol=0)


def test_pretraining_heads_to_transformers(tmp_path):
    torch.manual_seed(0)
    ours = BertForPreTraining(BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=3,
                                         num_attention_heads=4, intermediate_size=128,
                                         max_position_embeddings=64)).eval()
    ours.save_pretrained(tmp_path)
    reference, info = transformers.BertForPreTraining.from_pretrained(
        tmp_path, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    input_ids, attention_mask, token_type_ids = _inputs()
    with torch.no_grad():
        got = ours(input_ids, attention_mask, token_type_ids)
        want = reference.eval()(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids)
    real = attention_mask.bool()
    assert_close(got.mlm_logits[real], want.prediction_logits[real], atol=1e-4, rtol=0)
    assert_close(got.nsp_logits, want.seq_relationship_logits, atol=1e-4, rtol=0)
    # The bare encoder reads the same folder: every encoder weight found; only the heads are
    # left over, exactly as when BertModel loads Google's bert-base-uncased.
    encoder, info = transformers.BertModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"]
    assert {k.split(".")[0] for k in info["unexpected_keys"]} <= {"cls"}


def test_encoder_save_pretrained_loads_in_transformers_cleanly(tmp_path):
    torch.manual_seed(0)
    ours = BertEncoder(BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64)).eval()
    ours.save_pretrained(tmp_path)
    reference, info = transformers.BertModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    input_ids, attention_mask, token_type_ids = _inputs()
    input_ids = input_ids % 300
    with torch.no_grad():
        got = ours(input_ids, attention_mask, token_type_ids)
        want = reference.eval()(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids)
    real = attention_mask.bool()
    assert_close(got.last_hidden_state[real], want.last_hidden_state[real], atol=1e-5, rtol=0)


def test_mlm_loss_only_at_labelled_positions_matches_full_logits():
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=64)).eval()
    input_ids = torch.randint(5, 100, (2, 12))
    labels = torch.full_like(input_ids, -100)
    labels[0, 3], labels[1, 7], labels[1, 9] = 11, 42, 7
    with torch.no_grad():
        full = model(input_ids).mlm_logits  # (B, T, V)
        out = model(input_ids, mlm_labels=labels, nsp_labels=torch.tensor([0, 1]))
    expected = torch.nn.functional.cross_entropy(full.view(-1, 100), labels.view(-1))
    assert out.mlm_logits.shape == (3, 100)
    assert_close(out.mlm_loss, expected)
    assert_close(out.loss, out.mlm_loss + out.nsp_loss)
