"""Numbers against Hugging Face transformers (the reference; a test dependency only).

Both the unpadded path (the default) and the padded path are held to the same tolerance.
"""

import dataclasses

import pytest
import torch
import transformers
from torch.testing import assert_close

from bertzoo import BertConfig, BertEncoder, BertForPreTraining, ops
from bertzoo.checkpoint import to_hf_state_dict

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
    """Same loss and gradients through both paths in training mode (on CPU: bertzoo.ops'
    training kernels), dropout off so they are comparable."""
    ours, _, tokenizer = minilm_pair
    config = dataclasses.replace(ours.config, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0)
    model = BertEncoder(config)
    model.load_state_dict(ours.state_dict())
    model.train()
    assert model.selected_kernels is ops.CPU
    batch = tokenizer([s for s, _ in SENTENCES], padding=True, return_tensors="pt")
    grads = []
    for unpad in (True, False):
        model.zero_grad()
        model.unpad = unpad
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        real = batch["attention_mask"].bool()
        (out.last_hidden_state[real].pow(2).mean() + out.pooler_output.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
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


def test_cpu_training_step_matches_transformers_loss_and_every_gradient(tmp_path, kernel_calls):
    """The CPU training path (one-pass dropout, the attention Function, the tied word gradient)
    against transformers.BertForPreTraining in training mode, dropout 0: the loss and the
    gradient of every parameter. Each kernel's backward is counted, so the test shows they ran."""
    hf_config = transformers.BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=3,
                                        num_attention_heads=4, intermediate_size=128,
                                        max_position_embeddings=64, hidden_dropout_prob=0.0,
                                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    reference = transformers.BertForPreTraining(hf_config)
    reference.save_pretrained(tmp_path)
    ours = BertForPreTraining.from_pretrained(tmp_path).train()
    reference.train()
    assert ours.encoder.selected_kernels is ops.CPU

    input_ids, attention_mask, token_type_ids = _inputs()
    input_ids[0, 4] = 0  # a [PAD] id inside the attention mask: its row gets no lookup gradient
    labels = torch.full_like(input_ids, -100)
    for row, position, token in ((0, 1, 7), (0, 4, 8), (0, 9, 9), (1, 3, 10), (1, 13, 11),
                                 (2, 5, 12)):
        labels[row, position] = token
    nsp_labels = torch.tensor([0, 1, 0])
    got = ours(input_ids, attention_mask, token_type_ids, mlm_labels=labels,
               nsp_labels=nsp_labels)
    got.loss.backward()
    want = reference(input_ids=input_ids, attention_mask=attention_mask,
                     token_type_ids=token_type_ids, labels=labels,
                     next_sentence_label=nsp_labels)
    want.loss.backward()
    layers = hf_config.num_hidden_layers
    assert kernel_calls == {"_MaskedScale": 2 * layers, "_DropoutAttention": layers,
                            "_TiedLookup": 1, "_TiedProjection": 1}, kernel_calls

    assert_close(got.loss, want.loss, atol=1e-5, rtol=0)
    our_grads = to_hf_state_dict({
        **{k: p.grad for k, p in ours.encoder.named_parameters()},
        **{f"mlm_head.{k}": p.grad for k, p in ours.mlm_head.named_parameters()},
        **{f"nsp_head.{k}": p.grad for k, p in ours.nsp_head.named_parameters()}})
    # named_parameters lists each tied Parameter once (the decoder is the word embedding)
    reference_grads = {k: p.grad for k, p in reference.named_parameters()}
    assert set(our_grads) == set(reference_grads)
    for name, grad in reference_grads.items():
        assert_close(our_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
