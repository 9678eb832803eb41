"""The BERT encoder and its pretraining heads, in the order data flows through them.

Devlin et al. 2018, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding" (https://arxiv.org/abs/1810.04805): Section 3 (model, input representation, MLM
and NSP) and Appendix A.2 (pretraining procedure). Each layer is the post-LayerNorm encoder layer
of Vaswani et al. 2017 ("Attention Is All You Need"): x = LN(x + Sublayer(x)).

Shape legend used in the comments:
    B batch, T padded sequence length, H hidden size, nh attention heads, hd = H / nh,
    I intermediate (feed-forward) size, V vocabulary size,
    N tokens that are not padding (N <= B*T), M positions that carry an MLM label.

Where this departs from the paper and from Hugging Face's `BertModel` (the numbers do not change;
tests/test_parity.py holds them to Hugging Face's within 1e-4):
    - Q, K and V come from one fused (H -> 3H) projection instead of three; `bertzoo.checkpoint`
      splits and joins Hugging Face's `query`/`key`/`value` weights.
    - Unpadded compute: padding tokens are dropped once, before the embedding lookups; every
      linear layer, LayerNorm, GELU and residual then runs on the packed (N, H) tokens, and only
      attention re-pads them, around `scaled_dot_product_attention`. A batch without padding is
      never gathered or scattered. `last_hidden_state` is zero at padding positions (Hugging
      Face returns whatever the padded rows computed there).
    - The MLM head is applied only where a token carries a label (M rows, not B*T): the
      transform, the vocabulary projection and the softmax never touch unmasked tokens.
    - The MLM decoder reads the word-embedding matrix it is given instead of owning a second
      Parameter tied to it: one tensor, nothing to re-tie after loading, casting or sharding.
    - Attention is `torch.nn.functional.scaled_dot_product_attention` (fused kernels on CPU
      and GPU), except when training with attention dropout on CPU, where SDPA itself would
      fall back to an unfused path: there the same unfused math runs with our dropout, in
      fewer passes and copies (`_DropoutAttention`).
    - Dropout masks on CPU come from 16-bit lanes of 64-bit random words (see `keep_mask`):
      p is rounded to a multiple of 1/65536. Dropout and the residual sum after it are one pass
      (`dropout(..., residual=x)`): 4.2x faster than `residual + F.dropout(x)` forward and
      backward on a (1024, 768) tensor on this project's CPU.
    - In pretraining, the embedding lookup adds its rows' gradients into the tied decoder's
      (V, H) gradient in place (`TiedWordGradient`): autograd would build a second V x H matrix,
      mostly zeros, and add the two.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertzoo.config import BertConfig

IGNORE_INDEX = -100  # label value for positions without an MLM target (PyTorch's default)


def activation(name: str):
    """BERT uses the exact (erf) GELU; the tanh form is kept for checkpoints trained with it."""
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"unsupported activation {name!r}")


# --------------------------------------------------------------------------------------- dropout
def random_words(count: int) -> Tensor:
    """`count` uniformly random int64 words on CPU: numpy's SFC64 generator, seeded by one draw
    from torch's generator, so that `torch.manual_seed` makes them reproducible as it does any
    torch op. With the seeding, 65,536 words take ~2.1x less time than torch's Mersenne Twister
    (`torch.randint`) on this project's CPU, where the masks took 2-3% of a BERT-base step."""
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    return torch.from_numpy(np.random.SFC64(seed).random_raw(count).view(np.int64))


@torch.compiler.disable  # numpy draws the words: torch.compile runs this eagerly, between graphs
def keep_mask(shape: tuple[int, ...], p: float, dtype: torch.dtype) -> Tensor:
    """A CPU dropout mask: 1 where an element is kept, 0 where it is dropped, in `dtype`.

    PyTorch's CPU dropout draws one Bernoulli sample per element. Here 64 random bits are drawn
    at a time (`random_words`) and each 16-bit lane is compared with a threshold: the same
    distribution up to p's rounding to a multiple of 1/65536 (0.100006 for p = 0.1). The
    comparison writes the mask straight in the data's dtype: a boolean mask would be converted
    to it by every multiplication that uses it, forward and backward.
    """
    n = math.prod(shape)
    lanes = random_words((n + 3) // 4).view(torch.int16)[:n].view(shape)  # over [-2^15, 2^15)
    return torch.ge(lanes, -32768 + round(p * 65536), out=torch.empty(shape, dtype=dtype))


class _MaskedScale(torch.autograd.Function):
    """y = residual + x * keep * scale (no residual: x * keep * scale) in one pass, and one
    pass backward; saves only the mask."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor, scale: float, residual: Tensor | None) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale, ctx.has_residual = scale, residual is not None
        base = residual if residual is not None else x.new_zeros(())
        return torch.addcmul(base, x, keep, value=scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (keep,) = ctx.saved_tensors
        grad_x = torch.addcmul(grad.new_zeros(()), grad, keep, value=ctx.scale)
        return grad_x, None, None, grad if ctx.has_residual else None


def dropout(x: Tensor, p: float, training: bool, residual: Tensor | None = None) -> Tensor:
    """Inverted dropout (Srivastava et al. 2014), plus `residual` if given, in one pass on CPU.

    On CPU the mask comes from `keep_mask` and the scaling, masking and residual sum are one
    `addcmul` forward and one backward, where `x * mask * scale + residual` is four passes. Elsewhere (CUDA's Philox generator is fast)
    it is plain `F.dropout`.
    """
    if not training or p == 0.0:
        return x if residual is None else residual + x
    if x.device.type != "cpu":
        x = F.dropout(x, p, training=True)
        return x if residual is None else residual + x
    return _MaskedScale.apply(x, keep_mask(x.shape, p, x.dtype), 1.0 / (1.0 - p), residual)


class Dropout(nn.Module):
    """`dropout` as a module (drop-in for nn.Dropout; `residual` adds the skip connection)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        return dropout(x, self.p, self.training, residual)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# --------------------------------------------------------------------------------------- packing
class Packing:
    """Where the real (non-padding) tokens of a padded (B, T) batch are.

    Built once per forward from the attention mask. `pack` takes (B, T, ...) rows to the N real
    tokens; `unpack` puts (N, C) rows back into a zero-filled (B, T, C) layout.
    When the batch has no padding, or `unpad` is False (the padded reference path), both are
    free reshapes and every row is computed, as in Hugging Face.
    """

    def __init__(self, attention_mask: Tensor | None, batch_size: int, seq_len: int,
                 unpad: bool = True):
        self.batch_size, self.seq_len = batch_size, seq_len
        self.indices = None  # (N,) positions of the real tokens in B*T; None: keep every row
        self.attn_mask = None  # (B, 1, 1, T) which keys each query may see; None: all of them
        if attention_mask is not None and not bool(attention_mask.all()):
            keep = attention_mask.bool()  # (B, T)
            self.attn_mask = keep[:, None, None, :]
            if unpad:
                self.indices = keep.flatten().nonzero().squeeze(1)

    @property
    def num_tokens(self) -> int:
        return self.batch_size * self.seq_len if self.indices is None else self.indices.numel()

    def pack(self, x: Tensor) -> Tensor:
        """(B, T, ...) -> (N, ...): the rows of the real tokens, in batch-major order."""
        flat = x.flatten(0, 1)  # (B*T, ...)
        return flat if self.indices is None else flat.index_select(0, self.indices)  # (N, ...)

    def unpack(self, x: Tensor) -> Tensor:
        """(N, C) -> (B, T, C), zeros where there was padding."""
        if self.indices is None:
            return x.view(self.batch_size, self.seq_len, -1)
        full = x.new_zeros(self.batch_size * self.seq_len, x.shape[-1])  # (B*T, C)
        return full.index_copy(0, self.indices, x).view(self.batch_size, self.seq_len, -1)


# ------------------------------------------------------------------------------------ embeddings
class TiedWordGradient:
    """The one gradient of the word-embedding matrix that the input lookup and the MLM decoder
    share (BERT ties them). The decoder's backward runs first (the lookup's output feeds
    everything the decoder reads) and leaves its dense (V, H) gradient here; the lookup's
    backward adds its N rows into it in place and returns the sum as the matrix's only
    gradient. Left to autograd, the lookup builds a second (V, H) matrix, mostly zeros, and
    the two are added into a third: ~55 ms of a BERT-base CPU step (profiled). One per forward pass."""

    def __init__(self):
        self.decoder_grad: Tensor | None = None


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


class BertEmbeddings(nn.Module):
    """Sum of word, learned position and token-type (segment) embeddings, then LayerNorm and
    dropout (paper Section 3, "Input/Output Representations", Figure 2)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size,
                                 padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor, packing: Packing,
                tied: TiedWordGradient | None = None) -> Tensor:
        """`tied`: the word matrix is also the MLM decoder's (see `TiedWordGradient`)."""
        batch_size, seq_len = input_ids.shape
        positions = torch.arange(seq_len, device=input_ids.device).expand(batch_size, seq_len)
        # Look up only the real tokens: (B, T) ids -> (N,) ids -> (N, H) vectors.
        ids = packing.pack(input_ids)  # (N,)
        x = ((_TiedLookup.apply(ids, self.word.weight, self.word.padding_idx, tied)
              if tied is not None else self.word(ids))
             + self.position(packing.pack(positions))
             + self.token_type(packing.pack(token_type_ids)))  # (N, H)
        return self.dropout(self.norm(x))  # (N, H)


# ------------------------------------------------------------------------------------- attention
class _DropoutAttention(torch.autograd.Function):
    """dropout(softmax(q k^T / sqrt(hd), masked)) v with a given 0/1 dropout mask: the unfused
    computation SDPA itself falls back to when it must apply dropout on CPU, written so that
    the step copies and saves no more than it needs:

    - q, k and v are made contiguous by one copy and their gradients go back to the fused
      (B, T, 3H) layout by one copy: four layout copies per layer, forward and backward, where
      torch.matmul on the permuted views made seven (per layer, in a profile);
    - 1/sqrt(hd) is the matmuls' alpha, not a pass over the (T, T) scores;
    - backward needs no mask: with d = probs * keep * scale (the dropped probabilities, which
      the second matmul saves anyway), dL/dscores = g*d - probs * rowsum(g*d), g = dL/dd.

    qkv (B, T, 3H), key_mask (B, 1, 1, T) bool or None, keep (B*nh, T, T) -> context (B, T, H).
    """

    @staticmethod
    def forward(ctx, qkv: Tensor, key_mask: Tensor | None, keep: Tensor, num_heads: int,
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
        dropped = torch.addcmul(probs.new_zeros(()), probs, keep, value=scale)
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


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention with the output projection.

    Hugging Face splits this into `attention.self` (query/key/value) and `attention.output.dense`.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.dropout_p = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: Tensor, packing: Packing) -> Tensor:
        B, T, nh, hd = packing.batch_size, packing.seq_len, self.num_heads, self.head_dim
        qkv = packing.unpack(self.qkv(x))  # (N, 3H) -> (B, T, 3H)
        if self.training and self.dropout_p > 0 and qkv.device.type == "cpu":
            # SDPA's fused CPU kernels do not do dropout (it falls back to an unfused path with
            # per-element Bernoulli draws); the same math with our mask, in fewer passes:
            keep = keep_mask((B * nh, T, T), self.dropout_p, qkv.dtype)
            context = _DropoutAttention.apply(qkv, packing.attn_mask, keep, nh,
                                              1.0 / (1.0 - self.dropout_p))  # (B, T, H)
        else:
            q, k, v = qkv.view(B, T, 3, nh, hd).permute(2, 0, 3, 1, 4).unbind(0)  # (B, nh, T, hd)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=packing.attn_mask,
                                                     dropout_p=self.dropout_p if self.training
                                                     else 0.0)  # (B, nh, T, hd)
            context = context.transpose(1, 2).reshape(B, T, nh * hd)  # (B, T, H)
        return self.out(packing.pack(context))  # (N, H)


# ----------------------------------------------------------------------------------------- layer
class BertLayer(nn.Module):
    """One post-LayerNorm Transformer encoder layer: attention, then the feed-forward network,
    each followed by dropout, the residual sum and LayerNorm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertSelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, packing: Packing) -> Tensor:  # x: (N, H)
        x = self.attention_norm(self.dropout(self.attention(x, packing), residual=x))  # (N, H)
        h = self.act(self.intermediate(x))  # (N, I)
        return self.output_norm(self.dropout(self.output(h), residual=x))  # (N, H)


# --------------------------------------------------------------------------------------- encoder
@dataclass
class BertOutput:
    last_hidden_state: Tensor  # (B, T, H); zeros at padding positions
    pooler_output: Tensor | None  # (B, H); tanh(W h_[CLS] + b), None without a pooler


class BertEncoder(nn.Module):
    """BERT: embeddings, `num_hidden_layers` post-LN Transformer layers and the [CLS] pooler.

    `forward(input_ids, attention_mask=None, token_type_ids=None)` returns a `BertOutput`.
    `BertEncoder.from_pretrained(path)` reads a Hugging Face BERT folder, a bertzoo export or a
    Lightning checkpoint of any bertzoo module; `save_pretrained(dir)` writes the Hugging Face
    layout (see `bertzoo.checkpoint`).
    """

    def __init__(self, config: BertConfig, add_pooler: bool = True, unpad: bool = True):
        super().__init__()
        self.config = config
        self.unpad = unpad  # False computes padding rows too (same numbers; kept for tests/bench)
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if add_pooler else None
        self.apply(lambda module: init_weights(module, config))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, *,
                tied: TiedWordGradient | None = None) -> BertOutput:
        """`tied`: see `TiedWordGradient` (BertForPreTraining passes one)."""
        batch_size, seq_len = input_ids.shape  # (B, T)
        if seq_len > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {seq_len} exceeds max_position_embeddings "
                             f"({self.config.max_position_embeddings})")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        packing = Packing(attention_mask, batch_size, seq_len, self.unpad)
        x = self.embeddings(input_ids, token_type_ids, packing, tied)  # (N, H)
        for layer in self.layers:
            x = layer(x, packing)  # (N, H)
        hidden = packing.unpack(x)  # (B, T, H)
        pooled = torch.tanh(self.pooler(hidden[:, 0])) if self.pooler is not None else None  # (B, H)
        return BertOutput(last_hidden_state=hidden, pooler_output=pooled)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "BertEncoder":
        """Load from a Hugging Face BERT folder, a bertzoo export folder or a `.ckpt` file."""
        from bertzoo.checkpoint import load_encoder
        return load_encoder(path)

    def save_pretrained(self, directory: str | os.PathLike, tokenizer=None) -> None:
        """Write `config.json`, `model.safetensors` (and tokenizer files) as Hugging Face does."""
        from bertzoo.checkpoint import save_pretrained
        save_pretrained(directory, self, tokenizer=tokenizer)


# -------------------------------------------------------------------------------- pretraining heads
class MaskedLMHead(nn.Module):
    """Predicts the original token at masked positions (paper Section 3.1, "Task #1").

    dense -> activation -> LayerNorm, then the word-embedding matrix (shared with the input,
    as in BERT) plus an output bias. Takes only the M labelled rows.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: Tensor, word_embeddings: Tensor,
                tied: TiedWordGradient | None = None) -> Tensor:
        h = self.norm(self.act(self.dense(hidden)))  # (M, H)
        if tied is None:
            return F.linear(h, word_embeddings, self.bias)  # (M, V)
        logits = _TiedProjection.apply(h.reshape(-1, h.shape[-1]), word_embeddings, self.bias,
                                       tied)  # (M, V): one matmul over the vocabulary
        return logits.view(*h.shape[:-1], -1)


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


class NextSentenceHead(nn.Module):
    """IsNext / NotNext from the pooled [CLS] vector (paper Section 3.1, "Task #2")."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.classifier = nn.Linear(config.hidden_size, 2)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.classifier(pooled)  # (B, 2); class 0 = IsNext, as in google-research/bert


@dataclass
class PreTrainingOutput:
    mlm_logits: Tensor  # (M, V) at labelled positions, or (B, T, V) when no labels were given
    nsp_logits: Tensor  # (B, 2)
    mlm_labels: Tensor | None = None  # (M,) the labels matching mlm_logits' rows
    loss: Tensor | None = None  # mlm_loss + nsp_loss
    mlm_loss: Tensor | None = None  # mean cross-entropy over the M labelled positions
    nsp_loss: Tensor | None = None  # mean cross-entropy over the B pairs


class BertForPreTraining(nn.Module):
    """The encoder with the MLM and NSP heads; the pretraining loss is their sum (Appendix A.2).

    With `mlm_labels` (B, T; IGNORE_INDEX where nothing is predicted) the MLM head runs on the
    M labelled positions only; without them it runs on every position, as Hugging Face does.
    """

    def __init__(self, config: BertConfig, encoder: BertEncoder | None = None):
        super().__init__()
        self.config = config
        self.encoder = encoder if encoder is not None else BertEncoder(config)
        if self.encoder.pooler is None:
            raise ValueError("next sentence prediction needs the pooler; build the encoder "
                             "with add_pooler=True")
        self.mlm_head = MaskedLMHead(config)
        self.nsp_head = NextSentenceHead(config)
        self.mlm_head.apply(lambda module: init_weights(module, config))
        self.nsp_head.apply(lambda module: init_weights(module, config))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, mlm_labels: Tensor | None = None,
                nsp_labels: Tensor | None = None) -> PreTrainingOutput:
        tied = TiedWordGradient()  # the lookup and the decoder share one (V, H) gradient
        out = self.encoder(input_ids, attention_mask, token_type_ids, tied=tied)
        nsp_logits = self.nsp_head(out.pooler_output)  # (B, 2)
        word_embeddings = self.encoder.embeddings.word.weight  # (V, H)
        if mlm_labels is None:
            mlm_logits = self.mlm_head(out.last_hidden_state, word_embeddings, tied)  # (B, T, V)
            return PreTrainingOutput(mlm_logits=mlm_logits, nsp_logits=nsp_logits)
        labelled = mlm_labels != IGNORE_INDEX  # (B, T)
        targets = mlm_labels[labelled]  # (M,)
        mlm_logits = self.mlm_head(out.last_hidden_state[labelled], word_embeddings,
                                   tied)  # (M, V)
        mlm_loss = (F.cross_entropy(mlm_logits, targets) if targets.numel()
                    else mlm_logits.sum() * 0.0)  # a batch with nothing masked adds no loss
        output = PreTrainingOutput(mlm_logits=mlm_logits, nsp_logits=nsp_logits,
                                   mlm_labels=targets, mlm_loss=mlm_loss, loss=mlm_loss)
        if nsp_labels is not None:
            output.nsp_loss = F.cross_entropy(nsp_logits, nsp_labels)
            output.loss = mlm_loss + output.nsp_loss
        return output

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "BertForPreTraining":
        """Encoder and heads from a checkpoint; heads it lacks are initialised (logged)."""
        from bertzoo.checkpoint import load_pretraining_model
        return load_pretraining_model(path)

    def save_pretrained(self, directory: str | os.PathLike, tokenizer=None) -> None:
        """Write the Hugging Face `BertForPreTraining` layout (`bert.*` and `cls.*` keys)."""
        from bertzoo.checkpoint import save_pretrained
        save_pretrained(directory, self.encoder, tokenizer=tokenizer, heads=self)


# ------------------------------------------------------------------------------ initialisation
@torch.no_grad()
def init_weights(module: nn.Module, config: BertConfig) -> None:
    """BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm.

    The small standard deviation matters beyond accuracy: N(0, 1) tied embeddings saturate the
    MLM softmax and its gradients turn into denormal floats, which made the vocabulary matmuls
    ~25x slower on CPU in a measurement here.
    """
    if isinstance(module, nn.Linear):
        module.weight.normal_(0.0, config.initializer_range)
        if module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, nn.Embedding):
        module.weight.normal_(0.0, config.initializer_range)
        if module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        module.weight.fill_(1.0)
        module.bias.zero_()
