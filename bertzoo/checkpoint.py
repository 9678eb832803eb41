"""Weights in and out: Hugging Face BERT folders, bertzoo exports and Lightning checkpoints.

A bertzoo export *is* a Hugging Face folder: `config.json` + `model.safetensors` (+ tokenizer
files), with Hugging Face's parameter names, so `transformers.BertModel.from_pretrained(dir)`
reads it. This module owns the one name mapping between the two layouts:

    bertzoo (bertzoo.model)                     Hugging Face (modeling_bert)
    embeddings.word / position / token_type     embeddings.{word,position,token_type}_embeddings
    embeddings.norm                             embeddings.LayerNorm
    layers.{i}.attention.qkv  (fused, 3H rows)  encoder.layer.{i}.attention.self.{query,key,value}
    layers.{i}.attention.out                    encoder.layer.{i}.attention.output.dense
    layers.{i}.attention_norm                   encoder.layer.{i}.attention.output.LayerNorm
    layers.{i}.intermediate                     encoder.layer.{i}.intermediate.dense
    layers.{i}.output                           encoder.layer.{i}.output.dense
    layers.{i}.output_norm                      encoder.layer.{i}.output.LayerNorm
    pooler                                      pooler.dense
    mlm_head.dense / norm / bias                cls.predictions.transform.dense / .LayerNorm, .bias
    nsp_head.classifier                         cls.seq_relationship

What loading trusts: safetensors files hold tensors only. `.bin` and `.ckpt` files are pickles;
they are read with `torch.load(weights_only=True)`, which refuses anything but tensors and plain
containers, so a checkpoint cannot run code when it is loaded.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bertzoo.config import BertConfig, ConfigError
from bertzoo.files import (CKPT_KEY, CheckpointError, atomic_write, describe_load_error,
                           read_lightning_checkpoint, read_torch_file, resolve)
from bertzoo.tokenizer import save_tokenizer

log = logging.getLogger("bertzoo")

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
PYTORCH_BIN_INDEX = "pytorch_model.bin.index.json"

# ------------------------------------------------------------------------------- name mapping
# (bertzoo name, Hugging Face name) for every parameter except the fused QKV; "{}" stands for a
# layer number or "weight"/"bias", in the same order on both sides.
_RENAMES: list[tuple[str, str]] = [
    ("embeddings.word.weight", "embeddings.word_embeddings.weight"),
    ("embeddings.position.weight", "embeddings.position_embeddings.weight"),
    ("embeddings.token_type.weight", "embeddings.token_type_embeddings.weight"),
    ("embeddings.norm.{}", "embeddings.LayerNorm.{}"),
    ("layers.{}.attention.out.{}", "encoder.layer.{}.attention.output.dense.{}"),
    ("layers.{}.attention_norm.{}", "encoder.layer.{}.attention.output.LayerNorm.{}"),
    ("layers.{}.intermediate.{}", "encoder.layer.{}.intermediate.dense.{}"),
    ("layers.{}.output.{}", "encoder.layer.{}.output.dense.{}"),
    ("layers.{}.output_norm.{}", "encoder.layer.{}.output.LayerNorm.{}"),
    ("pooler.{}", "pooler.dense.{}"),
    ("mlm_head.dense.{}", "cls.predictions.transform.dense.{}"),
    ("mlm_head.norm.{}", "cls.predictions.transform.LayerNorm.{}"),
    ("mlm_head.bias", "cls.predictions.bias"),
    ("nsp_head.classifier.{}", "cls.seq_relationship.{}"),
]


def _regex(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{\}", r"(\d+|weight|bias)") + "$")


_TO_HF = [(_regex(ours), hf) for ours, hf in _RENAMES]
_FROM_HF = [(_regex(hf), ours) for ours, hf in _RENAMES]
_QKV = re.compile(r"layers\.(\d+)\.attention\.qkv\.(weight|bias)$")
_HF_QKV = re.compile(r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$")
# Hugging Face keys that carry no parameter of ours: buffers and weights tied to others.
_HF_IGNORED = re.compile(r"(embeddings\.position_ids|cls\.predictions\.decoder\.(weight|bias))$")


def to_hf_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """bertzoo names -> Hugging Face names. Encoder keys gain `bert.` when heads are present."""
    has_heads = any(k.startswith(("mlm_head.", "nsp_head.")) for k in state)
    prefix = "bert." if has_heads else ""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if m := _QKV.match(key):
            layer, kind = m.groups()
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"{prefix}encoder.layer.{layer}.attention.self.{name}.{kind}"] = part.contiguous()
            continue
        for regex, template in _TO_HF:
            if m := regex.match(key):
                hf_key = template.format(*m.groups())
                out[hf_key if hf_key.startswith("cls.") else prefix + hf_key] = value.contiguous()
                break
        else:
            raise KeyError(f"no Hugging Face name for bertzoo parameter {key!r}")
    return out


def from_hf_state_dict(state: dict[str, Tensor], source: str = "<state dict>"
                       ) -> tuple[dict[str, Tensor], list[str]]:
    """Hugging Face names (with or without `bert.`) -> bertzoo names, and the keys not used."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    unused: list[str] = []
    for key, value in state.items():
        bare = key[len("bert."):] if key.startswith("bert.") else key
        bare = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", bare)  # TF-converted checkpoints
        bare = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", bare)
        if _HF_IGNORED.search(bare):
            continue
        if m := _HF_QKV.match(bare):
            layer, name, kind = m.groups()
            qkv.setdefault((layer, kind), {})[name] = value
            continue
        for regex, template in _FROM_HF:
            if m := regex.match(bare):
                out[template.format(*m.groups())] = value
                break
        else:
            unused.append(key)
    for (layer, kind), parts in qkv.items():
        missing = [n for n in ("query", "key", "value") if n not in parts]
        if missing:
            raise CheckpointError(f"{source}: layer {layer} has no attention.self."
                                  f"{'/'.join(missing)}.{kind}")
        out[f"layers.{layer}.attention.qkv.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0)
    return out, unused


# ------------------------------------------------------------------------------ reading files
def read_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of one safetensors or PyTorch pickle file (the latter with weights_only=True)."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from err
    state = read_torch_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, expected a state dict")
    return state


def _read_folder_weights(folder: Path) -> dict[str, Tensor]:
    for index_name in (SAFETENSORS_INDEX, PYTORCH_BIN_INDEX):
        index = folder / index_name
        if index.is_file():  # a sharded checkpoint: read every shard it names
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CheckpointError(f"{index} is not a valid weight index ({err})") from err
            state: dict[str, Tensor] = {}
            for shard in shards:
                state.update(read_weights(folder / shard))
            return state
    for name in (SAFETENSORS, PYTORCH_BIN):
        if (folder / name).is_file():
            return read_weights(folder / name)
    present = sorted(p.name for p in folder.iterdir())
    raise CheckpointError(f"{folder} has no weights: expected {SAFETENSORS} or {PYTORCH_BIN} "
                          f"(or a sharded index) next to config.json; found {present}")


def _split_module_state(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """From a LightningModule's state dict, the encoder's and pretraining heads' parameters
    under bertzoo names, wherever the module keeps the encoder (`encoder.`, `model.encoder.`)."""
    anchors = [k for k in state if k.endswith("embeddings.word.weight")]
    if len(anchors) != 1:
        raise CheckpointError(f"{source}: expected one BERT encoder in the state dict, found "
                              f"{len(anchors)} (keys ending in embeddings.word.weight)")
    encoder_prefix = anchors[0][: -len("embeddings.word.weight")]
    owner_prefix = encoder_prefix[: -len("encoder.")] if encoder_prefix.endswith("encoder.") else None
    out = {k[len(encoder_prefix):]: v for k, v in state.items() if k.startswith(encoder_prefix)}
    if owner_prefix is not None:
        for head in ("mlm_head.", "nsp_head."):
            out.update({k[len(owner_prefix):]: v for k, v in state.items()
                        if k.startswith(owner_prefix + head)})
    return out


def load_state(path: str | os.PathLike) -> tuple[BertConfig, dict[str, Tensor], str]:
    """Config and bertzoo-named parameters from any supported source, and a name for messages."""
    resolved = resolve(path)
    source = str(resolved)
    if resolved.is_file():
        ckpt = read_lightning_checkpoint(resolved)
        config = BertConfig.from_dict(ckpt[CKPT_KEY]["config"], source=source)
        return config, _split_module_state(ckpt["state_dict"], source), source
    config = BertConfig.from_hf(resolved)
    raw = _read_folder_weights(resolved)
    state, unused = from_hf_state_dict(raw, source)
    if unused:
        log.info("%s: %d parameter(s) not part of BERT's encoder or pretraining heads were left "
                 "out: %s", source, len(unused), ", ".join(unused[:8]) + (" ..." if len(unused) > 8 else ""))
    return config, state, source


def load_into(module: nn.Module, state: dict[str, Tensor], source: str,
              prefix: str = "", optional: tuple[str, ...] = ()) -> list[str]:
    """Copy `state` (keys under `prefix`) into `module`, checking names and shapes first.

    Parameters whose names start with one of `optional` may be absent (they keep their
    initialisation); the list of those is returned. Any other absence, or a shape that differs,
    is an error naming the parameter, the file and both shapes.
    """
    own = module.state_dict()
    given = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing = [k for k in own if k not in given]
    required = [k for k in missing if not k.startswith(optional)]
    if required:
        raise CheckpointError(f"{source} lacks {len(required)} parameter(s) the model needs, e.g. "
                              f"{', '.join(required[:5])}")
    for key, value in given.items():
        if key not in own:
            continue
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{source}: parameter {prefix}{key} has shape "
                                  f"{tuple(value.shape)} in the checkpoint but the model expects "
                                  f"{tuple(own[key].shape)}")
    module.load_state_dict({k: v for k, v in given.items() if k in own}, strict=False)
    return missing


# ----------------------------------------------------------------------------------- writing
def save_pretrained(directory: str | os.PathLike, encoder, tokenizer=None, heads=None,
                    extra_state: dict[str, Tensor] | None = None,
                    architecture: str | None = None,
                    config_extra: dict[str, Any] | None = None) -> Path:
    """Write a Hugging Face BERT folder: config.json, model.safetensors, tokenizer files.

    Args:
        directory: Output folder (created if needed; files in it are replaced atomically).
        encoder: The `BertEncoder`.
        tokenizer: A `tokenizers.Tokenizer` to save beside the weights (recommended).
        heads: A `BertForPreTraining` whose MLM/NSP heads are written as `cls.*`.
        extra_state: Task-head tensors already under Hugging Face names (e.g.
            `classifier.weight`); the encoder is then written under `bert.`.
        architecture: The Hugging Face class to record in config.json.
        config_extra: More config.json keys (e.g. `id2label`).
    """
    from safetensors.torch import save_file
    directory = Path(directory)
    state = {k: v for k, v in encoder.state_dict().items()}
    if heads is not None:
        state.update({f"mlm_head.{k}": v for k, v in heads.mlm_head.state_dict().items()})
        if heads.nsp_head is not None:  # a masked-LM-only model has none
            state.update({f"nsp_head.{k}": v for k, v in heads.nsp_head.state_dict().items()})
    hf_state = to_hf_state_dict(state)
    if extra_state:
        if heads is None:
            hf_state = {f"bert.{k}": v for k, v in hf_state.items()}
        hf_state.update({k: v.contiguous() for k, v in extra_state.items()})
    hf_state = {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
                for k, v in hf_state.items()}
    config = encoder.config.to_hf()
    config["architectures"] = [architecture or ("BertForPreTraining" if heads is not None
                                                else "BertModel")]
    config.update(config_extra or {})
    atomic_write(directory / SAFETENSORS,
                 lambda tmp: save_file(hf_state, tmp, metadata={"format": "pt"}))
    atomic_write(directory / "config.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory, model_max_length=encoder.config.max_position_embeddings)
    return directory


__all__ = ["CKPT_KEY", "CheckpointError", "ConfigError", "describe_load_error",
           "save_pretrained", "to_hf_state_dict", "from_hf_state_dict", "read_weights",
           "read_lightning_checkpoint", "load_state", "load_into", "atomic_write", "resolve"]
