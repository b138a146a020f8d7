"""Extractive question answering data (SQuAD v1.1, Rajpurkar et al. 2016): reading, features with document
striding, turning start/end logits back into answer text, and the official EM/F1 scores.

The model side (a start/end head over an encoder) lives elsewhere; this module is everything around it:

  read_squad      the SQuAD v1.1 JSON file -> one QAExample per question
  make_features   QAExample -> QAFeature windows, `[CLS] question [SEP] context-window [SEP]` as BERT fine-tunes
                  (Devlin et al. 2019, section 4.2), with the answer's token positions as labels
  n_best_answers  start/end logits of every window -> ranked answer spans per question, with probabilities
  best_spans      ... -> the best answer text per question, ready for squad_scores
  squad_scores    exact match and F1 in percent, by the rules of the official v1.1 evaluation script

Shapes: F features (windows), T tokens per feature (features are not padded; logits may be, to the longest).
"""

from __future__ import annotations

import json
import re
import string
import warnings
from bisect import bisect_right
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tformer.data.parallel import read_text
from tformer.encoder_tokenization import EncoderTokenizer
from tformer.errors import TformerError


@dataclass
class QAExample:
    """One question about one paragraph, with its gold answers (one in train, usually three in dev)."""

    id: str
    title: str
    context: str
    question: str
    answers: list[str]
    answer_starts: list[int]  # character offsets (Python str indices) into `context`, one per answer


@dataclass
class QAFeature:
    """One window of one example, as the encoder reads it.

    offsets[i] is token i's (char_start, char_end) span in the example's context, or None for question and
    special tokens, so that only context tokens can be chosen as answer boundaries. start/end are the token
    indices of the (first) gold answer in `ids`; when the answer does not lie wholly inside this window they are
    both 0, the [CLS] (<s>) position, which is what BERT does with SQuAD v1.1 training windows.
    max_context[i] is True when this window is, of all the example's windows holding context token i, the one
    where that token has the most context on its nearer side (BERT's rule; see make_features).
    """

    example_index: int  # into the list of examples given to make_features
    ids: list[int]
    type_ids: list[int]
    offsets: list[tuple[int, int] | None]
    start: int
    end: int
    max_context: list[bool] | None = None


# -- reading ---------------------------------------------------------------------------------------------


def read_squad(path: str | Path, strict: bool = False, answers: bool = True) -> list[QAExample]:
    """The questions of a SQuAD v1.1 JSON file, in file order. answers=False: questions to answer, whose
    "answers" (and "title") may be left out.

    A missing file, invalid JSON (with its line), a missing or mistyped field (named with its place, e.g.
    `data[3].paragraphs[0].qas[7] (id 5733...)`) or a file without questions is a TformerError. An answer whose
    text is not found in the context at its answer_start is an error with strict=True; otherwise such answers
    are counted in one warning (`offset_mismatches` lists them). The official v1.1 files have none.
    """
    path = Path(path)
    text = read_text(path)
    try:
        root = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TformerError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    data = _field(root, "data", list, path, "the top level")
    examples: list[QAExample] = []
    seen: set[str] = set()
    for a, article in enumerate(data):
        where_a = f"data[{a}]"
        _need_object(article, path, where_a)
        title = _field(article, "title", str, path, where_a) if answers or "title" in article else ""
        for p, paragraph in enumerate(_field(article, "paragraphs", list, path, where_a)):
            where_p = f"{where_a}.paragraphs[{p}]"
            _need_object(paragraph, path, where_p)
            context = _field(paragraph, "context", str, path, where_p)
            for q, qa in enumerate(_field(paragraph, "qas", list, path, where_p)):
                where_q = f"{where_p}.qas[{q}]"
                _need_object(qa, path, where_q)
                qid = _field(qa, "id", str, path, where_q)
                where_q = f"{where_q} (id {qid})"
                if qid in seen:
                    raise TformerError(f"{path}: {where_q}: the id is used by an earlier question")
                seen.add(qid)
                question = _field(qa, "question", str, path, where_q)
                texts, starts = [], []
                given = _field(qa, "answers", list, path, where_q) if answers or "answers" in qa else []
                for k, answer in enumerate(given):
                    where_k = f"{where_q}.answers[{k}]"
                    _need_object(answer, path, where_k)
                    texts.append(_field(answer, "text", str, path, where_k))
                    starts.append(_field(answer, "answer_start", int, path, where_k))
                examples.append(QAExample(qid, title, context, question, texts, starts))
    if not examples:  # as the other readers: a file of nothing to train on, score or answer is a mistake
        raise TformerError(f"{path}: no questions (every data[].paragraphs[].qas list is empty)")
    bad = offset_mismatches(examples)
    if bad:
        qid, k = bad[0]
        first = f"first: id {qid} answer {k}"
        if strict:
            raise TformerError(f"{path}: {len(bad)} answer(s) are not found in their context at answer_start "
                               f"({first})")
        n_answers = sum(len(e.answers) for e in examples)
        warnings.warn(f"{path}: {len(bad)} of {n_answers} answers are not found in their context at answer_start "
                      f"({first})", UserWarning, stacklevel=2)
    return examples


def offset_mismatches(examples: Sequence[QAExample]) -> list[tuple[str, int]]:
    """(example id, answer index) of every answer with context[start:start+len(text)] != text."""
    return [(e.id, k) for e in examples for k, (text, start) in enumerate(zip(e.answers, e.answer_starts))
            if start < 0 or e.context[start:start + len(text)] != text]


def _need_object(value, path: Path, where: str) -> None:
    if not isinstance(value, dict):
        raise TformerError(f"{path}: {where}: expected a JSON object, found {type(value).__name__}")


def _field(obj: dict, key: str, kind: type, path: Path, where: str):
    if not isinstance(obj, dict):
        raise TformerError(f"{path}: {where}: expected a JSON object, found {type(obj).__name__}")
    if key not in obj:
        raise TformerError(f"{path}: {where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = {list: "a list", str: "a string", int: "an integer"}
        raise TformerError(f"{path}: {where}: {key!r} must be {names[kind]}, not {value!r:.40}")
    return value


# -- features --------------------------------------------------------------------------------------------


def make_features(tokenizer: EncoderTokenizer, examples: Sequence[QAExample], max_length: int = 384,
                  stride: int = 128, max_question_tokens: int = 64, training: bool = True,
                  length_name: str | None = None, stride_name: str | None = None) -> list[QAFeature]:
    """Windows over each example's context, each framed with its question, at most `max_length` tokens.

    Layout: wordpiece `[CLS] q [SEP] ctx [SEP]`, type ids 0 for `[CLS] q [SEP]` and 1 for `ctx [SEP]`;
    bpe (RoBERTa) `<s> q </s></s> ctx </s>`, type ids all 0. The question keeps its first `max_question_tokens`
    tokens. The context is tokenized once (with character offsets); a window holds up to
    W = max_length - len(q) - n_special context tokens, and `stride` is the number of tokens shared by successive
    windows (Hugging Face's meaning of stride), so windows start every W - stride tokens until one reaches the
    end of the context. Features are not padded (pad with tokenizer.pad_id when batching).

    Labels (from the first answer): the start token is the one whose span contains answer_start and the end
    token the one containing its last character (a boundary in whitespace moves inward to the nearest token).
    A window that does not hold the whole answer gets start = end = 0 (the [CLS] position), as in BERT's
    SQuAD v1.1 training. training=True requires every example to have an answer; with training=False examples
    without answers get 0, 0.

    A context token that lies in several windows is marked (`max_context`) in the one where it sits farthest
    from a window edge: the score min(tokens to its left, tokens to its right) + 0.01 * window length, the
    first window winning ties, as in BERT's run_squad. n_best_answers can restrict answer starts to those.
    length_name: what set max_length, for the error when windows leave no room (default data.max_tokens);
    stride_name: what set the stride, for the same error (default data.doc_stride=<stride>).
    """
    n_special = 3 if tokenizer.style == "wordpiece" else 4
    if max_question_tokens < 1 or stride < 0:
        raise TformerError(f"max_question_tokens ({max_question_tokens}) must be >= 1 and the stride "
                           f"(data.doc_stride, {stride}) >= 0")
    min_window = max_length - max_question_tokens - n_special
    if min_window <= stride:
        cause, fix = (("data.max_tokens", "raise data.max_tokens (BERT: 384) or lower data.doc_stride")
                      if length_name is None else (length_name, "lower data.doc_stride"))
        raise TformerError(f"windows of {max_length} tokens ({cause}) leave {min_window} for context after "
                           f"a question of up to {max_question_tokens} tokens and {n_special} special tokens, not "
                           f"more than the stride ({stride_name or f'data.doc_stride={stride}'}): {fix}")
    contexts = list(dict.fromkeys(e.context for e in examples))  # paragraphs are shared by many questions
    encoded = tokenizer.backend.encode_batch(contexts, add_special_tokens=False)
    tokenized = {c: (enc.ids, _trim_offsets(c, enc.offsets)) for c, enc in zip(contexts, encoded)}
    questions = tokenizer.backend.encode_batch([e.question for e in examples], add_special_tokens=False)
    cls, sep = tokenizer.cls_id, tokenizer.sep_id

    features: list[QAFeature] = []
    for index, (example, q_enc) in enumerate(zip(examples, questions)):
        if training and not example.answers:
            raise TformerError(f"example {example.id}: no answer to train on")
        q_ids = q_enc.ids[:max_question_tokens]
        head = [cls, *q_ids, sep] if n_special == 3 else [cls, *q_ids, sep, sep]
        ctx_ids, ctx_offsets = tokenized[example.context]
        span = _answer_tokens(example, ctx_offsets) if example.answers else None
        window = max_length - len(q_ids) - n_special
        first = 0
        spans: list[tuple[int, int]] = []  # this example's windows as context-token ranges [first, last)
        while True:
            last = min(first + window, len(ctx_ids))  # this window is context tokens [first, last)
            ids = head + ctx_ids[first:last] + [sep]
            second = 0 if n_special == 4 else 1
            type_ids = [0] * len(head) + [second] * (last - first + 1)
            offsets = [None] * len(head) + list(ctx_offsets[first:last]) + [None]
            start = end = 0
            if span is not None and first <= span[0] and span[1] < last:
                start, end = span[0] - first + len(head), span[1] - first + len(head)
            features.append(QAFeature(index, ids, type_ids, offsets, start, end))
            spans.append((first, last))
            if last >= len(ctx_ids):
                break
            first += window - stride
        _mark_max_context(features[len(features) - len(spans):], spans, len(head))
    return features


def _mark_max_context(windows: Sequence[QAFeature], spans: Sequence[tuple[int, int]], head: int) -> None:
    """Set each window's `max_context` flags (see make_features); `head` tokens precede the context."""
    best: dict[int, tuple[float, int]] = {}  # context token -> (score, window)
    for w, (first, last) in enumerate(spans):
        for j in range(first, last):
            score = min(j - first, last - 1 - j) + 0.01 * (last - first)
            if j not in best or score > best[j][0]:
                best[j] = (score, w)
    for w, (feature, (first, last)) in enumerate(zip(windows, spans)):
        flags = [False] * len(feature.ids)
        for j in range(first, last):
            flags[head + j - first] = best[j][1] == w
        feature.max_context = flags


def _trim_offsets(context: str, offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Token spans without the leading whitespace that byte-level BPE counts into a word ("Ġword")."""
    out = []
    for s, e in offsets:
        while s < e and context[s].isspace():
            s += 1
        out.append((s, e))
    return out


def _answer_tokens(example: QAExample, offsets: list[tuple[int, int]]) -> tuple[int, int] | None:
    """Context-token indices (first, last) of the first answer, or None if no token lies inside it."""
    first_char = example.answer_starts[0]
    last_char = first_char + len(example.answers[0]) - 1
    ends = [e for _, e in offsets]
    starts = [s for s, _ in offsets]
    first = bisect_right(ends, first_char)  # first token ending after the answer's first character
    last = bisect_right(starts, last_char) - 1  # last token starting at or before its last character
    return (first, last) if first <= last else None


# -- post-processing -------------------------------------------------------------------------------------


@dataclass
class QAAnswer:
    """One candidate answer: its text, the context characters [char_start, char_end), the summed start and end
    logits, and its probability (softmax over the question's ranked candidates)."""

    text: str
    char_start: int
    char_end: int
    score: float
    probability: float


def n_best_answers(start_logits, end_logits, features: Sequence[QAFeature], examples: Sequence[QAExample],
                   n_best: int = 20, max_answer_length: int = 30,
                   max_context: bool = False) -> dict[str, list[QAAnswer]]:
    """The `n_best` best answer spans of each example, best first, over all of its windows.

    start_logits, end_logits: (F, T) tensors or arrays, row f for features[f] (T >= its length; positions past
    it are ignored). In each window, the top `n_best` start and top `n_best` end positions among its context
    tokens (question, special and padding positions are set aside first) are paired when e >= s and
    e - s + 1 <= max_answer_length tokens; a pair scores start_logit[s] + end_logit[e]. A character span found
    in two overlapping windows is kept once, with its better score. Probabilities are a softmax over the scores
    of the candidates returned. An example without any candidate gets [].
    max_context=True keeps, as BERT does, only spans whose start token is in its max-context window (see
    make_features); features without flags are left unrestricted.
    """
    start_logits, end_logits = _as_array(start_logits), _as_array(end_logits)
    if start_logits.shape != end_logits.shape or start_logits.ndim != 2 or len(start_logits) != len(features):
        raise ValueError(f"start and end logits must both be (F={len(features)}, T), got "
                         f"{tuple(start_logits.shape)} and {tuple(end_logits.shape)}")
    by_example: dict[int, dict[tuple[int, int], float]] = defaultdict(dict)
    for f, feature in enumerate(features):
        n = len(feature.ids)
        if start_logits.shape[1] < n:
            raise ValueError(f"feature {f} has {n} tokens but the logits only {start_logits.shape[1]} positions")
        in_context = np.array([o is not None for o in feature.offsets])
        starts = np.where(in_context, start_logits[f, :n], -np.inf)
        ends = np.where(in_context, end_logits[f, :n], -np.inf)
        if max_context and feature.max_context is not None:
            starts = np.where(np.array(feature.max_context), starts, -np.inf)
        top_s = np.argsort(-starts, kind="stable")[:min(n_best, int(np.isfinite(starts).sum()))]
        top_e = np.argsort(-ends, kind="stable")[:min(n_best, int(in_context.sum()))]
        scores = starts[top_s][:, None] + ends[top_e][None, :]  # start top_s[i], end top_e[j]
        length = top_e[None, :] - top_s[:, None] + 1
        scores = np.where((length >= 1) & (length <= max_answer_length), scores, -np.inf)
        # Only this window's n_best pairs can reach the example's n_best.
        order = np.argsort(-scores, axis=None, kind="stable")[:n_best]
        spans = by_example[feature.example_index]
        for i, j in zip(*np.unravel_index(order, scores.shape)):
            score = float(scores[i, j])
            if score == -np.inf:
                break
            char_span = (feature.offsets[top_s[i]][0], feature.offsets[top_e[j]][1])
            if char_span[1] > char_span[0] and score > spans.get(char_span, -np.inf):
                spans[char_span] = score
    out: dict[str, list[QAAnswer]] = {}
    for index, example in enumerate(examples):
        ranked = sorted(by_example.get(index, {}).items(), key=lambda item: -item[1])[:n_best]
        if not ranked:
            out[example.id] = []
            continue
        scores = np.array([score for _, score in ranked], dtype=np.float64)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        out[example.id] = [QAAnswer(example.context[a:b], a, b, score, p)
                           for ((a, b), score), p in zip(ranked, probs.tolist())]
    return out


def best_spans(start_logits, end_logits, features: Sequence[QAFeature], examples: Sequence[QAExample],
               n_best: int = 20, max_answer_length: int = 30, max_context: bool = False) -> dict[str, str]:
    """The best answer text of each example (see n_best_answers), "" when it has no valid span."""
    ranked = n_best_answers(start_logits, end_logits, features, examples, n_best, max_answer_length, max_context)
    return {qid: answers[0].text if answers else "" for qid, answers in ranked.items()}


def _as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


# -- metrics (official SQuAD v1.1 evaluation rules) ------------------------------------------------------

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lowercase, drop ASCII punctuation, drop the articles a/an/the, and collapse whitespace (in that order)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match_score(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Harmonic mean of precision and recall of the normalized tokens (counted with multiplicity). As in the
    v1.1 script, no overlap scores 0, including two answers that both normalize to nothing."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], examples: Sequence[QAExample]) -> dict[str, float]:
    """{"exact_match", "f1"} in percent over all `examples`, each the best over the example's gold answers.
    A question without a prediction scores 0 (one warning counts them), as in the official script."""
    em = f1 = 0.0
    missing = 0
    for example in examples:
        if not example.answers:
            raise TformerError(f"example {example.id}: no gold answer to score against")
        if example.id not in predictions:
            missing += 1
            continue
        pred = predictions[example.id]
        em += max(exact_match_score(pred, gold) for gold in example.answers)
        f1 += max(f1_score(pred, gold) for gold in example.answers)
    if missing:
        warnings.warn(f"{missing} of {len(examples)} questions have no prediction and score 0", UserWarning,
                      stacklevel=2)
    total = max(len(examples), 1)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}
