"""BERT's parameter groups (Devlin et al. 2018, Appendix A.2; google-research/bert
`optimization.py`: no weight decay on biases and LayerNorm parameters; layer-wise
learning-rate decay, Clark et al. 2020, ELECTRA, Appendix A, optional for fine-tuning),
the schedule's length, and the optimizer and learning-rate schedule choices every bertzoo
module offers (`model.optimizer`, `model.scheduler`, `model.warmup`,
`model.decay_fraction`), pretraining and tasks alike.

Schedules, as a multiplier of the peak rate at optimizer step s (0-based) of T, with W warm-up
steps (`warmup`: a fraction of T if < 1, else a number of steps):

    linear                 (s+1)/(W+1) while s < W, then (T-s)/(T-W): to zero at T (BERT's,
                           google-research/bert optimization.py)
    cosine                 the same warm-up, then (1 + cos(pi p)) / 2 with p = (s-W)/(T-W)
                           (Loshchilov & Hutter 2017, SGDR, without restarts)
    constant               1 from the first step; `warmup` is not used
    constant_with_warmup   the same warm-up, then 1
    warmup_stable_decay    the same warm-up, 1 until the last D = decay_fraction * T steps, then
                           1 - sqrt(q) with q = (s - (T-D)) / D: ModernBERT's schedule (Warner
                           et al. 2024, Section 2.2.2: warm-up, a long stable phase, and the
                           "1-sqrt" decay of Hägele et al. 2024 over the final part)

Optimizers (both with decoupled weight decay, none on biases and LayerNorm parameters):

    adamw   torch.optim.AdamW (Loshchilov & Hutter 2019), BERT's fine-tuning and pretraining
            optimizer; PyTorch's fused kernel where it applies
    lamb    LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning: Training BERT in
            76 minutes", Algorithm 2), the layer-wise adaptive optimizer NVIDIA's BERT recipe
            pretrains with at batch 64k/32k. No maintained implementation ships with the
            libraries bertzoo depends on, so `Lamb` below is the paper's update in a few lines.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from bertzoo.config import ConfigError


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


def warmup_then_linear_decay(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """lr multiplier: 0 -> 1 over `warmup_steps`, then 1 -> 0 at `total_steps` (BERT's)."""
    return lr_multiplier("linear", warmup_steps, total_steps)


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


SchedulerName = Literal["linear", "cosine", "constant", "constant_with_warmup",
                        "warmup_stable_decay"]
OptimizerName = Literal["adamw", "lamb"]
SCHEDULERS: tuple[str, ...] = ("linear", "cosine", "constant", "constant_with_warmup",
                               "warmup_stable_decay")
OPTIMIZERS: tuple[str, ...] = ("adamw", "lamb")


# ------------------------------------------------------------------------------ schedules
def warmup_steps_of(warmup: float, total_steps: int) -> int:
    """`model.warmup` as a number of steps: a fraction of `total_steps` if < 1, else steps."""
    return int(warmup * total_steps) if warmup < 1 else int(warmup)


def lr_multiplier(scheduler: str, warmup_steps: int, total_steps: int,
                  decay_fraction: float = 0.1) -> Callable[[int], float]:
    """The learning-rate multiplier of optimizer step `step` (0-based), for `LambdaLR`."""
    check_scheduler(scheduler, decay_fraction)
    W, T = warmup_steps, total_steps

    def warming(step: int) -> bool:
        return step < W

    def warm(step: int) -> float:
        return (step + 1) / (W + 1)

    def progress(step: int) -> float:  # 0 at the end of warm-up, 1 at T
        return min(1.0, (step - W) / max(1, T - W))

    if scheduler == "linear":
        return lambda step: warm(step) if warming(step) else max(0.0, 1.0 - progress(step))
    if scheduler == "cosine":
        return lambda step: warm(step) if warming(step) else \
            0.5 * (1.0 + math.cos(math.pi * progress(step)))
    if scheduler == "constant":
        return lambda step: 1.0
    if scheduler == "constant_with_warmup":
        return lambda step: warm(step) if warming(step) else 1.0
    # warmup_stable_decay: the decay phase never starts before the warm-up has ended
    D = max(1, round(decay_fraction * T))
    start = max(W, T - D)

    def wsd(step: int) -> float:
        if warming(step):
            return warm(step)
        if step < start:
            return 1.0
        return max(0.0, 1.0 - math.sqrt(min(1.0, (step - start) / max(1, T - start))))
    return wsd


def check_scheduler(scheduler: str, decay_fraction: float = 0.1) -> None:
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"model.scheduler must be one of {', '.join(SCHEDULERS)}; got "
                          f"{scheduler!r}")
    if not 0.0 < decay_fraction <= 1.0:
        raise ConfigError(f"model.decay_fraction must be in (0, 1] (the share of the steps "
                          f"warmup_stable_decay decays over), got {decay_fraction}")


def check_optimizer(optimizer: str) -> None:
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"model.optimizer must be one of {', '.join(OPTIMIZERS)}; got "
                          f"{optimizer!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, scheduler: str, warmup: float,
                    total_steps: int, decay_fraction: float = 0.1):
    """A per-step `LambdaLR` following `scheduler` over `total_steps` optimizer steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(
        scheduler, warmup_steps_of(warmup, total_steps), total_steps, decay_fraction))


# ------------------------------------------------------------------------------ optimizers
def build_optimizer(name: str, groups: list[dict[str, Any]], learning_rate: float,
                    betas: tuple[float, float], eps: float, fused: bool = False):
    """AdamW (fused where `fused`) or LAMB over `parameter_groups(...)`."""
    check_optimizer(name)
    if name == "lamb":
        return Lamb(groups, lr=learning_rate, betas=betas, eps=eps)
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps,
                             fused=fused or None)


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2020, Algorithm 2), per parameter tensor (a "layer"):

        m = b1 m + (1 - b1) g                  v = b2 v + (1 - b2) g^2
        r = m_hat / (sqrt(v_hat) + eps)        with m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)
        u = r + weight_decay * w
        w = w - lr * (||w|| / ||u||) * u       the trust ratio is 1 where either norm is 0

    As in NVIDIA's BERT recipe (apex FusedLAMB, its default `use_nvlamb=False`), tensors
    without weight decay (biases, LayerNorm) take the plain Adam step: trust ratio 1. The
    gradient is not clipped here: the Trainer's `gradient_clip_val` (1.0 in bertzoo's runs)
    clips the global norm first, as NVIDIA's recipe does.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid LAMB settings lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                # moments and update in float32 at least (bf16/fp16 weights lose the step)
                dtype = torch.promote_types(w.dtype, torch.float32)
                g = w.grad.to(dtype)
                state = self.state[w]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(w, dtype=dtype)
                    state["exp_avg_sq"] = torch.zeros_like(w, dtype=dtype)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                update = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + group["eps"])
                ratio = 1.0
                if group["weight_decay"] != 0:
                    update.add_(w.to(dtype), alpha=group["weight_decay"])
                    w_norm, u_norm = w.to(dtype).norm(), update.norm()
                    ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm,
                                        torch.ones_like(w_norm))
                w.sub_((group["lr"] * ratio * update).to(w.dtype))
        return loss
