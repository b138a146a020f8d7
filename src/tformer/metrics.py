"""Translation metrics over detokenized text: sacreBLEU (Post 2018) and chrF, and exact match; and the
fine-tuning metrics: accuracy, macro-F1, Matthews correlation, Pearson/Spearman, and entity precision/recall/F1.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Hashable, Sequence

import numpy as np
import sacrebleu

from tformer.errors import TformerError


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus sacreBLEU (13a tokenisation, as reported for WMT and Multi30k)."""
    return sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    return sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Fraction (0..1) of hypotheses equal to their reference after stripping surrounding space."""
    if not references:
        return 0.0
    return sum(h.strip() == r.strip() for h, r in zip(hypotheses, references)) / len(references)


# -- fine-tuning metrics: classification, regression, entity tagging ---------------------------------------------
# All take predictions first and gold second, as the translation metrics above do, and return fractions (0..1,
# correlations -1..1), 0.0 where a score is undefined (no examples, a constant input).


def _check_pairs(pred: Sequence, gold: Sequence) -> None:
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} predictions for {len(gold)} gold labels")


def accuracy(pred: Sequence[Hashable], gold: Sequence[Hashable]) -> float:
    """Fraction of predictions equal to their gold label."""
    _check_pairs(pred, gold)
    return sum(p == g for p, g in zip(pred, gold)) / len(gold) if gold else 0.0


def macro_f1(pred: Sequence[Hashable], gold: Sequence[Hashable]) -> float:
    """Unweighted mean of the per-class F1 over every class that occurs in gold or in pred.

    A class that is only predicted (never gold) counts with F1 = 0, as does a gold class never predicted; this is
    sklearn's f1_score(average="macro") with its default labels (the union of both).
    """
    _check_pairs(pred, gold)
    classes = set(gold) | set(pred)
    if not classes:
        return 0.0
    tp, fp, fn = Counter(), Counter(), Counter()
    for p, g in zip(pred, gold):
        if p == g:
            tp[g] += 1
        else:
            fp[p] += 1
            fn[g] += 1
    # F1 = 2PR / (P + R) = 2tp / (2tp + fp + fn), which is also 0 (not undefined) when tp = 0
    return sum(2 * tp[c] / (2 * tp[c] + fp[c] + fn[c]) for c in classes) / len(classes)


def matthews_corrcoef(pred: Sequence[Hashable], gold: Sequence[Hashable]) -> float:
    """Matthews correlation coefficient, for two or more classes (Gorodkin 2004's R_K, as GLUE reports for CoLA).

    With s examples, c of them correct, t_k gold and p_k predicted examples of class k:
        MCC = (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2))
    which for two classes is (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)). 0.0 when the denominator is 0
    (all gold or all predictions in one class).
    """
    _check_pairs(pred, gold)
    s = len(gold)
    c = sum(p == g for p, g in zip(pred, gold))
    p_k, t_k = Counter(pred), Counter(gold)
    cov_pg = c * s - sum(p_k[k] * t_k[k] for k in t_k)
    cov_pp = s * s - sum(n * n for n in p_k.values())
    cov_gg = s * s - sum(n * n for n in t_k.values())
    if cov_pp == 0 or cov_gg == 0:
        return 0.0
    return cov_pg / math.sqrt(cov_pp * cov_gg)  # integers up to here: exact for any size


def pearson(pred: Sequence[float], gold: Sequence[float]) -> float:
    """Pearson's correlation coefficient; 0.0 when either side is constant (or has fewer than two values)."""
    _check_pairs(pred, gold)
    x, y = np.asarray(pred, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if len(x) < 2:
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    return max(-1.0, min(1.0, float(x @ y) / denominator)) if denominator > 0 else 0.0


def _average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of the ranks they span (as Spearman's rho needs)."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v), dtype=np.float64)
    sorted_v = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(pred: Sequence[float], gold: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's over the ranks, ties given their average rank."""
    _check_pairs(pred, gold)
    return pearson(_average_ranks(pred), _average_ranks(gold))


TAG_SCHEMES = ("BIO", "IOB2", "IOB1")


def is_entity_tag(tag: str) -> bool:
    """O, B-TYPE or I-TYPE: a tag of the schemes entity scores read (parts of speech are not)."""
    prefix, dash, kind = tag.partition("-")
    return tag == "O" or (prefix in ("B", "I") and bool(dash) and bool(kind))


def _split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'), 'O' -> ('O', '')."""
    if not is_entity_tag(tag):
        raise TformerError(f"tag {tag!r} is not O, B-TYPE or I-TYPE (the BIO and IOB1 schemes)")
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def entity_spans(tags: Sequence[str], scheme: str = "BIO") -> set[tuple[str, int, int]]:
    """The entities of one tagged sentence as (type, start, end), covering tokens[start:end] (end exclusive).

    Decoded by conlleval's rules, which seqeval follows by default (not its strict mode): B-X always starts an
    entity; I-X continues the entity before it when that has type X, and otherwise (after O or after another
    type) starts one; O ends one. In IOB1 (CoNLL-2003's original files) entities start with I-X and B-X only
    separates two adjacent entities of the same type, so `I-PER I-PER B-PER` is two entities; BIO (IOB2) starts
    every entity with B-X and tolerates a stray I-X as conlleval does. Under these rules both schemes decode alike;
    the scheme is checked and names what the tags mean.
    """
    if scheme not in TAG_SCHEMES:
        raise TformerError(f"unknown tag scheme {scheme!r}: expected one of {', '.join(TAG_SCHEMES)}")
    spans = set()
    start, kind = None, ""  # the open entity, if any
    for i, tag in enumerate(tags):
        prefix, tag_kind = _split_tag(tag)
        continues = prefix == "I" and start is not None and tag_kind == kind
        if start is not None and not continues:
            spans.add((kind, start, i))
            start = None
        if prefix != "O" and not continues:
            start, kind = i, tag_kind
    if start is not None:
        spans.add((kind, start, len(tags)))
    return spans


def _prf(correct: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    precision = correct / n_pred if n_pred else 0.0
    recall = correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def entity_prf(pred_sentences: Sequence[Sequence[str]], gold_sentences: Sequence[Sequence[str]],
               scheme: str = "BIO") -> dict:
    """Entity precision, recall and F1 (0..1), micro-averaged over all entities of all sentences, as conlleval
    and seqeval report them: an entity counts as correct only when its type, start and end all match.

    Returns {"precision", "recall", "f1", "per_type": {type: {"precision", "recall", "f1", "support"}}}, with
    support the number of gold entities of the type and per_type covering types found in gold or predictions.
    """
    if len(pred_sentences) != len(gold_sentences):
        raise ValueError(f"{len(pred_sentences)} predicted sentences for {len(gold_sentences)} gold sentences")
    pred_n, gold_n, correct = Counter(), Counter(), Counter()
    for index, (pred, gold) in enumerate(zip(pred_sentences, gold_sentences)):
        if len(pred) != len(gold):
            raise ValueError(f"sentence {index}: {len(pred)} predicted tags for {len(gold)} gold tags")
        pred_spans, gold_spans = entity_spans(pred, scheme), entity_spans(gold, scheme)
        pred_n.update(kind for kind, _, _ in pred_spans)
        gold_n.update(kind for kind, _, _ in gold_spans)
        correct.update(kind for kind, _, _ in pred_spans & gold_spans)
    per_type = {}
    for kind in sorted(set(pred_n) | set(gold_n)):
        p, r, f = _prf(correct[kind], pred_n[kind], gold_n[kind])
        per_type[kind] = {"precision": p, "recall": r, "f1": f, "support": gold_n[kind]}
    p, r, f = _prf(sum(correct.values()), sum(pred_n.values()), sum(gold_n.values()))
    return {"precision": p, "recall": r, "f1": f, "per_type": per_type}
