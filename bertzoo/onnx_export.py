"""`bertzoo export CKPT OUT --format onnx`: a task model (encoder + head) as an ONNX graph.

The folder holds `model.onnx`, the tokenizer files and `bertzoo.json` (the task, its labels
and hyper-parameters, the data arguments, the graph's input and output names), so
`bertzoo.load(folder)` runs it with onnxruntime through the task's own preprocessing and
decoding, and any ONNX runtime can run it without PyTorch.

The graph is the task module's forward, exported with `torch.onnx.export(dynamo=True)`: its
inputs are the batch tensors the forward reads (`input_ids`, `attention_mask`,
`token_type_ids`, plus any the task adds, e.g. multiple choice's `choice_mask`), every axis
dynamic (batch, sequence, choices); its outputs are named as Hugging Face's heads name them
(`logits`; `start_logits` and `end_logits` for QA). The export is checked against PyTorch on
the task's example inputs before it is kept.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import bertzoo.model

from bertzoo.checkpoint import atomic_write
from bertzoo.export import TASK_RECORD
from bertzoo.inference import ONNX_MODEL, Predictor, load, quiet_datasets, require_extra
from bertzoo.tokenizer import save_tokenizer

FIRST_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _RecordingBatch(dict):
    """A batch that remembers which keys the forward reads."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read: list[str] = []

    def __getitem__(self, key):
        if key not in self.read:
            self.read.append(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        return self[key] if key in self else default


class _PaddedPacking(bertzoo.model.Packing):
    """The encoder's padded path with the attention mask always applied. The model chooses
    per batch whether to unpad (and whether there is padding at all) by looking at the mask's
    values; a graph cannot branch on data, and this path gives the same numbers."""

    def __init__(self, attention_mask, batch_size: int, seq_len: int, unpad: bool = True):
        self.batch_size, self.seq_len = batch_size, seq_len
        self.indices = None
        self.attn_mask = (None if attention_mask is None
                          else attention_mask.bool()[:, None, None, :])  # (B, 1, 1, T)


class _Graph(nn.Module):
    """The task module's forward with positional tensor inputs and a tuple of outputs."""

    def __init__(self, module: nn.Module, inputs: list[str], outputs: list[str] | None):
        super().__init__()
        self.module = module
        self.inputs = inputs
        self.outputs = outputs

    def forward(self, *tensors):
        out = self.module(dict(zip(self.inputs, tensors)))
        return (out,) if self.outputs is None else tuple(out[name] for name in self.outputs)


def sample_inputs(predictor: Predictor) -> list[Any]:
    """Raw inputs for tracing and checking: the task's example data, in the layout (column
    names, pairs) of the model's own data arguments when the task's `example_data` follows
    one (`like=`)."""
    import inspect
    spec = predictor.spec
    with tempfile.TemporaryDirectory(prefix="bertzoo-onnx-") as folder:
        if "like" in inspect.signature(spec.example_data).parameters:
            data_args = spec.example_data(Path(folder), like=predictor.data_args)
        else:
            data_args = spec.example_data(Path(folder))
        return spec.inputs.examples(data_args)


def graph_signature(module: nn.Module, batch: dict[str, Any]):
    """(input names, output names, "tensor" | "dict") of the module's forward on `batch`."""
    task = type(module).__qualname__
    recording = _RecordingBatch(batch)
    with torch.inference_mode():
        out = module(recording)
    inputs = [k for k in FIRST_INPUTS if k in recording.read]
    inputs += [k for k in recording.read if k not in inputs]
    lists = [k for k in inputs if not isinstance(batch[k], torch.Tensor)]
    if lists:
        raise TypeError(f"{task}: its forward reads {lists}, which are not "
                        f"tensors; an ONNX graph takes tensors only")
    if isinstance(out, torch.Tensor):
        return inputs, ["logits"], "tensor"
    if isinstance(out, dict) and all(isinstance(v, torch.Tensor) for v in out.values()):
        return inputs, list(out), "dict"
    raise TypeError(f"{task}: its forward returns {type(out).__name__}; an "
                    f"ONNX export needs a tensor or a dict of tensors")


def with_padding(batch: dict[str, Any], inputs: list[str], pad_id: int, extra: int = 3
                 ) -> dict[str, Any]:
    """`batch` with `extra` more padding positions on every token-shaped input."""
    shape = batch["input_ids"].shape
    padded = dict(batch)
    for name in inputs:
        if batch[name].shape == shape:
            fill = pad_id if name == "input_ids" else 0
            padded[name] = torch.nn.functional.pad(batch[name], (0, extra), value=fill)
    return padded


def max_difference(ours: torch.Tensor, theirs: torch.Tensor, attention_mask: torch.Tensor
                   ) -> float:
    """max |ours - theirs| over the real tokens: per-token outputs at padding positions are
    never read (the unpadded model leaves them zero, the graph computes them)."""
    keep = torch.ones_like(ours, dtype=torch.bool)
    mask = attention_mask.bool()
    if tuple(ours.shape[:mask.ndim]) == tuple(mask.shape):
        keep = mask.reshape(*mask.shape, *[1] * (ours.ndim - mask.ndim)).expand_as(ours)
    if not keep.any():
        return 0.0
    return float((ours[keep].double() - theirs[keep].double()).abs().max())


def export_graph(module: nn.Module, sample: dict[str, Any], path: Path,
                 opset: int | None = None):
    """Write the task module's forward as an ONNX graph traced on the batch `sample`, every
    axis of every input dynamic; return the traced wrapper, the input and output names and the
    output structure."""
    inputs, outputs, structure = graph_signature(module, sample)
    graph = _Graph(module, inputs, None if structure == "tensor" else outputs).eval()
    args = tuple(sample[name] for name in inputs)
    dynamic = tuple({axis: torch.export.Dim.DYNAMIC for axis in range(sample[name].ndim)}
                    for name in inputs)
    from unittest import mock
    with warnings.catch_warnings(), torch.no_grad(), \
            mock.patch.object(bertzoo.model, "Packing", _PaddedPacking):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, args, dynamo=True, input_names=inputs,
                                    output_names=outputs, dynamic_shapes=(dynamic,),
                                    opset_version=opset, verbose=False)
    program.optimize()
    atomic_write(path, lambda tmp: program.save(tmp))
    return graph, inputs, outputs, structure


def export_onnx(source: str | os.PathLike, out_dir: str | os.PathLike,
                quantize: str | None = None, opset: int | None = None,
                atol: float = 1e-4) -> tuple[Path, float]:
    """Write `source` (a task .ckpt, run folder or `bertzoo export` folder) as an ONNX folder;
    return the folder and the largest |difference| of its outputs from PyTorch's on the
    task's example inputs (more than `atol` is an error, unless quantized)."""
    require_extra("onnxscript", "onnx")
    ort = require_extra("onnxruntime", "onnx")
    if quantize not in (None, "int8"):
        raise ValueError(f"--quantize must be int8, got {quantize!r}")
    predictor = load(source, device="cpu", batch_size=8)
    module = predictor.module.eval()
    rows = predictor.rows(sample_inputs(predictor))
    with quiet_datasets():
        batches = list(predictor.batches(rows)[1])
    # The largest batch traces best: no axis of size 1 that the exporter could specialise.
    sample = max(batches, key=lambda b: b["input_ids"].numel())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / ONNX_MODEL
    graph, inputs, outputs, structure = export_graph(module, sample, model_path, opset)
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic
        atomic_write(model_path, lambda tmp: quantize_dynamic(
            str(model_path), tmp, weight_type=QuantType.QInt8))
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    difference = 0.0
    pad_id = predictor.tokenizer.token_to_id("[PAD]") or 0
    # Each batch also with more padding: examples of equal lengths would not test the mask.
    checked = batches + [with_padding(b, inputs, pad_id) for b in batches]
    with torch.inference_mode():
        for batch in checked:
            expected = graph(*(batch[name] for name in inputs))
            got = session.run(outputs, {name: batch[name].numpy() for name in inputs})
            for ours, theirs in zip(expected, got):
                difference = max(difference, max_difference(ours, torch.from_numpy(theirs),
                                                            batch["attention_mask"]))
    if difference > atol and quantize is None:
        raise RuntimeError(f"the ONNX graph differs from PyTorch by {difference:.2e} (> "
                           f"{atol}) on the task's example inputs; not kept")
    record = {"format": "onnx", "module": f"{type(module).__module__}."
                                          f"{type(module).__qualname__}",
              "task": predictor.task,
              "labels": predictor.module.hparams.get("label_names"),
              "hyper_parameters": dict(predictor.module.hparams),
              "data": {k: v for k, v in predictor.data_args.items()
                       if k not in ("batch_size", "eval_batch_size", "num_workers")},
              "config": module.encoder.config.to_dict(),
              "onnx": {"inputs": inputs, "outputs": outputs, "structure": structure,
                       "quantized": quantize, "max_abs_diff_vs_pytorch": difference}}
    save_tokenizer(predictor.tokenizer, out_dir,
                   model_max_length=module.encoder.config.max_position_embeddings)
    atomic_write(out_dir / TASK_RECORD, lambda tmp: Path(tmp).write_text(
        json.dumps(record, indent=2, default=str) + "\n"))
    return out_dir, difference
