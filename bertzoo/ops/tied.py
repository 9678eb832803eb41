"""One gradient for the word-embedding matrix that BERT's input lookup and MLM decoder share.

BERT ties the decoder to the input embeddings: one (V, H) matrix used twice per step. Left to
autograd, the lookup's backward builds its own dense (V, H) gradient (zeros plus N rows) and
autograd adds it to the decoder's into a third matrix. Here the decoder's backward (which runs
first: the lookup's output feeds everything the decoder reads) leaves its dense gradient in a
`TiedWordGradient`, and the lookup's backward adds its N rows into it in place and returns the
sum as the matrix's only gradient. Equal to autograd's gradient (tests/test_model.py, and
against transformers in tests/test_parity.py); figures in docs/benchmarks.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class TiedWordGradient:
    """Links one forward pass's word lookup and MLM decoder: make one per pass, look the words
    up with `lookup` and decode with `project`, both on the same weight."""

    def __init__(self):
        self.decoder_grad: Tensor | None = None

    def lookup(self, ids: Tensor, weight: Tensor, padding_idx: int | None) -> Tensor:
        """F.embedding(ids, weight, padding_idx): (N,) -> (N, H)."""
        return _TiedLookup.apply(ids, weight, padding_idx, self)

    def project(self, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """F.linear(h, weight, bias) (under autocast, in autocast's dtype): (..., H) -> (..., V),
        as one matmul over the vocabulary."""
        logits = _TiedProjection.apply(h.reshape(-1, h.shape[-1]), weight, bias, self)
        return logits.view(*h.shape[:-1], weight.shape[0])  # -1 is ambiguous when M = 0


class _TiedLookup(torch.autograd.Function):
    """F.embedding(ids, weight, padding_idx), whose weight gradient goes through `tied`."""

    @staticmethod
    def forward(ctx, ids: Tensor, weight: Tensor, padding_idx: int | None,
                tied: TiedWordGradient) -> Tensor:
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.tied, ctx.shape = padding_idx, tied, weight.shape
        return F.embedding(ids, weight, padding_idx)  # (N, H)

    @staticmethod
    def backward(ctx, grad: Tensor):  # (N, H)
        (ids,) = ctx.saved_tensors
        weight_grad, ctx.tied.decoder_grad = ctx.tied.decoder_grad, None
        if weight_grad is None:  # the decoder was not part of this loss
            weight_grad = grad.new_zeros(ctx.shape)
        if ctx.padding_idx is not None:  # as F.embedding: the padding row gets no gradient
            grad = grad.masked_fill((ids == ctx.padding_idx).unsqueeze(-1), 0.0)
        return None, weight_grad.index_add_(0, ids, grad.to(weight_grad.dtype)), None, None


class _TiedProjection(torch.autograd.Function):
    """F.linear(h, weight, bias) (under autocast, in autocast's dtype) whose weight gradient
    is left in `tied` for the embedding lookup's backward to complete and return."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor,
                tied: TiedWordGradient) -> Tensor:  # (M, H), (V, H), (V,)
        device = h.device.type
        dtype = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
                 else h.dtype)
        ctx.tied, ctx.weight_dtype = tied, weight.dtype
        with torch.autocast(device, enabled=False):
            h, weight, bias = h.to(dtype), weight.to(dtype), bias.to(dtype)
            ctx.save_for_backward(h, weight)
            return torch.addmm(bias, h, weight.t())  # (M, V)

    @staticmethod
    def backward(ctx, grad: Tensor):  # (M, V)
        h, weight = ctx.saved_tensors
        grad = grad.to(h.dtype)
        grad_h = grad.mm(weight) if ctx.needs_input_grad[0] else None  # (M, H)
        grad_bias = grad.sum(0) if ctx.needs_input_grad[2] else None  # (V,)
        if ctx.needs_input_grad[1]:
            # (V, H), in the parameter's dtype; completed by _TiedLookup
            ctx.tied.decoder_grad = grad.t().mm(h).to(ctx.weight_dtype)
        return grad_h, None, grad_bias, None
