"""Where a module's BERT comes from: a checkpoint (`model.backbone`) or a fresh configuration
(`model.config`), never both, and always with the tokenizer's vocabulary size. One rule for
every module: `PretrainingModule` (whose backbone brings its MLM/NSP heads) and every task's
`TaskModule` check it here."""

from __future__ import annotations

from typing import Any

from bertzoo.config import BertConfig, ConfigError
from bertzoo.model import BertEncoder


def check_backbone_or_config(backbone: str | None, config: str | dict[str, Any] | None) -> None:
    """Exactly one of `model.backbone` (a checkpoint to start from) and `model.config`."""
    if backbone and config:
        raise ConfigError("give either model.backbone (a checkpoint to start from) or "
                          "model.config (a preset for random initialisation), not both")
    if not backbone and config is None:
        raise ConfigError("set model.backbone (a checkpoint folder or .ckpt) or model.config "
                          "(a preset: tiny, mini, small, medium, base, large)")


def check_vocab_size(vocab_size: int | None, config: BertConfig, source: str) -> None:
    """The tokenizer's vocabulary (`vocab_size`, linked from the data module) is the one the
    model embeds; `source` names where the model's came from ("the backbone X", "model.config")."""
    if vocab_size is not None and vocab_size != config.vocab_size:
        raise ConfigError(
            f"the tokenizer has {vocab_size} tokens but {source} has vocab_size "
            f"{config.vocab_size}; they must match (drop vocab_size from model.config to take "
            f"the tokenizer's, or use the backbone's own tokenizer)")


def config_from(config: str | dict[str, Any], vocab_size: int | None) -> BertConfig:
    """`model.config`: a preset name (`tiny` ... `large`) or a dict of `BertConfig` fields,
    optionally with a `preset` key to start from; the vocabulary size is the tokenizer's unless
    the dict gives one (a checkpoint's stored config does), which must then match it."""
    values = {"preset": config} if isinstance(config, str) else dict(config)
    if vocab_size is None:
        vocab_size = values.get("vocab_size")
    if vocab_size is None:
        raise ConfigError("model.vocab_size is unknown: it comes from the data module's tokenizer")
    values.setdefault("vocab_size", vocab_size)
    preset = values.pop("preset", None)
    bert_config = (BertConfig.from_preset_or_file(preset, **values) if preset
                   else BertConfig.from_dict(values))
    check_vocab_size(vocab_size, bert_config, "model.config")
    return bert_config


def build_encoder(backbone: str | None, config: str | dict[str, Any] | None,
                  vocab_size: int | None, add_pooler: bool = True) -> BertEncoder:
    """The encoder from a checkpoint (`backbone`) or randomly initialised from `config`
    (`config_from`). `vocab_size` is the tokenizer's; it must match the model's."""
    check_backbone_or_config(backbone, config)
    if backbone:
        # from_pretrained returns an inference-ready (eval) module; Lightning keeps each
        # submodule's mode, so without .train() dropout would stay off while fine-tuning.
        encoder = BertEncoder.from_pretrained(backbone).train()
        check_vocab_size(vocab_size, encoder.config, f"the backbone {backbone}")
        return encoder
    return BertEncoder(config_from(config, vocab_size), add_pooler=add_pooler)
