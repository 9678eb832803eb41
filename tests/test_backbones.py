"""Any checkpoint is a backbone for any task: a checkpoint of each registered task (built-in or
plugin) given as `model.backbone` of each task brings its encoder over exactly, every
embedding and layer bit for bit. The checkpoints' encoders are moved away from the tiny
backbone they started from, so that loading that backbone instead would be seen."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from bertzoo.tasks.registry import REGISTRY, get_task

TASK_NAMES = REGISTRY.names()


def model_for(name: str, backbone: str, tokenizer: Path, folder: Path):
    spec = get_task(name)
    datamodule = spec.datamodule(tokenizer=str(tokenizer),
                                 **{"batch_size": 4, **spec.example_data(folder)})
    links = {link: getattr(datamodule, link) for link in spec.datamodule.model_links}
    return spec.module(backbone=backbone, **links), datamodule


@pytest.fixture(scope="module")
def task_checkpoints(tmp_path_factory, tiny_backbone_dir) -> dict[str, tuple[Path, dict]]:
    """{task: (its .ckpt, its encoder's state)}, each encoder moved by its own noise."""
    checkpoints = {}
    for number, name in enumerate(TASK_NAMES):
        folder = tmp_path_factory.mktemp(f"{name}-checkpoint")
        model, datamodule = model_for(name, str(tiny_backbone_dir), tiny_backbone_dir, folder)
        trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            limit_val_batches=0, default_root_dir=str(folder))
        trainer.fit(model, datamodule)
        generator = torch.Generator().manual_seed(number)
        with torch.no_grad():
            for parameter in model.encoder.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
        trainer.save_checkpoint(folder / f"{name}.ckpt")
        state = {k: v.clone() for k, v in model.encoder.state_dict().items()}
        checkpoints[name] = (folder / f"{name}.ckpt", state)
    return checkpoints


@pytest.mark.parametrize("target", TASK_NAMES)
@pytest.mark.parametrize("source", TASK_NAMES)
def test_a_checkpoint_of_any_task_is_the_backbone_of_any_task(source, target, task_checkpoints,
                                                               tiny_backbone_dir, tmp_path):
    from bertzoo.model import BertEncoder
    checkpoint, trained = task_checkpoints[source]
    model, _ = model_for(target, str(checkpoint), tiny_backbone_dir, tmp_path)
    carried = model.encoder.state_dict()
    original = BertEncoder.from_pretrained(tiny_backbone_dir).state_dict()
    # Everything but the pooler, which a task without one (QA) neither keeps nor needs.
    encoder_keys = {k for k in trained if not k.startswith("pooler.")}
    assert encoder_keys and encoder_keys <= carried.keys()
    assert any(k.startswith("embeddings.") for k in encoder_keys)
    for key in sorted(encoder_keys):
        assert torch.equal(carried[key], trained[key]), f"{source} -> {target}: {key}"
        assert not torch.equal(carried[key], original[key]), f"{key} is the tiny backbone's"
    for key in carried.keys() & trained.keys() - encoder_keys:  # the pooler, where both have it
        assert torch.equal(carried[key], trained[key]), f"{source} -> {target}: {key}"
