"""Model-level behaviour that Hugging Face parity does not cover: dropout and training mode."""

import torch
from torch.testing import assert_close

from bertzoo import BertConfig, BertForPreTraining
from bertzoo.model import dropout


def test_dropout_statistics_scale_and_gradient():
    torch.manual_seed(0)
    x = torch.ones(1000, 1000, requires_grad=True)
    y = dropout(x, 0.1, training=True)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.002
    assert_close(y[kept], torch.full_like(y[kept], 1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)  # gradient flows exactly where the mask kept
    assert_close(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.9))


def test_dropout_is_identity_in_eval_and_reproducible_under_a_seed():
    x = torch.randn(64, 64)
    assert dropout(x, 0.1, training=False) is x
    torch.manual_seed(3)
    a = dropout(x, 0.3, training=True)
    torch.manual_seed(3)
    b = dropout(x, 0.3, training=True)
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
    # Without dropout the training-mode (unfused attention) path equals eval (SDPA).
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    model = BertForPreTraining(config)
    for layer in model.encoder.layers:
        layer.attention.dropout_p = 1e-12  # force the unfused branch with a no-op dropout
    train_loss = model.train()(ids, mask, mlm_labels=labels).mlm_loss
    eval_loss = model.eval()(ids, mask, mlm_labels=labels).mlm_loss
    assert_close(train_loss, eval_loss, atol=1e-5, rtol=1e-5)


def test_compile_option_compiles_each_layer_in_place_with_the_same_numbers():
    """`model.compile` (here with the eager backend: dynamo traces our layers, including the
    Packing object, without the minutes inductor needs on CPU) keeps the state-dict names and
    the outputs, padded batches included."""
    from bertzoo.tasks.classification import ClassificationModule
    torch.manual_seed(0)
    config = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 4, "intermediate_size": 64}
    plain = ClassificationModule(config=config, num_labels=3, vocab_size=100).eval()
    compiled = ClassificationModule(config=config, num_labels=3, vocab_size=100,
                                    compile={"backend": "eager"}).eval()
    compiled.load_state_dict(plain.state_dict())
    compiled.configure_model()
    assert all(layer._compiled_call_impl is not None for layer in compiled.encoder.layers)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    for length in (16, 11):  # two shapes: dynamic, not one recompilation per length
        ids = torch.randint(5, 100, (3, length))
        mask = torch.ones_like(ids)
        mask[1, length // 2:] = 0
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
        assert_close(compiled(batch), plain(batch))
