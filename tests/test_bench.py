"""`bertzoo bench` runs end to end on a tiny shape, so it never rots. It only checks that
every section produces its rows with real numbers: speed is measured by running the
benchmark itself (docs/benchmarks.md), never asserted in a test on a shared machine."""

import json

import transformers  # noqa: F401  (the reference the benchmark compares with: a test dependency)

from bertzoo.cli import main


def test_bench_runs_every_section_on_a_tiny_shape(tiny_backbone_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--presets", "test", "--tokenizer", str(tiny_backbone_dir),
                 "--repeats", "1", "--warmup", "0", "--seq-len", "32", "--batch-size", "4",
                 "--finetune-batch-size", "4", "--pipeline-documents", "20",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    sections = [row["section"] for row in rows]
    assert sections.count("pretrain") == 2  # full and realistic rows
    assert sections.count("finetune") == 2  # vs padded to 128 and vs dynamic padding
    assert {"flops", "inference", "memory", "pipeline"} <= set(sections)
    for row in rows:
        assert row["ours"] > 0 and row["reference"] > 0 and row["ratio"] > 0, row
    printed = capsys.readouterr().out
    assert printed.count("\n| ") >= len(rows)  # the table shows every row
