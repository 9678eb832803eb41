"""`bertzoo export`: any bertzoo checkpoint -> a Hugging Face folder (safetensors + config.json +
tokenizer files) that `transformers` and `BertEncoder.from_pretrained` both read.

A pretraining checkpoint becomes the `BertForPreTraining` layout (`bert.*` + `cls.*`). A task
checkpoint becomes the matching Hugging Face task layout when its TaskModule defines
`hf_export` (classification -> BertForSequenceClassification, ...); otherwise, or with
`encoder_only`, the plain `BertModel` layout.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path

from bertzoo.checkpoint import (CKPT_KEY, atomic_write, load_into, load_state, read_lightning_checkpoint,
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
            written = save_pretrained(out_dir, encoder, tokenizer=tokenizer,
                                      extra_state=head_state, architecture=architecture,
                                      config_extra=config_extra)
            return write_task_record(written, ckpt, path, head_state)
        if hf_export is not None:  # a task without a Hugging Face class: keep its head
            written = save_pretrained(out_dir, encoder, tokenizer=tokenizer)
            return write_task_record(written, ckpt, path, None)
    return save_pretrained(out_dir, encoder, tokenizer=tokenizer)


# ------------------------------------------------------------------ the task of an export
TASK_RECORD = "bertzoo.json"
TASK_HEAD = "task_head.safetensors"
#: Data module arguments that say where data is or how a run loads it, not how the model reads
#: a row: not recorded (keys starting with a split name, `train_file`, are left out too).
RUN_ONLY_DATA = frozenset({"dataset", "dataset_config", "dataset_revision", "tokenizer",
                           "batch_size", "eval_batch_size", "num_workers", "num_proc",
                           "max_train_samples", "seed"})
SPLIT_PREFIXES = ("train_", "validation_", "test_", "predict_")


def run_data_arguments(checkpoint: str | os.PathLike) -> dict:
    """The data module arguments of the run that wrote `checkpoint` (its config.yaml, two
    folders up: runs/NAME/version_N/checkpoints/X.ckpt), without the run-only ones; {} when
    there is no such file."""
    import yaml
    config = Path(checkpoint).resolve().parent.parent / "config.yaml"
    if not config.is_file():
        return {}
    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    if isinstance(data, dict) and "init_args" in data:  # subclass mode: {class_path, init_args}
        data = data["init_args"] or {}
    return {key: value for key, value in data.items() if key not in RUN_ONLY_DATA
            and not key.startswith(SPLIT_PREFIXES)} if isinstance(data, dict) else {}


def write_task_record(out_dir: Path, ckpt: dict, source: Path, head_state) -> Path:
    """`bertzoo.json` beside an exported task model: the TaskModule class (which names the
    task), its hyper-parameters (labels, ...), the data arguments of the run it came from,
    and where each head tensor is (`head`: file name -> the module's name), so that
    `bertzoo.load` rebuilds the task from the folder alone."""
    state = ckpt["state_dict"]
    if head_state is None:  # the head's tensors under the module's own names, in their file
        from safetensors.torch import save_file
        head_state = {k: v.detach().cpu().contiguous() for k, v in state.items()
                      if not k.startswith("encoder.")}
        head = {k: k for k in head_state}
        atomic_write(out_dir / TASK_HEAD, lambda tmp: save_file(head_state, tmp))
        head_file = TASK_HEAD
    else:  # hf_export hands over the module's own tensors under Hugging Face names
        head = {hf: _state_key(state, tensor, hf) for hf, tensor in head_state.items()}
        head_file = "model.safetensors"
    record = {"module": ckpt[CKPT_KEY].get("module"),
              "hyper_parameters": dict(ckpt.get("hyper_parameters") or {}),
              "data": run_data_arguments(source), "head_file": head_file, "head": head}
    atomic_write(out_dir / TASK_RECORD, lambda tmp: Path(tmp).write_text(
        json.dumps(record, indent=2, default=str) + "\n"))
    return out_dir


def _state_key(state: dict, tensor, name: str) -> str:
    """The module's name of a head tensor hf_export handed over (the same object, or equal)."""
    for key, value in state.items():
        if value is tensor:
            return key
    for key, value in state.items():
        if value.shape == tensor.shape and value.dtype == tensor.dtype \
                and bool((value == tensor).all()):
            return key
    raise ValueError(f"hf_export's {name} is no tensor of the checkpoint's state dict; "
                     f"`bertzoo.load` could not put it back")
