"""What every layer shares about checkpoint files, with no dependency on the rest of bertzoo:
the key bertzoo modules write into a Lightning checkpoint, the error for a file that cannot be
used, where a path given for weights points (`resolve`), the one way a pickled checkpoint is
read, and the one way any file is written.

Reading: `.ckpt` and `.bin` files are pickles, read with `torch.load(weights_only=True)`, which
refuses anything but tensors and plain containers, so loading a checkpoint cannot run code.
Writing: to a temporary name in the same folder, then renamed, so a crash or a full disk never
leaves half a file behind.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

# Key written into every bertzoo Lightning checkpoint by the LightningModules.
CKPT_KEY = "bertzoo"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as BERT weights; the message names the file and key."""


class InputFileError(ValueError):
    """A user's file that is not what bertzoo expects (binary, another encoding, another
    layout); the message names the file, the line where that helps, and what was expected."""


# How much of a text file is checked before a library parses it: enough to catch a binary file
# or another encoding at once; a bad byte further on is reported by the file's reader.
TEXT_CHECK_BYTES = 1 << 20


def check_text_file(path: str | os.PathLike, expected: str = "UTF-8 text") -> None:
    """Refuse a file that is not UTF-8 text before `datasets`, `tokenizers` or a reader of
    bertzoo's parses it (their errors name neither the file nor the line): a binary file (a
    NUL byte), UTF-16, or another 8-bit encoding, with the line of the first bad byte."""
    import codecs
    with open(path, "rb") as file:
        head = file.read(TEXT_CHECK_BYTES)
        whole = not file.read(1)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputFileError(f"{path} is UTF-16 text; expected {expected} (save it as UTF-8)")
    nul = head.find(b"\x00")
    if nul >= 0:
        line = head.count(b"\n", 0, nul) + 1
        raise InputFileError(f"{path}, line {line}: a NUL byte; this looks like a binary file, "
                             f"not {expected}")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=whole)
    except UnicodeDecodeError as err:
        line = head.count(b"\n", 0, err.start) + 1
        raise InputFileError(f"{path}, line {line}: byte 0x{head[err.start]:02x} is not UTF-8; "
                             f"expected {expected} (save the file as UTF-8)") from None


def describe_load_error(err: BaseException) -> str:
    """torch.load's error in one line: its first sentence, and for a pickle that
    `weights_only=True` refuses, the object it would have built ("test.Payload")."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first = re.sub(r"\x1b\[[0-9;]*m", "", lines[0]) if lines else ""
    first = first.split(". ")[0].rstrip(".")
    refused = next((re.search(r"Unsupported global: GLOBAL (\S+)", line) for line in lines
                    if "Unsupported global" in line), None)
    detail = f": it would construct {refused.group(1)}, which is not a tensor or plain data" \
        if refused else ""
    return f"{type(err).__name__}: {first}{detail}"


def read_torch_file(path: str | os.PathLike, described_as: str | None = None,
                    mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` on CPU: the one place bertzoo reads a pickled
    checkpoint. A missing file is a FileNotFoundError, anything torch cannot read (truncated,
    not a checkpoint, a pickle of arbitrary objects) a CheckpointError; both name the file as
    `described_as` (default: the path)."""
    name = described_as or str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such checkpoint: {name}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises several types for truncated or foreign pickles
        raise CheckpointError(f"{name} is not a readable checkpoint "
                              f"({describe_load_error(err)})") from err


def read_lightning_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A bertzoo Lightning checkpoint, read without running pickled code."""
    ckpt = read_torch_file(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict' key)")
    if CKPT_KEY not in ckpt:
        raise CheckpointError(f"{path} was not written by a bertzoo module (no {CKPT_KEY!r} "
                              f"entry holding the model config)")
    return ckpt


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call `write(tmp_path)`, then rename onto `path`: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates the file readable by its owner only; give the result the permissions
        # any new file gets (0o666 minus the umask), so a shared run folder stays readable.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def resolve(path: str | os.PathLike) -> Path:
    """A local file/folder as is; otherwise a Hugging Face Hub id, downloaded into (or, with
    a truthy HF_HUB_OFFLINE, looked up in) the local Hugging Face cache."""
    local = Path(path).expanduser()
    if local.exists():
        return local
    text = str(path)
    looks_like_hub_id = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text) and not text.startswith(".")
    if looks_like_hub_id:
        return _from_hub(text)
    raise FileNotFoundError(f"no such file or folder: {text} (expected a Hugging Face BERT folder, "
                            f"a bertzoo export folder or a Lightning .ckpt file)")


HUB_FILES = ["config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
             "special_tokens_map.json"]
HUB_SAFETENSORS = ["*.safetensors", "*.safetensors.index.json"]
# Many classic BERTs (bert-base-cased, ...) have PyTorch weights only.
HUB_PYTORCH_BIN = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it: 1/ON/YES/TRUE (any case) mean offline."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _from_hub(repo_id: str) -> Path:
    """The snapshot folder of a Hub model: BERT's config, tokenizer and weights (safetensors,
    else pytorch_model.bin). Offline, only the local cache is read."""
    from huggingface_hub import snapshot_download
    offline = hub_offline()
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES + HUB_SAFETENSORS,
                                        local_files_only=offline))
        if not offline and not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES + HUB_PYTORCH_BIN))
        return folder
    except Exception as err:
        if offline:
            raise FileNotFoundError(
                f"no such file or folder: {repo_id}, and the Hugging Face Hub model {repo_id!r} "
                f"is not in the local cache (offline mode: HF_HUB_OFFLINE="
                f"{os.environ.get('HF_HUB_OFFLINE')}); download it once online, or unset "
                f"HF_HUB_OFFLINE") from err
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local file or folder nor a Hugging Face Hub model that "
            f"could be downloaded ({type(err).__name__}: {err})") from err
