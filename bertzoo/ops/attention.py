"""Self-attention with dropout on CPU as one autograd Function.

`F.scaled_dot_product_attention`'s fused CPU kernels do not do dropout: with dropout_p > 0 it
falls back to an unfused composition of matmuls, softmax and a per-element Bernoulli dropout.
This is that composition, written so that a training step copies and saves no more than it
needs, with `bertzoo.ops.dropout`'s masks. Equal to SDPA without dropout and to the plain
composition with the same mask (tests/test_ops.py); figures in docs/benchmarks.md.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bertzoo.ops.dropout import keep_mask


class _DropoutAttention(torch.autograd.Function):
    """dropout(softmax(q k^T / sqrt(hd), masked)) v with a given 0/1 dropout mask (None: no
    dropout):

    - q, k and v are made contiguous by one copy and their gradients go back to the fused
      (B, T, 3H) layout by one copy; torch.matmul on the permuted views would copy each operand
      again, forward and backward;
    - 1/sqrt(hd) is the matmuls' alpha, not a pass over the (T, T) scores;
    - backward needs no mask: with d = probs * keep * scale (the dropped probabilities, which
      the second matmul saves anyway), dL/dscores = g*d - probs * rowsum(g*d), g = dL/dd.

    qkv (B, T, 3H), key_mask (B, 1, 1, T) bool or None, keep (B*nh, T, T) or None
    -> context (B, T, H).
    """

    @staticmethod
    def forward(ctx, qkv: Tensor, key_mask: Tensor | None, keep: Tensor | None, num_heads: int,
                scale: float) -> Tensor:
        B, T, three_h = qkv.shape
        nh, hd = num_heads, three_h // (3 * num_heads)
        heads = qkv.view(B, T, 3, nh, hd).permute(2, 0, 3, 1, 4).reshape(3, B * nh, T, hd)
        q, k, v = heads.unbind(0)  # 3 x (B*nh, T, hd), contiguous
        scores = qkv.new_empty(B * nh, T, T).baddbmm_(q, k.transpose(1, 2), beta=0,
                                                      alpha=hd ** -0.5)  # (B*nh, T, T)
        if key_mask is not None:
            scores.view(B, nh, T, T).masked_fill_(~key_mask, float("-inf"))
        probs = scores.softmax(dim=-1)  # (B*nh, T, T)
        dropped = (probs if keep is None
                   else torch.addcmul(probs.new_zeros(()), probs, keep, value=scale))
        context = torch.bmm(dropped, v)  # (B*nh, T, hd)
        ctx.save_for_backward(heads, probs, dropped)
        return context.view(B, nh, T, hd).transpose(1, 2).reshape(B, T, nh * hd)  # (B, T, H)

    @staticmethod
    def backward(ctx, grad: Tensor):  # grad: (B, T, H)
        heads, probs, dropped = ctx.saved_tensors
        q, k, v = heads.unbind(0)
        BH, T, hd = q.shape
        B, nh = grad.shape[0], BH // grad.shape[0]
        g = grad.reshape(B, T, nh, hd).transpose(1, 2).reshape(BH, T, hd)  # (B*nh, T, hd)
        grads = torch.empty_like(heads)  # (3, B*nh, T, hd): dq, dk, dv
        torch.bmm(dropped.transpose(1, 2), g, out=grads[2])
        g_scores = torch.bmm(g, v.transpose(1, 2)).mul_(dropped)  # (B*nh, T, T): g * d
        g_scores.addcmul_(probs, g_scores.sum(-1, keepdim=True), value=-1)  # softmax backward
        grads[0].baddbmm_(g_scores, k, beta=0, alpha=hd ** -0.5)
        grads[1].baddbmm_(g_scores.transpose(1, 2), q, beta=0, alpha=hd ** -0.5)
        grad_qkv = grads.view(3, B, nh, T, hd).permute(1, 3, 0, 2, 4).reshape(B, T, 3 * nh * hd)
        return grad_qkv, None, None, None, None


def dropout_attention(qkv: Tensor, key_mask: Tensor | None, num_heads: int, p: float) -> Tensor:
    """Training-mode multi-head attention of a CPU tensor with dropout p on the probabilities:
    fused qkv (B, T, 3H) and key_mask (B, 1, 1, T) bool or None -> context (B, T, H).
    p = 0 draws no mask."""
    B, T, _ = qkv.shape
    if p == 0.0:
        return _DropoutAttention.apply(qkv, key_mask, None, num_heads, 1.0)
    keep = keep_mask((B * num_heads, T, T), p, qkv.dtype)
    return _DropoutAttention.apply(qkv, key_mask, keep, num_heads, 1.0 / (1.0 - p))
