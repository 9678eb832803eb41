"""Tests generated from the registry: every task found in the `bertzoo.tasks` entry points
(built-in or installed plugin) gets the same checks, so a new task is tested the day it
registers. The checks are `bertzoo.testing.TASK_CHECKS`, the ones `bertzoo.testing.check_task`
runs in a plugin's own CI; the data comes from each task's own `TaskSpec.example_data`.

    - the entry point loads and the spec is valid; `example_data` writes what it names;
    - forward and backward on a tiny backbone: a finite scalar loss, finite gradients that
      reach the embeddings and every head parameter;
    - through the command line: one `bertzoo fit` step with validation; its checkpoint loaded
      with `load_from_checkpoint(weights_only=True)` gives identical outputs and predictions
      (hyper-parameters must be plain data); `bertzoo predict` from the checkpoint alone writes
      files with one row per input;
    - `bertzoo fit --task NAME --help` documents every model and data argument.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bertzoo.tasks import get_task
from bertzoo.tasks.registry import REGISTRY
from bertzoo.testing import TASK_CHECKS, build_task, check_task, tiny_backbone

TASK_NAMES = REGISTRY.names()  # discovered without importing any task


def test_every_built_in_task_and_the_example_plugin_is_registered():
    assert {"classification", "ner", "qa", "multiple_choice"} <= set(TASK_NAMES)


def test_check_task_runs_every_check(monkeypatch, tmp_path):
    """`check_task` (what a plugin's CI calls) runs each check below, on the spec it is given,
    with a tiny backbone of its own when given none."""
    ran = []
    monkeypatch.setattr("bertzoo.testing.TASK_CHECKS", tuple(
        lambda spec, folder, backbone, check=check: ran.append((check, spec, folder, backbone))
        for check in TASK_CHECKS))
    spec = get_task("classification")
    check_task(spec, tmp_path)
    assert [entry[0] for entry in ran] == list(TASK_CHECKS)
    assert all(entry[1] is spec and entry[2].is_dir() for entry in ran)
    assert (ran[0][3] / "config.json").is_file() and (ran[0][3] / "tokenizer.json").is_file()


@pytest.mark.parametrize("check", TASK_CHECKS, ids=[c.__name__ for c in TASK_CHECKS])
@pytest.mark.parametrize("name", TASK_NAMES)
def test_registered_task(name, check, tiny_backbone_dir, tmp_path):
    check(get_task(name), tmp_path, tiny_backbone_dir)


@pytest.fixture(scope="module")
def wide_init_backbone(tmp_path_factory):
    """A tiny backbone whose config asks for initializer_range 0.5 (BERT's is 0.02)."""
    return tiny_backbone(tmp_path_factory.mktemp("wide-init"), initializer_range=0.5)


@pytest.mark.parametrize("name", ["classification", "ner", "qa", "multiple_choice"])
def test_heads_are_initialised_as_bert_with_the_encoders_range(name, wide_init_backbone,
                                                               tmp_path):
    """Every head layer (TaskModule.init_heads -> bertzoo.model.init_weights): N(0, the
    encoder's initializer_range) weights, zero biases."""
    torch.manual_seed(0)
    _, _, model = build_task(get_task(name), wide_init_backbone, tmp_path)
    assert model.encoder.config.initializer_range == 0.5
    heads = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and not n.startswith("encoder.")]
    assert heads, f"{name} has no head layer"
    for head_name, head in heads:
        assert head.bias.eq(0).all(), f"{name}: {head_name}.bias is not zero"
        std = head.weight.std().item()
        # >= 32 weights: their sample std lies within 0.5 +- 0.2 (> 3 standard errors)
        assert 0.3 < std < 0.7, f"{name}: {head_name}.weight std {std:.3f}, expected ~0.5"
