"""Loading and saving weights: every source `from_pretrained` accepts, and bad input."""

import json
import logging

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from bertzoo import BertConfig, BertEncoder, CheckpointError, ConfigError
from bertzoo.checkpoint import from_hf_state_dict, to_hf_state_dict

HF_SMALL = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=40)


def _ids():
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, 120, (2, 9), generator=g)
    mask = torch.ones_like(input_ids)
    mask[1, 5:] = 0
    return input_ids, mask


def _same_as_reference(encoder, reference):
    input_ids, mask = _ids()
    with torch.no_grad():
        got = encoder(input_ids, mask)
        want = reference.eval()(input_ids=input_ids, attention_mask=mask)
    real = mask.bool()
    assert_close(got.last_hidden_state[real], want.last_hidden_state[real], atol=1e-5, rtol=0)
    return got, want


def test_name_mapping_round_trips():
    torch.manual_seed(0)
    state = BertEncoder(BertConfig(**HF_SMALL)).state_dict()
    back, unused = from_hf_state_dict(to_hf_state_dict(state))
    assert not unused
    assert back.keys() == state.keys()
    for key in state:
        assert torch.equal(back[key], state[key])


def test_bert_prefixed_bin_folder(tmp_path):
    """A BertForPreTraining folder saved as pytorch_model.bin (keys under `bert.`)."""
    torch.manual_seed(0)
    reference = transformers.BertForPreTraining(transformers.BertConfig(**HF_SMALL))
    reference.config.save_pretrained(tmp_path)
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    encoder = BertEncoder.from_pretrained(tmp_path)
    _same_as_reference(encoder, reference.bert)


def test_folder_without_pooler_initialises_it(tmp_path, caplog):
    torch.manual_seed(0)
    reference = transformers.BertModel(transformers.BertConfig(**HF_SMALL), add_pooling_layer=False)
    reference.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="bertzoo"):
        encoder = BertEncoder.from_pretrained(tmp_path)
    assert "has no pooler" in caplog.text
    got, _ = _same_as_reference(encoder, reference)
    assert got.pooler_output.shape == (2, 32)


def test_sharded_safetensors_folder(tmp_path):
    torch.manual_seed(0)
    reference = transformers.BertModel(transformers.BertConfig(**HF_SMALL))
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    _same_as_reference(BertEncoder.from_pretrained(tmp_path), reference)


def test_head_of_another_task_is_left_out(tmp_path, caplog):
    torch.manual_seed(0)
    reference = transformers.BertForSequenceClassification(transformers.BertConfig(**HF_SMALL))
    reference.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="bertzoo"):
        encoder = BertEncoder.from_pretrained(tmp_path)
    assert "classifier.weight" in caplog.text
    _same_as_reference(encoder, reference.bert)


def test_export_round_trip_keeps_numbers_and_tokenizer(tmp_path, tiny_backbone_dir):
    from bertzoo import load_tokenizer
    encoder = BertEncoder.from_pretrained(tiny_backbone_dir)
    tokenizer = load_tokenizer(tiny_backbone_dir)
    encoder.save_pretrained(tmp_path / "again", tokenizer=tokenizer)
    again = BertEncoder.from_pretrained(tmp_path / "again")
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert load_tokenizer(tmp_path / "again").get_vocab() == tokenizer.get_vocab()
    assert not list(tmp_path.glob("again/*.tmp"))  # atomic writes leave nothing behind


# ------------------------------------------------------------------------------- bad input
def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such file or folder: .*nowhere"):
        BertEncoder.from_pretrained(tmp_path / "nowhere")


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", **HF_SMALL}))
    with pytest.raises(CheckpointError, match=r"has no weights: expected model.safetensors"):
        BertEncoder.from_pretrained(tmp_path)


def test_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no config.json"):
        BertEncoder.from_pretrained(tmp_path)


def test_weight_with_wrong_shape_names_both_shapes(tmp_path):
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**HF_SMALL)).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["encoder.layer.1.intermediate.dense.weight"] = torch.zeros(65, 32)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"layers\.1\.intermediate\.weight has shape "
                                              r"\(65, 32\) .* expects \(64, 32\)"):
        BertEncoder.from_pretrained(tmp_path)


def test_missing_weight_is_named(tmp_path):
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**HF_SMALL)).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["encoder.layer.0.output.LayerNorm.weight"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"lacks 1 parameter.*layers\.0\.output_norm\.weight"):
        BertEncoder.from_pretrained(tmp_path)


def test_non_bert_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    with pytest.raises(ConfigError, match=r"model_type is 'gpt2' in .*config.json; expected 'bert'"):
        BertEncoder.from_pretrained(tmp_path)


def test_relative_position_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "bert", "position_embedding_type": "relative_key", **HF_SMALL}))
    with pytest.raises(ConfigError, match="position_embedding_type is 'relative_key'"):
        BertEncoder.from_pretrained(tmp_path)


def test_corrupt_safetensors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", **HF_SMALL}))
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    with pytest.raises(CheckpointError, match=r"model.safetensors is not a readable safetensors"):
        BertEncoder.from_pretrained(tmp_path)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_bin_with_code_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", **HF_SMALL}))
    torch.save({"weights": _Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin is not a readable "
                                              r"checkpoint \(UnpicklingError"):
        BertEncoder.from_pretrained(tmp_path)
