"""What a loss needs to know about the other processes of a DDP run."""

from __future__ import annotations

import torch


def share_of_global_mean(local_mean: torch.Tensor, count: int) -> torch.Tensor:
    """This process's term of a mean over every process's `count` items (masked tokens, tagged
    tokens), given the mean over its own.

    DDP averages gradients over the W processes, so each must return sum_r * W / global count
    for the average to be the global mean; a plain per-process mean weights a process holding
    few items as much as one holding many, and the run then differs from one process on the
    same global batch. One all-reduce of the count; with a single process the mean is returned
    unchanged. Every process must call it at the same step (training steps are equal in number
    everywhere: the batch sampler drops an incomplete last global batch under DDP).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) \
            or torch.distributed.get_world_size() == 1:
        return local_mean
    world_size = torch.distributed.get_world_size()
    global_count = torch.tensor(count, dtype=torch.long, device=local_mean.device)
    torch.distributed.all_reduce(global_count)
    return local_mean * (count * world_size / max(1, int(global_count)))
