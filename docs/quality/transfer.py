"""Does pretraining help? A tiny BERT pretrained with bertzoo, then fine-tuned on SST-2, against the
same architecture fine-tuned from random initialisation with the same budget.

    1. `bertzoo pretrain --config recipes/pretrain/transfer.yaml` on local text (`--corpus`):
       wikitext  WikiText-2's valid and test files (the recipe's local-files override, both files),
       embedded  the embedded corpus (English text that ships with Python, as `make demo`),
       sst2      the SST-2 training sentences without their labels (text of the task's own domain;
                 the dev sentences are never read),
       for `--pretrain-steps` steps (the recipe's 2,000 unless given) at the recipe's peak rate
       (or `--pretrain-lr`), with next sentence prediction as the recipe has it or masked LM
       alone (`--mlm-only`, for a corpus of unrelated sentences).
    2. For each label count in `--labels` (SST-2 training rows drawn with the recipe's seed),
       `recipes/classification/sst2_tiny.yaml` (64 word pieces, lr 3e-4 or `--lr`, 3 epochs of
       4,000 rows = 375 steps, and as many steps for fewer rows: 24 epochs of 500; validated
       every `--val-every` steps) twice: from step 1's checkpoint, and from random
       initialisation with step 1's tokenizer and the same configuration; both arms with the
       same classifier input (`--pooling`: the pooled [CLS] state, or the mean of the last
       hidden states, which suits a masked-LM-only pretraining) and seed (`--seed`).
    3. `bertzoo plot` on every fine-tuning run, and one PNG with the val/accuracy curves of each
       pair side by side (`--png`).

    python docs/quality/transfer.py [--corpus wikitext|sst2|embedded] [--pretrain-steps N] [--mlm-only]
        [--pretrain-lr LR] [--lr LR] [--labels 4000,500] [--pooling cls|mean] [--seed N]
        [--dropout P]
        [--pretrain-args "..."] [--data ../shared/data]
        [--out runs/transfer] [--png FILE]

Run from the repository root with bertzoo importable (PYTHONPATH=$PWD). Prints a table (dev
accuracy at the end and at its best, seconds) and appends one JSON line per fine-tuning run to
OUT/results.jsonl, with the pretraining's last val/mlm_accuracy. A pretraining run already
finished under OUT with the same corpus, steps, objective and rate is reused (delete OUT to start
over). docs/quality/README.md has the measurements.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

RECIPE = "recipes/pretrain/transfer.yaml"
# The fine-tuning recipe: the pretraining's model.config (random initialisation), 64 word
# pieces, lr 3e-4, 3 epochs of 4,000 rows (375 steps of 32).
SST2 = "recipes/classification/sst2_tiny.yaml"
FINE_TUNING_LR = 3e-4
ROWS_SEEN = 3 * 4000  # the recipe's budget in training rows: 375 steps of 32, whatever the labels


def bertzoo(args: list[str], cwd: Path, log: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": f"{Path.cwd()}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with open(log, "a") as out:
        out.write(f"\n$ bertzoo {' '.join(args)}\n")
        out.flush()
        subprocess.run([sys.executable, "-m", "bertzoo.cli", *args], cwd=cwd, env=env, check=True,
                       stdout=out, stderr=subprocess.STDOUT)


def newest_run(folder: Path) -> Path:
    return max(folder.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def series(run_dir: Path, key: str) -> list[tuple[int, float]]:
    if not (run_dir / "metrics.csv").is_file():  # nothing logged (a very short run)
        return []
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(int(float(row["step"])), float(row[key])) for row in csv.DictReader(f)
                if row.get(key) not in ("", None)]


def epochs(labels: int, rows_seen: int = ROWS_SEEN) -> int:
    """Epochs that give `labels` rows the budget of `rows_seen` training rows (the recipe's 3
    epochs of 4,000): 500 rows for 3 epochs would be 45 steps, too few to move a classifier
    from random at lr 3e-4, so they get 24."""
    return max(1, math.ceil(rows_seen / labels))


def corpus_overrides(corpus: str, data: Path, work: Path) -> list[str]:
    if corpus == "embedded":  # neither files nor a dataset: the text that ships with Python
        return ["--data.dataset", "null", "--data.dataset_config", "null"]
    if corpus == "wikitext":
        files = [str(data / "wikitext-2" / name) for name in ("wiki.valid.tokens",
                                                              "wiki.test.tokens")]
        return ["--data.dataset", "null", "--data.dataset_config", "null",
                "--data.train_files", json.dumps(files), "--data.format", "wikitext"]
    # SST-2's training sentences as text, one per line, in documents of 20 lines: NSP needs
    # documents of several sentences, and these are unrelated reviews, so "next" means "from
    # the same block of the file" only; masked LM is what carries the domain.
    text = work / "sst2-train-sentences.txt"
    if not text.is_file():
        with open(data / "SST-2" / "train.tsv", newline="", encoding="utf-8") as f:
            rows = [r["sentence"] for r in csv.DictReader(f, delimiter="\t",
                                                           quoting=csv.QUOTE_NONE)]
        blocks = ["\n".join(rows[i:i + 20]) for i in range(0, len(rows), 20)]
        text.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return ["--data.dataset", "null", "--data.dataset_config", "null",
            "--data.train_files", str(text), "--data.format", "bert"]


def pretrain(args, work: Path, repo: Path) -> tuple[Path, float]:
    folder = work / f"pretrain-{name(args)}"
    runs, finished = folder / "runs" / "pretrain", folder / "finished"
    if finished.is_file():  # not a run stopped part-way (it leaves a last.ckpt too)
        return newest_run(runs) / "checkpoints" / "last.ckpt", 0.0
    folder.mkdir(parents=True, exist_ok=True)
    steps = ["--trainer.max_steps", str(args.pretrain_steps)]
    if args.mlm_only:  # masked-LM rows are built once (the masking changes every epoch)
        steps += ["--model.nsp", "false", "--data.dupe_factor", "1"]
    if args.pretrain_lr is not None:
        steps += ["--model.learning_rate", str(args.pretrain_lr)]
    steps += dropout_overrides(args)
    steps += shlex.split(args.pretrain_args)
    start = time.perf_counter()
    bertzoo(["pretrain", "--config", str(repo / RECIPE),
             *corpus_overrides(args.corpus, Path(args.data).resolve(), work), *steps],
            folder, folder / "log.txt")
    finished.touch()
    return newest_run(runs) / "checkpoints" / "last.ckpt", time.perf_counter() - start


def dropout_overrides(args) -> list[str]:
    """The recipes' dropout (0: a tiny model on little text) or `--dropout`, for the pretraining
    and for the random arm's configuration; the pretrained arm reads it from the checkpoint."""
    if args.dropout is None:
        return []
    return ["--model.config.hidden_dropout_prob", str(args.dropout),
            "--model.config.attention_probs_dropout_prob", str(args.dropout)]


def name(args) -> str:
    lr = f"-lr{args.pretrain_lr:g}" if args.pretrain_lr is not None else ""
    drop = f"-drop{args.dropout:g}" if args.dropout is not None else ""
    return f"{args.corpus}-{args.pretrain_steps}{'-mlm' if args.mlm_only else ''}{lr}{drop}"


def fine_tuning_name(args) -> str:
    lr = f"-ft{args.lr:g}" if args.lr != FINE_TUNING_LR else ""
    mean = "-mean" if args.pooling == "mean" else ""
    seed = f"-seed{args.seed}" if args.seed is not None else ""
    return lr + mean + seed


def fine_tune(args, work: Path, repo: Path, checkpoint: Path, labels: int, init: str) -> dict:
    folder = work / f"sst2-{name(args)}-{labels}{fine_tuning_name(args)}-{init}"
    folder.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve()
    model = (["--model.config", "null", "--model.backbone", str(checkpoint)]
             if init == "pretrained" else ["--data.tokenizer", str(checkpoint),
                                           *dropout_overrides(args)])
    start = time.perf_counter()
    bertzoo(["fit", "--config", str(repo / SST2), "--model.learning_rate", str(args.lr), *model,
             "--data.dataset", "null", "--data.dataset_config", "null",
             "--data.train_file", str(data / "SST-2" / "train.tsv"),
             "--data.validation_file", str(data / "SST-2" / "dev.tsv"),
             "--data.max_train_samples", str(labels),
             "--trainer.max_epochs", str(epochs(labels, args.rows_seen)),
             "--trainer.val_check_interval", str(args.val_every), "--model.pooling", args.pooling,
             *(["--seed_everything", str(args.seed)] if args.seed is not None else [])],
            folder, folder / "log.txt")
    seconds = time.perf_counter() - start
    run_dir = newest_run(folder / "runs" / "classification")
    bertzoo(["plot", str(run_dir)], folder, folder / "log.txt")
    curve = series(run_dir, "val/accuracy")
    return {"labels": labels, "init": init, "final_accuracy": curve[-1][1],
            "best_accuracy": max(v for _, v in curve), "curve": curve,
            "seconds": round(seconds, 1), "run_dir": str(run_dir)}


def overlay(results: list[dict], title: str, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    counts = sorted({r["labels"] for r in results}, reverse=True)
    figure, axes = plt.subplots(1, len(counts), figsize=(4.6 * len(counts), 3.4), squeeze=False)
    for ax, count in zip(axes.flat, counts):
        for r in (r for r in results if r["labels"] == count):
            steps, values = zip(*r["curve"])
            ax.plot(steps, values, marker="o", markersize=3, label=r["init"])
        ax.set_title(f"SST-2, {count:,} labelled rows")
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("dev accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(png, dpi=80)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", choices=("wikitext", "sst2", "embedded"), default="wikitext")
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help="default: the recipe's trainer.max_steps")
    parser.add_argument("--pretrain-lr", type=float, default=None,
                        help="pretraining's peak learning rate (default: the recipe's)")
    parser.add_argument("--lr", type=float, default=FINE_TUNING_LR,
                        help="fine-tuning's learning rate, the same for both initialisations")
    parser.add_argument("--labels", default="4000,500")
    parser.add_argument("--mlm-only", action="store_true",
                        help="pretrain with masked LM alone (model.nsp false: full rows packed "
                             "across sentences), e.g. for a corpus of unrelated sentences")
    parser.add_argument("--dropout", type=float, default=None,
                        help="hidden and attention dropout of the pretraining and of both "
                             "fine-tuning arms (default: the recipes' 0)")
    parser.add_argument("--pooling", choices=("cls", "mean"), default="cls",
                        help="what the classifier reads: the pooled [CLS] state, or the mean of "
                             "the last hidden states (for an MLM-only pretraining, whose [CLS] "
                             "state no objective trained)")
    parser.add_argument("--seed", type=int, default=None,
                        help="fine-tuning seed_everything (classifier, dropout, the random arm's "
                             "encoder; the rows and their order follow data.seed), the same for "
                             "both arms (default: the recipe's)")
    parser.add_argument("--rows-seen", type=int, default=ROWS_SEEN,
                        help="fine-tuning budget in training rows (epochs = this / labels)")
    parser.add_argument("--val-every", type=int, default=25, help="fine-tuning steps")
    parser.add_argument("--pretrain-args", default="",
                        help="more `bertzoo pretrain` options, e.g. a smaller run for a test; "
                             "not part of the name a finished pretraining is reused under")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--out", default="runs/transfer")
    parser.add_argument("--png", default=None, help="default: OUT/transfer-CORPUS-STEPS.png")
    args = parser.parse_args()
    repo, work = Path.cwd(), Path(args.out).resolve()
    if args.pretrain_steps is None:
        import yaml
        args.pretrain_steps = yaml.safe_load((repo / RECIPE).read_text())["trainer"]["max_steps"]
    work.mkdir(parents=True, exist_ok=True)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()[0]
    checkpoint, pretrain_seconds = pretrain(args, work, repo)
    pretrain_loss = series(checkpoint.parent.parent, "val/mlm_loss")
    pretrain_accuracy = series(checkpoint.parent.parent, "val/mlm_accuracy")
    results = []
    for labels in (int(n) for n in args.labels.split(",")):
        for init in ("pretrained", "random"):
            result = fine_tune(args, work, repo, checkpoint, labels, init)
            result.update(corpus=args.corpus, pretrain_steps=args.pretrain_steps,
                          mlm_only=args.mlm_only, pretrain_lr=args.pretrain_lr,
                          lr=args.lr, pooling=args.pooling, seed=args.seed,
                          epochs=epochs(labels, args.rows_seen),
                          pretrain_seconds=round(pretrain_seconds, 1), when=when,
                          load_before=round(load, 2),
                          pretrain_val_mlm_loss=pretrain_loss[-1][1] if pretrain_loss else None,
                          pretrain_val_mlm_accuracy=(pretrain_accuracy[-1][1]
                                                     if pretrain_accuracy else None))
            results.append(result)
            with open(work / "results.jsonl", "a") as f:
                f.write(json.dumps(result) + "\n")
            print(json.dumps({k: v for k, v in result.items() if k != "curve"}), flush=True)
    png = (Path(args.png) if args.png
           else work / f"transfer-{name(args)}{fine_tuning_name(args)}.png")
    overlay(results, f"tiny BERT (2 x 128), pretrained on {args.corpus} "
                     f"({args.pretrain_steps:,} steps{', MLM only' if args.mlm_only else ''}) "
                     f"or random; fine-tuning lr {args.lr:g}", png)
    print(f"\npretraining: {checkpoint} ({pretrain_seconds:.0f} s; last val/mlm_loss "
          f"{pretrain_loss[-1][1] if pretrain_loss else '-'}, val/mlm_accuracy "
          f"{pretrain_accuracy[-1][1] if pretrain_accuracy else '-'})")
    print("| labelled rows | initialisation | dev accuracy, last | best | seconds |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['labels']:,} | {r['init']} | {r['final_accuracy']:.3f} | "
              f"{r['best_accuracy']:.3f} | {r['seconds']} |")
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
