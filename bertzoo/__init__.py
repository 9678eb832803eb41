"""bertzoo: BERT pretraining and fine-tuning as a PyTorch Lightning task zoo.

The encoder, config, checkpoint and tokenizer API load with torch alone; the Lightning parts
(`PretrainingModule`, the task registry and base classes) load on first use.
"""

from bertzoo.checkpoint import CheckpointError, save_pretrained
from bertzoo.config import BertConfig, ConfigError
from bertzoo.model import BertEncoder, BertForPreTraining, BertOutput, PreTrainingOutput
from bertzoo.tokenizer import TokenizerError, load_tokenizer, save_tokenizer, train_tokenizer

__version__ = "0.1.0"

_LAZY = {
    "PretrainingModule": "bertzoo.pretraining",
    "PretrainingDataModule": "bertzoo.pretraining",
    "TaskModule": "bertzoo.tasks",
    "TaskDataModule": "bertzoo.tasks",
    "TaskSpec": "bertzoo.tasks",
    "get_task": "bertzoo.tasks",
    "list_tasks": "bertzoo.tasks",
    "load": "bertzoo.inference",
    "Predictor": "bertzoo.inference",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bertzoo' has no attribute {name!r}")


__all__ = [
    "BertConfig", "ConfigError", "BertEncoder", "BertForPreTraining", "BertOutput",
    "PreTrainingOutput", "CheckpointError", "save_pretrained", "TokenizerError",
    "load_tokenizer", "save_tokenizer", "train_tokenizer", *_LAZY,
]
