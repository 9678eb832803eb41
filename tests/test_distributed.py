"""Two processes (DDP, gloo, CPU) train exactly as one process does on the same global batch.

For pretraining and for every registered task (built-in or plugin, with its `example_data`):
one process with batch 2B and two processes with batch B each run the same steps from the same
initial weights, and
    - every value logged to metrics.csv (the per-step training loss and metrics, validation
      loss and metrics) agrees within 1e-5, step by step;
    - the final weights agree (the gradients were the same);
    - the two ranks drew disjoint shares of each global batch whose union is the one-process
      batch (bertzoo.data.BatchSampler), and every rank took the same number of steps;
and `predict` under DDP writes one file with each input row once, in input order.

Dropout is off (p = 0): each rank draws its own dropout masks (seeded by rank), so with dropout
two processes are a statistically equivalent run, not the same numbers.

The processes are forked (Lightning's `ddp_fork`): they inherit the imported modules, so a
2-process run costs about as much as a 1-process one.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import lightning as L
import pytest
import torch

from bertzoo import data as bertzoo_data
from bertzoo.tasks.registry import REGISTRY, get_task
from bertzoo.testing import documents as synthetic_documents
from bertzoo.testing import write_bert_corpus
from bertzoo.testing import tiny_backbone

TASK_NAMES = REGISTRY.names()
PER_RANK_BATCH = 2
STEPS = 3
# Largest allowed difference of any weight between the 1- and the 2-process runs: measured at
# most 1.2e-6 over 25 runs of each test (see assert_same_run).
WEIGHT_TOLERANCE = 3e-6
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


# ----------------------------------------------------------------------------- instrumentation
_DRAWN: list[dict] = []  # the batches this process's samplers yielded


@pytest.fixture
def recorded_batches(monkeypatch):
    """Record every batch a `BatchSampler` yields in this process (and in forked ones)."""
    original = bertzoo_data.BatchSampler._batches

    def recording(self):
        for batch in original(self):
            _DRAWN.append({"train": self.shuffle, "epoch": self.epoch, "rows": list(batch)})
            yield batch

    monkeypatch.setattr(bertzoo_data.BatchSampler, "_batches", recording)
    _DRAWN.clear()
    yield
    _DRAWN.clear()


class WriteDrawn(L.Callback):
    """Each rank writes the batches it drew, and its step count, when fitting ends."""

    def __init__(self, folder: Path):
        self.folder = folder

    def on_fit_end(self, trainer, pl_module):
        path = self.folder / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"drawn": _DRAWN, "steps": trainer.global_step}))


def fit(folder: Path, world_size: int, make_model, make_datamodule) -> dict:
    """One run of STEPS steps with `world_size` processes, global batch 2 * PER_RANK_BATCH;
    returns its metrics.csv rows by step, what each rank drew, and the final weights."""
    folder.mkdir(parents=True)
    L.seed_everything(7)
    model = make_model()
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    datamodule = make_datamodule(2 * PER_RANK_BATCH // world_size)
    trainer = L.Trainer(
        accelerator="cpu", devices=world_size,
        strategy="ddp_fork" if world_size > 1 else "auto",
        max_steps=STEPS, val_check_interval=STEPS, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, log_every_n_steps=1, use_distributed_sampler=False,
        logger=L.pytorch.loggers.CSVLogger(folder, name="", version=""),
        callbacks=[WriteDrawn(folder)], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False)
    _DRAWN.clear()  # forked ranks inherit this list
    trainer.fit(model, datamodule)
    with (folder / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    by_step: dict[int, dict[str, float]] = {}
    for row in rows:
        values = {k: float(v) for k, v in row.items() if v not in ("", None) and k != "step"}
        by_step.setdefault(int(row["step"]), {}).update(values)
    ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(world_size)]
    weights = {k: v.detach().clone() for k, v in trainer.lightning_module.state_dict().items()}
    return {"metrics": by_step, "ranks": ranks, "weights": weights, "initial": initial}


def assert_same_run(single: dict, double: dict) -> None:
    # Every rank took the same steps; each drew its own share of every training batch.
    assert [r["steps"] for r in double["ranks"]] == [STEPS, STEPS]
    one = [b for b in single["ranks"][0]["drawn"] if b["train"]]
    shares = [[b for b in r["drawn"] if b["train"]] for r in double["ranks"]]
    assert len(shares[0]) == len(shares[1]) >= STEPS
    for step in range(STEPS):
        first, second = shares[0][step]["rows"], shares[1][step]["rows"]
        assert first and second and not set(first) & set(second), f"step {step}: shards overlap"
        assert first + second == one[step]["rows"], f"step {step}: not the 1-process batch"
    # Validation: the ranks' rows together are the validation set, each row once.
    validation_one = sorted(i for b in single["ranks"][0]["drawn"] if not b["train"]
                            for i in b["rows"])
    validation_two = [i for r in double["ranks"] for b in r["drawn"] if not b["train"]
                      for i in b["rows"]]
    assert sorted(validation_two) == validation_one and validation_one

    # The same values logged at the same steps.
    assert single["metrics"].keys() == double["metrics"].keys()
    worst = 0.0
    for step, values in single["metrics"].items():
        other = double["metrics"][step]
        assert values.keys() == other.keys(), f"step {step}: {values.keys() ^ other.keys()}"
        for key, value in values.items():
            # 1e-5, relative above 1 (perplexity is exp(loss): float32 gives ~1e-7 of it)
            difference = abs(value - other[key]) / max(1.0, abs(value))
            assert difference <= 1e-5, f"step {step} {key}: {value} vs {other[key]}"
            worst = max(worst, difference)
    assert any(k.startswith("train/loss") for v in single["metrics"].values() for k in v)
    assert any(k.startswith("val/") for v in single["metrics"].values() for k in v)
    losses = [abs(v[k] - double["metrics"][s][k]) for s, v in single["metrics"].items()
              for k in v if k == "train/loss_step"]
    print(f"largest train/loss_step difference {max(losses):.2e} over {len(losses)} steps; "
          f"largest logged difference {worst:.2e} (relative above 1)")
    # The weights, tensor by tensor and entry by entry. Measured on CPU over 25 runs of each
    # test (3 steps, lr 3e-3): no entry differs by more than 1.2e-6, while training moved
    # entries by 1.6e-3 to 6e-3. The largest differences are in tensors whose gradient is zero
    # in exact arithmetic (the bias of the QA start/end scorer and of the multiple-choice
    # scorer: a softmax over positions or choices ignores a constant shift), which Adam moves
    # by float rounding noise that differs with summation order; AdamW's epsilon is 1e-4 here,
    # which damps that noise.
    initial = single["initial"]
    assert single["weights"].keys() == double["weights"].keys()
    moved = max(float((w - initial[k]).abs().max()) for k, w in single["weights"].items())
    assert moved > 100 * WEIGHT_TOLERANCE, f"training moved the weights by {moved:.1e} only"
    worst_weight, worst_name = 0.0, ""
    for name, weight in single["weights"].items():
        difference = float((double["weights"][name] - weight).abs().max())
        assert difference <= WEIGHT_TOLERANCE, \
            f"{name}: 2 processes differ from 1 by {difference:.1e} (moved up to {moved:.1e})"
        if difference > worst_weight:
            worst_weight, worst_name = difference, name
    print(f"weights: largest difference {worst_weight:.1e} ({worst_name}); training moved "
          f"entries by up to {moved:.1e}")


# --------------------------------------------------------------------------------- pretraining
def test_pretraining_two_processes_equal_one(tmp_path, recorded_batches):
    from bertzoo.pretraining import PretrainingDataModule, PretrainingModule
    corpus = tmp_path / "corpus.txt"
    docs = synthetic_documents(40, seed=5, min_sentences=3, max_sentences=8)
    write_bert_corpus(corpus, docs)
    backbone = tiny_backbone(tmp_path / "backbone", **NO_DROPOUT)

    def make_datamodule(batch_size):
        # 7 validation documents: the last validation batch is uneven across ranks.
        return PretrainingDataModule(train_files=str(corpus), tokenizer=str(backbone),
                                     max_seq_length=48, batch_size=batch_size,
                                     validation_documents=7, seed=3)

    def make_model():
        vocab = make_datamodule(1).vocab_size
        config = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "intermediate_size": 64, "max_position_embeddings": 64, **NO_DROPOUT}
        return PretrainingModule(config=config, vocab_size=vocab, learning_rate=3e-3,
                                 adam_epsilon=1e-4, warmup=1)

    single = fit(tmp_path / "one", 1, make_model, make_datamodule)
    double = fit(tmp_path / "two", 2, make_model, make_datamodule)
    assert_same_run(single, double)


# ---------------------------------------------------------------------------- registered tasks
@pytest.fixture(scope="module")
def backbone_without_dropout(tmp_path_factory) -> Path:
    return tiny_backbone(tmp_path_factory.mktemp("backbone"), **NO_DROPOUT)


def task_factories(name: str, backbone: Path, folder: Path):
    spec = get_task(name)
    data_args = spec.example_data(folder)

    def make_datamodule(batch_size):
        return spec.datamodule(tokenizer=str(backbone),
                               **{**data_args, "batch_size": batch_size})

    def make_model():
        links = {link: getattr(make_datamodule(1), link) for link in spec.datamodule.model_links}
        return spec.module(backbone=str(backbone), head_dropout=0.0, learning_rate=3e-3,
                           adam_epsilon=1e-4, warmup=1, **links)

    return make_model, make_datamodule


@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_two_processes_equal_one(name, tmp_path, backbone_without_dropout,
                                      recorded_batches):
    (tmp_path / "data").mkdir()
    make_model, make_datamodule = task_factories(name, backbone_without_dropout,
                                                 tmp_path / "data")
    single = fit(tmp_path / "one", 1, make_model, make_datamodule)
    double = fit(tmp_path / "two", 2, make_model, make_datamodule)
    assert_same_run(single, double)


# --------------------------------------------------------------------------------- prediction
def predict(folder: Path, world_size: int, make_model, make_datamodule) -> dict[str, str]:
    """`bertzoo predict`'s writer under `world_size` processes: the files it wrote."""
    from bertzoo.tasks.base import PredictionWriter
    folder.mkdir(parents=True)
    L.seed_everything(7)
    model, datamodule = make_model(), make_datamodule(2)
    trainer = L.Trainer(accelerator="cpu", devices=world_size,
                        strategy="ddp_fork" if world_size > 1 else "auto",
                        use_distributed_sampler=False, logger=False,
                        callbacks=[PredictionWriter(str(folder))], enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.predict(model, datamodule, return_predictions=False)
    return {path.name: path.read_text() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_predict_under_ddp_writes_one_merged_file(name, tmp_path, backbone_without_dropout):
    (tmp_path / "data").mkdir()
    make_model, make_datamodule = task_factories(name, backbone_without_dropout,
                                                 tmp_path / "data")
    single = predict(tmp_path / "one", 1, make_model, make_datamodule)
    double = predict(tmp_path / "two", 2, make_model, make_datamodule)
    assert single and double.keys() == single.keys(), f"{name}: {sorted(double)}"
    inputs = len(make_datamodule(2).raw("predict"))
    for file_name, text in double.items():
        if file_name.endswith(".jsonl"):
            rows = [json.loads(line) for line in text.splitlines()]
            # every input row once, in input order (rank 1 predicted half of them)
            assert [row["index"] for row in rows] == list(range(inputs)), file_name
        assert text == single[file_name], f"{name}: {file_name} differs from 1 process"


# ------------------------------------------------------------------------------------- FSDP
LARGE_RECIPE = Path(__file__).parents[1] / "recipes" / "pretrain" / "bert-large.yaml"


def fsdp_flags() -> list[str]:
    """The FSDP command-line flags the large recipe's header tells users to add."""
    header = [line.lstrip("#").strip() for line in LARGE_RECIPE.read_text().splitlines()
              if line.startswith("#")]
    start = next(i for i, line in enumerate(header) if "--trainer.strategy FSDPStrategy" in line)
    import shlex
    words = shlex.split(" ".join(line.rstrip("\\") for line in header[start:start + 3]))
    return words


def test_the_large_recipe_selects_fsdp_wrapping_each_encoder_layer(capsys):
    from lightning.pytorch.strategies import FSDPStrategy

    from bertzoo.cli import main
    from bertzoo.model import BertLayer
    flags = fsdp_flags()
    assert "--trainer.strategy.auto_wrap_policy" in flags
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", "--config", str(LARGE_RECIPE), *flags, "--print_config"])
    assert exit_.value.code == 0
    import yaml
    strategy = yaml.safe_load(capsys.readouterr().out)["trainer"]["strategy"]
    assert strategy["class_path"] == "lightning.pytorch.strategies.FSDPStrategy"
    init_args = {k: v for k, v in strategy["init_args"].items() if v is not None}
    assert init_args["auto_wrap_policy"] == ["bertzoo.model.BertLayer"]
    assert init_args["state_dict_type"] == "full"  # one checkpoint file, as export reads
    # The strategy the CLI builds from it wraps BertLayer modules, each its own FSDP unit.
    built = FSDPStrategy(auto_wrap_policy={BertLayer},
                         sharding_strategy=init_args["sharding_strategy"])
    assert built.kwargs["auto_wrap_policy"]._module_classes == {BertLayer}
    assert built.kwargs["use_orig_params"]  # parameters keep their names for weight decay
    # Lightning runs FSDP on GPUs only, which is why the recipe defaults to DDP.
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        L.Trainer(accelerator="cpu", devices=1, strategy=built, logger=False)


def _fsdp_worker(rank: int, port: int, folder: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from bertzoo.model import BertForPreTraining, BertLayer
    from bertzoo.testing import tiny_config
    from bertzoo.training import parameter_groups
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config(100))
    names = {id(p): n for n, p in model.named_parameters()}
    expected = [(g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
                for g in parameter_groups(model, 0.01, 1e-3)]
    wrapped = FSDP(model, auto_wrap_policy=ModuleWrapPolicy({BertLayer}), use_orig_params=True,
                   device_id=torch.device("cpu"))
    names = {id(p): n.replace("_fsdp_wrapped_module.", "")
             for n, p in wrapped.named_parameters()}
    groups = parameter_groups(wrapped, 0.01, 1e-3)
    # The sharded model's groups hold the same parameters, with the same weight decay.
    assert [(g["weight_decay"], sorted(names[id(p)] for p in g["params"])) for g in groups] \
        == expected
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    ids = torch.randint(5, 100, (2, 12))
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    out = wrapped(ids, torch.ones_like(ids), mlm_labels=labels, nsp_labels=torch.tensor([0, 1]))
    out.loss.backward()
    optimizer.step()
    (folder / f"rank{rank}").write_text(str(float(out.loss)))
    dist.destroy_process_group()


def test_bertmodule_optimizer_groups_fsdp_sharded_parameters(tmp_path):
    """Torch's FSDP runs on CPU with gloo (Lightning's FSDPStrategy does not): two ranks shard
    a tiny pretraining model by BertLayer; `parameter_groups` (what
    `BertModule.configure_optimizers` builds AdamW from) still finds every parameter under its
    name, with no decay on biases and LayerNorm, and a training step runs."""
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # spawn, not fork: forked after the rest of the suite had run, the ranks hung in FSDP's
    # start-up (alone they do not); fresh interpreters cost a few seconds of imports
    mp.start_processes(_fsdp_worker, args=(port, tmp_path), nprocs=2, join=True,
                       start_method="spawn")
    losses = [float((tmp_path / f"rank{r}").read_text()) for r in range(2)]
    assert all(math.isfinite(loss) for loss in losses)
