"""Hand-written kernels that `bertzoo.model` runs instead of plain PyTorch where they are faster,
and the one place that decides which ones a model uses.

`bertzoo.model` is written with plain `F.dropout` and `F.scaled_dot_product_attention`. Each
kernel here computes the same thing (tests/test_ops.py holds them equal, tests/test_parity.py
holds the training step equal to transformers') with fewer passes, copies or allocations:

    dropout.dropout_add            residual + dropout(x) in one pass each way (CPU)
    attention.dropout_attention    attention with dropout as one autograd Function (CPU)
    tied.TiedWordGradient          the word lookup and the tied MLM decoder share one (V, H)
                                   gradient instead of autograd's three (any device)

`select(kernels, device)` picks them once, for the device a model's parameters are on:

    "auto"       the CPU kernels on CPU, in training mode (evaluation has no dropout; SDPA's
                 fused kernels are the fast path there); the tied gradient on every device
    "reference"  none of them: plain PyTorch, to compare against or to rule the kernels out
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from bertzoo.ops.attention import dropout_attention
from bertzoo.ops.dropout import dropout_add, keep_mask, random_words
from bertzoo.ops.tied import TiedWordGradient

KERNELS = ("auto", "reference")


@dataclass(frozen=True)
class Kernels:
    """The kernels one model runs; None / False: plain PyTorch for that step.

    dropout_add(x, p, residual | None) -> residual + dropout(x), training mode.
    attention(qkv (B, T, 3H), key_mask (B, 1, 1, T) | None, num_heads, p) -> (B, T, H),
        training mode, dropout p on the attention probabilities.
    tied_word_gradient: BertForPreTraining links its word lookup and decoder through a
        `TiedWordGradient`.
    """

    dropout_add: Callable[[Tensor, float, Tensor | None], Tensor] | None = None
    attention: Callable[[Tensor, Tensor | None, int, float], Tensor] | None = None
    tied_word_gradient: bool = False


REFERENCE = Kernels()
CPU = Kernels(dropout_add=dropout_add, attention=dropout_attention, tied_word_gradient=True)
# CUDA's dropout (Philox) and SDPA's flash/efficient kernels (which do dropout) are already fast.
OTHER_DEVICES = Kernels(tied_word_gradient=True)


def select(kernels: str, device: torch.device | str) -> Kernels:
    """The kernels for `kernels` ("auto" or "reference") on `device`."""
    if kernels == "reference":
        return REFERENCE
    if kernels == "auto":
        return CPU if torch.device(device).type == "cpu" else OTHER_DEVICES
    raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")


__all__ = ["KERNELS", "Kernels", "REFERENCE", "CPU", "OTHER_DEVICES", "select",
           "TiedWordGradient", "dropout_add", "dropout_attention", "keep_mask", "random_words"]
