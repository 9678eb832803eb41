"""Extractive QA without a model: the official SQuAD scores, windows and their labels, choosing the
answer over windows (and over devices), and bad input. Windows use the real all-MiniLM-L6-v2
tokenizer (uncased, accent-stripping), so offsets are checked against a normaliser that changes
the text."""

import json
import logging
import math
import socket

import pytest
import torch

from bertzoo.tasks import squad
from bertzoo.tasks.squad import (SquadError, SquadMetric, SquadReferences, WindowConfig,
                                 best_window_spans, combine_windows, example_scores,
                                 make_windows, squad_scores, window_tokenizer)


# ----------------------------------------------------------------------------- official scores
# Each expected value follows from evaluate-v1.1.py's rules by hand: normalise (lower-case, drop
# punctuation, drop the articles a/an/the, collapse whitespace), EM = equal normalised strings,
# F1 = harmonic mean of token precision and recall on the bag of normalised tokens, max over the
# gold answers.
V1_CASES = [
    # prediction, gold answers, EM, F1
    ("Denver Broncos", ["Denver Broncos"], 1, 1.0),
    ("the Denver Broncos!", ["denver  broncos"], 1, 1.0),      # article, punctuation, case, spaces
    ("Broncos", ["Denver Broncos"], 0, 2 / 3),                 # P = 1/1, R = 1/2
    ("in  the   year 1976", ["1976", "the year 1976"], 0, 0.8),  # "in year 1976" vs "year 1976":
                                                               # P = 2/3, R = 1 (vs "1976": 0.5)
    ("cat cat dog", ["cat dog dog"], 0, 2 / 3),                # common counts: cat 1, dog 1
    ("an apple", ["A  apple."], 1, 1.0),                       # both normalise to "apple"
    ("Santa Clara, California", ["Levi's Stadium", "Santa Clara"], 0, 0.8),  # P 2/3, R 1
    ("", ["Paris"], 0, 0.0),
    # Both normalise to nothing: equal strings (EM 1) but no common token, which
    # evaluate-v1.1.py scores F1 = 0 (torchmetrics alone would say 1, the v2.0 rule).
    ("The", ["the"], 1, 0.0),
]


@pytest.mark.parametrize("prediction, gold, exact, f1", V1_CASES)
def test_v1_scores_follow_the_official_rules(prediction, gold, exact, f1):
    got_exact, got_f1 = example_scores(prediction, gold)
    assert got_exact == exact
    assert got_f1 == pytest.approx(f1)


def test_v1_aggregate_is_the_percentage_mean_and_matches_torchmetrics():
    from torchmetrics.functional.text.squad import squad as reference_squad
    cases = V1_CASES[:-1]  # torchmetrics differs from evaluate-v1.1.py only on the last case
    predictions = {f"q{i}": p for i, (p, _, _, _) in enumerate(cases)}
    gold = {f"q{i}": g for i, (_, g, _, _) in enumerate(cases)}
    scores = squad_scores(predictions, gold)
    assert set(scores) == {"exact_match", "f1"}
    assert scores["exact_match"] == pytest.approx(100 * sum(c[2] for c in cases) / len(cases))
    assert scores["f1"] == pytest.approx(100 * sum(c[3] for c in cases) / len(cases))
    reference = reference_squad(
        [{"id": i, "prediction_text": p} for i, p in predictions.items()],
        [{"id": i, "answers": {"text": g, "answer_start": [0] * len(g)}} for i, g in gold.items()])
    assert scores["exact_match"] == pytest.approx(float(reference["exact_match"]))
    assert scores["f1"] == pytest.approx(float(reference["f1"]))


def test_v2_split_into_questions_with_and_without_answers():
    # evaluate-v2.0.py: HasAns = the gold list is not empty; gold texts that normalise to
    # nothing are dropped, and a question left without any is scored against "" (no answer):
    # EM = F1 = 1 for an empty prediction, 0 for anything else.
    gold = {"has1": ["Paris"], "has2": ["the Seine river"], "has3": ["Lyon"],
            "none1": [], "none2": [], "none3": ["The"]}
    predictions = {"has1": "Paris, France",  # EM 0, F1: P 1/2, R 1 -> 2/3
                   "has2": "Seine river",    # EM 1, F1 1
                   "has3": "",               # abstained on an answerable question: 0, 0
                   "none1": "",              # right to abstain: 1, 1
                   "none2": "Marseille",     # answered an unanswerable question: 0, 0
                   "none3": ""}              # HasAns by the list, but scored against "": 1, 1
    scores = squad_scores(predictions, gold, version_2_with_negative=True)
    assert scores["HasAns_exact_match"] == pytest.approx(100 * (0 + 1 + 0 + 1) / 4)
    assert scores["HasAns_f1"] == pytest.approx(100 * (2 / 3 + 1 + 0 + 1) / 4)
    assert scores["NoAns_exact_match"] == pytest.approx(100 * (1 + 0) / 2)
    assert scores["NoAns_f1"] == pytest.approx(100 * (1 + 0) / 2)
    assert scores["exact_match"] == pytest.approx(100 * 3 / 6)
    assert scores["f1"] == pytest.approx(100 * (2 / 3 + 1 + 0 + 1 + 1 + 0) / 6)


def test_v2_group_without_questions_is_nan():
    scores = squad_scores({"a": "x"}, {"a": ["x"]}, version_2_with_negative=True)
    assert scores["HasAns_f1"] == 100 and math.isnan(scores["NoAns_f1"])


def test_v1_question_without_gold_answer_is_an_error():
    with pytest.raises(SquadError, match="at least one gold answer"):
        example_scores("x", [])


# ---------------------------------------------------------------------------------- windows
# Unicode (accents the uncased normaliser strips, a ligature, guillemets, CJK) and runs of
# spaces: the answer must come back as exactly these characters.
CONTEXT = ("Zoë  Kravitz visited the Ångström   Laboratory in Malmö last spring. Later the café "
           "«Le  Œuf» opened near the old tower, serving crêpes and 抹茶 tea to visitors from "
           "Göteborg, Århus and   Zürich. The tower itself was built in 1321 by monks whose "
           "names are lost, and rebuilt twice after fires in 1602 and 1899.")
QUESTION = "Who opened the café?"
CONFIG = WindowConfig(max_length=32, doc_stride=8, max_question_length=16)


@pytest.fixture(scope="module")
def windowing(minilm_path):
    from bertzoo.tokenizer import load_tokenizer
    return window_tokenizer(load_tokenizer(minilm_path), CONFIG)


def squad_rows(context, question, answer, answer_start=None, qid="q1"):
    start = context.index(answer) if answer_start is None else answer_start
    return {"id": [qid], "question": [question], "context": [context],
            "answers": [{"text": [answer], "answer_start": [start]}]}


def windows_for(windowing, answer, **kwargs):
    return make_windows(squad_rows(CONTEXT, QUESTION, answer, **kwargs), [0], windowing, CONFIG,
                        with_labels=True, version_2_with_negative=False, source="test.json")


def context_chars(windows, w):
    """(first, last) context characters window `w` covers."""
    starts = [s for s in windows["offset_start"][w] if s >= 0]
    ends = [e for e in windows["offset_end"][w] if e >= 0]
    return starts[0], ends[-1]


def test_windows_overlap_by_doc_stride_and_keep_context_offsets(windowing):
    windows = windows_for(windowing, "1321")
    assert len(windows["input_ids"]) >= 4
    assert all(len(ids) <= CONFIG.max_length for ids in windows["input_ids"])
    for w in range(len(windows["input_ids"]) - 1):
        ours = [(s, e) for s, e in zip(windows["offset_start"][w], windows["offset_end"][w])
                if s >= 0]
        nexts = [(s, e) for s, e in zip(windows["offset_start"][w + 1],
                                        windows["offset_end"][w + 1]) if s >= 0]
        assert ours[-CONFIG.doc_stride:] == nexts[:CONFIG.doc_stride]
    # question and special tokens carry no context offset; the context is not lower-cased in
    # the offsets' coordinates (they index the original string)
    first = windows["offset_start"][0]
    assert first[0] == -1 and first[1] == -1  # [CLS], then the question
    assert CONTEXT[first[first.index(0)]:windows["offset_end"][0][first.index(0)]] == "Zoë"


def answer_crossing_window_end(windows, w):
    """An answer from the last 2 context tokens of window w to the 2nd token after it."""
    spans = [(s, e) for s, e in zip(windows["offset_start"][w], windows["offset_end"][w])
             if s >= 0]
    later = [(s, e) for s, e in zip(windows["offset_start"][w + 1], windows["offset_end"][w + 1])
             if s >= spans[-1][1]]
    return spans[-2][0], later[1][1]


def oracle_records(windows, start_char, end_char, distractor=True):
    """Per-window start/end logits that score the answer 8 + 8 where the window holds it whole,
    its start token alone 8 where it holds only the start, and a distractor 5 + 5 elsewhere."""
    records = []
    for w, ids in enumerate(windows["input_ids"]):
        offset_start = torch.tensor([windows["offset_start"][w]])
        offset_end = torch.tensor([windows["offset_end"][w]])
        start_logits = torch.zeros(1, len(ids))
        end_logits = torch.zeros(1, len(ids))
        context_tokens = (offset_start[0] >= 0).nonzero()[:, 0].tolist()
        if distractor:
            start_logits[0, context_tokens[0]] = 5
            end_logits[0, context_tokens[0]] = 5
        for t in context_tokens:
            if int(offset_start[0, t]) == start_char:
                start_logits[0, t] = 8
            if int(offset_end[0, t]) == end_char:
                end_logits[0, t] = 8
        records.append(best_window_spans(start_logits, end_logits, offset_start, offset_end,
                                         n_best_size=20, max_answer_length=30))
    return {key: torch.cat([r[key] for r in records]) for key in records[0]}


def test_answer_across_a_window_boundary_is_labelled_and_recovered_exactly(windowing):
    probe = windows_for(windowing, "1321")
    start_char, end_char = answer_crossing_window_end(probe, 1)
    answer = CONTEXT[start_char:end_char]
    windows = windows_for(windowing, answer, answer_start=start_char)
    first, last = context_chars(windows, 1)
    assert first <= start_char < last < end_char  # window 1 holds only the answer's start
    labels = list(zip(windows["start_positions"], windows["end_positions"]))
    assert labels[1] == (0, 0)  # not whole in window 1: [CLS]
    assert labels[2] != (0, 0)  # the overlap makes window 2 hold it whole
    s, e = labels[2]
    assert CONTEXT[windows["offset_start"][2][s]:windows["offset_end"][2][e]] == answer

    records = oracle_records(windows, start_char, end_char)
    answers = combine_windows(torch.tensor(windows["index"]), **records, contexts=[CONTEXT])
    assert answers == {0: answer}


def test_answer_only_in_the_second_window(windowing):
    answer = "crêpes and 抹茶 tea"
    start_char = CONTEXT.index(answer)
    windows = windows_for(windowing, answer)
    assert context_chars(windows, 0)[1] < start_char  # beyond the first window
    holding = [w for w, (s, e) in enumerate(zip(windows["start_positions"],
                                                windows["end_positions"])) if (s, e) != (0, 0)]
    assert 0 not in holding and holding[0] >= 1
    records = oracle_records(windows, start_char, start_char + len(answer))
    assert combine_windows(torch.tensor(windows["index"]), **records,
                           contexts=[CONTEXT]) == {0: answer}


@pytest.mark.parametrize("answer", ["Zoë  Kravitz", "«Le  Œuf»", "Göteborg, Århus and   Zürich",
                                   "抹茶"])
def test_unicode_and_runs_of_spaces_map_back_to_the_original_characters(windowing, answer):
    start_char = CONTEXT.index(answer)
    windows = windows_for(windowing, answer)
    records = oracle_records(windows, start_char, start_char + len(answer), distractor=False)
    assert combine_windows(torch.tensor(windows["index"]), **records,
                           contexts=[CONTEXT]) == {0: answer}


def test_best_span_skips_invalid_spans():
    # 6 tokens: [CLS] q [SEP] c c c ; context characters 0-3, 4-7, 8-11
    offset_start = torch.tensor([[-1, -1, -1, 0, 4, 8]])
    offset_end = torch.tensor([[-1, -1, -1, 3, 7, 11]])
    start = torch.tensor([[9.0, 20.0, 0.0, 1.0, 3.0, 2.0]])  # highest at a question token
    end = torch.tensor([[9.0, 0.0, 0.0, 4.0, 0.0, 1.0]])  # best end (3) lies before start 4
    spans = best_window_spans(start, end, offset_start, offset_end, n_best_size=20,
                              max_answer_length=30)
    # valid pairs (start <= end, both context): (3,3)=5, (3,4)=1, (3,5)=2, (4,4)=3, (4,5)=4,
    # (5,5)=3 -> (3,3)
    assert spans["span_score"].tolist() == [5.0]
    assert (spans["span_start"].item(), spans["span_end"].item()) == (0, 3)
    assert spans["null_score"].item() == 18.0
    # max_answer_length 1 forbids nothing here; n_best_size 1 keeps start 4 and end 3 only:
    # no valid pair -> -inf and no characters
    none = best_window_spans(start, end, offset_start, offset_end, n_best_size=1,
                             max_answer_length=30)
    assert none["span_score"].item() == -math.inf and none["span_start"].item() == -1
    longer = best_window_spans(start, torch.tensor([[0.0, 0, 0, 0, 0, 9]]), offset_start,
                               offset_end, n_best_size=20, max_answer_length=2)
    assert (longer["span_start"].item(), longer["span_end"].item()) == (4, 11)  # not 0-11


def test_v2_null_score_against_the_best_span():
    index = torch.tensor([0, 0, 1])
    span_score = torch.tensor([4.0, 6.0, 3.0])
    span_start, span_end = torch.tensor([0, 2, 0]), torch.tensor([1, 3, 1])
    null_score = torch.tensor([7.0, 9.0, 1.0])  # question 0: min null 7 - best 6 = 1
    contexts = ["abcd", "wxyz"]
    got = combine_windows(index, span_score, span_start, span_end, null_score, contexts,
                          version_2_with_negative=True, null_score_diff_threshold=0.0)
    assert got == {0: "", 1: "w"}
    got = combine_windows(index, span_score, span_start, span_end, null_score, contexts,
                          version_2_with_negative=True, null_score_diff_threshold=1.5)
    assert got == {0: "c", 1: "w"}
    assert combine_windows(index, span_score, span_start, span_end, null_score,
                           contexts) == {0: "c", 1: "w"}  # v1.1 ignores the null score


# ------------------------------------------------------------------ the metric across devices
def metric_records():
    """Three questions, five windows; question 0's best window is its second."""
    return {"example_index": torch.tensor([0, 0, 1, 2, 2]),
            "span_score": torch.tensor([1.0, 5.0, 2.0, -math.inf, 0.5]),
            "span_start": torch.tensor([0, 6, 0, -1, 5]),
            "span_end": torch.tensor([5, 12, 3, -1, 9]),
            "null_score": torch.zeros(5)}


REFERENCES = SquadReferences(ids=["a", "b", "c"],
                             contexts=["Paris London", "Rome Oslo", "the  Nile"],
                             answers=[["London"], ["Rome"], ["Nile", "the Nile river"]])


def test_metric_windows_of_one_question_split_between_devices():
    records = metric_records()
    whole = SquadMetric("f1")
    whole.references = REFERENCES
    whole.update(**records)
    assert whole.predictions() == {"a": "London", "b": "Rom", "c": "Nile"}
    # "Rom" vs "Rome": 0; so F1 = (1 + 0 + 1) / 3
    assert whole.compute().item() == pytest.approx(200 / 3)

    halves = []
    for part in ([0, 2, 3], [1, 4]):  # question 0 and 2 each on both "devices"
        metric = SquadMetric("f1")
        metric.update(**{k: v[part] for k, v in records.items()})
        halves.append(metric)
    halves[0].merge_state(halves[1])
    halves[0].references = REFERENCES
    assert halves[0].compute().item() == pytest.approx(whole.compute().item())


def test_metric_needs_references():
    metric = SquadMetric("exact_match")
    metric.update(**metric_records())
    with pytest.raises(RuntimeError, match="references"):
        metric.compute()
    with pytest.raises(ValueError, match="unknown SQuAD score"):
        SquadMetric("HasAns_f1")  # only with version_2_with_negative


def _distributed_worker(rank, world_size, port, parts, out_dir):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        records = metric_records()
        metric = SquadMetric("f1")
        metric.references = REFERENCES
        if parts[rank]:
            metric.update(**{k: v[parts[rank]] for k, v in records.items()})
        value = metric.compute().item()
        (out_dir / f"rank{rank}.json").write_text(json.dumps(value))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("parts", [[[0, 2, 3, 4], [1]], [[0, 1, 2, 3, 4], []]],
                         ids=["uneven", "one-rank-empty"])
def test_metric_gathers_windows_from_two_processes(tmp_path, parts):
    """Real torch.distributed (gloo, 2 processes): one rank holds 4 windows, the other 1 —
    including one window of a question whose other window is on the first rank — or one rank
    holds nothing (more devices than batches)."""
    import torch.multiprocessing as mp
    # fork: the workers inherit the imported modules instead of importing torch again
    mp.start_processes(_distributed_worker, args=(2, free_port(), parts, tmp_path), nprocs=2,
                       join=True, start_method="fork")
    values = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert values == [pytest.approx(200 / 3)] * 2


# ------------------------------------------------------------------------------- bad input
def test_answer_not_at_answer_start_is_repaired_when_unambiguous(windowing, caplog):
    answer = "Ångström   Laboratory"
    right = CONTEXT.index(answer)
    with caplog.at_level(logging.WARNING, logger="bertzoo"):
        windows = windows_for(windowing, answer, answer_start=right + 3)
    assert "q1" in caplog.text and f"is at character {right}" in caplog.text
    reference = windows_for(windowing, answer)
    assert windows["start_positions"] == reference["start_positions"]
    assert windows["end_positions"] == reference["end_positions"]


def test_ambiguous_or_missing_answer_is_an_error_naming_the_question(windowing):
    with pytest.raises(SquadError, match=r"test.json: question q1: answer 'tower' is not at "
                                         r"answer_start 3 .* occurs 2 times"):
        windows_for(windowing, "tower", answer_start=3)
    with pytest.raises(SquadError, match="question q1: answer 'Stockholm' does not occur"):
        windows_for(windowing, "Stockholm", answer_start=0)


def test_doc_stride_too_large_for_the_question_is_a_clear_error(windowing):
    long_question = "why " * 14 + "?"  # 15 tokens: 32 - 3 - 15 = 14 context tokens per window
    config = WindowConfig(max_length=32, doc_stride=14, max_question_length=None)
    tokenizer = window_tokenizer(windowing, config)
    rows = squad_rows(CONTEXT, long_question, "1321", qid="long-q")
    with pytest.raises(SquadError, match=r"question long-q is 15 tokens long, which leaves 14 "
                                         r"context tokens .* doc_stride \(14\) must be smaller"):
        make_windows(rows, [0], tokenizer, config, True, False, "test.json")
    # the same question cut to max_question_length tokens fits
    config = WindowConfig(max_length=32, doc_stride=14, max_question_length=8)
    windows = make_windows(rows, [0], window_tokenizer(windowing, config), config, True, False,
                           "test.json")
    assert len(windows["input_ids"]) > 1
    with pytest.raises(SquadError, match="doc_stride .* must be smaller than the context room"):
        WindowConfig(max_length=32, doc_stride=29)


def test_unanswerable_question_needs_version_2(windowing):
    rows = squad_rows(CONTEXT, QUESTION, "1321")
    rows["answers"] = [{"text": [], "answer_start": []}]
    with pytest.raises(SquadError, match="question q1 has no answer; .*version_2_with_negative"):
        make_windows(rows, [0], windowing, CONFIG, True, False, "test.json")
    windows = make_windows(rows, [0], windowing, CONFIG, True, True, "test.json")
    assert set(windows["start_positions"]) == {0} and set(windows["end_positions"]) == {0}


# ---------------------------------------------------------------------------------- reading
def squad_file(tmp_path, articles, name="data.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"version": "1.1", "data": articles}, ensure_ascii=False))
    return path


def article(title, qid_prefix, n=2, impossible=False):
    context = f"{title} is a city. It has a river."
    qas = [{"id": f"{qid_prefix}{i}", "question": f"what is {title}?",
            "answers": [] if impossible else [{"text": "a city", "answer_start": len(title) + 4}]}
           for i in range(n)]
    if impossible:
        for qa in qas:
            qa["is_impossible"] = True
            qa["plausible_answers"] = [{"text": "a river", "answer_start": 3}]
    return {"title": title, "paragraphs": [{"context": context, "qas": qas}]}


def test_read_official_layout_and_select_articles(tmp_path):
    path = squad_file(tmp_path, [article("Paris", "p"), article("Lagos", "l"),
                                 article("Quito", "q", impossible=True)])
    dataset = squad.read_squad_json(path)
    assert dataset["id"] == ["p0", "p1", "l0", "l1", "q0", "q1"]
    assert dataset["article"] == [0, 0, 1, 1, 2, 2]
    assert dataset[0]["answers"] == {"text": ["a city"], "answer_start": [9]}
    assert dataset[4]["answers"] == {"text": [], "answer_start": []}  # is_impossible
    assert squad.select_articles(dataset, "1-2", "f")["id"] == ["l0", "l1", "q0", "q1"]
    assert squad.select_articles(dataset, "0,2", "f")["id"] == ["p0", "p1", "q0", "q1"]
    assert squad.select_articles(dataset, [1], "f")["id"] == ["l0", "l1"]
    with pytest.raises(SquadError, match=r"article\(s\) \[3\] not in the file, which has "
                                         r"articles 0-2"):
        squad.select_articles(dataset, "2-3", "f")
    with pytest.raises(SquadError, match="expected indices and inclusive ranges"):
        squad.parse_articles("3-1")


def test_malformed_file_names_the_place(tmp_path):
    bad = {"title": "x", "paragraphs": [{"context": "c", "qas": [{"id": "z9", "question": "q?",
                                                                   "answers": [{"text": "c"}]}]}]}
    path = squad_file(tmp_path, [article("Paris", "p"), bad])
    with pytest.raises(SquadError, match=r"data\[1\]\.paragraphs\[0\]\.qas\[0\] \(id z9\): each "
                                         r"answer needs 'text' and an integer 'answer_start'"):
        squad.parse_squad_json(path)
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "x"}]}))
    with pytest.raises(SquadError, match=r"data\[0\]: an article needs a 'paragraphs' list"):
        squad.parse_squad_json(path)
