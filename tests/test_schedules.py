"""The learning-rate schedules, point by point, and LAMB's update on a hand-computed example."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bertzoo.config import ConfigError
from bertzoo.training.optim import (SCHEDULERS, Lamb, build_optimizer, build_scheduler,
                                        lr_multiplier, warmup_steps_of)

# T = 10 optimizer steps, W = 2 warm-up steps; warm-up is (s+1)/(W+1) = 1/3, 2/3 everywhere.
T, W = 10, 2
EXPECTED = {
    # after warm-up: (T - s) / (T - W)
    "linear": [1 / 3, 2 / 3, 8 / 8, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8],
    # after warm-up: (1 + cos(pi p)) / 2, p = (s - 2) / 8
    "cosine": [1 / 3, 2 / 3, 1.0, 0.9619397662556434, 0.8535533905932737, 0.6913417161825449,
               0.5, 0.3086582838174551, 0.14644660940672627, 0.03806023374435663],
    "constant": [1.0] * 10,
    "constant_with_warmup": [1 / 3, 2 / 3] + [1.0] * 8,
    # decay_fraction 0.3: the last 3 steps (7, 8, 9) decay as 1 - sqrt(q), q = 0, 1/3, 2/3
    "warmup_stable_decay": [1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
                            1 - math.sqrt(1 / 3), 1 - math.sqrt(2 / 3)],
}


@pytest.mark.parametrize("name", SCHEDULERS)
def test_each_schedule_point_by_point(name):
    multiplier = lr_multiplier(name, W, T, decay_fraction=0.3)
    assert [multiplier(s) for s in range(T)] == pytest.approx(EXPECTED[name], abs=1e-12)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_the_optimizer_steps_with_those_rates(name):
    """Through `LambdaLR` as a module uses it: the rate of each optimizer step is
    peak * multiplier(step), and `warmup` 0.2 of 10 steps is 2 warm-up steps."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.5)
    scheduler = build_scheduler(optimizer, name, warmup=0.2, total_steps=T, decay_fraction=0.3)
    rates = []
    for _ in range(T):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.5 * m for m in EXPECTED[name]], abs=1e-12)


def test_linear_is_berts_schedule_as_before():
    """The default schedule's numbers did not change: BERT's warm-up then linear decay."""
    multiplier = lr_multiplier("linear", 100, 1000)
    assert multiplier(0) == pytest.approx(1 / 101)
    assert multiplier(99) == pytest.approx(100 / 101)
    assert multiplier(100) == 1.0
    assert multiplier(550) == pytest.approx(0.5)
    assert multiplier(999) == pytest.approx(1 / 900)
    assert multiplier(1000) == 0.0


def test_warmup_stable_decay_shape_at_scale():
    """ModernBERT's shape on a longer run: flat at the peak until the last 10%, 1-sqrt after."""
    multiplier = lr_multiplier("warmup_stable_decay", 60, 1000, decay_fraction=0.1)
    assert multiplier(59) == pytest.approx(60 / 61)
    assert all(multiplier(s) == 1.0 for s in range(60, 901))
    assert multiplier(925) == pytest.approx(1 - math.sqrt(0.25))
    assert multiplier(1000) == 0.0


def test_warmup_steps_fraction_or_count():
    assert warmup_steps_of(0.1, 1000) == 100
    assert warmup_steps_of(0, 1000) == 0
    assert warmup_steps_of(250, 1000) == 250


def test_bad_names_and_fractions_are_refused():
    with pytest.raises(ConfigError, match=r"model.scheduler must be one of linear, cosine, "
                                          r"constant, constant_with_warmup, "
                                          r"warmup_stable_decay; got 'cosin'"):
        lr_multiplier("cosin", 1, 10)
    with pytest.raises(ConfigError, match=r"model.decay_fraction must be in \(0, 1\]"):
        lr_multiplier("warmup_stable_decay", 1, 10, decay_fraction=0)
    with pytest.raises(ConfigError, match=r"model.optimizer must be one of adamw, lamb; "
                                          r"got 'adam'"):
        build_optimizer("adam", [{"params": [torch.nn.Parameter(torch.zeros(1))]}], 1e-3,
                        (0.9, 0.999), 1e-6)


# ------------------------------------------------------------------------------------- LAMB
def lamb_on(w0, weight_decay, lr=0.1, eps=0.0):
    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    optimizer = build_optimizer("lamb", [{"params": [w], "weight_decay": weight_decay}], lr,
                                (0.9, 0.999), eps)
    assert isinstance(optimizer, Lamb)
    return w, optimizer


def test_lamb_first_step_by_hand():
    """w = (3, 4), g = (0.6, 0.8), lr 0.1, weight decay 0.01, eps 0. After bias correction
    m_hat = g and sqrt(v_hat) = |g|, so r = (1, 1); u = r + 0.01 w = (1.03, 1.04);
    ||w|| = 5, ||u|| = sqrt(1.03^2 + 1.04^2) = sqrt(2.1425); w -= 0.1 * 5 / sqrt(2.1425) * u."""
    w, optimizer = lamb_on([3.0, 4.0], weight_decay=0.01)
    w.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)
    optimizer.step()
    ratio = 5 / math.sqrt(2.1425)  # 3.4159...
    assert w.tolist() == pytest.approx([3 - 0.1 * ratio * 1.03, 4 - 0.1 * ratio * 1.04],
                                       abs=1e-12)
    assert w.tolist() == pytest.approx([2.6481587023721453, 3.644742767443719], abs=1e-12)


def test_lamb_second_step_by_hand():
    """A second gradient g2 = (-0.3, 0.4): m = 0.9 m1 + 0.1 g2 = (0.024, 0.112),
    v = 0.999 v1 + 0.001 g2^2 = (0.00044964, 0.00079936); bias-corrected with 1 - 0.9^2 and
    1 - 0.999^2; the trust ratio is ||w1|| / ||u|| with w1 the weights after step one."""
    w, optimizer = lamb_on([3.0, 4.0], weight_decay=0.01)
    w.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)
    optimizer.step()
    w1 = w.detach().clone()
    w.grad = torch.tensor([-0.3, 0.4], dtype=torch.float64)
    optimizer.step()
    state = optimizer.state[w]
    assert state["exp_avg"].tolist() == pytest.approx([0.024, 0.112], abs=1e-12)
    assert state["exp_avg_sq"].tolist() == pytest.approx([0.00044964, 0.00079936], abs=1e-12)
    r = [0.024 / 0.19 / math.sqrt(0.00044964 / (1 - 0.999 ** 2)),
         0.112 / 0.19 / math.sqrt(0.00079936 / (1 - 0.999 ** 2))]
    u = [r[0] + 0.01 * float(w1[0]), r[1] + 0.01 * float(w1[1])]
    ratio = float(w1.norm()) / math.hypot(*u)
    assert w.tolist() == pytest.approx([float(w1[0]) - 0.1 * ratio * u[0],
                                        float(w1[1]) - 0.1 * ratio * u[1]], abs=1e-12)
    assert w.tolist() == pytest.approx([2.517791749175239, 3.213496432906274], abs=1e-12)


def test_lamb_without_weight_decay_takes_adams_step():
    """Biases and LayerNorm (weight decay 0) keep trust ratio 1, as NVIDIA's recipe: the first
    step moves each weight by lr * m_hat / sqrt(v_hat) = lr * sign(g)."""
    w, optimizer = lamb_on([3.0, 4.0], weight_decay=0.0)
    w.grad = torch.tensor([0.6, -0.8], dtype=torch.float64)
    optimizer.step()
    assert w.tolist() == pytest.approx([2.9, 4.1], abs=1e-12)


def test_lamb_zero_weights_take_ratio_one():
    """A tensor at zero (||w|| = 0) would never move with the ratio ||w|| / ||u||: it is 1."""
    w, optimizer = lamb_on([0.0, 0.0], weight_decay=0.01)
    w.grad = torch.tensor([1.0, -1.0], dtype=torch.float64)
    optimizer.step()
    assert w.tolist() == pytest.approx([-0.1, 0.1], abs=1e-12)


# ------------------------------------------------------------ every module, through the CLI
def logged_rates(run: Path) -> list[float]:
    """The rate of the first parameter group (`lr`, or `lr/pg1` with several) in a run's
    metrics.csv, one value per optimizer step."""
    import csv
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    column = next(c for c in rows[0] if c == "lr" or c.startswith("lr/"))
    return [float(row[column]) for row in rows if row.get(column)]


QUICK = ["--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
         "--trainer.enable_model_summary=false", "--trainer.limit_val_batches=0"]


@pytest.mark.parametrize("optimizer", ["adamw", "lamb"])
def test_a_task_and_pretraining_follow_the_chosen_schedule(optimizer, tiny_backbone_dir,
                                                           tmp_path, monkeypatch):
    """`model.scheduler`, `model.optimizer`, `model.warmup`, `model.decay_fraction` reach the
    optimizer of a task and of pretraining alike (one BertModule): the logged rate of each of
    10 steps is peak x the schedule's multiplier, and the optimizer is the one asked for."""
    from bertzoo.cli import cmd_task, main
    from bertzoo.testing import documents, write_bert_corpus
    monkeypatch.chdir(tmp_path)
    schedule = ["--model.scheduler=warmup_stable_decay", "--model.warmup=2",
                "--model.decay_fraction=0.3", f"--model.optimizer={optimizer}"]
    expected = [1e-3 * m for m in EXPECTED["warmup_stable_decay"]]

    rows = "sentence\tlabel\n" + "".join(f"the {w} cat is {w} .\t{i % 2}\n" for i, w in
                                         enumerate(["happy", "sad"] * 20))
    (tmp_path / "train.tsv").write_text(rows)
    task = cmd_task("fit", ["--task", "classification", f"--model.backbone={tiny_backbone_dir}",
                            "--data.train_file=train.tsv", "--data.batch_size=4",
                            "--trainer.max_steps=10", "--model.learning_rate=1e-3",
                            *schedule, *QUICK])
    assert type(task.trainer.optimizers[0]).__name__ == {"adamw": "AdamW",
                                                          "lamb": "Lamb"}[optimizer]
    assert logged_rates(Path(task.trainer.log_dir)) == pytest.approx(expected, rel=1e-6)

    corpus = write_bert_corpus(tmp_path / "corpus.txt", documents(12, seed=1, min_sentences=3))
    assert main(["pretrain", "--model.config=tiny", f"--data.tokenizer={tiny_backbone_dir}",
                 f"--data.train_files=[{corpus}]", "--data.validation_documents=0",
                 "--data.max_seq_length=64", "--data.batch_size=4", "--trainer.max_steps=10",
                 "--model.learning_rate=1e-3", *schedule, *QUICK]) == 0
    assert logged_rates(tmp_path / "runs" / "pretrain" / "version_0") == pytest.approx(
        expected, rel=1e-6)


def test_an_unknown_scheduler_is_refused_by_the_command_line(tiny_backbone_dir, tmp_path,
                                                              monkeypatch, capsys):
    from bertzoo.cli import main
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.tsv").write_text("sentence\tlabel\na b\t0\nc d\t1\n")
    with pytest.raises(SystemExit):
        main(["fit", "--task", "classification", "--model.config=tiny",
              "--model.scheduler=cosin", "--data.train_file=x.tsv"])
    err = capsys.readouterr().err
    assert err.strip() == ("bertzoo fit: error: model.scheduler: Expected a typing.Literal["
                           "'linear', 'cosine', 'constant', 'constant_with_warmup', "
                           "'warmup_stable_decay']. Got value: cosin")
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--task", "classification", "--model.config=tiny",
              "--model.decay_fraction=1.5", "--data.train_file=x.tsv",
              "--data.tokenizer=" + str(tiny_backbone_dir)])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "bertzoo fit: error: model.decay_fraction: expected float in (0, 1], got 1.5")
