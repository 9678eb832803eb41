"""Ctrl-C under DDP: `bertzoo fit` with two processes (CPU, gloo), run as a user runs it, gets
a real SIGINT in its main process mid-training. The other process gets no signal; both must
stop after the same step (the request is shared by an all-reduce each step), last.ckpt holds
that step, the command exits with 130, and `--ckpt_path last` resumes to the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch

from bertzoo.tasks.classification import example_data

ROOT = Path(__file__).resolve().parents[1]


class CtrlCOnRankZero(L.Callback):
    """Rank 0 sends itself a SIGINT while step `step` (from 1) runs, as Ctrl-C in the terminal
    of the main process would; rank 1 is left alone."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == 0 and trainer.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class RecordSteps(L.Callback):
    """Each rank writes the global step it reached when training ended (stopped or not)."""

    def __init__(self, folder: str):
        self.folder = folder

    def _write(self, trainer) -> None:
        Path(self.folder, f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"step": trainer.global_step}))

    def on_exception(self, trainer, pl_module, exception):
        self._write(trainer)

    def on_train_end(self, trainer, pl_module):
        self._write(trainer)


def callback(cls, **init_args) -> str:
    return "--trainer.callbacks+=" + json.dumps(
        {"class_path": f"{__name__}.{cls.__name__}", "init_args": init_args})


def bertzoo(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    env.pop("BERTZOO_RUN_VERSION", None)
    # The `bertzoo` command as a script: Lightning starts rank 1 by running it again.
    script = cwd / "bertzoo_command.py"
    script.write_text("import sys\n\nfrom bertzoo.cli import main\n\nsys.exit(main())\n")
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=90)


def test_ctrl_c_under_ddp_stops_every_process_at_one_step(tmp_path, tiny_backbone_dir):
    data = example_data(tmp_path)  # 24 training rows: 6 global batches of 4 per epoch
    (tmp_path / "steps").mkdir()
    args = ["fit", "--task", "classification", f"--model.backbone={tiny_backbone_dir}",
            f"--data.train_file={data['train_file']}",
            f"--data.validation_file={data['validation_file']}", "--data.batch_size=2",
            "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
            "--trainer.max_epochs=1", "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            callback(RecordSteps, folder=str(tmp_path / "steps"))]
    stopped = bertzoo([*args, callback(CtrlCOnRankZero, step=3)], tmp_path)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "stopped: Ctrl-C at step 3 (epoch 0)" in stopped.stderr
    steps = [json.loads((tmp_path / f"steps/rank{r}.json").read_text())["step"]
             for r in range(2)]
    assert steps == [3, 3], f"the ranks stopped at steps {steps}"
    last = tmp_path / "runs/classification/version_0/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3

    resumed = bertzoo([*args, "--ckpt_path", "last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(last, weights_only=True)["global_step"] == 6
    steps = [json.loads((tmp_path / f"steps/rank{r}.json").read_text())["step"]
             for r in range(2)]
    assert steps == [6, 6]
