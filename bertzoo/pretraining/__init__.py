"""BERT pretraining (masked LM + next sentence prediction): corpus readers, the embedded default
corpus, google-research/bert's sentence-pair instances, dynamic masking, and the Lightning
`PretrainingDataModule` / `PretrainingModule` that `bertzoo pretrain` runs."""

from bertzoo.pretraining.corpus import CorpusError, split_sentences
from bertzoo.pretraining.datamodule import PretrainingDataModule
from bertzoo.pretraining.instances import InstanceConfig, document_instances
from bertzoo.pretraining.masking import MaskingCollator
from bertzoo.pretraining.module import PretrainingModule

__all__ = ["PretrainingModule", "PretrainingDataModule", "MaskingCollator", "InstanceConfig",
           "document_instances", "CorpusError", "split_sentences"]
