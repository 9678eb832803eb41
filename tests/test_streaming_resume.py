"""Exact resume of a streamed corpus (`data.streaming: true`).

A stream's position is saved as plain data (pass, window, `datasets`' position of the stream at
the window's start, rows already yielded) by each worker of each process; a resumed loader
re-reads one window and continues with the same documents, shuffle, instances and masks as
one that never stopped. Tested at the data loader (every batch equal, bitwise), and through
whole runs, one process (Ctrl-C, `--ckpt_path last`) and two (DDP, resumed from a checkpoint
taken mid-run): equal weights, optimizer state and metrics.csv rows.
"""

from __future__ import annotations

import csv
import io
import itertools
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

import bertzoo.pretraining.datamodule as datamodule_module
from bertzoo.cli import main
from bertzoo.pretraining import CorpusError, PretrainingDataModule
from bertzoo.testing import tiny_backbone, write_parquet_corpus
from ddp_processes import forkserver_ddp

SHARDS = 4
DOCUMENTS_PER_SHARD = 4  # a pass is 5-10 batches of 4 rows: a run of 24 makes 2-3 passes
HELD_OUT = 2
BATCHES = 24
TINY_MODEL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 64}


@pytest.fixture(autouse=True)
def quick_parquet_shutdown(monkeypatch):
    """`datasets` sleeps 5 s whenever a parquet stream's reader threads stop."""
    import datasets
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0.1)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    return tiny_backbone(tmp_path_factory.mktemp("backbone"))


@pytest.fixture(scope="module")
def parquet_folder(tmp_path_factory) -> Path:
    return write_parquet_corpus(tmp_path_factory.mktemp("corpus"), SHARDS, DOCUMENTS_PER_SHARD)


def data_options(folder: Path, backbone: Path, **options) -> dict:
    return {"dataset": str(folder), "streaming": True, "tokenizer": str(backbone),
            "max_seq_length": 32, "batch_size": 4, "validation_documents": HELD_OUT,
            "pool_size": 4, "shuffle_buffer": 6, "seed": 5, **options}


def loader(folder: Path, backbone: Path, state: dict | None = None, **options):
    dm = PretrainingDataModule(**data_options(folder, backbone, **options))
    dm.setup("fit")
    if state is not None:
        dm.load_state_dict(state)
    return dm, dm.train_dataloader()


def plain(state: dict) -> dict:
    """What a checkpoint gives back: saved, then loaded with weights_only=True."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def stream_states(loader_state: dict) -> list[dict]:
    if "_snapshot" in loader_state:  # one per worker
        return [w["dataset_state"]
                for w in loader_state["_snapshot"]["_worker_snapshots"].values()]
    return [loader_state["dataset_state"]]


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for k, (x, y) in enumerate(zip(a, b)):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), f"batch {k}: {key} differs"


def as_rank(monkeypatch, rank: int, world_size: int) -> None:
    monkeypatch.setattr(datamodule_module, "distributed_rank_and_size",
                        lambda: (rank, world_size))


# ----------------------------------------------------------------------- at the data loader
@pytest.mark.parametrize("workers,nsp", [(0, True), (2, True), (0, False), (2, False)],
                         ids=["0-workers", "2-workers", "mlm-only-0-workers",
                              "mlm-only-2-workers"])
def test_a_resumed_stream_continues_bitwise(parquet_folder, backbone, workers, nsp):
    """Stopped inside the first pass (the resumed loader then crosses into the second) and
    inside a later pass: every later batch (ids, masks, labels) is the uninterrupted one's."""
    options = {"num_workers": workers, "nsp": nsp}
    straight = list(itertools.islice(loader(parquet_folder, backbone, **options)[1], BATCHES))
    for stop, passes in ((5, {0}), (13, {1, 2})):
        dm, first = loader(parquet_folder, backbone, **options)
        iterator = iter(first)
        before = [next(iterator) for _ in range(stop)]
        state = plain(dm.state_dict())  # what the checkpoint holds (every process's position)
        del iterator
        states = stream_states(state["stream_positions"][0]["loader"])
        assert {s["epoch"] for s in states} <= passes, "not stopped where the test means to"
        _, resumed = loader(parquet_folder, backbone, state=state, **options)
        after = list(itertools.islice(resumed, BATCHES - stop))
        assert_same_batches(straight, before + after)
    # Proof that the comparison can fail: a loader that starts over differs.
    fresh = list(itertools.islice(loader(parquet_folder, backbone, **options)[1], BATCHES))
    with pytest.raises(AssertionError, match="differs"):
        assert_same_batches(straight[5:], fresh[:BATCHES - 5])


def test_workers_read_their_own_pass(parquet_folder, backbone, monkeypatch):
    """Each worker reads the pass of the stream it is in, whatever the other worker does.
    `datasets` keeps a stream's epoch in memory shared by the processes forked from one
    another; were it shared by the workers, one starting a pass would change the pass (the
    shard order) of another starting a different pass at the same moment: rare, more likely
    under load, and most likely on resume, when every worker starts at once. A slow
    `set_epoch` makes the two workers' calls overlap every time: here a resumed loader whose
    workers start in passes 2 and 1."""
    import datasets
    set_epoch = datasets.IterableDataset.set_epoch

    def slow_set_epoch(self, epoch):
        set_epoch(self, epoch)
        time.sleep(0.3)  # the other worker sets its own pass meanwhile

    monkeypatch.setattr(datasets.IterableDataset, "set_epoch", slow_set_epoch)
    options = {"num_workers": 2}
    straight = list(itertools.islice(loader(parquet_folder, backbone, **options)[1], 18))
    dm, first = loader(parquet_folder, backbone, **options)
    iterator = iter(first)
    before = [next(iterator) for _ in range(13)]
    state = plain(dm.state_dict())
    del iterator
    assert sorted(s["epoch"] for s in stream_states(state["stream_positions"][0]["loader"])) \
        == [1, 2], "the workers are not in different passes"
    dm, resumed = loader(parquet_folder, backbone, state=state, **options)
    after = list(itertools.islice(resumed, 5))
    assert_same_batches(straight, before + after)
    # The stream's own position records the pass it read: the pass the worker was in.
    states = stream_states(plain(dm.state_dict())["stream_positions"][0]["loader"])
    assert all(s["source"]["epoch"] == s["epoch"] for s in states if s["source"] is not None)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_resumed_twice_continues_bitwise(parquet_folder, backbone, workers):
    """Stopped again right after a resume (before any batch, and after one, when a worker has
    not yielded yet): the position saved then is still the one resumed from, not the start."""
    options = {"num_workers": workers}
    straight = list(itertools.islice(loader(parquet_folder, backbone, **options)[1], 16))
    dm, first = loader(parquet_folder, backbone, **options)
    iterator = iter(first)
    before = [next(iterator) for _ in range(9)]
    state = plain(dm.state_dict())
    del iterator
    for taken in (0, 1):
        dm, again = loader(parquet_folder, backbone, state=state, **options)
        iterator = iter(again)
        middle = [next(iterator) for _ in range(taken)]
        second = plain(dm.state_dict())
        del iterator
        _, resumed = loader(parquet_folder, backbone, state=second, **options)
        after = list(itertools.islice(resumed, 16 - 9 - taken))
        assert_same_batches(straight, before + middle + after)


@pytest.mark.parametrize("workers", [0, 2])
def test_each_process_resumes_its_own_share(parquet_folder, backbone, monkeypatch, workers):
    """Two processes (0 or 2 workers each): each saves and resumes its own position (rank 1's
    is not rank 0's)."""
    positions, straight = [], []
    for rank in range(2):
        as_rank(monkeypatch, rank, 2)
        straight.append(list(itertools.islice(
            loader(parquet_folder, backbone, num_workers=workers)[1], 12)))
        dm, first = loader(parquet_folder, backbone, num_workers=workers)
        iterator = iter(first)
        [next(iterator) for _ in range(7)]
        positions.append(plain(dm.state_dict())["stream_positions"][0])
    assert positions[0] != positions[1]
    saved = {"stream_positions": positions}  # what the gather in state_dict() writes
    for rank in range(2):
        as_rank(monkeypatch, rank, 2)
        _, resumed = loader(parquet_folder, backbone, state=saved, num_workers=workers)
        # Lightning hands every process rank 0's loader state; the own one is used instead.
        resumed.load_state_dict(positions[0]["loader"])
        assert_same_batches(straight[rank][7:], list(itertools.islice(resumed, 5)))


def test_another_layout_is_refused_with_a_clear_message(parquet_folder, backbone,
                                                        monkeypatch):
    dm, first = loader(parquet_folder, backbone, num_workers=2)
    iterator = iter(first)
    [next(iterator) for _ in range(3)]
    state = plain(dm.state_dict())
    del iterator
    with pytest.raises(CorpusError, match=r"saved with 1 process\(es\) x 2 data loader worker"
                                          r"\(s\) per process, and this run has 1 x 0"):
        loader(parquet_folder, backbone, state=state, num_workers=0)
    as_rank(monkeypatch, 0, 2)
    with pytest.raises(CorpusError, match=r"this run has 2 x 2"):
        loader(parquet_folder, backbone, state=state, num_workers=2)


# ---------------------------------------------------------------------------- whole runs
def metrics_rows(path: Path) -> list[tuple[int, str]]:
    rows = csv.DictReader(path.open())
    return [(int(r["step"]), r["train/loss_step"]) for r in rows if r.get("train/loss_step")]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for state_a, state_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for index, tensors in state_a["state"].items():
            for name, tensor in tensors.items():
                assert torch.equal(tensor, state_b["state"][index][name]), (index, name)
    assert a["lr_schedulers"] == b["lr_schedulers"]


def test_a_streamed_run_stopped_by_ctrl_c_resumes_bitwise(parquet_folder, backbone, tmp_path,
                                                          monkeypatch, capsys):
    """One process, two workers: 14 steps straight vs Ctrl-C at step 6 then `--ckpt_path
    last`, across a pass boundary of the stream."""
    from test_resume import CtrlCAtStep, callback
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    data = data_options(parquet_folder, backbone, num_workers=2)
    recipe.write_text(yaml.safe_dump({
        "seed_everything": 7,
        "trainer": {"max_steps": 14, "val_check_interval": 10, "check_val_every_n_epoch": None,
                    "limit_val_batches": 1, "num_sanity_val_steps": 0, "log_every_n_steps": 1,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "model": {"config": TINY_MODEL, "learning_rate": 3e-3, "warmup": 2},
        "data": data}))
    runs = tmp_path / "runs/pretrain"
    assert main(["pretrain", "--config", str(recipe)]) == 0
    straight = load(runs / "version_0/checkpoints/last.ckpt")
    assert main(["pretrain", "--config", str(recipe), callback(CtrlCAtStep, step=6)]) == 130
    saved = runs / "version_1/checkpoints/last.ckpt"
    assert load(saved)["global_step"] == 6
    capsys.readouterr()
    # Another layout is refused before the first step, and leaves the run as it was.
    assert main(["pretrain", "--config", str(recipe), "--ckpt_path", "last",
                 "--data.num_workers=0"]) == 1
    assert capsys.readouterr().err.strip().endswith(
        "bertzoo pretrain: error: the checkpoint's position in the streamed corpus was saved "
        "with 1 process(es) x 2 data loader worker(s) per process, and this run has 1 x 0; a "
        "stream resumes exactly only with the same layout: resume with the same "
        "trainer.devices x trainer.num_nodes and data.num_workers (or start a new run from "
        "the checkpoint's weights with model.backbone)")
    assert load(saved)["global_step"] == 6
    assert main(["pretrain", "--config", str(recipe), "--ckpt_path", "last"]) == 0
    resumed = load(saved)
    assert resumed["global_step"] == 14
    assert_same_training_state(straight, resumed)
    rows = [metrics_rows(runs / f"version_{v}/metrics.csv") for v in (0, 1)]
    assert rows[0] == rows[1] and [step for step, _ in rows[1]] == list(range(14))
    positions = resumed["PretrainingDataModule"]["stream_positions"]
    assert max(s["epoch"] for s in stream_states(positions[0]["loader"])) >= 1


class SaveEveryStep(L.Callback):
    """The checkpoint a preempted run would have left: saved at the end of step `step`."""

    def __init__(self, folder: Path, step: int):
        self.folder, self.step = folder, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.folder / f"step{self.step}.ckpt")


def fit_two_processes(folder: Path, backbone: Path, root: Path, steps: int,
                      ckpt_path: Path | None = None, callbacks=()) -> None:
    from bertzoo.pretraining import PretrainingModule
    dm = PretrainingDataModule(**data_options(folder, backbone, num_workers=1))
    torch.manual_seed(0)
    model = PretrainingModule(config=TINY_MODEL, vocab_size=dm.vocab_size, warmup=2,
                              learning_rate=3e-3, seed=3)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=forkserver_ddp(),
                        max_steps=steps,
                        limit_val_batches=0, num_sanity_val_steps=0,
                        use_distributed_sampler=False, logger=False,
                        callbacks=[*callbacks, SaveEveryStep(root, steps)],
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root)
    trainer.fit(model, dm, ckpt_path=ckpt_path)


def test_two_processes_resume_a_stream_bitwise(parquet_folder, backbone, tmp_path):
    """DDP, 2 processes x 1 worker: resumed from the checkpoint of step 5 (inside the first
    pass) to step 12, equal to 12 steps straight; each process resumed its own share."""
    fit_two_processes(parquet_folder, backbone, tmp_path, 12, callbacks=[
        SaveEveryStep(tmp_path, 5)])
    straight = load(tmp_path / "step12.ckpt")
    middle = load(tmp_path / "step5.ckpt")
    positions = middle["PretrainingDataModule"]["stream_positions"]
    assert len(positions) == 2 and positions[0] != positions[1]
    (tmp_path / "step12.ckpt").rename(tmp_path / "straight.ckpt")
    fit_two_processes(parquet_folder, backbone, tmp_path, 12, ckpt_path=tmp_path / "step5.ckpt")
    assert_same_training_state(straight, load(tmp_path / "step12.ckpt"))
