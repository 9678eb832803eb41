"""Lightning checkpoints on disk: written atomically, read without running pickled code, and
resumed only by the module that wrote them."""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from bertzoo.files import CheckpointError, atomic_write, describe_load_error, read_torch_file


def refuse_another_modules_checkpoint(written_by: str | None, module_class: type, source: str,
                                      describe: Callable[[str], str] = str) -> None:
    """--ckpt_path resumes (or evaluates) the module that wrote the checkpoint: one of another
    task is refused, naming both. Checked by the CLI before Lightning merges the checkpoint's
    hyper-parameters (its `describe` adds the task's name to a module's), and by
    `BertModule.on_load_checkpoint` for runs outside the CLI."""
    mine = f"{module_class.__module__}.{module_class.__qualname__}"
    if written_by and written_by != mine:
        raise CheckpointError(
            f"{source} was written by {describe(written_by)}, but this run is "
            f"{describe(mine)}: --ckpt_path resumes or evaluates the module that wrote "
            f"it; to start a new task from that checkpoint, pass it as --model.backbone")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary name in the same folder, flushed to disk, then
    renamed over the old file (`bertzoo.files.atomic_write`): a crash or a full disk while
    saving leaves the previous checkpoint whole, and no temporary file behind. (Lightning's own
    writer serialises the whole checkpoint into memory first, a second copy of it.)

    Loading reads with `torch.load(weights_only=True)` (tensors and plain containers only; a
    bertzoo checkpoint holds nothing else) and names the file when it cannot be read.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote: fsspec

        def write(tmp: str) -> None:
            torch.save(checkpoint, tmp)
            with open(tmp, "rb") as file:
                os.fsync(file.fileno())  # on disk before the rename makes it the checkpoint

        atomic_write(path, write)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None):
        if "://" in str(path) or map_location is not None or weights_only is False:
            kwargs = {} if weights_only is None else {"weights_only": weights_only}
            try:
                return super().load_checkpoint(path, map_location=map_location or "cpu", **kwargs)
            except Exception as err:  # truncated, not a checkpoint, or pickled objects
                raise CheckpointError(f"{path} is not a readable checkpoint "
                                      f"({describe_load_error(err)})") from err
        return read_torch_file(path)
