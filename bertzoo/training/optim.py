"""BERT's optimizer and learning-rate schedule (Devlin et al. 2018, Appendix A.2;
google-research/bert `optimization.py`): AdamW with decoupled weight decay, none on biases and
LayerNorm parameters, linear warm-up then linear decay to zero. Layer-wise learning-rate decay
(Clark et al. 2020, ELECTRA, Appendix A) is optional for fine-tuning."""

from __future__ import annotations

import math
from typing import Any

from torch import nn


def parameter_groups(module: nn.Module, weight_decay: float, learning_rate: float,
                     layerwise_lr_decay: float = 1.0, num_layers: int = 0) -> list[dict[str, Any]]:
    """AdamW parameter groups: no weight decay on biases and LayerNorm parameters; with
    `layerwise_lr_decay` < 1, depth d gets lr * decay ** (num_layers + 1 - d), where the
    embeddings are depth 0, layer i is depth i + 1 and everything above the encoder (pooler,
    heads) is depth num_layers + 1 and keeps the full rate."""
    no_decay = {id(p) for m in module.modules() if isinstance(m, nn.LayerNorm)
                for p in m.parameters(recurse=False)}
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (name.endswith("bias") or id(param) in no_decay)
        depth = _depth(name, num_layers) if layerwise_lr_decay != 1.0 else num_layers + 1
        if (depth, decay) not in groups:
            groups[(depth, decay)] = {
                "params": [], "weight_decay": weight_decay if decay else 0.0,
                "lr": learning_rate * layerwise_lr_decay ** (num_layers + 1 - depth)}
        groups[(depth, decay)]["params"].append(param)
    return list(groups.values())


def _depth(name: str, num_layers: int) -> int:
    parts = name.split(".")
    if "embeddings" in parts:
        return 0
    if "layers" in parts:
        return int(parts[parts.index("layers") + 1]) + 1
    return num_layers + 1


def warmup_then_linear_decay(warmup_steps: int, total_steps: int):
    """lr multiplier: 0 -> 1 over `warmup_steps`, then 1 -> 0 at `total_steps` (BERT's)."""
    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return multiplier


def schedule_length(trainer, source) -> float:
    """The number of optimizer steps `trainer.fit` will take: the learning-rate schedule's
    length. The same count as `trainer.estimated_stepping_batches`, without asking the Trainer
    to build its training loader: built before the checkpoint of a resumed run is restored, that
    loader would not be given back its saved position, and the run would restart its epoch.

    `source` is what the Trainer gets its training loader from (the data module, or the
    LightningModule itself); the length of an epoch is that of a loader built from it here for
    counting only (its batch sampler's length; nothing is read). Training by steps alone
    (`max_steps` with no `max_epochs`) needs no loader at all. Infinite when it cannot be known
    (a stream without `max_steps`)."""
    if trainer.max_epochs == -1:
        return float("inf") if trainer.max_steps == -1 else trainer.max_steps
    try:
        length = len(source.train_dataloader())
    except TypeError:  # an iterable dataset has no length
        length = float("inf")
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        batches = min(length, limit)
    elif length != float("inf"):
        batches = int(length * limit)
    else:
        batches = length
    if batches == float("inf"):
        return float("inf") if trainer.max_steps == -1 else trainer.max_steps
    steps = math.ceil(batches / trainer.accumulate_grad_batches) * max(trainer.max_epochs or 1, 1)
    return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps
