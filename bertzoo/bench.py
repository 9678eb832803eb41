"""`bertzoo bench`: bertzoo against Hugging Face transformers, side by side in one process.

Both implementations get the same configuration, the same weights (copied through
`bertzoo.checkpoint`), the same batches, the same dropout (train mode, the config's rates) and
the same optimizer (AdamW); steps alternate between them so that a noisy machine slows both
alike, and the table reports medians of the timed steps and their ratio (ours / transformers in
tokens per second: > 1 means bertzoo is faster). Tokens are real (non-padding) tokens.

Rows:
    pretrain    a full MLM + NSP training step (forward, backward, optimizer), BERT-base and
                BERT-mini at T = 128: full rows, and realistic rows drawn from bertzoo's own
                NSP instance builder on the embedded corpus (short_seq_prob 0.1, document ends)
    finetune    a classification training step at SST-2 lengths (batch 32): against
                transformers padded to 128 (run_glue's default) and with dynamic padding
    inference   a classification forward pass at SST-2 lengths, no gradients
    onnx        the same forward pass exported to ONNX and run by onnxruntime, against bertzoo
                eager in the same run (ratio > 1: onnxruntime faster; needs bertzoo[onnx])
    memory      peak resident memory of a BERT-base pretraining step, each implementation in a
                fresh process (CUDA: peak allocated memory)
    flops       achieved GFLOP/s of the BERT-base full-row pretraining step (model FLOPs: what
                the step needs, MLM head on masked rows only) against a matmul ceiling measured
                in the same run
    pipeline    the data pipeline (tokenize + NSP instances + dynamic masking) in tokens per
                second, against the rate at which BERT-mini consumes tokens
    packing     masked LM only on full rows (`model.nsp: false`) against MLM + NSP on google's
                sentence-pair instances, bertzoo both sides, at T = 128 and 512 on the
                embedded corpus: the rows' fill (real tokens / row capacity) and real tokens
                per second of a training step

transformers is needed only here (`pip install transformers`); bertzoo itself never imports it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bertzoo.checkpoint import to_hf_state_dict
from bertzoo.config import BertConfig
from bertzoo.files import atomic_write
from bertzoo.model import IGNORE_INDEX, BertForPreTraining
from bertzoo.training import tune_cpu_process


@dataclass
class Row:
    section: str
    name: str
    ours: float  # tokens/s (or the section's unit)
    reference: float | None
    unit: str = "tok/s"
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.reference is None or not self.reference:
            return None
        return self.ours / self.reference if self.unit != "MB" else self.reference / self.ours


# ------------------------------------------------------------------------------ helpers
def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise SystemExit("bertzoo bench compares against Hugging Face transformers: "
                         "pip install transformers") from err
    return transformers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(steps: dict[str, Callable[[], Any]], repeats: int, warmup: int,
                     device: torch.device) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round-robin."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def hf_config(config: BertConfig):
    values = {k: v for k, v in config.to_hf().items() if k != "architectures"}
    return _transformers().BertConfig(**values, attn_implementation="sdpa")


def paired_pretraining_models(config: BertConfig, device: torch.device):
    torch.manual_seed(0)
    ours = BertForPreTraining(config)
    reference = _transformers().BertForPreTraining(hf_config(config))
    missing, unexpected = reference.load_state_dict(to_hf_state_dict(
        {**{k: v for k, v in ours.encoder.state_dict().items()},
         **{f"mlm_head.{k}": v for k, v in ours.mlm_head.state_dict().items()},
         **{f"nsp_head.{k}": v for k, v in ours.nsp_head.state_dict().items()}}), strict=False)
    assert not unexpected and all("decoder" in k or "position_ids" in k for k in missing), \
        (missing, unexpected)
    return ours.to(device).train(), reference.to(device).train()


def optimizer_for(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer both sides use: AdamW (fused kernel where PyTorch has one)."""
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01,
                             fused=device.type in ("cpu", "cuda"))


def pretraining_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     batch: dict[str, torch.Tensor], device: torch.device,
                     precision: str = "32") -> None:
    """One optimizer step of either implementation on the same batch (each takes its own
    argument names: bertzoo `mlm_labels`/`nsp_labels`, transformers `labels`/
    `next_sentence_label`)."""
    with autocast(device, precision):
        if isinstance(model, BertForPreTraining):
            loss = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                         mlm_labels=batch["mlm_labels"], nsp_labels=batch["nsp_labels"]).loss
        else:
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         token_type_ids=batch["token_type_ids"], labels=batch["mlm_labels"],
                         next_sentence_label=batch["nsp_labels"]).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def autocast(device: torch.device, precision: str):
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    import contextlib
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- batches
def full_rows(config: BertConfig, batch_size: int, seq_len: int, seed: int = 0,
              mlm_probability: float = 0.15) -> dict[str, torch.Tensor]:
    """A batch without padding: random ordinary tokens (ids above BERT's special and unused
    ones, 1000+, in a real vocabulary), 15% of them MLM targets, two segments."""
    g = torch.Generator().manual_seed(seed)
    lowest = min(1000, config.vocab_size // 2)  # tiny test vocabularies have < 1000 tokens
    input_ids = torch.randint(lowest, config.vocab_size, (batch_size, seq_len), generator=g)
    input_ids[:, 0] = min(101, lowest - 1)  # [CLS] in BERT's vocabulary
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, seq_len // 2:] = 1
    selected = torch.rand(batch_size, seq_len, generator=g) < mlm_probability
    mlm_labels = torch.where(selected, input_ids, IGNORE_INDEX)
    return {"input_ids": input_ids, "token_type_ids": token_type_ids,
            "attention_mask": torch.ones_like(input_ids), "mlm_labels": mlm_labels,
            "nsp_labels": torch.randint(0, 2, (batch_size,), generator=g)}


def realistic_rows(datamodule, batch_size: int, count: int, seed: int = 0) -> list[dict]:
    """Batches as `bertzoo pretrain` draws them: real instances, dynamic masking."""
    instances = datamodule.instances["train"]
    from bertzoo.pretraining.datamodule import InstanceDataset
    dataset = InstanceDataset(instances)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    batches = []
    for b in range(count):
        keys = [(0, int(i)) for i in order[b * batch_size:(b + 1) * batch_size]]
        batches.append(datamodule.collator(dataset.__getitems__(keys)))
    return batches


def pretraining_flops(config: BertConfig, batch: dict[str, torch.Tensor]) -> float:
    """Model FLOPs of one training step (forward + backward = 3x forward), counting only real
    tokens and the MLM head on masked rows: the work the step needs, not what a padded
    implementation spends."""
    H, I, L, V = (config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                  config.vocab_size)
    lengths = batch["attention_mask"].sum(1).double()
    tokens = float(lengths.sum())
    masked = float((batch["mlm_labels"] != IGNORE_INDEX).sum())
    per_token_linear = 2 * (4 * H * H + 2 * H * I)  # qkv + out, up + down
    attention = float((2 * 2 * lengths.pow(2) * H).sum())  # QK^T and PV
    forward = L * (tokens * per_token_linear + attention)
    forward += 2 * masked * (H * H + H * V) + 2 * lengths.numel() * (H * H + 2 * H)
    return 3 * forward


def matmul_ceiling(device: torch.device, dtype: torch.dtype, repeats: int = 10,
                   trials: int = 5) -> float:
    """GFLOP/s of the fastest of a few large matmuls (BERT-base FFN shapes and 2048^3), each
    the best of `trials` timings of `repeats` products into a preallocated output: a ceiling
    is the best the machine does, and a single timing on a noisy machine reads low (one run
    here measured 254 GFLOP/s where the best of five gives ~370)."""
    best = 0.0
    for m, k, n in ((1024, 768, 3072), (1024, 3072, 768), (2048, 2048, 2048)):
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        c = torch.empty(m, n, device=device, dtype=dtype)
        for _ in range(3):
            torch.mm(a, b, out=c)
        for _ in range(trials):
            _sync(device)
            start = time.perf_counter()
            for _ in range(repeats):
                torch.mm(a, b, out=c)
            _sync(device)
            best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9)
    return best


# ---------------------------------------------------------------------------- sections
def bench_pretraining(config: BertConfig, batches: list[dict], device, precision, repeats,
                      warmup) -> tuple[float, float, float]:
    """(our tokens/s, transformers' tokens/s, our seconds per step) over the given batches."""
    ours, reference = paired_pretraining_models(config, device)
    opt_ours, opt_ref = optimizer_for(ours, device), optimizer_for(reference, device)
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    cursor = {"ours": 0, "ref": 0}

    def next_batch(name):
        batch = batches[cursor[name] % len(batches)]
        cursor[name] += 1
        return batch

    def step_ours():
        pretraining_step(ours, opt_ours, next_batch("ours"), device, precision)

    def step_ref():
        pretraining_step(reference, opt_ref, next_batch("ref"), device, precision)

    seconds = time_alternating({"ours": step_ours, "ref": step_ref}, repeats, warmup, device)
    tokens = statistics.mean(float(b["attention_mask"].sum()) for b in batches)
    return tokens / seconds["ours"], tokens / seconds["ref"], seconds["ours"]


def sst2_texts(path: str | None, count: int, seed: int = 0) -> tuple[list[str], str]:
    """Sentences for the fine-tuning rows: SST-2's training file when given, else synthetic
    sentences of similar length."""
    import random
    if path and Path(path).is_file():
        lines = Path(path).read_text(encoding="utf-8").splitlines()[1:]
        texts = [line.split("\t")[0] for line in lines if line.strip()]
        random.Random(seed).shuffle(texts)
        return texts[:count], f"SST-2 rows from {path}"
    from bertzoo.synthetic import sentences
    return sentences(count, seed), "synthetic sentences (pass --sst2 for SST-2's lengths)"


def classification_pair(config: BertConfig, device):
    from bertzoo.tasks.classification import ClassificationModule
    torch.manual_seed(0)
    ours = ClassificationModule(config=config.to_dict(), vocab_size=config.vocab_size,
                                num_labels=2)
    reference = _transformers().BertForSequenceClassification(hf_config(config))
    state = {f"bert.{k}": v for k, v in to_hf_state_dict(ours.encoder.state_dict()).items()}
    state["classifier.weight"] = ours.classifier.weight.detach().clone()
    state["classifier.bias"] = ours.classifier.bias.detach().clone()
    reference.load_state_dict(state, strict=False)
    return ours.to(device), reference.to(device)


def encode_batches(tokenizer, texts: list[str], batch_size: int, pad_to: int | None,
                   max_length: int = 128) -> list[dict[str, torch.Tensor]]:
    from bertzoo.data import pad_to as pad
    tokenizer.enable_truncation(max_length)
    batches = []
    for start in range(0, len(texts) - batch_size + 1, batch_size):
        ids = [e.ids for e in tokenizer.encode_batch(texts[start:start + batch_size])]
        input_ids = pad(ids, 0, length=pad_to)
        mask = pad([[1] * len(i) for i in ids], 0, length=input_ids.shape[1])
        batches.append({"input_ids": input_ids, "attention_mask": mask,
                        "token_type_ids": torch.zeros_like(input_ids),
                        "labels": torch.randint(0, 2, (len(ids),))})
    tokenizer.no_truncation()
    return batches


def bench_classification(config, tokenizer, texts, batch_size, device, precision, repeats,
                         warmup, train: bool) -> dict[str, float]:
    ours, reference = classification_pair(config, device)
    dynamic = encode_batches(tokenizer, texts, batch_size, pad_to=None)
    padded = encode_batches(tokenizer, texts, batch_size, pad_to=128)
    dynamic = [{k: v.to(device) for k, v in b.items()} for b in dynamic]
    padded = [{k: v.to(device) for k, v in b.items()} for b in padded]
    ours.train(train)
    reference.train(train)
    opt_ours, opt_ref = optimizer_for(ours, device), optimizer_for(reference, device)
    cursors = {}

    def batch_of(name, batches):
        cursors[name] = cursors.get(name, -1) + 1
        return batches[cursors[name] % len(batches)]

    def run_ours():
        b = batch_of("ours", dynamic)
        with torch.set_grad_enabled(train), autocast(device, precision):
            logits = ours(b)
            loss = ours.loss(logits, b)
        if train:
            loss.backward()
            opt_ours.step()
            opt_ours.zero_grad(set_to_none=True)

    def runner(name, batches):
        def run():
            b = batch_of(name, batches)
            with torch.set_grad_enabled(train), autocast(device, precision):
                out = reference(**b)
            if train:
                out.loss.backward()
                opt_ref.step()
                opt_ref.zero_grad(set_to_none=True)
        return run

    steps = {"ours": run_ours, "ref_dynamic": runner("ref_dynamic", dynamic)}
    if train:
        steps["ref_padded"] = runner("ref_padded", padded)
    seconds = time_alternating(steps, repeats, warmup, device)
    tokens = statistics.mean(float(b["attention_mask"].sum()) for b in dynamic)
    return {name: tokens / s for name, s in seconds.items()}


def bench_onnx_inference(config, tokenizer, texts, batch_size, repeats, warmup
                         ) -> dict[str, float]:
    """Tokens/s of a classification forward pass (CPU), bertzoo eager against its ONNX export
    run by onnxruntime, on the same dynamically padded batches, alternating."""
    import tempfile

    import onnxruntime

    from bertzoo.onnx_export import export_graph, max_difference
    from bertzoo.tasks.classification import ClassificationModule
    torch.manual_seed(0)
    module = ClassificationModule(config=config.to_dict(), vocab_size=config.vocab_size,
                                  num_labels=2).eval()
    batches = encode_batches(tokenizer, texts, batch_size, pad_to=None)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        _, inputs, outputs, _ = export_graph(module, batches[0], path)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cursors = {"eager": -1, "onnxruntime": -1}

    def batch_of(name):
        cursors[name] += 1
        return batches[cursors[name] % len(batches)]

    def eager():
        with torch.inference_mode():
            module(batch_of("eager"))

    def graph():
        batch = batch_of("onnxruntime")
        session.run(outputs, {name: batch[name].numpy() for name in inputs})

    with torch.inference_mode():
        difference = max(max_difference(module(b), torch.from_numpy(session.run(
            outputs, {n: b[n].numpy() for n in inputs})[0]), b["attention_mask"])
                         for b in batches[:3])
    seconds = time_alternating({"eager": eager, "onnxruntime": graph}, repeats, warmup,
                               torch.device("cpu"))
    tokens = statistics.mean(float(b["attention_mask"].sum()) for b in batches)
    return {**{name: tokens / s for name, s in seconds.items()}, "max_diff": difference}


def _peak_memory_child(kind: str, config_dict: dict, batch: dict, queue) -> None:
    # bertzoo's modules apply tune_cpu_process; transformers runs with glibc's defaults, which
    # give it the lower peak (~3,300 MB against 3,615 MB with bertzoo's settings).
    if kind == "ours":
        tune_cpu_process()
    config = BertConfig.from_dict(config_dict)
    torch.manual_seed(0)  # only the measured model is built: the weights' values do not matter
    model = (BertForPreTraining(config) if kind == "ours"
             else _transformers().BertForPreTraining(hf_config(config))).train()
    optimizer = optimizer_for(model, torch.device("cpu"))
    for _ in range(2):
        pretraining_step(model, optimizer, batch, torch.device("cpu"))
    queue.put(_peak_rss_mib())


def _peak_rss_mib() -> float:
    """This process's peak resident memory. On Linux from /proc/self/status (VmHWM, the peak of
    this process's own address space): getrusage's ru_maxrss also keeps the peak of the
    address space replaced at exec, i.e. the parent's resident memory at the fork that started
    this process, which swamps what the child used."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        pass
    import resource  # POSIX only
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB


def peak_memory(config: BertConfig, batch: dict, device: torch.device) -> dict[str, float]:
    """Peak memory (MiB) of two pretraining steps of each implementation."""
    if device.type == "cuda":
        ours, reference = paired_pretraining_models(config, device)
        result = {}
        for kind, model in (("ours", ours), ("ref", reference)):
            other = reference if kind == "ours" else ours
            other.cpu()
            model.to(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            b = {k: v.to(device) for k, v in batch.items()}
            optimizer = optimizer_for(model, device)
            for _ in range(2):
                pretraining_step(model, optimizer, b, device)
            result[kind] = torch.cuda.max_memory_allocated(device) / 2**20
        return result
    import multiprocessing
    context = multiprocessing.get_context("spawn")
    result = {}
    for kind in ("ours", "ref"):
        queue = context.Queue()
        process = context.Process(target=_peak_memory_child,
                                  args=(kind, config.to_dict(), batch, queue))
        process.start()
        result[kind] = queue.get()
        process.join()
    return result


def bench_pipeline(datamodule, max_documents: int | None = None) -> tuple[float, int]:
    """Tokens/s of tokenize + NSP instances + masking over the corpus, uncached."""
    from bertzoo.pretraining.datamodule import tokenize_documents
    from bertzoo.pretraining.instances import DocumentPool, build_instances
    documents = datamodule.documents()["train"]
    sentences = documents["sentences"]
    if max_documents:
        sentences = sentences[:max_documents]
    tokenizer = datamodule.tokenizer
    config = datamodule.tokenizer_instance_config()
    collator = datamodule.collator
    start = time.perf_counter()
    tokenized = []
    for i in range(0, len(sentences), 256):
        tokenized += tokenize_documents({"sentences": sentences[i:i + 256]},
                                        tokenizer)["sentence_ids"]
    pool = DocumentPool(tokenized)
    instances = build_instances({"sentence_ids": tokenized}, list(range(len(tokenized))),
                                config, pool=pool)
    rows = [{"input_ids": ids, "token_type_ids": types, "nsp_label": label, "index": i,
             "epoch": 0} for i, (ids, types, label) in enumerate(
        zip(instances["input_ids"], instances["token_type_ids"], instances["nsp_label"]))]
    tokens = 0
    for i in range(0, len(rows), 32):
        batch = collator(rows[i:i + 32])
        tokens += int(batch["attention_mask"].sum())
    return tokens / (time.perf_counter() - start), tokens


def bench_packing(config: BertConfig, tokenizer: str | None, vocab_size: int, seq_len: int,
                  batch_size: int, device, precision, repeats, warmup) -> Row:
    """Masked-LM-only full rows against NSP instances at one length: (fill, tokens/s) each."""
    from bertzoo.pretraining import PretrainingDataModule
    batches, fill = {}, {}
    for nsp in (True, False):
        datamodule = PretrainingDataModule(tokenizer=tokenizer, tokenizer_vocab_size=vocab_size,
                                           max_seq_length=seq_len, batch_size=batch_size,
                                           nsp=nsp)
        datamodule.setup("fit")
        batches[nsp] = realistic_rows(datamodule, batch_size, count=repeats + warmup)
        # Over every row of the corpus, against the row capacity T (what a fixed-shape
        # accelerator pays for).
        lengths = [len(ids) for ids in datamodule.instances["train"]["input_ids"]]
        fill[nsp] = sum(lengths) / (len(lengths) * seq_len)
    config = BertConfig(**{**config.to_dict(), "vocab_size": datamodule.vocab_size,
                           "max_position_embeddings": max(config.max_position_embeddings,
                                                          seq_len)})
    torch.manual_seed(0)
    models = {nsp: BertForPreTraining(config, nsp=nsp).to(device).train() for nsp in (True, False)}
    optimizers = {nsp: optimizer_for(model, device) for nsp, model in models.items()}
    moved = {nsp: [{k: v.to(device) for k, v in b.items()} for b in batches[nsp]]
             for nsp in batches}
    cursor = {True: 0, False: 0}

    def step(nsp: bool) -> None:
        batch = moved[nsp][cursor[nsp] % len(moved[nsp])]
        cursor[nsp] += 1
        pretraining_step(models[nsp], optimizers[nsp], batch, device, precision)

    seconds = time_alternating({"mlm": lambda: step(False), "nsp": lambda: step(True)},
                               repeats, warmup, device)
    tokens = {nsp: statistics.mean(float(b["attention_mask"].sum()) for b in batches[nsp])
              for nsp in batches}
    return Row("packing", f"B={batch_size} T={seq_len} MLM-only full rows vs NSP instances",
               tokens[False] / seconds["mlm"], tokens[True] / seconds["nsp"],
               note=f"fill {fill[False]:.0%} vs {fill[True]:.0%}",
               details={"fill_mlm_only": fill[False], "fill_nsp": fill[True]})


# ------------------------------------------------------------------------------ the run
def run(args: argparse.Namespace) -> list[Row]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu":
        tune_cpu_process()  # what bertzoo's training does, for both columns alike
    rows: list[Row] = []
    presets = [p for p in args.presets.split(",") if p]

    def config_for(preset: str) -> BertConfig:
        if preset == "test":  # a tiny shape for the smoke test
            return BertConfig(vocab_size=args.vocab_size, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64)
        return BertConfig.from_preset(preset, vocab_size=args.vocab_size)

    datamodule = None
    if {"pretrain", "pipeline"} & set(args.sections):
        from bertzoo.pretraining import PretrainingDataModule
        datamodule = PretrainingDataModule(tokenizer=args.tokenizer,
                                           tokenizer_vocab_size=args.vocab_size,
                                           max_seq_length=args.seq_len, batch_size=args.batch_size)
        datamodule.setup("fit")

    consumption = {}
    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else torch.float32
    # The ceiling is measured before and after the pretraining rows and the higher one kept:
    # a noisy machine makes any one measurement read low (one run here: 342 vs ~370 GFLOP/s).
    ceiling = matmul_ceiling(device, dtype) if args.flops and "pretrain" in args.sections else 0
    if "pretrain" in args.sections:
        for preset in presets:
            config = config_for(preset)
            config.vocab_size = datamodule.vocab_size
            full = [full_rows(config, args.batch_size, args.seq_len, seed=s) for s in range(3)]
            real = realistic_rows(datamodule, args.batch_size, count=args.repeats + args.warmup)
            for label, batches in (("full rows", full), ("realistic rows", real)):
                fill = statistics.mean(float(b["attention_mask"].float().mean()) for b in batches)
                ours, ref, seconds = bench_pretraining(config, batches, device, args.precision,
                                                       args.repeats, args.warmup)
                row = Row("pretrain", f"{preset} B={args.batch_size} T={args.seq_len} {label}",
                          ours, ref, note=f"fill {fill:.0%}")
                if label == "full rows":
                    flops = pretraining_flops(config, batches[0])
                    row.details["gflops_ours"] = flops / 1e9 * ours / float(
                        batches[0]["attention_mask"].sum())
                    row.details["gflops_ref"] = flops / 1e9 * ref / float(
                        batches[0]["attention_mask"].sum())
                else:
                    consumption[preset] = ours
                rows.append(row)
                print(_format_row(row), flush=True)
        if args.flops:
            ceiling = max(ceiling, matmul_ceiling(device, dtype))
            for row in [r for r in rows if "gflops_ours" in r.details]:
                flops_row = Row("flops", row.name.replace(" full rows", ""),
                                row.details["gflops_ours"], row.details["gflops_ref"],
                                unit="GFLOP/s",
                                note=f"{row.details['gflops_ours'] / ceiling:.0%} of the "
                                     f"{ceiling:.0f} GFLOP/s matmul ceiling (transformers "
                                     f"{row.details['gflops_ref'] / ceiling:.0%})",
                                details={"ceiling": ceiling})
                rows.append(flops_row)
                print(_format_row(flops_row), flush=True)

    if {"finetune", "inference"} & set(args.sections):
        from bertzoo.tokenizer import load_tokenizer, train_tokenizer
        texts, source = sst2_texts(args.sst2, args.finetune_batch_size * (args.repeats + 2))
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else (
            datamodule.tokenizer if datamodule is not None
            else train_tokenizer(texts=texts, vocab_size=args.vocab_size, min_frequency=1))
        for preset in presets:
            config = config_for(preset)
            config.vocab_size = tokenizer.get_vocab_size()
            if "finetune" in args.sections:
                tps = bench_classification(config, tokenizer, texts, args.finetune_batch_size,
                                           device, args.precision, args.repeats, args.warmup,
                                           train=True)
                for ref_name, label in (("ref_padded", "vs transformers padded to 128"),
                                        ("ref_dynamic", "vs transformers dynamic padding")):
                    row = Row("finetune", f"{preset} B={args.finetune_batch_size} {label}",
                              tps["ours"], tps[ref_name], note=source)
                    rows.append(row)
                    print(_format_row(row), flush=True)
            if "inference" in args.sections:
                tps = bench_classification(config, tokenizer, texts, args.finetune_batch_size,
                                           device, args.precision, args.repeats, args.warmup,
                                           train=False)
                row = Row("inference", f"{preset} B={args.finetune_batch_size} vs transformers "
                          f"dynamic padding", tps["ours"], tps["ref_dynamic"], note=source)
                rows.append(row)
                print(_format_row(row), flush=True)

    if "onnx" in args.sections:
        from bertzoo.tokenizer import load_tokenizer, train_tokenizer
        texts, source = sst2_texts(args.sst2, args.finetune_batch_size * (args.repeats + 2))
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else train_tokenizer(
            texts=texts, vocab_size=args.vocab_size, min_frequency=1)
        for preset in presets:
            config = config_for(preset)
            config.vocab_size = tokenizer.get_vocab_size()
            tps = bench_onnx_inference(config, tokenizer, texts, args.finetune_batch_size,
                                       args.repeats, args.warmup)
            row = Row("onnx", f"{preset} B={args.finetune_batch_size} onnxruntime vs bertzoo "
                      f"eager", tps["onnxruntime"], tps["eager"],
                      note=f"reference = bertzoo eager; max |diff| {tps['max_diff']:.1e}; "
                           f"{source}")
            rows.append(row)
            print(_format_row(row), flush=True)

    if "memory" in args.sections:
        preset = presets[0]
        config = config_for(preset)
        if datamodule is not None:
            config.vocab_size = datamodule.vocab_size
        batch = full_rows(config, args.batch_size, args.seq_len)
        peaks = peak_memory(config, batch, device)
        row = Row("memory", f"{preset} pretraining step B={args.batch_size} T={args.seq_len} "
                  f"peak", peaks["ours"], peaks["ref"], unit="MB",
                  note="ratio = transformers / ours")
        rows.append(row)
        print(_format_row(row), flush=True)

    if "pipeline" in args.sections:
        rate, tokens = bench_pipeline(datamodule, args.pipeline_documents)
        consumer = "mini" if "mini" in consumption else next(iter(consumption), None)
        row = Row("pipeline", f"tokenize + instances + masking ({tokens:,} tokens)", rate,
                  consumption.get(consumer), note=f"ratio = pipeline / {consumer} pretraining "
                                                  f"consumption" if consumer else "")
        rows.append(row)
        print(_format_row(row), flush=True)

    if "packing" in args.sections:
        for seq_len in args.packing_seq_lens:
            row = bench_packing(config_for(presets[0]), args.tokenizer, args.vocab_size, seq_len,
                                args.batch_size, device, args.precision, args.repeats,
                                args.warmup)
            rows.append(row)
            print(_format_row(row), flush=True)
    return rows


def _format_row(row: Row) -> str:
    ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
    ref = f"{row.reference:,.0f}" if row.reference is not None else "-"
    return (f"| {row.section} | {row.name} | {row.ours:,.0f} {row.unit} | {ref} | {ratio} | "
            f"{row.note} |")


def table(rows: list[Row]) -> str:
    lines = ["| section | case | bertzoo | transformers / reference | ratio | note |",
             "|---|---|---|---|---|---|"]
    return "\n".join(lines + [_format_row(r) for r in rows])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bertzoo bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"],
                        help="bf16-mixed autocasts both implementations (GPU)")
    parser.add_argument("--presets", default="base,mini",
                        help="comma-separated BertConfig presets ('test' = a tiny shape)")
    parser.add_argument("--sections",
                        default="pretrain,finetune,inference,memory,pipeline,packing",
                        type=lambda s: s.split(","), help="which rows to run")
    parser.add_argument("--batch-size", type=int, default=8, help="pretraining batch size")
    parser.add_argument("--seq-len", type=int, default=128, help="pretraining sequence length")
    parser.add_argument("--finetune-batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per case (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per case")
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer folder (default: a WordPiece vocabulary trained on the "
                             "embedded corpus, cached)")
    parser.add_argument("--sst2", default=None, help="SST-2 train.tsv for realistic lengths")
    parser.add_argument("--pipeline-documents", type=int, default=None,
                        help="limit the pipeline row to this many documents")
    parser.add_argument("--packing-seq-lens", default="128,512",
                        type=lambda s: [int(t) for t in s.split(",")],
                        help="lengths of the packing rows (MLM-only vs NSP instances)")
    parser.add_argument("--no-flops", dest="flops", action="store_false",
                        help="skip the matmul ceiling and GFLOP/s rows")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    print(f"bertzoo bench on {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; medians of {args.repeats} steps after "
          f"{args.warmup} warm-up steps; ratio > 1: bertzoo faster (memory: smaller)\n",
          flush=True)
    print("| section | case | bertzoo | transformers / reference | ratio | note |")
    print("|---|---|---|---|---|---|", flush=True)
    rows = run(args)
    if args.json:
        payload = {"device": args.device, "precision": args.precision,
                   "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "repeats": args.repeats, "warmup": args.warmup,
                   "rows": [{**asdict(r), "ratio": r.ratio} for r in rows]}
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
