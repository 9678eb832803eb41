"""Dropout on CPU in one pass: masks drawn 64 bits at a time, and dropout, scaling and the
residual sum as one `addcmul` forward and one backward.

PyTorch's CPU dropout draws one Bernoulli sample per element and multiplies by a boolean mask,
which every multiplication that uses it converts to the data's dtype again, forward and
backward; `residual + F.dropout(x)` then adds in a separate pass. Here the mask is written once,
in the data's dtype, and everything else is one pass each way. Equal to plain dropout given the
same mask (tests/test_ops.py); figures in docs/benchmarks.md ("CPU kernels").
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def random_words(count: int) -> Tensor:
    """`count` uniformly random int64 words on CPU: numpy's SFC64 generator, seeded by one draw
    from torch's generator, so that `torch.manual_seed` makes them reproducible as it does any
    torch op. SFC64 draws words faster than torch's Mersenne Twister (`torch.randint`)."""
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    return torch.from_numpy(np.random.SFC64(seed).random_raw(count).view(np.int64))


@torch.compiler.disable  # numpy draws the words: torch.compile runs this eagerly, between graphs
def keep_mask(shape: tuple[int, ...], p: float, dtype: torch.dtype) -> Tensor:
    """A CPU dropout mask: 1 where an element is kept, 0 where it is dropped, in `dtype`.

    64 random bits are drawn at a time (`random_words`) and each 16-bit lane is compared with a
    threshold: the Bernoulli distribution of `F.dropout` up to p's rounding to a multiple of
    1/65536 (0.100006 for p = 0.1). The comparison writes the mask straight in the data's dtype,
    so no multiplication that uses it has to convert it.
    """
    n = math.prod(shape)
    lanes = random_words((n + 3) // 4).view(torch.int16)[:n].view(shape)  # over [-2^15, 2^15)
    return torch.ge(lanes, -32768 + round(p * 65536), out=torch.empty(shape, dtype=dtype))


class _MaskedScale(torch.autograd.Function):
    """y = residual + x * keep * scale (no residual: x * keep * scale) in one pass, and one
    pass backward; saves only the mask. keep=None (dropout off): y = residual + x."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor | None, scale: float,
                residual: Tensor | None) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale, ctx.has_residual = scale, residual is not None
        if keep is None:
            return residual + x
        base = residual if residual is not None else x.new_zeros(())
        return torch.addcmul(base, x, keep, value=scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (keep,) = ctx.saved_tensors
        grad_x = (grad if keep is None
                  else torch.addcmul(grad.new_zeros(()), grad, keep, value=ctx.scale))
        return grad_x, None, None, grad if ctx.has_residual else None


def dropout_add(x: Tensor, p: float, residual: Tensor | None = None) -> Tensor:
    """Training-mode inverted dropout (Srivastava et al. 2014) of a CPU tensor, plus `residual`
    if given: `residual + F.dropout(x, p)` in one pass each way, with a `keep_mask`.

    p = 0 draws no mask (nothing to drop). Callers use it in training only: in evaluation
    dropout is the identity and `residual + x` needs no kernel.
    """
    if p == 0.0:
        return x if residual is None else _MaskedScale.apply(x, None, 1.0, residual)
    return _MaskedScale.apply(x, keep_mask(x.shape, p, x.dtype), 1.0 / (1.0 - p), residual)
