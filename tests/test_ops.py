"""bertzoo.ops' kernels against the plain PyTorch code in bertzoo.model, and how they are chosen.

With dropout off the two are compared directly; with dropout on, the plain code is given the
masks the kernels drew (each kernel draws from `keep_mask`; here `F.dropout` and the dropout
inside SDPA replay them in the same order), so every output and gradient must agree.
"""

import ast
import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import bertzoo.model
from bertzoo import BertConfig, BertEncoder, BertForPreTraining, ops
from bertzoo.model import BertSelfAttention, Dropout, Packing
from bertzoo.ops import attention, dropout

SMALL = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=64, max_position_embeddings=32)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 120, (3, 14), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    ids[0, 6] = 0  # a [PAD] id inside the attention mask: no lookup gradient for its row
    token_types = torch.zeros_like(ids)
    token_types[:, 7:] = 1
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[0, 6], labels[1, 5], labels[2, 1] = 9, 17, 33, 4
    return ids, mask, token_types, labels, torch.tensor([0, 1, 1])


def _loss_and_grads(model, batch):
    model.zero_grad()
    ids, mask, token_types, labels, nsp = batch
    out = model(ids, mask, token_types, mlm_labels=labels, nsp_labels=nsp)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters()}


def _pair(dropout_p: float):
    config = BertConfig(**SMALL, hidden_dropout_prob=dropout_p,
                        attention_probs_dropout_prob=dropout_p)
    torch.manual_seed(0)
    fast = BertForPreTraining(config).double().train()
    plain = copy.deepcopy(fast)
    plain.encoder.use_kernels("reference")
    return fast, plain


def test_fast_kernels_equal_reference_without_dropout(kernel_calls):
    """Training mode, dropout 0: the CPU kernels (selected at p = 0 too) and plain PyTorch give
    the same losses, logits and gradients of every parameter."""
    fast, plain = _pair(0.0)
    assert fast.encoder.selected_kernels is ops.CPU
    assert plain.encoder.selected_kernels is ops.REFERENCE
    batch = _batch()
    got, got_grads = _loss_and_grads(fast, batch)
    assert set(kernel_calls) == {"_MaskedScale", "_DropoutAttention", "_TiedLookup",
                                 "_TiedProjection"}, kernel_calls
    kernel_calls.clear()
    want, want_grads = _loss_and_grads(plain, batch)
    assert not kernel_calls  # the reference ran none of them
    assert_close(got.mlm_logits, want.mlm_logits)
    assert_close(got.loss, want.loss)
    for name, grad in want_grads.items():
        assert_close(got_grads[name], grad, msg=name)


def test_fast_kernels_equal_reference_with_dropout_given_the_same_masks(monkeypatch,
                                                                         kernel_calls):
    """Training mode, dropout 0.3: the plain code, replaying the masks the kernels drew, gives
    the same outputs and gradients."""
    fast, plain = _pair(0.3)
    batch = _batch()
    masks = []

    def recording_keep_mask(shape, p, dtype):
        masks.append(keep_mask(shape, p, dtype))
        return masks[-1]

    keep_mask = dropout.keep_mask
    monkeypatch.setattr(dropout, "keep_mask", recording_keep_mask)
    monkeypatch.setattr(attention, "keep_mask", recording_keep_mask)
    torch.manual_seed(1)
    got, got_grads = _loss_and_grads(fast, batch)
    assert {"_MaskedScale", "_DropoutAttention"} <= set(kernel_calls)
    # embeddings, then per layer: attention probabilities, attention output, feed-forward output
    assert len(masks) == 1 + 3 * SMALL["num_hidden_layers"]
    assert all(0 < float(m.mean()) < 1 for m in masks)

    replay = iter(masks)
    sdpa = F.scaled_dot_product_attention

    def replayed_dropout(x, p=0.5, training=True, inplace=False):
        if not training or p == 0:
            return x
        return x * next(replay) / (1 - p)

    def replayed_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, **kwargs):
        if dropout_p == 0:
            return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, nh, T, T)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        probs = scores.softmax(-1) * next(replay).view(scores.shape) / (1 - dropout_p)
        return probs @ v

    monkeypatch.setattr(F, "dropout", replayed_dropout)
    monkeypatch.setattr(F, "scaled_dot_product_attention", replayed_sdpa)
    want, want_grads = _loss_and_grads(plain, batch)
    assert next(replay, None) is None  # every mask used, in the order drawn
    assert_close(got.mlm_logits, want.mlm_logits)
    assert_close(got.loss, want.loss)
    for name, grad in want_grads.items():
        assert_close(got_grads[name], grad, msg=name)


def test_attention_kernel_equals_sdpa_without_dropout_with_padded_keys():
    torch.manual_seed(0)
    config = BertConfig(**SMALL, attention_probs_dropout_prob=0.0)
    module = BertSelfAttention(config).double().train()
    x = torch.randn(3 * 14, 32, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(3, 14, dtype=torch.long)
    mask[1, 9:] = 0
    packing = Packing(mask, 3, 14, unpad=False)
    results = []
    for kernel in (ops.dropout_attention, None):
        module.kernel = kernel
        y = module(x, packing)
        results.append((y, *torch.autograd.grad(y.square().sum(), (x, module.qkv.weight))))
    for got, want in zip(*results):
        assert_close(got, want)


def test_dropout_kernel_equals_plain_dropout_given_the_same_mask():
    x = torch.randn(40, 30, dtype=torch.float64, requires_grad=True)
    residual = torch.randn(40, 30, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(3)
    keep = ops.keep_mask(x.shape, 0.25, x.dtype)
    torch.manual_seed(3)
    got = ops.dropout_add(x, 0.25, residual)
    want = residual + x * keep / 0.75
    assert_close(got, want)
    grad = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, (x, residual), grad),
                    torch.autograd.grad(want, (x, residual), grad)):
        assert_close(a, b)
    # dropout off: the same sum, and Dropout's plain path in evaluation mode
    assert torch.equal(ops.dropout_add(x, 0.0, residual), residual + x)
    assert ops.dropout_add(x, 0.0) is x
    assert torch.equal(Dropout(0.25).eval()(x, residual), residual + x)


# ------------------------------------------------------------------------------- selection
def test_kernels_are_chosen_when_built_moved_or_assigned():
    config = BertConfig(**SMALL)
    encoder = BertEncoder(config)
    assert encoder.kernels == "auto" and encoder.selected_kernels is ops.CPU
    assert all(layer.attention.kernel is ops.dropout_attention for layer in encoder.layers)
    assert encoder.embeddings.dropout.kernel is ops.dropout_add
    state = encoder.state_dict()

    encoder.to("meta")  # another device: no CPU kernel is left to run there
    assert encoder.selected_kernels is ops.OTHER_DEVICES
    assert all(layer.attention.kernel is None and layer.dropout.kernel is None
               for layer in encoder.layers)
    encoder.to_empty(device="cpu")
    assert encoder.selected_kernels is ops.CPU

    with torch.device("meta"):
        built_elsewhere = BertEncoder(config)
    assert built_elsewhere.selected_kernels is ops.OTHER_DEVICES
    built_elsewhere.load_state_dict(state, assign=True)  # parameters replaced, not moved
    assert built_elsewhere.selected_kernels is ops.CPU

    model = BertForPreTraining(config, kernels="reference")
    assert model.encoder.selected_kernels is ops.REFERENCE
    model.to(torch.float64)  # a cast keeps the choice
    assert model.encoder.kernels == "reference"
    assert model.encoder.selected_kernels is ops.REFERENCE
    assert list(model.state_dict()) == list(BertForPreTraining(config).state_dict())
    with pytest.raises(ValueError, match="kernels must be one of"):
        BertEncoder(config, kernels="fast")


def test_model_file_has_no_device_tests_or_kernel_classes():
    """bertzoo/model.py is the plain model: no autograd Functions, no test of a device type."""
    tree = ast.parse(Path(bertzoo.model.__file__).read_text())
    functions = [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                 and any("Function" in ast.unparse(base) for base in node.bases)]
    device_tests = [ast.unparse(node) for node in ast.walk(tree)
                    if isinstance(node, ast.Attribute) and node.attr == "type"
                    and "device" in ast.unparse(node.value)]
    assert not functions and not device_tests, (functions, device_tests)
