"""Does a tiny BERT's masked LM use the context? bertzoo's model against transformers', and
both against what word counts give, on the WikiText text of docs/quality/transfer.py.

The rows are bertzoo's own: `PretrainingDataModule` reads WikiText-2's valid and test files
(`../shared/data/wikitext-2`, ` = Title = ` documents, 5% held out), trains the WordPiece
vocabulary and builds the sentence-pair instances (NSP layout, 4 duplicates), or, with
`--packed`, full rows of masked LM alone. A plain loop (no Lightning) then trains, MLM loss only:

    --impl hf        transformers' `BertForMaskedLM`, masked by `--collator hf`
                     (transformers' `DataCollatorForLanguageModeling`) or
                     `--collator bertzoo` (`bertzoo.pretraining.masking.MaskingCollator`)
    --impl bertzoo   bertzoo's `BertForPreTraining(nsp=False)`, the same way

with torch's AdamW (betas 0.9/--beta2, eps 1e-6, weight decay 0.01 but not on biases and
LayerNorm), linear warm-up then linear decay to zero, gradients clipped at `--clip`, as
recipes/pretrain/transfer.yaml's model (2 layers x 128, 4 heads, 512 intermediate, no dropout).
Every `--eval-every` steps, on bertzoo's validation batches (15%, 80/10/10, the same masks for
both models), it prints: the MLM accuracy and loss over every labelled position, the accuracy
at the positions that hold `[MASK]` (no copy of the answer in the input: what context alone
gives), and for bertzoo's model, per layer, the attention entropy (nats; uniform over a row of
n tokens is ln n) and the mean attention a token pays to the token just before it (uniform:
1/n).

`--baselines` prints, instead of training, what counts give on the same validation batches:
the unigram cross-entropy and accuracy (always the most frequent token), and "copy the input
token when it is not [MASK], else the most frequent token after the one to its left" (bigram).
`--checkpoint CKPT` prints a saved pretraining's attention on the validation rows (with its own
tokenizer) and whether its position embeddings are ordered. `--show N` prints N rows of the
first training batch, decoded, as the pretraining module receives them.

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 \
        python docs/quality/mlm_oracle.py --impl hf --collator hf --steps 1500
    python docs/quality/mlm_oracle.py --impl bertzoo --collator bertzoo --mask-token-prob 1 \
        --random-token-prob 0 --steps 1500 --eval-every 150
    python docs/quality/mlm_oracle.py --baselines
    python docs/quality/mlm_oracle.py --checkpoint runs/transfer/pretrain-wikitext-8000/runs/pretrain/version_0/checkpoints/last.ckpt

Run from the repository root. docs/quality/README.md ("Does pretraining help?") has the figures.
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import numpy as np
import torch
import torch.nn.functional as F


def arguments():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--impl", choices=("hf", "bertzoo"), default="hf")
    p.add_argument("--collator", choices=("hf", "bertzoo"), default="hf")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--beta2", type=float, default=0.98)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--packed", action="store_true", help="masked LM alone: full rows")
    # The training masks, either collator (validation always masks 15%, 80/10/10).
    p.add_argument("--mlm-prob", type=float, default=0.15)
    p.add_argument("--mask-token-prob", type=float, default=0.8)
    p.add_argument("--random-token-prob", type=float, default=0.1)
    p.add_argument("--baselines", action="store_true")
    p.add_argument("--checkpoint", default=None,
                   help="a pretraining's .ckpt: print its attention on the validation rows "
                        "(read with its own tokenizer) and its position embeddings' order, "
                        "and stop")
    p.add_argument("--show", type=int, default=0,
                   help="print this many rows of bertzoo's first training batch, decoded "
                        "(tokens, segment B marked |B, the NSP label, each label's position, "
                        "input token and target), and stop")
    p.add_argument("--data", default="../shared/data")
    return p.parse_args()


def baselines(dm, rows) -> None:
    vocab = dm.tokenizer.get_vocab_size(with_added_tokens=True)
    special = [dm.tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]")]
    counts = np.ones(vocab)
    after = collections.defaultdict(collections.Counter)  # left neighbour -> next token counts
    for row in rows:
        np.add.at(counts, row, 1)
        for left, token in zip(row[:-1], row[1:]):
            after[int(left)][int(token)] += 1
    counts[special] = 0
    p = counts / counts.sum()
    top, mask = int(p.argmax()), dm.tokenizer.token_to_id("[MASK]")
    ce, unigram, bigram = [], [], []
    for batch in dm.val_dataloader():
        ids, labels = batch["input_ids"].numpy(), batch["mlm_labels"].numpy()
        for b, t in zip(*np.nonzero(labels != -100)):
            y = labels[b, t]
            ce.append(-np.log(p[y]))
            unigram.append(y == top)
            if ids[b, t] != mask:
                guess = ids[b, t]  # unchanged or random: the input token is the guess
            else:
                left = int(ids[b, t - 1])
                guess = after[left].most_common(1)[0][0] if left != mask and after[left] else top
            bigram.append(guess == y)
    print(json.dumps({"vocab": vocab, "masked": len(ce), "unigram_ce": round(float(np.mean(ce)), 3),
                      "unigram_accuracy": round(float(np.mean(unigram)), 4),
                      "copy_or_bigram_accuracy": round(float(np.mean(bigram)), 4)}))


@torch.no_grad()
def attention(encoder, batch) -> list[tuple[float, float]]:
    """Per layer of a bertzoo encoder: (attention entropy, mean attention to the previous
    token) over the real tokens of `batch`."""
    from bertzoo.model import Packing
    ids, keep = batch["input_ids"], batch["attention_mask"].bool()
    B, L = ids.shape
    packing = Packing(batch["attention_mask"], B, L, unpad=True)
    x = encoder.embeddings(ids, batch["token_type_ids"], packing)
    out = []
    for layer in encoder.layers:
        nh, hd = layer.attention.num_heads, layer.attention.head_dim
        q, k, _ = (packing.unpack(layer.attention.qkv(x)).view(B, L, 3, nh, hd)
                   .permute(2, 0, 3, 1, 4).unbind(0))
        probs = ((q @ k.transpose(-1, -2)) / hd ** 0.5).masked_fill(
            ~keep[:, None, None, :], float("-inf")).softmax(-1)  # (B, nh, L, L)
        entropy = -(probs.clamp_min(1e-9).log() * probs).sum(-1)  # (B, nh, L)
        i = torch.arange(L - 1)
        out.append((round(float(entropy[keep[:, None, :].expand(-1, nh, -1)].mean()), 2),
                    round(float(probs[:, :, i + 1, i].mean()), 3)))
        x = layer(x, packing)
    return out


def inspect(checkpoint: str, dm) -> None:
    """A saved pretraining's attention on the validation rows, and whether its position
    embeddings are ordered (neighbours more alike than positions 10 apart)."""
    from bertzoo.model import BertForPreTraining
    model = BertForPreTraining.from_pretrained(checkpoint, kernels="reference")
    positions = F.normalize(model.encoder.embeddings.position.weight[:dm.max_seq_length], dim=1)
    cosine = positions @ positions.T
    print(json.dumps({"checkpoint": checkpoint,
                      "attention_entropy_and_previous": attention(
                          model.encoder, next(iter(dm.val_dataloader()))),
                      "position_cosine_next": round(float(cosine.diagonal(1).mean()), 3),
                      "position_cosine_10_apart": round(float(cosine.diagonal(10).mean()), 3)}))


def show(dm, count: int) -> None:
    """Rows of the first training batch exactly as `PretrainingModule` receives them."""
    batch = next(iter(dm.train_dataloader()))
    name = dm.tokenizer.id_to_token
    for b in range(min(count, len(batch["input_ids"]))):
        real = batch["attention_mask"][b].bool()
        ids, types = batch["input_ids"][b][real], batch["token_type_ids"][b][real]
        labels = batch["mlm_labels"][b][real]
        print(f"nsp_label {int(batch['nsp_labels'][b])} (0: B follows A)")
        print(" ".join(name(int(i)) + ("|B" if t else "") for i, t in zip(ids, types)))
        print([(t, name(int(ids[t])), name(int(labels[t])))
               for t in (labels != -100).nonzero().flatten().tolist()])


def main() -> None:
    a = arguments()
    torch.manual_seed(0)
    from bertzoo.pretraining.datamodule import PretrainingDataModule
    from bertzoo.pretraining.masking import MaskingCollator
    files = [f"{a.data}/wikitext-2/wiki.valid.tokens", f"{a.data}/wikitext-2/wiki.test.tokens"]
    dm = PretrainingDataModule(train_files=files, format="wikitext", tokenizer_vocab_size=a.vocab,
                               tokenizer=a.checkpoint,
                               max_seq_length=a.seq, batch_size=a.batch,
                               dupe_factor=1 if a.packed else 4, validation_documents=0.05,
                               nsp=not a.packed)
    dm.setup("fit")
    tok = dm.tokenizer
    vocab = tok.get_vocab_size(with_added_tokens=True)
    train = dm.instances["train"].with_format("numpy", columns=["input_ids", "token_type_ids"])
    rows = [np.asarray(r, dtype=np.int64) for r in train["input_ids"]]
    types = [np.asarray(r, dtype=np.int64) for r in train["token_type_ids"]]
    if a.checkpoint:
        return inspect(a.checkpoint, dm)
    if a.baselines:
        return baselines(dm, rows)
    if a.show:
        return show(dm, a.show)
    val_batches = list(dm.val_dataloader())  # dm's collator: 15%, 80/10/10, epoch 0
    print(json.dumps({"vocab": vocab, "train_rows": len(rows), "val_batches": len(val_batches)}))

    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast
    hf_collator = DataCollatorForLanguageModeling(
        PreTrainedTokenizerFast(tokenizer_object=tok, mask_token="[MASK]", pad_token="[PAD]",
                                cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]"),
        mlm_probability=a.mlm_prob, mask_replace_prob=a.mask_token_prob,
        random_replace_prob=a.random_token_prob, return_tensors="pt")
    bz_collator = MaskingCollator.for_tokenizer(
        tok, mlm_probability=a.mlm_prob, seed=dm.seed, mask_token_prob=a.mask_token_prob,
        random_token_prob=a.random_token_prob)
    sizes = dict(vocab_size=vocab, hidden_size=a.hidden, num_hidden_layers=a.layers,
                 num_attention_heads=a.hidden // 32, intermediate_size=4 * a.hidden,
                 max_position_embeddings=128, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0, pad_token_id=tok.token_to_id("[PAD]"))
    if a.impl == "hf":
        from transformers import BertConfig, BertForMaskedLM
        model = BertForMaskedLM(BertConfig(**sizes))

        def logits_labels(batch):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        token_type_ids=batch["token_type_ids"])
            labelled = batch["labels"] != -100
            return out.logits[labelled], batch["labels"][labelled]
    else:
        from bertzoo.config import BertConfig
        from bertzoo.model import BertForPreTraining
        model = BertForPreTraining(BertConfig(**sizes), nsp=False)

        def logits_labels(batch):
            out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                        mlm_labels=batch["labels"])
            return out.mlm_logits, out.mlm_labels

    no_decay = [n.endswith("bias") or "norm" in n.lower() for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p, nd in zip(params, no_decay) if not nd], "weight_decay": 0.01},
         {"params": [p for p, nd in zip(params, no_decay) if nd], "weight_decay": 0.0}],
        lr=a.lr, betas=(0.9, a.beta2), eps=1e-6)
    W, T = a.warmup, a.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (W + 1) if s < W else max(0.0, (T - s) / (T - W)))

    def make_batch(indices, epoch):
        if a.collator == "hf":
            b = hf_collator([{"input_ids": rows[i].tolist(), "token_type_ids": types[i].tolist()}
                             for i in indices])
            labels = b["labels"]
        else:
            b = bz_collator([{"input_ids": rows[i], "token_type_ids": types[i], "nsp_label": 0,
                              "index": int(i), "epoch": epoch} for i in indices])
            labels = b["mlm_labels"]
        return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
                "token_type_ids": b["token_type_ids"], "labels": labels}

    @torch.no_grad()
    def evaluate():
        model.eval()
        correct = total = at_mask = masks = 0
        loss = 0.0
        mask_id = tok.token_to_id("[MASK]")
        for b in val_batches:
            logits, labels = logits_labels({"input_ids": b["input_ids"],
                                            "attention_mask": b["attention_mask"],
                                            "token_type_ids": b["token_type_ids"],
                                            "labels": b["mlm_labels"]})
            right = logits.argmax(-1) == labels
            was_mask = b["input_ids"][b["mlm_labels"] != -100] == mask_id
            correct, total = correct + int(right.sum()), total + labels.numel()
            at_mask, masks = at_mask + int(right[was_mask].sum()), masks + int(was_mask.sum())
            loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        heads = attention(model.encoder, val_batches[0]) if a.impl == "bertzoo" else []
        model.train()
        return correct / total, loss / total, at_mask / masks, heads

    generator = torch.Generator().manual_seed(1)
    order, position, epoch, smoothed = torch.randperm(len(rows), generator=generator), 0, 0, 0.0
    start = time.time()
    model.train()
    for step in range(1, T + 1):
        if position + a.batch > len(order):
            order, position, epoch = torch.randperm(len(rows), generator=generator), 0, epoch + 1
        batch = make_batch(order[position:position + a.batch].tolist(), epoch)
        position += a.batch
        logits, labels = logits_labels(batch)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        optimizer.step()
        schedule.step()
        value = float(loss.detach())
        smoothed = 0.98 * smoothed + 0.02 * value if step > 1 else value
        if step % a.eval_every == 0 or step == T:
            accuracy, val_loss, at_mask, heads = evaluate()
            print(json.dumps({"step": step, "train_loss_ema": round(smoothed, 3),
                              "val_acc": round(accuracy, 4), "val_loss": round(val_loss, 3),
                              "val_acc_at_mask": round(at_mask, 4),
                              "attention_entropy_and_previous": heads,
                              "seconds": round(time.time() - start)}), flush=True)


if __name__ == "__main__":
    main()
