"""Entity metrics against seqeval (the reference) on the same tag sequences, for every scheme
and the edge cases where schemes and evaluation modes disagree."""

import math
import random
import warnings

import pytest
import seqeval.metrics as seqeval_metrics
import torch
from seqeval.metrics.sequence_labeling import get_entities as seqeval_get_entities

from bertzoo.tasks.conll import SCHEME_PREFIXES, scheme_labels
from bertzoo.tasks.entity_metrics import (EntityScore, count_entities,
                                          entity_metrics, get_entities)

TYPES = ["PER", "LOC", "creative-work"]

# Hand-made cases: (gold sentences, predicted sentences).
EDGE_CASES = {
    "entity at sentence end": ([["O", "B-PER", "I-PER"]], [["O", "B-PER", "I-PER"]]),
    "entity cut at sentence end": ([["O", "B-PER"], ["I-PER", "O"]],
                                   [["O", "B-PER"], ["B-PER", "O"]]),
    "I- without B-": ([["O", "I-PER", "I-PER", "O"]], [["O", "B-PER", "I-PER", "O"]]),
    "I- after another type": ([["B-LOC", "I-PER", "O"]], [["B-LOC", "B-PER", "O"]]),
    "single-token entities": ([["B-PER", "B-PER", "O", "B-LOC"]],
                              [["B-PER", "O", "O", "B-LOC"]]),
    "IOB1 adjacent entities": ([["I-PER", "I-PER", "B-PER", "O"]],
                               [["I-PER", "I-PER", "I-PER", "O"]]),
    "BIOES singletons": ([["S-PER", "S-PER", "O", "S-LOC"]], [["S-PER", "B-PER", "O", "S-LOC"]]),
    "BIOES E- after O, E- E-": ([["O", "E-PER", "E-PER", "O"]], [["B-PER", "E-PER", "O", "O"]]),
    "BIOES unterminated B-": ([["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "I-PER"]]),
    "BIOES S- then I-": ([["S-PER", "I-PER", "E-PER"]], [["S-PER", "B-PER", "E-PER"]]),
    "hyphenated type": ([["B-creative-work", "I-creative-work"]],
                        [["B-creative-work", "E-creative-work"]]),
    "nothing predicted": ([["B-PER", "O"]], [["O", "O"]]),
    "nothing in gold": ([["O", "O"]], [["B-PER", "O"]]),
    "no entities at all": ([["O", "O"]], [["O", "O"]]),
    "empty-type prefixes": ([["B", "I", "O"]], [["B", "B", "O"]]),
}


def seqeval_results(gold, predicted):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UndefinedMetricWarning for zero divisions
        return {
            "report": seqeval_metrics.classification_report(gold, predicted, output_dict=True),
            "f1": seqeval_metrics.f1_score(gold, predicted),
            "precision": seqeval_metrics.precision_score(gold, predicted),
            "recall": seqeval_metrics.recall_score(gold, predicted),
            "accuracy": seqeval_metrics.accuracy_score(gold, predicted),
        }


def assert_same_report(ours, theirs):
    assert list(ours) == list(theirs)
    for row, values in theirs.items():
        for key, value in values.items():
            mine = ours[row][key]
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(mine), (row, key)
            else:
                assert mine == value, (row, key, mine, value)  # exactly, not approximately


def assert_matches_seqeval(gold, predicted):
    counts = count_entities(gold, predicted)
    expected = seqeval_results(gold, predicted)
    assert_same_report(counts.report(), expected["report"])
    precision, recall, f1, _ = counts.scores()
    assert (precision, recall, f1) == (expected["precision"], expected["recall"], expected["f1"])
    assert counts.accuracy == expected["accuracy"]
    for gold_tags, predicted_tags in zip(gold, predicted):
        for tags in (gold_tags, predicted_tags):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # seqeval warns about 'B'/'I' without a type
                assert get_entities(tags) == seqeval_get_entities(tags)


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_cases_equal_seqeval(case):
    gold, predicted = EDGE_CASES[case]
    assert_matches_seqeval(gold, predicted)


def test_edge_case_values_follow_conlleval_rules():
    # An I- without B- opens an entity in the default (conlleval) mode: the prediction counts.
    counts = count_entities(*EDGE_CASES["I- without B-"])
    assert counts.scores() == (1.0, 1.0, 1.0, 1)
    # In IOB1, B- splits two adjacent entities of one type; I-I-I is one long entity.
    counts = count_entities(*EDGE_CASES["IOB1 adjacent entities"])
    assert get_entities(["I-PER", "I-PER", "B-PER", "O"]) == [("PER", 0, 1), ("PER", 2, 2)]
    assert counts.scores() == (0.0, 0.0, 0.0, 2)
    # BIOES: E- after O opens (and closes) an entity; E- E- is two entities.
    assert get_entities(["O", "E-PER", "E-PER", "O"]) == [("PER", 1, 1), ("PER", 2, 2)]
    # Entities never cross sentences.
    gold, _ = EDGE_CASES["entity cut at sentence end"]
    assert [get_entities(s) for s in gold] == [[("PER", 1, 1)], [("PER", 0, 0)]]


def random_tags(rng, scheme, length):
    prefixes = SCHEME_PREFIXES[scheme]
    tags = []
    for _ in range(length):
        if rng.random() < 0.4:
            tags.append("O")
        else:
            tags.append(f"{rng.choice(prefixes)}-{rng.choice(TYPES)}")
    return tags


@pytest.mark.parametrize("scheme", sorted(SCHEME_PREFIXES))
def test_random_sequences_equal_seqeval(scheme):
    rng = random.Random(scheme)
    for trial in range(30):
        lengths = [rng.randint(1, 12) for _ in range(rng.randint(1, 8))]
        gold = [random_tags(rng, scheme, n) for n in lengths]
        # Predictions: gold with some tags changed, so that many entities match.
        predicted = [[rng.choice(random_tags(rng, scheme, 3)) if rng.random() < 0.3 else tag
                      for tag in sentence] for sentence in gold]
        assert_matches_seqeval(gold, predicted)


def windowed_updates(gold, predicted, label_ids, rng, batch_size=3):
    """Split each sentence into overlapping windows of a few words, each tagging only its own
    words (as the NER data module does), shuffle them and yield padded update batches."""
    windows = []
    for sentence, (gold_tags, predicted_tags) in enumerate(zip(gold, predicted)):
        start = 0
        while start < len(gold_tags):
            end = min(len(gold_tags), start + rng.randint(1, 4))
            owned = range(start, end)
            context = list(range(max(0, start - 1), min(len(gold_tags), end + 1)))  # overlap
            windows.append((sentence, [(w if w in owned else -1, w) for w in context]))
            start = end
    rng.shuffle(windows)
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        length = max(len(w) for _, w in chunk) + 2  # room for [CLS]/[SEP]-like positions
        word_index = torch.full((len(chunk), length), -100)
        gold_ids = torch.full((len(chunk), length), -100)
        predicted_ids = torch.zeros((len(chunk), length), dtype=torch.long)
        for row, (sentence, words) in enumerate(chunk):
            for position, (owned_word, word) in enumerate(words, start=1):
                word_index[row, position] = owned_word
                gold_ids[row, position] = label_ids[gold[sentence][word]]
                predicted_ids[row, position] = label_ids[predicted[sentence][word]]
        sentence_index = torch.tensor([sentence for sentence, _ in chunk])
        yield predicted_ids, gold_ids, word_index, sentence_index


@pytest.mark.parametrize("scheme", sorted(SCHEME_PREFIXES))
def test_metric_over_shuffled_windows_and_two_devices_equals_seqeval(scheme):
    """Windows of a sentence land in different batches and on different devices; the states
    are gathered (merge_state does what the all-gather does) before entities are read."""
    rng = random.Random(7)
    labels = scheme_labels(TYPES, scheme)
    label_ids = {label: i for i, label in enumerate(labels)}
    gold = [random_tags(rng, scheme, rng.randint(1, 15)) for _ in range(25)]
    predicted = [[rng.choice(labels) if rng.random() < 0.25 else t for t in s] for s in gold]
    devices = [entity_metrics(labels), entity_metrics(labels)]
    for step, args in enumerate(windowed_updates(gold, predicted, label_ids, rng)):
        devices[step % 2].update(*args)
    for name, metric in devices[0].items():
        metric.merge_state(devices[1][name])
    values = devices[0].compute()
    expected = seqeval_results(gold, predicted)
    for score in ("precision", "recall", "f1", "accuracy"):
        assert values[score].item() == pytest.approx(expected[score], abs=1e-7)
    for entity_type in TYPES:
        row = expected["report"].get(entity_type, {"precision": 0.0, "recall": 0.0,
                                                   "f1-score": 0.0})
        for score, key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            name = f"{score}_{entity_type}"
            assert values[name].item() == pytest.approx(row[key], abs=1e-7), name
    # The exact report is available from the metric too.
    f1_metric = devices[0]["f1"]
    assert_same_report(f1_metric.counts().report(), expected["report"])
    assert f1_metric.sentences() == (gold, predicted)


def test_metric_without_updates_is_zero():
    metric = EntityScore(["O", "B-PER", "I-PER"])
    assert metric.compute().item() == 0.0


def _distributed_worker(rank, world_size, port, batches, labels, out_dir):
    import json

    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        metrics = entity_metrics(labels)
        for args in batches[rank]:
            metrics.update(*args)
        values = {name: value.item() for name, value in metrics.compute().items()}
        (out_dir / f"rank{rank}.json").write_text(json.dumps(values))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("split", ["uneven", "one-rank-empty"])
def test_metric_gathers_sentences_from_two_processes(tmp_path, split):
    """Real torch.distributed (gloo, 2 processes): windows of one sentence on both ranks, or
    every batch on one rank and none on the other (more devices than batches)."""
    import json
    import socket

    import torch.multiprocessing as mp
    rng = random.Random(3)
    labels = scheme_labels(TYPES, "IOB2")
    label_ids = {label: i for i, label in enumerate(labels)}
    gold = [random_tags(rng, "IOB2", rng.randint(1, 10)) for _ in range(12)]
    predicted = [[rng.choice(labels) if rng.random() < 0.3 else t for t in s] for s in gold]
    batches = list(windowed_updates(gold, predicted, label_ids, rng))
    parts = ([batches[0::3], [b for i, b in enumerate(batches) if i % 3]]
             if split == "uneven" else [batches, []])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the workers inherit the imported modules instead of importing torch again
    mp.start_processes(_distributed_worker, args=(2, port, parts, labels, tmp_path), nprocs=2,
                       join=True, start_method="fork")
    expected = seqeval_results(gold, predicted)
    for rank in range(2):
        values = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for score in ("precision", "recall", "f1", "accuracy"):
            assert values[score] == pytest.approx(expected[score], abs=1e-7), (rank, score)
