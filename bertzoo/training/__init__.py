"""What every bertzoo LightningModule and run shares, one concern per module:

- `module`: `BertModule`, the base of every bertzoo LightningModule (optimizer and schedule,
  metric logging, the checkpoint's `bertzoo` entry, dropout that resumes exactly);
- `encoder`: where the encoder comes from, a checkpoint (`model.backbone`) or a configuration
  (`model.config`): one rule for every module;
- `optim`: BERT's AdamW parameter groups and warm-up/linear-decay schedule, and its length;
- `distributed`: a loss's share of a mean over every process;
- `callbacks`: the best and the last checkpoint, throughput, non-finite losses, Ctrl-C;
- `loggers`: the CSV logger whose metrics.csv a resumed run continues;
- `checkpoint_io`: checkpoints written atomically, read with `weights_only`, resumed only by
  the module that wrote them;
- `data`: `BertDataModule`, the base of every data module (tokenizer, model links, resumable
  loaders);
- `process`: process settings for computing on CPU;
- `lightning_compat`: the only uses of Lightning internals, each checked by a test.

Pretraining (`bertzoo.pretraining.PretrainingModule`) and every task (`TaskModule`, built-in or
plugin) subclass `BertModule`, so a checkpoint of any of them carries the same
`checkpoint["bertzoo"]` entry (config, tokenizer, module) and
`BertEncoder.from_pretrained(ckpt)` reads any of them.
"""

from bertzoo.training.callbacks import (BestCheckpoint, LastCheckpoint, NonFiniteLossError,
                                        SaveOnInterrupt, StopOnNonFiniteLoss, TokensPerSecond,
                                        TrainingInterrupted, save_logs)
from bertzoo.training.checkpoint_io import AtomicCheckpointIO, refuse_another_modules_checkpoint
from bertzoo.training.data import BertDataModule
from bertzoo.training.distributed import share_of_global_mean
from bertzoo.training.encoder import (build_encoder, check_backbone_or_config, check_vocab_size,
                                      config_from)
from bertzoo.training.loggers import AppendingCSVLogger, MetricsFile
from bertzoo.training.module import BertModule, StageMetrics, attached_trainer
from bertzoo.training.optim import (parameter_groups, schedule_length,
                                    warmup_then_linear_decay)
from bertzoo.training.process import tune_cpu_process

__all__ = [
    "AppendingCSVLogger", "AtomicCheckpointIO", "BertDataModule", "BertModule", "BestCheckpoint",
    "LastCheckpoint", "MetricsFile", "NonFiniteLossError", "SaveOnInterrupt", "StageMetrics",
    "StopOnNonFiniteLoss", "TokensPerSecond", "TrainingInterrupted", "attached_trainer",
    "build_encoder", "check_backbone_or_config", "check_vocab_size", "config_from",
    "parameter_groups", "refuse_another_modules_checkpoint", "save_logs", "schedule_length",
    "share_of_global_mean", "tune_cpu_process", "warmup_then_linear_decay",
]
