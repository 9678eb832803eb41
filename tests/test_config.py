import json

import pytest
import transformers

from bertzoo import BertConfig, BertEncoder, ConfigError
from bertzoo.config import PRESETS

# The parameter counts written next to the presets in bertzoo/config.py.
EXPECTED_MILLIONS = {"tiny": 4.4, "mini": 11.2, "small": 28.8, "medium": 41.4, "base": 109.5,
                     "large": 335.1}


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_have_the_documented_size(name):
    config = BertConfig.from_preset(name)
    assert config.num_attention_heads * 64 == config.hidden_size
    assert config.intermediate_size == 4 * config.hidden_size
    # Count without building the large models: embeddings + layers + pooler.
    H, I, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * H + 2 * H
    layer = 4 * H * H + 4 * H + 2 * H * I + I + H + 4 * H
    total = embeddings + L * layer + H * H + H
    assert round(total / 1e6, 1) == EXPECTED_MILLIONS[name]
    if name in ("tiny", "mini"):
        assert sum(p.numel() for p in BertEncoder(config).parameters()) == total


def test_preset_overrides_and_unknown_preset():
    assert BertConfig.from_preset("tiny", vocab_size=100).vocab_size == 100
    with pytest.raises(ConfigError, match="unknown BERT preset 'huge'; known presets: tiny"):
        BertConfig.from_preset("huge")


@pytest.mark.parametrize("kwargs, message", [
    (dict(hidden_size=100, num_attention_heads=12), r"hidden_size \(100\) must be divisible by "
                                                    r"num_attention_heads \(12\)"),
    (dict(num_hidden_layers=0), r"num_hidden_layers must be a positive integer, got 0"),
    (dict(hidden_act="swish"), r"hidden_act must be one of"),
    (dict(hidden_dropout_prob=1.5), r"hidden_dropout_prob must be in \[0, 1\)"),
    (dict(vocab_size=10, pad_token_id=10), r"pad_token_id \(10\) must be a token id below"),
])
def test_validation_names_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BertConfig(**kwargs)


def test_hf_round_trip(tmp_path):
    ours = BertConfig.from_preset("mini", hidden_dropout_prob=0.2)
    reference = transformers.BertConfig(**ours.to_hf())
    reference.save_pretrained(tmp_path)
    assert BertConfig.from_hf(tmp_path) == ours
    assert BertConfig.from_hf(json.loads((tmp_path / "config.json").read_text())) == ours


def test_from_hf_errors_name_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{broken")
    with pytest.raises(ConfigError, match=r"config.json is not valid JSON"):
        BertConfig.from_hf(tmp_path)
    path.write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    with pytest.raises(ConfigError, match=r"missing required key\(s\) \['vocab_size'"):
        BertConfig.from_hf(path)
    path.write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "hidden_size": 64}))
    with pytest.raises(ConfigError, match="not a BERT config in"):
        BertConfig.from_hf(path)
