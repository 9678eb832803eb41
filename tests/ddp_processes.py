"""DDP processes for tests that read a streamed corpus (a module of its own, not conftest.py:
the strategy is pickled to the processes by its module's name, and with several conftest.py
files in one session the name `conftest` is not always this folder's)."""

import itertools

import torch
from lightning.pytorch.strategies import DDPStrategy


def forkserver_ddp():
    """A 2-process DDP strategy whose processes come from a fresh fork server, for runs that
    read a streamed corpus. A plain fork copies this pytest process with whatever threads
    earlier tests left running (Arrow's readers among them); a forked rank that then forks its
    own DataLoader worker died of SIGSEGV once in a full-suite run. The server imports torch,
    Lightning, datasets and bertzoo once, single-threaded, and forks each rank from there."""
    import multiprocessing

    multiprocessing.set_forkserver_preload(["torch", "lightning", "datasets",
                                            "bertzoo.pretraining"])
    return _ForkserverDDP(start_method="forkserver")


class _ForkserverDDP(DDPStrategy):
    """The ranks receive the model pickled, and torch.multiprocessing pickles CPU tensors as
    shared memory: every rank would update the same weights in place, a race (seen here as
    two identical runs ending with different weights). Lightning gives each rank its own copy
    only for start_method "spawn"; this does the same for "forkserver"."""

    def setup(self, trainer) -> None:
        with torch.no_grad():
            for tensor in itertools.chain(self.model.parameters(), self.model.buffers()):
                tensor.data = tensor.data.clone()
        super().setup(trainer)
