"""Pretraining on a streamed corpus (`data.streaming: true`): a local `datasets` folder of parquet
files read with `load_dataset(..., streaming=True)`, split between processes by
`split_dataset_by_node`, between DataLoader workers by `datasets`, held-out documents filtered
out, instances built block by block. The corpus is generated here; peak memory as the corpus
grows is measured by `docs/scale.md`'s command, not in a test."""

from __future__ import annotations

import collections
import itertools
from pathlib import Path

import lightning as L
import pytest
import torch

import bertzoo.pretraining.datamodule as datamodule_module
from bertzoo.pretraining import PretrainingDataModule
from bertzoo.testing import documents as synthetic_documents
from bertzoo.testing import write_bert_corpus
from bertzoo.testing import tiny_backbone, write_parquet_corpus
from ddp_processes import forkserver_ddp

SHARDS = 4
DOCUMENTS_PER_SHARD = 30
HELD_OUT = 6


@pytest.fixture(autouse=True)
def quick_parquet_shutdown(monkeypatch):
    """`datasets` sleeps 5 s whenever a parquet stream's reader threads stop (a guard against
    apache/arrow#45214 at interpreter exit); a test stops streams many times."""
    import datasets
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0.1)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    return tiny_backbone(tmp_path_factory.mktemp("backbone"))


@pytest.fixture(scope="module")
def parquet_folder(tmp_path_factory) -> Path:
    """SHARDS parquet files, one document (a paragraph of sentences) per row."""
    return write_parquet_corpus(tmp_path_factory.mktemp("corpus"), SHARDS, DOCUMENTS_PER_SHARD)


def streamed(folder: Path, backbone: Path, **options) -> PretrainingDataModule:
    dm = PretrainingDataModule(dataset=str(folder), streaming=True, tokenizer=str(backbone),
                               max_seq_length=32, batch_size=4, validation_documents=HELD_OUT,
                               pool_size=8, seed=5, **{"shuffle_buffer": 16, **options})
    dm.setup("fit")
    return dm


def one_pass(instances) -> list[tuple[int, ...]]:
    """The tokenized documents of one pass over a process's share of the stream."""
    instances.documents.set_epoch(0)
    return [tuple(t for sentence in row["sentence_ids"] for t in sentence)
            for row in instances.documents]


def as_rank(monkeypatch, rank: int, world_size: int) -> None:
    monkeypatch.setattr(datamodule_module, "distributed_rank_and_size",
                        lambda: (rank, world_size))


def test_ranks_read_disjoint_shards_that_cover_the_corpus(parquet_folder, backbone,
                                                          monkeypatch):
    dm = streamed(parquet_folder, backbone)
    assert dm.instances["train"].num_shards == SHARDS  # a parquet file is a shard
    everything = one_pass(dm.streamed_instances())
    held_out = {tuple(t for s in row["sentence_ids"] for t in s)
                for row in dm.tokenized("validation")}
    assert len(everything) == SHARDS * DOCUMENTS_PER_SHARD - HELD_OUT
    assert not held_out & set(everything), "a held-out document is in the training stream"
    shares = []
    for rank in range(2):
        as_rank(monkeypatch, rank, 2)
        shares.append(one_pass(dm.streamed_instances()))
    # Each process reads two of the four files: disjoint halves of the corpus, nothing lost.
    assert not set(shares[0]) & set(shares[1])
    assert collections.Counter(shares[0] + shares[1]) == collections.Counter(everything)
    assert {len(share) for share in shares} <= {2 * DOCUMENTS_PER_SHARD - HELD_OUT,
                                                2 * DOCUMENTS_PER_SHARD}


def test_workers_build_instances_in_parallel_with_distinct_masking(parquet_folder, backbone,
                                                                   monkeypatch):
    dm = streamed(parquet_folder, backbone, num_workers=2)
    as_rank(monkeypatch, 1, 2)
    loader = torch.utils.data.DataLoader(dm.streamed_instances(), batch_size=None,
                                         num_workers=2)
    rows = list(itertools.islice(loader, 400))
    indices = [row["index"] for row in rows]
    assert len(set(indices)) == len(indices), "two rows would share a masking seed"
    # 2 processes x 2 workers = 4 streams; this is process 1, streams 2 and 3
    assert {index % 4 for index in indices} == {2, 3}
    # The stream repeats: a second pass comes with a new epoch (new masking, new order).
    assert {row["epoch"] for row in rows} >= {0, 1}
    first_pass = [tuple(r["input_ids"]) for r in rows if r["epoch"] == 0]
    second_pass = [tuple(r["input_ids"]) for r in rows if r["epoch"] == 1]
    assert first_pass[:20] != second_pass[:20]
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and (batch["mlm_labels"] != -100).any()


def test_a_shard_count_that_does_not_divide_the_world_size_warns(tmp_path, backbone,
                                                                 monkeypatch):
    files = []
    for k in range(3):  # three text files: three shards for two processes
        path = tmp_path / f"part{k}.txt"
        docs = synthetic_documents(6, seed=k)
        write_bert_corpus(path, docs)
        files.append(str(path))
    dm = PretrainingDataModule(train_files=files, streaming=True, tokenizer=str(backbone),
                               max_seq_length=32, batch_size=4, validation_documents=0)
    dm.setup("fit")
    as_rank(monkeypatch, 0, 2)
    with pytest.warns(UserWarning, match="3 shard.*not a multiple of the 2 processes"):
        dm.streamed_instances()


def test_two_processes_pretrain_on_a_streamed_folder(parquet_folder, backbone, tmp_path):
    """2 processes (from a fork server) with a worker each: steps run on both and stay in
    step (the stream repeats, so neither runs out first)."""
    from bertzoo.pretraining import PretrainingModule
    dm = PretrainingDataModule(dataset=str(parquet_folder), streaming=True,
                               tokenizer=str(backbone), max_seq_length=32, batch_size=4,
                               validation_documents=HELD_OUT, pool_size=8, num_workers=1)
    config = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 64}
    model = PretrainingModule(config=config, vocab_size=dm.vocab_size, warmup=1)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=forkserver_ddp(), max_steps=6,
                        val_check_interval=6, check_val_every_n_epoch=None,
                        limit_val_batches=1, num_sanity_val_steps=0,
                        use_distributed_sampler=False, logger=False,
                        callbacks=[StepsTaken(tmp_path)], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(model, dm)
    for rank in range(2):
        steps, loss = (tmp_path / f"rank{rank}").read_text().split()
        assert int(steps) == 6 and torch.isfinite(torch.tensor(float(loss)))


class StepsTaken(L.Callback):
    def __init__(self, folder: Path):
        self.folder = folder

    def on_fit_end(self, trainer, pl_module):
        (self.folder / f"rank{trainer.global_rank}").write_text(
            f"{trainer.global_step} {float(trainer.callback_metrics['val/loss'])}")
