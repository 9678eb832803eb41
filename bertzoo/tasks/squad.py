"""SQuAD-style extractive question answering without the Lightning plumbing: reading SQuAD files,
cutting question + context into windows with training labels, choosing the answer over all
windows of a question, and scoring it the way the official evaluation scripts do.

References:
    Rajpurkar et al. 2016, "SQuAD: 100,000+ Questions for Machine Comprehension of Text"
    (v1.1 data layout and `evaluate-v1.1.py`); Rajpurkar et al. 2018, "Know What You Don't Know"
    (v2.0: unanswerable questions, `evaluate-v2.0.py`); Devlin et al. 2018, BERT, Section 4.2-4.3
    and google-research/bert `run_squad.py` (windows, n-best spans, the null score); Hugging Face
    `examples/pytorch/question-answering` (`run_qa.py`, `utils_qa.py`).

Where this departs from them, and why:
    - `doc_stride` is the number of tokens consecutive windows share, as in Hugging Face (the
      Rust tokenizer's `stride`); google-research/bert steps each window by `doc_stride` instead.
      A question so long that a window has no more than `doc_stride` context tokens is an error
      naming the question (the tokenizer would panic); questions are first cut to
      `max_question_length` tokens, as google-research/bert's `max_query_length` does.
    - Span candidates are the `n_best_size` highest start and end logits among the window's
      context tokens. Hugging Face and google-research/bert take the top `n_best_size` over the
      whole window and then drop those outside the context, so a window can be left with fewer
      candidates (or none) when question tokens score high.
    - Post-processing is split in two so that it works across devices: each window is reduced
      on its device to one fixed-size record (its best valid span as context characters, that
      span's score, and its no-answer score); torchmetrics gathers the records of every device
      (`SquadMetric`), and only then are the windows of each question combined (best span over
      all windows; the null score is the smallest over the windows, as in `run_squad.py`).
    - Exact match and F1 use torchmetrics' implementation of the official normalisation and
      scores, with one correction: torchmetrics scores F1 = 1 when the prediction and a gold
      answer both normalise to nothing (the v2.0 rule); `evaluate-v1.1.py` scores that 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.text.squad import (_compute_exact_match_score, _compute_f1_score,
                                                _normalize_text)
from torchmetrics.utilities import dim_zero_cat

from bertzoo.tasks.base import DataError

log = logging.getLogger("bertzoo")

#: Bumped when the reader's output for the same file changes (it is part of the cache key).
READER_VERSION = 1
NOT_CONTEXT = -1  # character offset stored for question and special tokens
FLOAT32_EXACT = 2 ** 24  # every integer below this is exact in float32


class SquadError(DataError):
    """SQuAD data or settings that cannot be used; the message names the file and the question
    id (or the setting)."""


# ------------------------------------------------------------------------------------ reading
def squad_features():
    import datasets
    return datasets.Features({
        "id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": {"text": datasets.Sequence(datasets.Value("string")),
                    "answer_start": datasets.Sequence(datasets.Value("int32"))},
        "article": datasets.Value("int32"),
    })


def load_json(path: str | Path) -> Any:
    """The JSON value of a file, or None when it is not one JSON document (JSON lines)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise SquadError(f"{path}: not UTF-8 text: {err}") from err
    except json.JSONDecodeError:
        return None


def is_squad_layout(data: Any) -> bool:
    """Whether a JSON value is in the official SQuAD layout ({"data": [articles], ...})."""
    return isinstance(data, dict) and "data" in data


def parse_squad_json(path: str | Path, data: Any = None) -> list[dict[str, Any]]:
    """The questions of an official SQuAD v1.1/v2.0 file (or its already loaded JSON `data`)
    as flat rows: the Hugging Face `squad` columns plus `article`, the article's position in
    the file. Unanswerable v2.0 questions (`is_impossible`) get no answers; their
    `plausible_answers` are not used."""
    path = Path(path)
    if data is None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SquadError(f"{path}: not a JSON file: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise SquadError(f"{path}: expected the SQuAD layout {{\"version\": ..., \"data\": "
                         f"[articles]}}, found {type(data).__name__} without a 'data' list")
    rows = []
    for article_index, article in enumerate(data["data"]):
        where = f"{path}: data[{article_index}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise SquadError(f"{where}: an article needs a 'paragraphs' list")
        title = str(article.get("title", ""))
        for paragraph_index, paragraph in enumerate(article["paragraphs"]):
            where = f"{path}: data[{article_index}].paragraphs[{paragraph_index}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str) \
                    or not isinstance(paragraph.get("qas"), list):
                raise SquadError(f"{where}: a paragraph needs a 'context' string and a 'qas' list")
            for qa_index, qa in enumerate(paragraph["qas"]):
                qa_where = f"{where}.qas[{qa_index}]"
                if not isinstance(qa, dict) or "id" not in qa or not isinstance(
                        qa.get("question"), str):
                    raise SquadError(f"{qa_where}: a question needs an 'id' and a 'question'")
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                try:
                    texts = [str(a["text"]) for a in answers]
                    starts = [int(a["answer_start"]) for a in answers]
                except (TypeError, KeyError, ValueError) as err:
                    raise SquadError(f"{qa_where} (id {qa['id']}): each answer needs 'text' and "
                                     f"an integer 'answer_start' ({err!r})") from err
                rows.append({"id": str(qa["id"]), "title": title,
                             "context": paragraph["context"], "question": qa["question"],
                             "answers": {"text": texts, "answer_start": starts},
                             "article": article_index})
    if not rows:
        raise SquadError(f"{path} holds no questions")
    return rows


def read_squad_json(path: str | Path, data: Any = None):
    """An official SQuAD file as a `datasets.Dataset` of questions, written once to the datasets
    Arrow cache under a key made of the file's content (so later tokenization is cached too)."""
    import datasets
    path = Path(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:32]
    rows = parse_squad_json(path, data)  # validated on every run: errors must not hide in a cache

    def generate(rows):
        yield from rows

    return datasets.Dataset.from_generator(
        generate, features=squad_features(), gen_kwargs={"rows": rows},
        fingerprint=f"squad-json-{READER_VERSION}-{digest}")


def parse_articles(selection: str | int | Sequence[int]) -> list[int]:
    """Article indices from "0-37", "0-9,12,20-25" (inclusive ranges), an int or a list."""
    if isinstance(selection, int):
        selection = [selection]
    if not isinstance(selection, str):
        indices = sorted({int(i) for i in selection})
        if not indices or indices[0] < 0:
            raise SquadError(f"article selection {selection!r}: expected indices from 0")
        return indices
    indices: set[int] = set()
    for part in selection.replace(" ", "").split(","):
        try:
            if "-" in part[1:]:
                first, last = part.split("-", 1) if not part.startswith("-") else (part, "")
                first_i, last_i = int(first), int(last)
                if first_i > last_i:
                    raise ValueError
                indices.update(range(first_i, last_i + 1))
            else:
                indices.add(int(part))
        except ValueError:
            raise SquadError(f"article selection {selection!r}: expected indices and inclusive "
                             f"ranges such as '0-37' or '0-9,12'") from None
    if any(i < 0 for i in indices):
        raise SquadError(f"article selection {selection!r}: indices start at 0")
    return sorted(indices)


def select_articles(dataset, selection: str | int | Sequence[int], source: str):
    """The questions of the chosen articles (by position in the file, counted from 0)."""
    if "article" not in dataset.column_names:
        raise SquadError(f"{source}: selecting articles needs an official SQuAD JSON file (its "
                         f"articles are numbered in file order); this data has no 'article' column")
    import numpy as np
    wanted = parse_articles(selection)
    articles = np.asarray(dataset.select_columns(["article"]).to_dict()["article"])
    missing = [i for i in wanted if i not in set(articles.tolist())]
    if missing:
        raise SquadError(f"{source}: article(s) {missing[:10]} not in the file, which has "
                         f"articles 0-{articles.max()}")
    return dataset.select(np.flatnonzero(np.isin(articles, wanted)).tolist())


# --------------------------------------------------------------------------------- answers
def locate_answer(context: str, text: str, answer_start: int, question_id: str,
                  source: str) -> int:
    """The character where `text` starts in `context`: `answer_start` when the text is there,
    else the only place the text occurs. Anything else is an error naming the question."""
    if not text:
        raise SquadError(f"{source}: question {question_id}: an answer's text is empty")
    if context[answer_start:answer_start + len(text)] == text:
        return answer_start
    found = []
    at = context.find(text)
    while at != -1:
        found.append(at)
        at = context.find(text, at + 1)
    shown = context[max(0, answer_start):answer_start + len(text)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise SquadError(f"{source}: question {question_id}: answer {text!r} does not occur in "
                         f"its context (answer_start {answer_start} points at {shown!r})")
    raise SquadError(f"{source}: question {question_id}: answer {text!r} is not at answer_start "
                     f"{answer_start} (which points at {shown!r}) and occurs {len(found)} times "
                     f"in the context (at characters {found[:5]}); cannot tell which is meant")


# --------------------------------------------------------------------------------- windows
@dataclass(frozen=True)
class WindowConfig:
    """How a question and its context become model inputs.

    Args:
        max_length: Tokens per window, [CLS] question [SEP] context [SEP] (Hugging Face's
            `max_seq_length`).
        doc_stride: Context tokens shared by consecutive windows of one question.
        max_question_length: Questions longer than this many tokens are cut (None: never).
    """

    max_length: int = 384
    doc_stride: int = 128
    max_question_length: int | None = 64

    def __post_init__(self):
        if self.doc_stride < 0:
            raise SquadError(f"doc_stride must be >= 0, got {self.doc_stride}")
        if self.max_question_length is not None and self.max_question_length < 1:
            raise SquadError(f"max_question_length must be positive or None, got "
                             f"{self.max_question_length}")
        if self.doc_stride >= self.max_length - 3:
            raise SquadError(f"doc_stride ({self.doc_stride}) must be smaller than the context "
                             f"room of a window: max_length ({self.max_length}) minus the "
                             f"question and 3 special tokens")


def window_tokenizer(tokenizer, config: WindowConfig):
    """A copy of `tokenizer` that cuts (question, context) pairs into overlapping windows (the
    copy matters: truncation is tokenizer state and the model saves the tokenizer it is given)."""
    from tokenizers import Tokenizer
    windowing = Tokenizer.from_str(tokenizer.to_str())
    windowing.no_padding()
    windowing.enable_truncation(config.max_length, stride=config.doc_stride,
                                strategy="only_second")
    return windowing


def answer_token_span(sequence_ids: Sequence[int | None], offsets: Sequence[tuple[int, int]],
                      start_char: int, end_char: int) -> tuple[int, int]:
    """(start, end) token positions of the characters [start_char, end_char) in one window,
    or (0, 0) — [CLS] — when the window's context does not hold the whole answer."""
    context_tokens = [t for t, s in enumerate(sequence_ids) if s == 1]
    if not context_tokens:
        return 0, 0
    first, last = context_tokens[0], context_tokens[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return 0, 0
    start = next(t for t in context_tokens if offsets[t][1] > start_char)
    end = next(t for t in reversed(context_tokens) if offsets[t][0] < end_char)
    return start, max(start, end)


def make_windows(examples: dict[str, list], indices: list[int], windowing, config: WindowConfig,
                 with_labels: bool, version_2_with_negative: bool,
                 source: str) -> dict[str, list]:
    """A batch of questions (Hugging Face `squad` columns) -> one row per window.

    Each window row holds `input_ids`, `token_type_ids`, `index` (the question's row), the
    context character span of every token (`offset_start`/`offset_end`, -1 outside the
    context) and, `with_labels`, the answer's token span (`start_positions`/`end_positions`,
    [CLS] = 0 when the window does not hold it). The first gold answer is the training target.
    """
    questions, contexts, ids = examples["question"], examples["context"], examples["id"]
    if config.max_question_length is not None:
        questions = _cut_questions(windowing, questions, config.max_question_length)
    question_lengths = [len(e.ids) for e in windowing.encode_batch(questions,
                                                                   add_special_tokens=False)]
    for question_id, length in zip(ids, question_lengths):
        room = config.max_length - 3 - length
        if room <= config.doc_stride:
            raise SquadError(
                f"{source}: question {question_id} is {length} tokens long, which leaves "
                f"{room} context tokens per window of max_length {config.max_length}; "
                f"doc_stride ({config.doc_stride}) must be smaller: lower doc_stride or "
                f"max_question_length, or raise max_length")
    out: dict[str, list] = {"input_ids": [], "token_type_ids": [], "index": [],
                            "offset_start": [], "offset_end": []}
    if with_labels:
        out["start_positions"], out["end_positions"] = [], []
    encodings = windowing.encode_batch(list(zip(questions, contexts)))
    for row, (index, encoding) in enumerate(zip(indices, encodings)):
        answer = None
        if with_labels:
            answer = _training_answer(examples, row, version_2_with_negative, source)
        for window in [encoding, *encoding.overflowing]:
            sequence_ids = window.sequence_ids
            offsets = window.offsets
            out["input_ids"].append(window.ids)
            out["token_type_ids"].append(window.type_ids)
            out["index"].append(index)
            out["offset_start"].append([o[0] if s == 1 else NOT_CONTEXT
                                        for o, s in zip(offsets, sequence_ids)])
            out["offset_end"].append([o[1] if s == 1 else NOT_CONTEXT
                                      for o, s in zip(offsets, sequence_ids)])
            if with_labels:
                start, end = (0, 0) if answer is None else answer_token_span(
                    sequence_ids, offsets, *answer)
                out["start_positions"].append(start)
                out["end_positions"].append(end)
    return out


def _cut_questions(windowing, questions: list[str], max_tokens: int) -> list[str]:
    encodings = windowing.encode_batch(questions, add_special_tokens=False)
    return [q if len(e.ids) <= max_tokens else q[: e.offsets[max_tokens - 1][1]]
            for q, e in zip(questions, encodings)]


def _training_answer(examples: dict[str, list], row: int, version_2_with_negative: bool,
                     source: str) -> tuple[int, int] | None:
    """[start, end) characters of the first gold answer; None for an unanswerable question."""
    answers = examples["answers"][row]
    question_id = examples["id"][row]
    if not answers["text"]:
        if not version_2_with_negative:
            raise SquadError(f"{source}: question {question_id} has no answer; for SQuAD 2.0 "
                             f"data (unanswerable questions) set "
                             f"data.version_2_with_negative: true")
        return None
    text, given_start = answers["text"][0], answers["answer_start"][0]
    start = locate_answer(examples["context"][row], text, given_start, question_id, source)
    if start != given_start:
        log.warning("%s: question %s: answer %r is at character %d, not at its answer_start "
                    "%d; using %d", source, question_id, text, start, given_start, start)
    return start, start + len(text)


# ------------------------------------------------------------------------- post-processing
def best_window_spans(start_logits: Tensor, end_logits: Tensor, offset_start: Tensor,
                      offset_end: Tensor, n_best_size: int = 20,
                      max_answer_length: int = 30) -> dict[str, Tensor]:
    """Each window's best valid answer span, as context characters.

    Args:
        start_logits, end_logits: (B, T) scores of each token starting / ending the answer.
        offset_start, offset_end: (B, T) context characters [start, end) of each token;
            negative for question, special and padding tokens.
        n_best_size: Start and end candidates tried per window (the top context positions).
        max_answer_length: Longest span in tokens.

    Returns (each (B,)): `span_score` (start + end logit of the best valid span, -inf when the
    window has none), `span_start`/`span_end` (its characters [start, end), -1 when none) and
    `null_score` (the [CLS] start + end logit: the window's score for "no answer").
    """
    start_logits, end_logits = start_logits.float(), end_logits.float()
    in_context = offset_start >= 0  # (B, T)
    lowest = torch.finfo(start_logits.dtype).min
    start_logits_ctx = start_logits.masked_fill(~in_context, lowest)
    end_logits_ctx = end_logits.masked_fill(~in_context, lowest)
    k = min(n_best_size, start_logits.shape[1])
    start_top, start_index = start_logits_ctx.topk(k, dim=1)  # (B, k)
    end_top, end_index = end_logits_ctx.topk(k, dim=1)  # (B, k)
    length = end_index[:, None, :] - start_index[:, :, None]  # (B, k, k) end - start in tokens
    valid = ((length >= 0) & (length < max_answer_length)
             & in_context.gather(1, start_index)[:, :, None]
             & in_context.gather(1, end_index)[:, None, :])
    scores = start_top[:, :, None] + end_top[:, None, :]  # (B, k, k)
    scores = scores.masked_fill(~valid, -math.inf).flatten(1)  # (B, k*k)
    span_score, best = scores.max(dim=1)  # (B,)
    start_token = start_index.gather(1, (best // k)[:, None])  # (B, 1)
    end_token = end_index.gather(1, (best % k)[:, None])  # (B, 1)
    found = torch.isfinite(span_score)
    span_start = torch.where(found, offset_start.gather(1, start_token)[:, 0], NOT_CONTEXT)
    span_end = torch.where(found, offset_end.gather(1, end_token)[:, 0], NOT_CONTEXT)
    null_score = start_logits[:, 0] + end_logits[:, 0]  # [CLS] is position 0
    return {"span_score": span_score, "span_start": span_start, "span_end": span_end,
            "null_score": null_score}


def combine_windows(example_index: Tensor, span_score: Tensor, span_start: Tensor,
                    span_end: Tensor, null_score: Tensor, contexts: Sequence[str],
                    version_2_with_negative: bool = False,
                    null_score_diff_threshold: float = 0.0) -> dict[int, str]:
    """The answer text of every question that has windows: the best span over all its windows,
    cut from the original context (so unicode and runs of spaces come back exactly). With
    v2.0, "" (no answer) when the smallest null score beats the best span's score by more than
    `null_score_diff_threshold`, as google-research/bert's `run_squad.py` decides. Inputs are
    one entry per window, in any order, from any number of devices."""
    example_index = example_index.long().cpu()
    span_score, null_score = span_score.float().cpu(), null_score.float().cpu()
    span_start, span_end = span_start.long().cpu(), span_end.long().cpu()
    order = torch.argsort(example_index, stable=True)
    answers: dict[int, str] = {}
    example_ids, counts = torch.unique_consecutive(example_index[order], return_counts=True)
    for example, group in zip(example_ids.tolist(), torch.split(order, counts.tolist())):
        best = group[span_score[group].argmax()]
        best_score = float(span_score[best])
        text = (contexts[example][int(span_start[best]):int(span_end[best])]
                if math.isfinite(best_score) else "")
        if version_2_with_negative:
            null = float(null_score[group].min())
            if null - best_score > null_score_diff_threshold:
                text = ""
        answers[example] = text
    return answers


# ---------------------------------------------------------------------------------- scoring
def example_scores(prediction: str, gold_answers: Sequence[str],
                   version_2_with_negative: bool = False) -> tuple[float, float]:
    """(exact match, F1) of one prediction, each in [0, 1], maximised over the gold answers, by
    the official rules: lower-case, drop punctuation and the articles a/an/the, collapse
    whitespace; F1 over the bag of remaining tokens. With v2.0, gold answers that normalise to
    nothing are dropped and a question without any is scored against "" (no answer)."""
    if version_2_with_negative:
        gold_answers = [g for g in gold_answers if _normalize_text(g)] or [""]
    elif not gold_answers:
        raise SquadError("a SQuAD v1.1 question needs at least one gold answer")
    exact = max(float(_compute_exact_match_score(prediction, g)) for g in gold_answers)
    if not version_2_with_negative and not _normalize_text(prediction):
        f1 = 0.0  # evaluate-v1.1.py: no common token scores 0, even against an empty gold
    else:
        f1 = max(float(_compute_f1_score(prediction, g)) for g in gold_answers)
    return exact, f1


def squad_scores(predictions: dict[str, str], gold_answers: dict[str, Sequence[str]],
                 version_2_with_negative: bool = False) -> dict[str, float]:
    """Exact match and F1 in percent over the questions in `predictions`, as the official
    scripts report them; with v2.0 also the HasAns (questions with a gold answer) and NoAns
    split (nan for a group without questions)."""
    groups: dict[str, list[tuple[float, float]]] = {"": [], "HasAns_": [], "NoAns_": []}
    for question_id, prediction in predictions.items():
        gold = gold_answers[question_id]
        scores = example_scores(prediction, gold, version_2_with_negative)
        groups[""].append(scores)
        if version_2_with_negative:  # evaluate-v2.0.py: HasAns = the answers list is not empty
            groups["HasAns_" if len(gold) else "NoAns_"].append(scores)
    result = {}
    for prefix, scores in groups.items():
        if prefix and not version_2_with_negative:
            continue
        count = len(scores)
        result[f"{prefix}exact_match"] = (100.0 * sum(s[0] for s in scores) / count
                                          if count else math.nan)
        result[f"{prefix}f1"] = 100.0 * sum(s[1] for s in scores) / count if count else math.nan
    return result


def score_names(version_2_with_negative: bool) -> list[str]:
    names = ["exact_match", "f1"]
    if version_2_with_negative:
        names += [f"{group}_{name}" for group in ("HasAns", "NoAns") for name in names[:2]]
    return names


# ---------------------------------------------------------------------------------- metric
@dataclass
class SquadReferences:
    """What scoring needs besides the model's outputs, indexed by question row: ids, contexts
    (to cut answers from) and gold answer texts. Every device holds the whole split."""

    ids: list[str]
    contexts: list[str]
    answers: list[list[str]]

    def __post_init__(self):
        longest = max((len(c) for c in self.contexts), default=0)
        if max(len(self.ids), longest) >= FLOAT32_EXACT:
            raise SquadError(f"{len(self.ids)} questions, contexts up to {longest} characters: "
                             f"SquadMetric records rows and offsets as float32, exact below "
                             f"{FLOAT32_EXACT}; split the data")

    @classmethod
    def from_dataset(cls, dataset) -> "SquadReferences":
        """From a `datasets.Dataset` with id, context and (optionally) answers columns."""
        has_answers = "answers" in dataset.column_names
        columns = dataset.select_columns(["id", "context"] + (["answers"] if has_answers
                                                              else [])).to_dict()
        answers = ([list(a["text"]) for a in columns["answers"]] if has_answers
                   else [[] for _ in columns["id"]])
        return cls(ids=columns["id"], contexts=columns["context"], answers=answers)


class SquadMetric(Metric):
    """One SQuAD score (`exact_match`, `f1`, or with v2.0 `HasAns_f1` ...) over all questions
    seen, from per-window records that are gathered across devices before the windows of each
    question are combined (`combine_windows`). `references` (a `SquadReferences`) must be set
    before `compute`; the task module sets it from the data module at each evaluation epoch.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, score: str = "f1", version_2_with_negative: bool = False,
                 null_score_diff_threshold: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if score not in score_names(version_2_with_negative):
            raise ValueError(f"unknown SQuAD score {score!r}; expected one of "
                             f"{score_names(version_2_with_negative)}")
        self.score = score
        self.version_2_with_negative = version_2_with_negative
        self.null_score_diff_threshold = null_score_diff_threshold
        self.references: SquadReferences | None = None
        for name in ("example_index", "span_score", "span_start", "span_end", "null_score"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, example_index: Tensor, span_score: Tensor, span_start: Tensor,
               span_end: Tensor, null_score: Tensor) -> None:
        """One record per window, all (B,): the question's row, and `best_window_spans`'s
        outputs for the window."""
        # Every state is float32, indices and character offsets included (exact below 2**24,
        # which `SquadReferences` checks): a device that saw no window sends torchmetrics'
        # empty float32 placeholder, and gloo/NCCL need the same dtype from every rank.
        self.example_index.append(example_index.float())
        self.span_score.append(span_score.float())
        self.span_start.append(span_start.float())
        self.span_end.append(span_end.float())
        self.null_score.append(null_score.float())

    def predictions(self) -> dict[str, str]:
        """{question id: answer text} for every question seen (call after syncing)."""
        if self.references is None:
            raise RuntimeError("SquadMetric.references is not set: the questions' contexts and "
                               "gold answers are needed to score")
        names = ("example_index", "span_score", "span_start", "span_end", "null_score")
        if isinstance(self.example_index, list) and not self.example_index:
            return {}  # nothing seen (a list state is a tensor once synced across devices)
        states = [dim_zero_cat(getattr(self, name)) for name in names]
        answers = combine_windows(*states, contexts=self.references.contexts,
                                  version_2_with_negative=self.version_2_with_negative,
                                  null_score_diff_threshold=self.null_score_diff_threshold)
        return {self.references.ids[i]: text for i, text in answers.items()}

    def compute(self) -> Tensor:
        predictions = self.predictions()
        if not predictions:
            return torch.tensor(math.nan)
        gold = {self.references.ids[i]: a for i, a in enumerate(self.references.answers)}
        scores = squad_scores(predictions, gold, self.version_2_with_negative)
        return torch.tensor(scores[self.score], dtype=torch.float32)
