"""One backbone-or-config rule for every module: a task's encoder (`build_encoder`) and
pretraining's model (`PretrainingModule`) refuse the same inputs with the same message."""

from __future__ import annotations

import pytest

from bertzoo.config import ConfigError
from bertzoo.pretraining import PretrainingModule
from bertzoo.training import build_encoder

TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64}


def task_encoder(backbone=None, config=None, vocab_size=None):
    return build_encoder(backbone, config, vocab_size)


def pretraining_model(backbone=None, config=None, vocab_size=None):
    return PretrainingModule(backbone=backbone, config=config, vocab_size=vocab_size)


@pytest.mark.parametrize("build", [task_encoder, pretraining_model], ids=["task", "pretraining"])
def test_backbone_or_config_is_one_rule(build, tiny_backbone_dir):
    with pytest.raises(ConfigError, match=r"^give either model.backbone \(a checkpoint to start "
                                          r"from\) or model.config .*, not both$"):
        build(str(tiny_backbone_dir), "tiny", 100)
    with pytest.raises(ConfigError, match=r"^set model.backbone \(a checkpoint folder or "
                                          r"\.ckpt\) or model.config"):
        build()
    with pytest.raises(ConfigError, match="^model.vocab_size is unknown"):
        build(config="tiny")
    with pytest.raises(ConfigError, match=r"^the tokenizer has 200 tokens but model.config has "
                                          r"vocab_size 999; they must match"):
        build(config={**TINY, "vocab_size": 999}, vocab_size=200)
    with pytest.raises(ConfigError, match=rf"^the tokenizer has 7 tokens but the backbone "
                                          rf"{tiny_backbone_dir} has vocab_size \d+"):
        build(str(tiny_backbone_dir), vocab_size=7)
    # A stored config (a checkpoint's) brings its own vocabulary size.
    built = build(config={**TINY, "vocab_size": 50})
    assert (built.config if hasattr(built, "config") else built.model.config).vocab_size == 50
