"""Translation metrics over detokenized text: sacreBLEU (Post 2018) and chrF, and exact match."""

from __future__ import annotations

from typing import Sequence

import sacrebleu


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
