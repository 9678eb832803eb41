"""bertzoo: BERT pretraining and fine-tuning as a PyTorch Lightning task zoo."""

from bertzoo.config import BertConfig, ConfigError
from bertzoo.model import BertEncoder, BertForPreTraining, BertOutput, PreTrainingOutput
from bertzoo.checkpoint import CheckpointError, save_pretrained
from bertzoo.tokenizer import TokenizerError, load_tokenizer, save_tokenizer, train_tokenizer

__version__ = "0.1.0"

__all__ = [
    "BertConfig", "ConfigError", "BertEncoder", "BertForPreTraining", "BertOutput",
    "PreTrainingOutput", "CheckpointError", "save_pretrained", "TokenizerError",
    "load_tokenizer", "save_tokenizer", "train_tokenizer",
]
