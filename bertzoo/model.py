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
tests/test_parity.py holds them to Hugging Face's within 1e-4, in training mode too):
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
    - Dropout and the residual sum after it are one step (`Dropout(x, residual=...)`), so that
      a kernel can do both in one pass.
    - With the kernels on (below), training on CPU draws dropout masks from 16-bit lanes of
      64-bit random words: p is rounded to a multiple of 1/65536 (`bertzoo.ops.dropout`).

Kernels. This file is the plain computation: `F.dropout` and `F.scaled_dot_product_attention`.
`bertzoo.ops` has kernels that compute the same with fewer passes and copies (one-pass dropout
with the residual sum and attention with dropout on CPU, where SDPA's fused kernels do no
dropout; a word-embedding gradient shared by the lookup and the tied decoder). Which ones run is
decided once, not in `forward`: `BertEncoder(config, kernels="auto")` (the default) asks
`bertzoo.ops.select` for the kernels that suit the device its parameters are on, when it is
built and again whenever they move (`.to("cuda")`, `.cpu()`, `.to_empty()`) or are replaced by
`load_state_dict(..., assign=True)`; `kernels="reference"` runs plain PyTorch everywhere, to
compare against (`encoder.use_kernels("reference")` switches a built model). Each module keeps
what it was given in a `kernel` attribute: None means the plain code below runs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertzoo import ops
from bertzoo.checkpoint import load_into, load_state, save_pretrained
from bertzoo.config import BertConfig

log = logging.getLogger("bertzoo")

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
class Dropout(nn.Module):
    """Inverted dropout (Srivastava et al. 2014), plus the skip connection when `residual` is
    given: residual + dropout(x), the "Add" after every sub-layer (Vaswani et al. 2017, 5.4)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.kernel = None  # bertzoo.ops' dropout_add when selected (see "Kernels" above)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        if self.training and self.kernel is not None:
            return self.kernel(x, self.p, residual)
        x = F.dropout(x, self.p, self.training)
        return x if residual is None else residual + x

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
                tied: ops.TiedWordGradient | None = None) -> Tensor:
        """`tied`: the pretraining model's link between this lookup and its MLM decoder (see
        `BertForPreTraining`); the words are looked up as by `self.word` either way."""
        batch_size, seq_len = input_ids.shape
        positions = torch.arange(seq_len, device=input_ids.device).expand(batch_size, seq_len)
        # Look up only the real tokens: (B, T) ids -> (N,) ids -> (N, H) vectors.
        ids = packing.pack(input_ids)  # (N,)
        words = (self.word(ids) if tied is None
                 else tied.lookup(ids, self.word.weight, self.word.padding_idx))  # (N, H)
        x = (words + self.position(packing.pack(positions))
             + self.token_type(packing.pack(token_type_ids)))  # (N, H)
        return self.dropout(self.norm(x))  # (N, H)


# ------------------------------------------------------------------------------------- attention
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
        self.kernel = None  # bertzoo.ops' dropout_attention when selected (see "Kernels" above)

    def forward(self, x: Tensor, packing: Packing) -> Tensor:  # x: (N, H)
        B, T, nh, hd = packing.batch_size, packing.seq_len, self.num_heads, self.head_dim
        qkv = packing.unpack(self.qkv(x))  # (N, 3H) -> (B, T, 3H)
        if self.training and self.kernel is not None:
            # The same attention with the same dropout, from the fused (B, T, 3H) layout.
            context = self.kernel(qkv, packing.attn_mask, nh, self.dropout_p)  # (B, T, H)
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

    Args:
        config: The sizes.
        add_pooler: Build the [CLS] pooler (`pooler_output` is None without it).
        unpad: Drop padding tokens before the layers; False computes padding rows too (the same
            numbers; kept for tests and benchmarks).
        kernels: "auto" (`bertzoo.ops`' kernels where they suit the device) or "reference"
            (plain PyTorch); see "Kernels" in this module's docstring.
    """

    def __init__(self, config: BertConfig, add_pooler: bool = True, unpad: bool = True,
                 kernels: str = "auto"):
        super().__init__()
        self.config = config
        self.unpad = unpad
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if add_pooler else None
        self.apply(lambda module: init_weights(module, config))
        self.use_kernels(kernels)
        self.register_load_state_dict_post_hook(_select_kernels_after_loading)

    def use_kernels(self, kernels: str) -> "BertEncoder":
        """Run `kernels` ("auto" or "reference") from now on, chosen for the parameters' device."""
        chosen = ops.select(kernels, next(self.parameters()).device)
        self.kernels, self.selected_kernels = kernels, chosen
        for dropout in (self.embeddings.dropout, *(layer.dropout for layer in self.layers)):
            dropout.kernel = chosen.dropout_add
        for layer in self.layers:
            layer.attention.kernel = chosen.attention
        return self

    def _apply(self, fn, *args, **kwargs):
        # Every move or cast (.to, .cuda, .cpu, .half, .to_empty) of this module or of one that
        # holds it ends here; torch's RNNs re-prepare their weights at the same point. The
        # kernels are chosen again for where the parameters now are.
        super()._apply(fn, *args, **kwargs)
        return self.use_kernels(self.kernels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> BertOutput:
        return self._encode(input_ids, attention_mask, token_type_ids, None)

    def _encode(self, input_ids: Tensor, attention_mask: Tensor | None,
                token_type_ids: Tensor | None, tied: ops.TiedWordGradient | None) -> BertOutput:
        """`forward`; `tied` links the word lookup to BertForPreTraining's decoder."""
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
    def from_pretrained(cls, path: str | os.PathLike, kernels: str = "auto") -> "BertEncoder":
        """Load from a Hugging Face BERT folder, a bertzoo export folder or a `.ckpt` file."""
        config, state, source = load_state(path)
        encoder = cls(config, kernels=kernels)
        if load_into(encoder, state, source, optional=("pooler.",)):
            log.warning("%s has no pooler; it was initialised (fine-tune before using "
                        "pooler_output)", source)
        return encoder.eval()

    def save_pretrained(self, directory: str | os.PathLike, tokenizer=None) -> None:
        """Write `config.json`, `model.safetensors` (and tokenizer files) as Hugging Face does."""
        save_pretrained(directory, self, tokenizer=tokenizer)


def _select_kernels_after_loading(encoder: BertEncoder, incompatible_keys) -> None:
    # load_state_dict(assign=True) replaces the parameters, possibly with tensors on another
    # device, without a move.
    encoder.use_kernels(encoder.kernels)


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

    def transform(self, hidden: Tensor) -> Tensor:
        return self.norm(self.act(self.dense(hidden)))  # (M, H)

    def forward(self, hidden: Tensor, word_embeddings: Tensor) -> Tensor:
        return F.linear(self.transform(hidden), word_embeddings, self.bias)  # (M, V)


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
    nsp_logits: Tensor | None  # (B, 2); None without the NSP head
    mlm_labels: Tensor | None = None  # (M,) the labels matching mlm_logits' rows
    loss: Tensor | None = None  # mlm_loss + nsp_loss
    mlm_loss: Tensor | None = None  # mean cross-entropy over the M labelled positions
    nsp_loss: Tensor | None = None  # mean cross-entropy over the B pairs


class BertForPreTraining(nn.Module):
    """The encoder with the MLM and NSP heads; the pretraining loss is their sum (Appendix A.2).

    With `mlm_labels` (B, T; IGNORE_INDEX where nothing is predicted) the MLM head runs on the
    M labelled positions only; without them it runs on every position, as Hugging Face does.
    `kernels` is the encoder's (see `BertEncoder`); a given `encoder` keeps its own.
    `nsp=False` leaves the NSP head out (masked LM only, as RoBERTa, Liu et al. 2019, 4.2), and
    the pooler, which only NSP reads: `nsp_logits` is then None and the loss is the MLM loss.
    """

    def __init__(self, config: BertConfig, encoder: BertEncoder | None = None,
                 kernels: str = "auto", nsp: bool = True):
        super().__init__()
        self.config = config
        self.encoder = (encoder if encoder is not None
                        else BertEncoder(config, add_pooler=nsp, kernels=kernels))
        if nsp and self.encoder.pooler is None:
            raise ValueError("next sentence prediction needs the pooler; build the encoder "
                             "with add_pooler=True")
        self.mlm_head = MaskedLMHead(config)
        self.nsp_head = NextSentenceHead(config) if nsp else None
        self.mlm_head.apply(lambda module: init_weights(module, config))
        if self.nsp_head is not None:
            self.nsp_head.apply(lambda module: init_weights(module, config))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, mlm_labels: Tensor | None = None,
                nsp_labels: Tensor | None = None) -> PreTrainingOutput:
        # The input lookup and the decoder read one word-embedding matrix. With the kernels, one
        # TiedWordGradient per pass gives the two uses one (V, H) gradient, not three.
        tied = ops.TiedWordGradient() if self.encoder.selected_kernels.tied_word_gradient else None
        out = self.encoder._encode(input_ids, attention_mask, token_type_ids, tied)
        nsp_logits = (self.nsp_head(out.pooler_output)  # (B, 2)
                      if self.nsp_head is not None else None)
        if mlm_labels is None:
            mlm_logits = self._mlm_logits(out.last_hidden_state, tied)  # (B, T, V)
            return PreTrainingOutput(mlm_logits=mlm_logits, nsp_logits=nsp_logits)
        labelled = mlm_labels != IGNORE_INDEX  # (B, T)
        targets = mlm_labels[labelled]  # (M,)
        mlm_logits = self._mlm_logits(out.last_hidden_state[labelled], tied)  # (M, V)
        mlm_loss = (F.cross_entropy(mlm_logits, targets) if targets.numel()
                    else mlm_logits.sum() * 0.0)  # a batch with nothing masked adds no loss
        output = PreTrainingOutput(mlm_logits=mlm_logits, nsp_logits=nsp_logits,
                                   mlm_labels=targets, mlm_loss=mlm_loss, loss=mlm_loss)
        if nsp_labels is not None and nsp_logits is not None:
            output.nsp_loss = F.cross_entropy(nsp_logits, nsp_labels)
            output.loss = mlm_loss + output.nsp_loss
        return output

    def _mlm_logits(self, hidden: Tensor, tied: ops.TiedWordGradient | None) -> Tensor:
        word_embeddings = self.encoder.embeddings.word.weight  # (V, H)
        if tied is None:
            return self.mlm_head(hidden, word_embeddings)  # (..., V)
        return tied.project(self.mlm_head.transform(hidden), word_embeddings,
                            self.mlm_head.bias)  # (..., V)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, kernels: str = "auto", nsp: bool = True
                        ) -> "BertForPreTraining":
        """Encoder and heads from a checkpoint; heads it lacks are initialised (logged). With
        `nsp=False` a checkpoint's NSP head is left out."""
        config, state, source = load_state(path)
        encoder = BertEncoder(config, add_pooler=nsp, kernels=kernels)
        load_into(encoder, state, source, optional=("pooler.",))
        model = cls(config, encoder=encoder, nsp=nsp)
        heads = ("mlm_head", "nsp_head") if nsp else ("mlm_head",)
        initialised = [f"{name}.{key}" for name in heads
                       for key in load_into(getattr(model, name), state, source,
                                            prefix=name + ".", optional=("",))]
        if initialised:
            log.warning("%s lacks %s; initialised (the MLM decoder stays tied to the word "
                        "embeddings)", source,
                        ", ".join(sorted({k.split(".")[0] for k in initialised})))
        return model.eval()

    def save_pretrained(self, directory: str | os.PathLike, tokenizer=None) -> None:
        """Write the Hugging Face `BertForPreTraining` layout (`bert.*` and `cls.*` keys)."""
        save_pretrained(directory, self.encoder, tokenizer=tokenizer, heads=self)


# ------------------------------------------------------------------------------ initialisation
@torch.no_grad()
def init_weights(module: nn.Module, config: BertConfig) -> None:
    """BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm.

    The small standard deviation matters beyond accuracy: N(0, 1) tied embeddings saturate the
    MLM softmax and its gradients turn into denormal floats, which makes the vocabulary matmuls
    many times slower on CPU (docs/benchmarks.md).
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
