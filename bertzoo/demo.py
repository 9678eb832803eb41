"""`make demo`: pretrain a tiny BERT on English text that ships with Python, export it as a
Hugging Face folder, and print the final validation metrics and where the model went.

    python -m bertzoo.demo [more `bertzoo pretrain` overrides, e.g. --trainer.max_steps 300]

It runs exactly what a user would type:

    bertzoo pretrain --config recipes/pretrain/tiny.yaml
    bertzoo export runs/pretrain/version_<n>/checkpoints/last.ckpt runs/pretrain/version_<n>/export

The validation documents are held out from training (5% of the embedded corpus), and the masked
LM accuracy is shown next to the accuracy of always predicting the most frequent masked token,
the baseline it has to beat.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "pretrain" / "tiny.yaml"


def main(argv: list[str] | None = None) -> int:
    from bertzoo.cli import cmd_pretrain, main as bertzoo_main, user_errors
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not RECIPE.is_file():
        print(f"bertzoo demo: {RECIPE} is missing (run from a bertzoo checkout)", file=sys.stderr)
        return 2
    print(f"$ bertzoo pretrain --config {os.path.relpath(RECIPE)} {' '.join(argv)}".rstrip())
    started = time.perf_counter()
    try:
        cli = cmd_pretrain(["--config", str(RECIPE), *argv])
    except user_errors() as err:
        print(f"bertzoo demo: error: {err}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - started
    trainer = cli.trainer
    from lightning.pytorch.callbacks import Timer
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    train_seconds = timer.time_elapsed("train") if timer is not None else wall
    run_dir = Path(trainer.log_dir)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    export_dir = run_dir / "export"
    print(f"\n$ bertzoo export {checkpoint} {export_dir}")
    if bertzoo_main(["export", str(checkpoint), str(export_dir)]) != 0:
        return 1

    values = {k.removeprefix("val/"): float(v) for k, v in trainer.callback_metrics.items()
              if k.startswith("val/")}
    data, bert = cli.datamodule, cli.model.encoder.config
    parameters = sum(p.numel() for p in cli.model.parameters()) / 1e6
    baseline = values.get("mlm_majority_accuracy", float("nan"))
    accuracy = values.get("mlm_accuracy", float("nan"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    held_out = data.documents()["validation"]
    pairs = data.instances.get("validation")
    print(f"""
Pretrained a {bert.num_hidden_layers}-layer, width-{bert.hidden_size} BERT ({parameters:.1f}M \
parameters) on {data.source_name()}:
  {trainer.global_step} steps of {data.batch_size} sequences of up to {data.max_seq_length} \
tokens in {train_seconds:.0f} s of training ({wall:.0f} s with data preparation);
  {os.cpu_count()} CPU cores, 1-minute load average {load:.1f} at the end

Validation on {len(held_out) if held_out is not None else 0} held-out documents \
({len(pairs) if pairs is not None else 0} sentence pairs):
  mlm_accuracy           {accuracy:.4f}   ({accuracy / baseline:.1f}x the baseline)
  mlm baseline           {baseline:.4f}   (always the most frequent masked token)
  nsp_accuracy           {values.get("nsp_accuracy", float("nan")):.4f}   (chance: 0.5)
  mlm_loss / perplexity  {values.get("mlm_loss", float("nan")):.3f} / \
{values.get("perplexity", float("nan")):.1f}
  nsp_loss               {values.get("nsp_loss", float("nan")):.3f}

The model:
  checkpoint   {checkpoint}
  export       {export_dir}   (Hugging Face BertForPreTraining layout + tokenizer)
  metrics      {run_dir / "metrics.csv"}   (curves: bertzoo plot {run_dir})
Load it with bertzoo.BertEncoder.from_pretrained("{export_dir}") or
transformers.BertModel.from_pretrained("{export_dir}").""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
