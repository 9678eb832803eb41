"""`bertzoo export`: any bertzoo checkpoint -> a Hugging Face folder (safetensors + config.json +
tokenizer files) that `transformers` and `BertEncoder.from_pretrained` both read.

A pretraining checkpoint becomes the `BertForPreTraining` layout (`bert.*` + `cls.*`). A task
checkpoint becomes the matching Hugging Face task layout when its TaskModule defines
`hf_export` (classification -> BertForSequenceClassification, ...); otherwise, or with
`encoder_only`, the plain `BertModel` layout.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

from bertzoo.checkpoint import (CKPT_KEY, load_into, load_state, read_lightning_checkpoint,
                                resolve, save_pretrained)
from bertzoo.model import BertEncoder, BertForPreTraining
from bertzoo.tokenizer import TokenizerError, load_tokenizer

log = logging.getLogger("bertzoo")


def _module_class(path: str | None):
    if not path:
        return None
    module_name, _, qualname = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), qualname)
    except (ImportError, AttributeError):
        log.warning("the module that wrote this checkpoint (%s) is not importable; exporting "
                    "the encoder only", path)
        return None


def export(source: str | os.PathLike, out_dir: str | os.PathLike,
           encoder_only: bool = False) -> Path:
    """Write `source` (a bertzoo `.ckpt`, export folder or HF BERT folder) to `out_dir`."""
    path = resolve(source)
    config, state, where = load_state(path)
    ckpt = read_lightning_checkpoint(path) if path.is_file() else None
    try:
        tokenizer = load_tokenizer(path)
    except TokenizerError as err:
        log.warning("%s; the export will have no tokenizer files", err)
        tokenizer = None
    encoder = BertEncoder(config)
    load_into(encoder, state, where, optional=("pooler.",))
    if not encoder_only and any(k.startswith("mlm_head.") for k in state):
        model = BertForPreTraining(config, encoder=encoder)
        for head in ("mlm_head", "nsp_head"):
            load_into(getattr(model, head), state, where, prefix=head + ".")
        return save_pretrained(out_dir, encoder, tokenizer=tokenizer, heads=model)
    if ckpt is not None and not encoder_only:
        module_class = _module_class(ckpt[CKPT_KEY].get("module"))
        hf_export = getattr(module_class, "hf_export", None)
        exported = hf_export(ckpt["state_dict"], ckpt.get("hyper_parameters", {})) \
            if hf_export is not None else None
        if exported is not None:
            architecture, head_state, config_extra = exported
            return save_pretrained(out_dir, encoder, tokenizer=tokenizer, extra_state=head_state,
                                   architecture=architecture, config_extra=config_extra)
    return save_pretrained(out_dir, encoder, tokenizer=tokenizer)
