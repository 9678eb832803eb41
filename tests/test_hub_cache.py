"""Hub ids as backbones without the network: under a truthy HF_HUB_OFFLINE, `resolve` reads the
local Hugging Face cache (laid out here as huggingface_hub lays it out), says clearly when the
model is not there, and takes repositories that have only `pytorch_model.bin`."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants

from bertzoo import BertEncoder
from bertzoo.checkpoint import read_weights
from bertzoo.files import hub_offline, resolve

REVISION = "0123456789abcdef0123456789abcdef01234567"


def fake_cache(cache: Path, repo_id: str, backbone: Path, weights: str) -> Path:
    """models--org--name/{refs/main, snapshots/<rev>/...} holding `backbone`'s files, its
    weights as `weights` (model.safetensors or pytorch_model.bin)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        if (backbone / name).is_file():
            shutil.copy(backbone / name, snapshot / name)
    state = read_weights(backbone / "model.safetensors")
    if weights == "model.safetensors":
        shutil.copy(backbone / "model.safetensors", snapshot / weights)
    else:
        torch.save(state, snapshot / weights)
    return snapshot


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    # huggingface_hub reads HF_HUB_OFFLINE once, when it is imported; a variable set later
    # (here, or by a program before it calls bertzoo) must still keep bertzoo off the network.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub"


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_offline_hit_reads_the_local_cache(cache, tiny_backbone_dir, weights, monkeypatch):
    snapshot = fake_cache(cache, "someorg/tiny-bert", tiny_backbone_dir, weights)
    calls = []
    real = huggingface_hub.snapshot_download

    def spy(repo_id, **kwargs):  # a network error would also fall back to the cache: ask
        calls.append(kwargs)     # huggingface_hub for the cache alone
        return real(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    assert resolve("someorg/tiny-bert") == snapshot
    assert [c.get("local_files_only") for c in calls] == [True]
    encoder = BertEncoder.from_pretrained("someorg/tiny-bert")
    expected = BertEncoder.from_pretrained(tiny_backbone_dir)
    for key, value in expected.state_dict().items():
        assert torch.equal(value, encoder.state_dict()[key]), key


def test_offline_miss_says_not_in_the_local_cache(cache, tiny_backbone_dir):
    fake_cache(cache, "someorg/tiny-bert", tiny_backbone_dir, "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"'someorg/other-bert' is not in the local "
                                                r"cache \(offline mode"):
        resolve("someorg/other-bert")


@pytest.mark.parametrize("value,offline", [("1", True), ("true", True), ("YES", True),
                                           ("on", True), ("0", False), ("false", False),
                                           ("", False), ("no", False)])
def test_offline_is_a_truthy_value_not_a_set_variable(monkeypatch, value, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub_offline() is offline


def test_online_falls_back_to_pytorch_model_bin(tmp_path, monkeypatch, tiny_backbone_dir):
    """A repository without safetensors: the second download asks for pytorch_model.bin."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    snapshot = fake_cache(tmp_path, "classic/bert", tiny_backbone_dir, "pytorch_model.bin")
    calls = []

    def snapshot_download(repo_id, allow_patterns, local_files_only=False):
        calls.append((repo_id, allow_patterns, local_files_only))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert resolve("classic/bert") == snapshot
    assert [c[2] for c in calls] == [False, False]
    assert "*.safetensors" in calls[0][1] and "pytorch_model*.bin" not in calls[0][1]
    assert "pytorch_model*.bin" in calls[1][1]
