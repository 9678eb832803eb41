"""BertConfig: the hyper-parameters of a BERT encoder, as a serialisable dataclass.

Field names are Hugging Face's (`hidden_size`, `num_hidden_layers`, ...) so that a `config.json`
written by either library reads in the other without translation.

Presets follow the 24 smaller BERT models released with Turc et al. 2019, "Well-Read Students
Learn Better" (https://github.com/google-research/bert#bert-miniatures) and the two models of
Devlin et al. 2018 (https://arxiv.org/abs/1810.04805, Table/Section 3): heads = hidden / 64 and
intermediate = 4 * hidden throughout. Parameter counts are for the 30,522-token uncased vocabulary
with the pooler, without the pretraining heads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

# Activation names understood by `bertzoo.model`; "gelu" is the exact erf form BERT uses.
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")

PRESETS: dict[str, dict[str, int]] = {
    # name:    L layers, H hidden                                         # parameters
    "tiny": dict(num_hidden_layers=2, hidden_size=128),                  # 4.4M
    "mini": dict(num_hidden_layers=4, hidden_size=256),                  # 11.2M
    "small": dict(num_hidden_layers=4, hidden_size=512),                 # 28.8M
    "medium": dict(num_hidden_layers=8, hidden_size=512),                # 41.4M
    "base": dict(num_hidden_layers=12, hidden_size=768),                 # 109.5M
    "large": dict(num_hidden_layers=24, hidden_size=1024),               # 335.1M
}


class ConfigError(ValueError):
    """A BERT configuration that cannot describe a model; the message names the field."""


@dataclass
class BertConfig:
    """Hyper-parameters of a BERT encoder.

    Args:
        vocab_size: Number of WordPiece tokens (rows of the word embedding).
        hidden_size: Width H of every token representation.
        num_hidden_layers: Number of Transformer layers L.
        num_attention_heads: Attention heads per layer; must divide `hidden_size`.
        intermediate_size: Width of the feed-forward layer (4 * H in BERT).
        hidden_act: Feed-forward activation: "gelu" (exact, erf), "gelu_new" /
            "gelu_pytorch_tanh" (tanh approximation) or "relu".
        hidden_dropout_prob: Dropout on embeddings and after each sub-layer.
        attention_probs_dropout_prob: Dropout on attention probabilities.
        max_position_embeddings: Longest sequence the learned position embedding covers.
        type_vocab_size: Number of segment (token type) ids; 2 for sentence pairs.
        initializer_range: Standard deviation of the normal initialisation (0.02 in BERT).
        layer_norm_eps: LayerNorm epsilon (1e-12 in BERT).
        pad_token_id: Id of [PAD]; its embedding row is initialised to zero.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # Not a model hyper-parameter: where this config was read from, for error messages only.
    source: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f" (in {self.source})" if self.source else ""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"BertConfig.{name} must be a positive integer, got {value!r}{where}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"BertConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads}){where}")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(f"BertConfig.hidden_act must be one of {SUPPORTED_ACTIVATIONS}, "
                              f"got {self.hidden_act!r}{where}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob",
                     "initializer_range", "layer_norm_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) \
                    or not math.isfinite(value):
                raise ConfigError(f"BertConfig.{name} must be a number, got {value!r}{where}")
        for name in ("initializer_range", "layer_norm_eps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"BertConfig.{name} must be positive, got "
                                  f"{getattr(self, name)!r}{where}")
        if not isinstance(self.pad_token_id, int) or isinstance(self.pad_token_id, bool):
            raise ConfigError(f"BertConfig.pad_token_id must be an integer, got "
                              f"{self.pad_token_id!r}{where}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"BertConfig.{name} must be in [0, 1), got {value!r}{where}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"BertConfig.pad_token_id ({self.pad_token_id}) must be a token id "
                              f"below vocab_size ({self.vocab_size}){where}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "BertConfig":
        """A preset (`tiny`, `mini`, `small`, `medium`, `base`, `large`) with optional overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown BERT preset {name!r}; known presets: {', '.join(PRESETS)}")
        shape = PRESETS[name]
        hidden = shape["hidden_size"]
        values = dict(shape, num_attention_heads=hidden // 64, intermediate_size=4 * hidden)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_preset_or_file(cls, name_or_path: str | os.PathLike,
                            **overrides: Any) -> "BertConfig":
        """`model.config` given as a string: a preset name, or a Hugging Face `config.json`
        (the file, or a folder holding one) for random initialisation of a known architecture.
        `overrides` replace its values (the tokenizer's vocab_size is only a default there: a
        config.json's own vocab_size is kept, and must then match the tokenizer)."""
        text = os.fspath(name_or_path)
        if text in PRESETS:
            return cls.from_preset(text, **overrides)
        looks_like_path = text.endswith(".json") or os.sep in text or "/" in text
        if not looks_like_path and not os.path.exists(text):
            raise ConfigError(f"unknown BERT preset {text!r}; known presets: "
                              f"{', '.join(PRESETS)} (or a path to a Hugging Face config.json)")
        if not os.path.exists(text):
            raise ConfigError(f"model.config: no such file: {text} (expected a preset name, "
                              f"{', '.join(PRESETS)}, or a Hugging Face config.json)")
        config = cls.from_hf(text)
        values = config.to_dict()
        values.update({k: v for k, v in overrides.items()
                       if not (k == "vocab_size" and "vocab_size" in values)})
        return cls(**values, source=config.source)

    # ------------------------------------------------------------- dict / JSON
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> "BertConfig":
        known = {f.name for f in dataclasses.fields(cls)} - {"source"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown BertConfig field(s) {unknown}"
                              + (f" in {source}" if source else "") + f"; known: {sorted(known)}")
        return cls(**data, source=source)

    # ------------------------------------------------------- Hugging Face format
    def to_hf(self) -> dict[str, Any]:
        """The dict Hugging Face writes as `config.json` for a `BertModel` with these sizes."""
        return {
            "architectures": ["BertModel"],
            "model_type": "bert",
            **self.to_dict(),
            "position_embedding_type": "absolute",
        }

    @classmethod
    def from_hf(cls, path_or_dict: str | os.PathLike | dict[str, Any]) -> "BertConfig":
        """Read a Hugging Face BERT `config.json` (a file, a folder holding one, or its dict).

        Keys that only matter to other Hugging Face models or to generation (`architectures`,
        `use_cache`, `torch_dtype`, ...) are ignored; settings that would change the numbers and
        that this encoder does not implement are refused with the key named.
        """
        source = None
        if isinstance(path_or_dict, dict):
            data = path_or_dict
        else:
            path = os.fspath(path_or_dict)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            source = path
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no config.json at {path}")
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path} is not valid JSON: {err}") from err
            except UnicodeDecodeError as err:
                raise ConfigError(f"{path} is not UTF-8 JSON text (byte {err.start}: "
                                  f"{err.reason}); is it a config.json?") from err
            if not isinstance(data, dict):
                raise ConfigError(f"{path} must hold a JSON object, got {type(data).__name__}")
        where = f" in {source}" if source else ""
        model_type = data.get("model_type")
        if model_type is not None and model_type != "bert":
            raise ConfigError(f"model_type is {model_type!r}{where}; expected 'bert' "
                              f"(bertzoo loads BERT encoders only)")
        if model_type is None and not any("Bert" in a for a in data.get("architectures") or []):
            raise ConfigError(f"not a BERT config{where}: expected model_type 'bert' or a Bert* "
                              f"architecture, found neither")
        position_type = data.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ConfigError(f"position_embedding_type is {position_type!r}{where}; only "
                              f"'absolute' (BERT's learned positions) is supported")
        if data.get("is_decoder") or data.get("add_cross_attention"):
            raise ConfigError(f"is_decoder/add_cross_attention is set{where}; bertzoo builds "
                              f"encoders only")
        known = {f.name for f in dataclasses.fields(cls)} - {"source"}
        values = {k: data[k] for k in known if k in data and data[k] is not None}
        if values.get("pad_token_id") is None:
            values.pop("pad_token_id", None)
        missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                               "num_attention_heads", "intermediate_size") if k not in values]
        if missing:
            raise ConfigError(f"missing required key(s) {missing}{where}")
        return cls(**values, source=source)
