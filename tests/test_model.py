"""Model-level behaviour that Hugging Face parity does not cover: dropout and training mode."""

import torch
from torch.testing import assert_close

from bertzoo import BertConfig, BertForPreTraining
from bertzoo.model import Dropout
from bertzoo.ops import dropout_add, keep_mask
from bertzoo.ops.attention import _DropoutAttention


def test_dropout_statistics_scale_and_gradient():
    torch.manual_seed(0)
    x = torch.ones(1000, 1000, requires_grad=True)
    y = dropout_add(x, 0.1)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.002
    assert_close(y[kept], torch.full_like(y[kept], 1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)  # gradient flows exactly where the mask kept
    assert_close(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.9))


def test_dropout_is_identity_in_eval_and_reproducible_under_a_seed():
    x = torch.randn(64, 64)
    module = Dropout(0.1)
    module.kernel = dropout_add
    assert module.eval()(x) is x
    torch.manual_seed(3)
    a = module.train()(x)
    torch.manual_seed(3)
    b = dropout_add(x, 0.1)
    assert torch.equal(a, b)  # the module runs its kernel in training mode
    torch.manual_seed(3)
    a = dropout_add(x, 0.3)
    torch.manual_seed(3)
    b = dropout_add(x, 0.3)
    assert torch.equal(a, b)
    assert abs((a == 0).float().mean().item() - 0.3) < 0.03


def test_training_mode_with_padding_is_finite_and_matches_padded_path_without_dropout():
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64)
    torch.manual_seed(0)
    model = BertForPreTraining(config).train()
    ids = torch.randint(5, 100, (3, 16))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 4], labels[2, 15] = 7, 8, 9
    out = model(ids, mask, mlm_labels=labels, nsp_labels=torch.tensor([0, 1, 0]))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # Without dropout the training-mode path (bertzoo.ops' attention Function on CPU, selected
    # at p = 0 too) equals eval (SDPA).
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    model = BertForPreTraining(config)
    assert all(layer.attention.kernel is not None for layer in model.encoder.layers)
    train_loss = model.train()(ids, mask, mlm_labels=labels).mlm_loss
    eval_loss = model.eval()(ids, mask, mlm_labels=labels).mlm_loss
    assert_close(train_loss, eval_loss, atol=1e-5, rtol=1e-5)


def plain_and_compiled(backend: str, training: bool):
    """Two tiny classification modules with the same weights, the second under
    `model.compile` with the given torch.compile backend."""
    from bertzoo.tasks.classification import ClassificationModule
    torch.manual_seed(0)
    config = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 4, "intermediate_size": 64}
    plain = ClassificationModule(config=config, num_labels=3, vocab_size=100).train(training)
    compiled = ClassificationModule(config=config, num_labels=3, vocab_size=100,
                                    compile={"backend": backend}).train(training)
    compiled.load_state_dict(plain.state_dict())
    compiled.configure_model()
    return plain, compiled


def test_compile_option_compiles_each_layer_in_place_with_the_same_numbers():
    """`model.compile` (here with the eager backend: dynamo traces our layers, including the
    Packing object, without the minutes inductor needs on CPU) keeps the state-dict names and
    the outputs, padded batches included."""
    plain, compiled = plain_and_compiled("eager", training=False)
    assert all(layer._compiled_call_impl is not None for layer in compiled.encoder.layers)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    for length in (16, 11):  # two shapes: dynamic, not one recompilation per length
        ids = torch.randint(5, 100, (3, length))
        mask = torch.ones_like(ids)
        mask[1, length // 2:] = 0
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
        assert_close(compiled(batch), plain(batch))


def test_compile_in_training_mode_keeps_dropout_outputs_and_gradients():
    """Training mode under `model.compile` (aot_eager: dynamo and AOTAutograd trace the layers
    and our autograd Functions; the numpy-drawn dropout masks run eagerly between graphs): the
    same outputs and gradients as eager under one seed."""
    plain, compiled = plain_and_compiled("aot_eager", training=True)
    ids = torch.randint(5, 100, (3, 16))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    outputs = []
    for module in (plain, compiled):
        torch.manual_seed(5)
        logits = module(batch)
        logits.square().sum().backward()
        outputs.append(logits)
    assert_close(outputs[1], outputs[0])
    torch.manual_seed(6)
    assert not torch.equal(plain(batch), outputs[0])  # dropout is on: another seed differs
    for (name, a), b in zip(plain.named_parameters(), compiled.parameters()):
        if a.grad is not None:
            assert_close(b.grad, a.grad, msg=name)

def test_cpu_training_attention_equals_its_autograd_composition_forward_and_backward():
    """`_DropoutAttention` (hand-written backward, no mask saved) against the same math left to
    autograd, with one dropout mask, padded keys and float64."""
    torch.manual_seed(0)
    B, T, nh, hd, p = 3, 7, 2, 4, 0.25
    qkv = torch.randn(B, T, 3 * nh * hd, dtype=torch.float64, requires_grad=True)
    key_mask = torch.ones(B, 1, 1, T, dtype=torch.bool)
    key_mask[1, ..., 5:] = False
    keep = keep_mask((B * nh, T, T), p, torch.float64)
    assert 0 < keep.mean() < 1 and set(keep.unique().tolist()) == {0.0, 1.0}

    def reference(qkv):
        q, k, v = qkv.view(B, T, 3, nh, hd).permute(2, 0, 3, 1, 4).unbind(0)
        scores = (q @ k.transpose(-2, -1)) / hd ** 0.5
        probs = scores.masked_fill(~key_mask, float("-inf")).softmax(-1)
        context = (probs * keep.view(B, nh, T, T) / (1 - p)) @ v
        return context.transpose(1, 2).reshape(B, T, nh * hd)

    ours = _DropoutAttention.apply(qkv, key_mask, keep, nh, 1 / (1 - p))
    assert_close(ours, reference(qkv))
    grad = torch.randn_like(ours)
    expected, = torch.autograd.grad(reference(qkv), qkv, grad)
    actual, = torch.autograd.grad(ours, qkv, grad)
    assert_close(actual, expected)
    assert torch.autograd.gradcheck(
        lambda x: _DropoutAttention.apply(x, key_mask, keep, nh, 1 / (1 - p)), (qkv,))


def test_dropout_with_residual_is_one_sum_with_both_gradients():
    torch.manual_seed(0)
    x = torch.randn(50, 40, requires_grad=True)
    residual = torch.randn(50, 40, requires_grad=True)
    torch.manual_seed(1)
    y = dropout_add(x, 0.2, residual)
    torch.manual_seed(1)
    alone = dropout_add(x, 0.2)  # the same mask from the same seed
    assert_close(y, residual + alone)
    grad = torch.randn_like(y)
    gx, gr = torch.autograd.grad(y, (x, residual), grad)
    assert torch.equal(gr, grad)
    assert_close(gx, grad * (alone != 0) / 0.8)
    assert torch.equal(Dropout(0.2).eval()(x, residual=residual), residual + x)


def test_pretraining_word_embedding_gradient_equals_autograd_through_the_plain_lookup():
    """BertForPreTraining's tied gradient (the decoder's, completed in place by the lookup's
    backward) equals autograd's through nn.Embedding and F.linear, with a [PAD] id inside the
    attention mask (nn.Embedding's padding_idx gets no gradient from the lookup) and dropout
    off (the same forward)."""
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=4, intermediate_size=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = BertForPreTraining(config).train()
    ids = torch.randint(5, 120, (2, 12))
    mask = torch.ones_like(ids)
    ids[1, 8:], mask[1, 8:] = 0, 0
    ids[0, 5] = 0  # a [PAD] id that is attended to: its row must still get no lookup gradient
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 2] = 9, 17
    args = (ids, mask, None, labels, torch.tensor([0, 1]))
    model(*args).loss.backward()
    tied = model.encoder.embeddings.word.weight.grad.clone()
    model.zero_grad()
    out = model.encoder(ids, mask)  # the dense lookup, then the same heads
    labelled = labels != -100
    logits = model.mlm_head(out.last_hidden_state[labelled], model.encoder.embeddings.word.weight)
    loss = (torch.nn.functional.cross_entropy(logits, labels[labelled])
            + torch.nn.functional.cross_entropy(model.nsp_head(out.pooler_output), args[4]))
    loss.backward()
    assert_close(tied, model.encoder.embeddings.word.weight.grad)
    # A loss without the decoder: the lookup's rows alone.
    model.zero_grad()
    model(*args).nsp_loss.backward()
    model_grad = model.encoder.embeddings.word.weight.grad.clone()
    model.zero_grad()
    torch.nn.functional.cross_entropy(model.nsp_head(model.encoder(
        ids, mask).pooler_output), args[4]).backward()
    assert_close(model_grad, model.encoder.embeddings.word.weight.grad)


def test_tune_cpu_process_keeps_freed_memory_so_the_next_step_does_not_page_fault():
    """In a fresh process: a 64 MiB tensor freed and allocated again is faulted in anew each
    time under glibc's defaults (above its largest mmap threshold), and not with the settings,
    unless the environment sets glibc's thresholds itself."""
    import os
    import subprocess
    import sys
    if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
        import pytest
        pytest.skip("the allocator settings apply to glibc only")
    script = """
import resource, sys, torch
if sys.argv[1] == "tuned":
    from bertzoo.training import tune_cpu_process
    tune_cpu_process()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for _ in range(6):
    before = faults()
    x = torch.ones(16 * 2**20)  # 64 MiB, written
    counts.append(faults() - before)
    del x
print(min(counts[1:]))  # the fewest of the repeats (the kernel may reclaim idle pages itself)
"""
    pages = 64 * 2**20 // 4096
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

    def count(mode: str, **env: str) -> int:
        return int(subprocess.run([sys.executable, "-c", script, mode], check=True, text=True,
                                  capture_output=True, env={**environment, **env}).stdout)

    faults = {"default": count("default"), "tuned": count("tuned"),
              "user's own": count("tuned", MALLOC_TRIM_THRESHOLD_="131072")}
    assert faults["default"] > pages // 2, faults
    assert faults["tuned"] < pages // 100, faults
    assert faults["user's own"] > pages // 2, faults
