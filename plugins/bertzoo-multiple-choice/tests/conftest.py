"""The plugin's tests need nothing from bertzoo's own test suite: a tiny random BERT comes from
`bertzoo.testing`, data is written by the tests."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "HF_DATASETS_CACHE" not in os.environ:
    import atexit  # noqa: E402
    import shutil  # noqa: E402

    os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="bertzoo-mc-test-datasets-")
    atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def backbone(tmp_path_factory):
    from bertzoo.testing import tiny_backbone
    return tiny_backbone(tmp_path_factory.mktemp("tiny-backbone"))
