"""What a good run shows: the run folder at the start, no dependency noise, and at the end of
`fit` a summary whose metric values come from metrics.csv, whose checkpoints exist and whose
next commands run as printed."""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

import pytest

from bertzoo.cli import main
from bertzoo.training.report import metric_history, quiet_dependency_noise, read_metrics_csv

NOISE = ("set_vital", "LeafSpec", "Tip: For seamless", "Total FLOPs", "v_num")


@pytest.fixture(scope="module")
def finished_fit(tiny_backbone_dir, tmp_path_factory):
    """A classification fit of 6 steps validated every 2 (three validations), its output."""
    import os

    from bertzoo.tasks.classification import example_data
    folder = tmp_path_factory.mktemp("report")
    files = example_data(folder)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        import contextlib
        import io
        out, err = io.StringIO(), io.StringIO()
        args = ["fit", "--task", "classification", f"--model.backbone={tiny_backbone_dir}",
                f"--data.train_file={files['train_file']}",
                f"--data.validation_file={files['validation_file']}", "--data.batch_size=4",
                "--trainer.max_steps=6", "--trainer.val_check_interval=2",
                "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false"]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(args)
    finally:
        os.chdir(cwd)
    return {"folder": folder, "status": status, "out": out.getvalue(), "err": err.getvalue(),
            "files": files, "run": folder / "runs/classification/version_0"}


def summary_value(out: str, pattern: str) -> str:
    found = re.search(pattern, out, flags=re.MULTILINE)
    assert found, f"no {pattern!r} in:\n{out}"
    return found.group(1)


def test_the_run_folder_is_named_when_the_run_starts(finished_fit):
    assert finished_fit["status"] == 0, finished_fit["err"]
    first = finished_fit["out"].splitlines()[0]
    assert first == "bertzoo fit: run folder runs/classification/version_0"


def test_summary_names_the_best_metric_from_metrics_csv_and_existing_checkpoints(finished_fit):
    out, run = finished_fit["out"], finished_fit["run"]
    rows = read_metrics_csv(run / "metrics.csv")
    history = metric_history(rows, "val/accuracy")
    assert len(history) == 3, history  # three validations
    best = max(value for _, value in history)
    assert summary_value(out, r"^  val/accuracy +best ([\d.]+), final") == f"{best:.4f}"
    assert summary_value(out, r"^  val/accuracy +best [\d.]+, final ([\d.]+)  \(3 validations; "
                              r"the best checkpoint's, max\)$") == f"{history[-1][1]:.4f}"
    best_ckpt = Path(summary_value(out, r"^  best checkpoint  (\S+)$"))
    last_ckpt = Path(summary_value(out, r"^  last checkpoint  (\S+)$"))
    for path in (best_ckpt, last_ckpt):
        assert (finished_fit["folder"] / path).is_file(), path
    assert last_ckpt.name == "last.ckpt" and best_ckpt.parent == last_ckpt.parent
    assert re.search(r"^bertzoo fit: finished in \d+s: 6 steps", out, flags=re.MULTILINE)


def test_next_commands_run_as_printed(finished_fit, monkeypatch, capsys):
    """The printed `bertzoo test` command, pasted into a shell, evaluates the best checkpoint."""
    out = finished_fit["out"]
    commands = [line.strip() for line in out.split("\nnext:\n", 1)[1].splitlines()]
    verbs = [shlex.split(c)[1] for c in commands]
    assert verbs[:3] == ["test", "predict", "export"]
    best = summary_value(out, r"^  best checkpoint  (\S+)$")
    assert all(best in c for c in commands)
    monkeypatch.chdir(finished_fit["folder"])
    assert main(shlex.split(commands[0])[1:] + ["--trainer.enable_progress_bar=false"]) == 0
    assert "test/accuracy" in capsys.readouterr().out  # validate/test keep their metric table


def test_no_dependency_noise_but_bertzoos_own_warnings(finished_fit):
    for noise in NOISE:
        assert noise not in finished_fit["err"] + finished_fit["out"], noise


def test_noise_filters_name_exact_messages():
    """The filters hide the listed messages only: another warning of the same category, or a
    message that merely mentions the same words, is still shown."""
    quiet_dependency_noise()
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        quiet_dependency_noise()
        warnings.warn("'set_vital' is deprecated, please do not call", UserWarning)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("data.max_length is deprecated", UserWarning)
        warnings.warn("'set_vital' is deprecated, please do not call", DeprecationWarning)
        warnings.warn("Checkpoint directory runs/x/version_0/checkpoints exists and is not "
                      "empty.", UserWarning)
        warnings.warn("Checkpoint directory runs/x exists and is not empty. Really", UserWarning)
    assert [str(w.message) for w in shown] == [
        "data.max_length is deprecated", "'set_vital' is deprecated, please do not call",
        "Checkpoint directory runs/x exists and is not empty. Really"]


def test_lightning_log_lines_go_through_a_live_progress_bar(monkeypatch):
    """A Lightning log line written while the Rich bar is live ("`Trainer.fit` stopped:
    `max_steps=30` reached.") goes through Rich, which prints it above the bar. Lightning's
    handler wrote it to the stderr of the moment Lightning was imported, past Rich: in a
    terminal the line landed after the bar's text and the bar, redrawn below it, showed twice
    (docs/terminal.md)."""
    import io
    import logging
    import sys

    from rich.console import Console
    from rich.progress import Progress
    before_rich = io.StringIO()  # the stderr Lightning's handler took when it was imported
    logger = logging.getLogger("lightning.pytorch")
    monkeypatch.setattr(logger, "handlers", [logging.StreamHandler(before_rich)])
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(sys, "stderr", before_rich)
    quiet_dependency_noise()
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, force_interactive=True, width=100)
    with Progress(console=console, auto_refresh=False) as progress:
        epoch = progress.add_task("Epoch 0/0", total=125)
        progress.update(epoch, completed=30)
        progress.refresh()
        logging.getLogger("lightning.pytorch.loops.fit_loop").info(
            "`Trainer.fit` stopped: `max_steps=30` reached.")
        progress.refresh()
    assert "`Trainer.fit` stopped: `max_steps=30` reached." in screen.getvalue()
    assert before_rich.getvalue() == ""
    # and without a bar, the line is on stderr as before
    logging.getLogger("lightning.pytorch.loops.fit_loop").info("Restoring states")
    assert before_rich.getvalue() == "Restoring states\n"


def test_in_a_log_the_bar_is_one_line(tiny_backbone_dir, tmp_path, monkeypatch):
    """stdout not a terminal (CI, `| tee run.log`): the bar is printed once, when it ends, on
    one line with its metrics (at Rich's width for a file, 80 columns, they took three)."""
    import contextlib
    import io

    from bertzoo.tasks.classification import example_data
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COLUMNS", raising=False)
    files = example_data(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["fit", "--task", "classification", f"--model.backbone={tiny_backbone_dir}",
                     f"--data.train_file={files['train_file']}",
                     f"--data.validation_file={files['validation_file']}",
                     "--data.batch_size=4", "--trainer.max_steps=2",
                     "--trainer.val_check_interval=1", "--trainer.limit_val_batches=1",
                     "--trainer.num_sanity_val_steps=0"]) == 0
    bars = [line for line in out.getvalue().splitlines() if line.startswith("Epoch 0/")]
    assert len(bars) == 1, out.getvalue()
    assert re.search(r" 2/\d+ .* loss: [\d.]+ accuracy: [\d.]+ tokens/s: [\d,]+ *$", bars[0]), \
        bars[0]


def test_a_resumed_run_reads_its_checkpoint_with_weights_only(tiny_backbone_dir, tmp_path,
                                                              monkeypatch):
    """`--ckpt_path` resumes through bertzoo's checkpoint reader (`torch.load` with
    `weights_only=True`), and neither saving nor resuming makes Lightning log "`weights_only`
    was not set, defaulting to `False`" (it did at every save, once)."""
    import logging

    import torch

    from bertzoo.tasks.classification import example_data
    monkeypatch.chdir(tmp_path)
    files = example_data(tmp_path)
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    collector = Collect()
    logging.getLogger("lightning.pytorch").addHandler(collector)
    loads: list[object] = []
    real_load = torch.load

    def load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    args = ["fit", "--task", "classification", f"--model.backbone={tiny_backbone_dir}",
            f"--data.train_file={files['train_file']}",
            f"--data.validation_file={files['validation_file']}", "--data.batch_size=4",
            "--trainer.val_check_interval=1", "--trainer.limit_val_batches=1",
            "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false"]
    try:
        assert main([*args, "--trainer.max_steps=1"]) == 0
        monkeypatch.setattr(torch, "load", load)
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            assert main([*args, "--trainer.max_steps=2", "--ckpt_path=last"]) == 0
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(collector)
    # the run resumes in its own folder on purpose: Lightning's note that the checkpoint
    # folder is not empty is not shown
    assert not [w for w in shown if "exists and is not empty" in str(w.message)], \
        [str(w.message) for w in shown]
    assert any(m.startswith("Restoring states from the checkpoint path at") for m in seen)
    assert not [m for m in seen if "weights_only" in m], seen
    assert loads and all(weights_only is True for weights_only in loads), loads
    resumed = real_load(tmp_path / "runs/classification/version_0/checkpoints/last.ckpt",
                        weights_only=True)
    assert resumed["global_step"] == 2


def test_summary_reads_best_and_final_from_metrics_csv(tmp_path):
    """Best (by the monitor's mode) and final value of the monitored metric, from a metrics.csv
    whose values differ: the best is neither the first nor the last."""
    from types import SimpleNamespace

    from bertzoo.training.report import RunSummary
    run = tmp_path / "runs/classification/version_0"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("best-4.ckpt", "last.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"")
    (run / "metrics.csv").write_text(
        "epoch,step,train/loss,val/accuracy,val/loss\n"
        "0,1,0.9,,\n0,1,,0.50,0.70\n0,3,,0.75,0.60\n0,5,,0.625,0.65\n")
    best_path = str(run / "checkpoints/best-4.ckpt")
    for mode, best in (("max", "0.7500"), ("min", "0.5000")):
        trainer = SimpleNamespace(
            log_dir=str(run), global_step=6, current_epoch=1, callbacks=[], datamodule=None,
            checkpoint_callback=SimpleNamespace(monitor="val/accuracy", mode=mode,
                                                best_model_path=best_path))
        text = RunSummary("fit").render(trainer)
        assert f"  val/accuracy  best {best}, final 0.6250  (3 validations; the best " \
               f"checkpoint's, {mode})" in text.splitlines()
        assert "  val/loss      final 0.6500" in text.splitlines()
        assert f"  best checkpoint  {run / 'checkpoints/best-4.ckpt'}" in text.splitlines()


def test_the_terminal_page_shows_what_a_run_prints_now():
    """docs/terminal.md's captures of today's output (in a terminal, in a log, resumed): one
    bar, no dependency noise, and a summary in the format RunSummary prints; the older
    release's capture, labelled as such, shows what changed. Recapture when the output
    changes."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "terminal.md").read_text()
    sections = dict(re.findall(r"\n## ([^\n]+)\n(.*?)(?=\n## |\Z)", page, flags=re.S))
    assert list(sections) == ["In a terminal", "In a log", "Resuming",
                              "What an older release showed"]
    for name in ("In a terminal", "In a log", "Resuming"):
        capture = re.search(r"```text\n(.*?)```", sections[name], flags=re.S).group(1)
        lines = capture.splitlines()
        assert lines[0].startswith("$ bertzoo fit --config recipes/classification/sst2.yaml")
        assert lines[2] == "bertzoo fit: run folder runs/classification/version_0", name
        assert len([line for line in lines if line.startswith("Epoch ")]) == 1, name
        assert not [noise for noise in NOISE if noise in capture], name
        assert "weights_only" not in capture and "exists and is not empty" not in capture
        steps = 30 if name == "Resuming" else 20
        assert re.search(rf"^bertzoo fit: finished in [\dms ]+: {steps} steps, 1 epoch\(s\); "
                         rf"run folder runs/classification/version_0$", capture, flags=re.M)
        assert re.search(r"^  val/accuracy  best [\d.]+, final [\d.]+  \(\d validations; the "
                         r"best checkpoint's, max\)$", capture, flags=re.M), name
        assert re.search(r"^  best checkpoint  runs/classification/version_0/checkpoints/"
                         r"best-\d+\.ckpt$", capture, flags=re.M), name
        assert [line.split()[1] for line in capture.split("\nnext:\n")[1].splitlines()
                if line.startswith("  bertzoo ")] == ["test", "predict", "export", "serve"]
    before = sections["What an older release showed"]
    assert "older release" in before and "v_num" in before and "Total FLOPs: 0" in before
