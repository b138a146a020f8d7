"""Pretraining objectives for BERT-family encoders: masked-token corruption and sentence pairs.

Masked language modelling (Devlin et al. 2019, section 3.1, "Task #1"): pick about 15% of the ordinary
tokens of each sequence; of the picked ones replace 80% by [MASK], 10% by a random token and leave 10%
as they are; the loss is computed at the picked positions only (labels are -100 everywhere else, the
ignore index of cross-entropy). Special tokens and padding are never picked.

    mask_tokens(ids, special, ...)              one Bernoulli(0.15) draw per position (default)
    mask_tokens(..., word_starts=starts)         whole-word masking: one draw per word
    mask_tokens(..., span=SpanMasking())         SpanBERT (Joshi et al. 2020): contiguous spans to a budget

Choices, and where they depart from the papers:
  * Picking is one independent Bernoulli draw per position, as in Hugging Face's
    DataCollatorForLanguageModeling, not BERT's original "shuffle the candidates and take exactly
    round(15% * n)": the count per row is then binomial rather than fixed, but the expected rate is the
    same and the whole batch is drawn in three vectorised calls.
  * Whole-word masking draws once per word with probability mlm_probability, so the expected fraction of
    picked tokens is still mlm_probability; the 80/10/10 replacement is then decided per token (as
    Hugging Face's DataCollatorForWholeWordMask does), so one word may come out part [MASK], part kept.
  * Span masking follows SpanBERT: span lengths come from a geometric distribution with p = 0.2 restricted
    to 1..10 and renormalised (mean 3.8, the paper's number; piling the excess onto length 10 instead would
    give 4.46), anchors are uniform over the not-yet-masked tokens (over words when word starts are
    given, lengths then counted in words), spans are added until the row's budget round(0.15 * maskable)
    is met, and the last span is cut where the budget is reached. A span never crosses a special token
    (it stops at the end of its segment), and it may run into an earlier span, as in SpanBERT, so two
    spans can merge into one longer run. The 80/10/10 choice is made per span, as in the paper.
  * Everything random is drawn from the `generator` argument, so the same seed gives the same masks.

Sentence pairs (next-sentence prediction, BERT section 3.1 "Task #2"; sentence-order prediction, ALBERT,
Lan et al. 2020, section 3.1): a document (a list of sentences, each a list of token ids) is cut into
chunks of consecutive sentences of about `max_tokens` tokens (a share `short_seq_prob` of them of a length
drawn from [2, max_tokens], as BERT's short_seq_prob); each chunk is split at a random sentence boundary into
segments A and B, which note where each of their lines begins (PairExample.a_lines). Labels follow Hugging
Face's BertForPreTraining: 0 = "B follows A" (IsNext / right order), 1 = "B does not follow A" (NotNext / swapped).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

IGNORE_INDEX = -100  # cross-entropy's ignore_index: positions that are not predicted


# -- masked-token corruption ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpanMasking:
    """SpanBERT's span lengths: geometric with parameter p, restricted to 1..max_len and renormalised."""

    p: float = 0.2
    max_len: int = 10

    def __post_init__(self):
        if not 0.0 < self.p <= 1.0:
            raise ValueError(f"span masking needs 0 < p <= 1, not p={self.p}")
        if self.max_len < 1:
            raise ValueError(f"span masking needs max_len >= 1, not {self.max_len}")

    def length_probabilities(self) -> Tensor:
        """P(length = k) for k = 1..max_len, as a (max_len,) float64 tensor summing to 1."""
        k = torch.arange(self.max_len, dtype=torch.float64)
        weights = self.p * (1.0 - self.p) ** k  # the geometric's P(k+1), cut at max_len ...
        return weights / weights.sum()  # ... and renormalised, as SpanBERT does


def _check_masking_args(ids: Tensor, special: Tensor, word_starts: Tensor | None, vocab_size: int,
                        mlm_probability: float, mask_fraction: float, random_fraction: float,
                        random_low: int, n_excluded: int) -> None:
    if ids.dim() != 2:
        raise ValueError(f"mask_tokens takes ids of shape (batch, length), not {tuple(ids.shape)}")
    if special.shape != ids.shape or special.dtype != torch.bool:
        raise ValueError(f"special must be a bool tensor shaped like ids {tuple(ids.shape)}, "
                         f"not {special.dtype} {tuple(special.shape)}")
    if word_starts is not None and (word_starts.shape != ids.shape or word_starts.dtype != torch.bool):
        raise ValueError(f"word_starts must be a bool tensor shaped like ids {tuple(ids.shape)}, "
                         f"not {word_starts.dtype} {tuple(word_starts.shape)}")
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1), not {mlm_probability}")
    if mask_fraction < 0 or random_fraction < 0 or mask_fraction + random_fraction > 1.0:
        raise ValueError(f"mask_fraction={mask_fraction} and random_fraction={random_fraction} must be "
                         f">= 0 with a sum <= 1 (the rest of the picked tokens stay unchanged)")
    if random_fraction > 0 and not 0 <= random_low < vocab_size - n_excluded:
        raise ValueError(f"random replacements are drawn from [random_low, vocab_size) = "
                         f"[{random_low}, {vocab_size}) less {n_excluded} excluded ids, which leaves none")


def _unit_starts(special: Tensor, word_starts: Tensor | None) -> Tensor:
    """(B, T) bool: where a maskable unit (a word, or a token without word starts) begins.

    The first ordinary token after a special token (or at the start of a row) always begins a word, so a
    tokenizer that does not mark it, or a word cut by truncation, cannot glue onto its neighbour."""
    if word_starts is None:
        return ~special
    after_special = torch.ones_like(special)
    after_special[:, 1:] = special[:, :-1]
    return ~special & (word_starts | after_special)


def _whole_word_pick(u: Tensor, special: Tensor, starts: Tensor, mlm_probability: float) -> Tensor:
    """Pick each word with probability mlm_probability (its draw is the one at its first sub-token) and
    spread the decision over its sub-tokens."""
    flat_starts = starts.reshape(-1)
    if not bool(flat_starts.any()):
        return torch.zeros_like(special)
    word_index = torch.cumsum(flat_starts.long(), 0) - 1  # (B*T,) the word each position belongs to
    word_picked = u.reshape(-1)[flat_starts] < mlm_probability  # (n_words,)
    # Positions before the first word start have index -1; they are special, and dropped below.
    picked = word_picked[word_index.clamp(min=0)].view_as(special)
    return picked & ~special


def _span_row(maskable: list[bool], starts: list[bool], budget: int, span: SpanMasking,
              length_probs: Tensor, generator: torch.Generator, first_id: int) -> tuple[list[int], int]:
    """One row of SpanBERT masking -> (span id per position, -1 where unpicked; number of spans)."""
    T = len(maskable)
    units: list[tuple[int, int]] = []  # [start, end) token positions of each word (or token)
    segment_end: list[int] = []  # for each unit, the index one past the last unit of its segment
    for t in range(T):
        if starts[t]:
            units.append((t, t + 1))
        elif maskable[t] and units and units[-1][1] == t:
            units[-1] = (units[-1][0], t + 1)  # a continuation sub-token extends the current word
    seg_first = 0
    for i in range(len(units)):
        # A segment is a run of ordinary tokens between specials: it ends where the next unit is not adjacent.
        if i + 1 == len(units) or units[i + 1][0] != units[i][1]:
            segment_end.extend([i + 1] * (i + 1 - seg_first))
            seg_first = i + 1

    span_of = [-1] * T
    if budget <= 0 or not units:
        return span_of, 0
    unit_masked = [False] * len(units)
    count, n_spans = 0, 0
    anchors: list[int] = []
    lengths: list[int] = []
    while count < budget:
        if not anchors:  # draw in chunks: one torch call per chunk, not per span
            n = max(8, budget)
            anchors = torch.randint(len(units), (n,), generator=generator).tolist()
            lengths = (torch.multinomial(length_probs, n, replacement=True, generator=generator) + 1).tolist()
        anchor, length = anchors.pop(), lengths.pop()
        if unit_masked[anchor]:
            continue  # rejection keeps anchors uniform over the units not yet masked
        sid = first_id + n_spans
        n_spans += 1
        for j in range(anchor, min(anchor + length, segment_end[anchor])):
            if not unit_masked[j]:
                unit_masked[j] = True
                for t in range(*units[j]):
                    span_of[t] = sid
                    count += 1
            if count >= budget:
                break  # the last span is cut at the budget (at a word boundary with word starts)
    return span_of, n_spans


def _span_pick(special: Tensor, starts: Tensor, mlm_probability: float, span: SpanMasking,
               generator: torch.Generator) -> tuple[Tensor, int]:
    """(B, T) span index of each picked position (-1 elsewhere), and the number of spans."""
    length_probs = span.length_probabilities()
    rows, total = [], 0
    for maskable, row_starts in zip((~special).tolist(), starts.tolist()):
        budget = round(mlm_probability * sum(maskable))
        span_of, n = _span_row(maskable, row_starts, budget, span, length_probs, generator, total)
        rows.append(span_of)
        total += n
    return torch.tensor(rows, dtype=torch.long, device=special.device).view(special.shape), total


def mask_tokens(ids: Tensor, special: Tensor, *, vocab_size: int, mask_id: int, generator: torch.Generator,
                mlm_probability: float = 0.15, mask_fraction: float = 0.8, random_fraction: float = 0.1,
                word_starts: Tensor | None = None, span: SpanMasking | None = None,
                random_low: int = 0, random_exclude: Collection[int] = ()) -> tuple[Tensor, Tensor]:
    """Corrupt a batch for masked language modelling.

    ids (B, T) int64; special (B, T) bool, True at positions never to pick (special tokens AND padding);
    word_starts (B, T) bool, True at the first sub-token of each word (whole-word / word-level spans).
    Returns inputs (B, T), the corrupted ids, and labels (B, T): the original id at picked positions and
    -100 elsewhere. Random replacements are uniform over [random_low, vocab_size) less the ids in
    random_exclude: ids below random_low, and the excluded ones (special tokens, wherever the vocabulary puts
    them: a pretrained BERT vocabulary has [PAD]=0 but [UNK]..[MASK]=100..103), are never drawn.
    """
    excluded = sorted({int(i) for i in random_exclude if random_low <= int(i) < vocab_size})
    _check_masking_args(ids, special, word_starts, vocab_size, mlm_probability, mask_fraction, random_fraction,
                        random_low, len(excluded))
    device = ids.device
    if span is not None:
        starts = _unit_starts(special, word_starts)
        span_of, n_spans = _span_pick(special, starts, mlm_probability, span, generator)
        picked = span_of >= 0
        # One replacement draw per span: the whole span is [MASK], random, or kept.
        choice = torch.rand(max(n_spans, 1), generator=generator, device=device)[span_of.clamp(min=0)]
    else:
        u = torch.rand(ids.shape, generator=generator, device=device)
        if word_starts is None:
            picked = (u < mlm_probability) & ~special
        else:
            picked = _whole_word_pick(u, special, _unit_starts(special, word_starts), mlm_probability)
        choice = torch.rand(ids.shape, generator=generator, device=device)  # per token 80/10/10

    labels = torch.where(picked, ids, IGNORE_INDEX)
    to_mask = picked & (choice < mask_fraction)
    to_random = picked & (choice >= mask_fraction) & (choice < mask_fraction + random_fraction)
    inputs = ids.masked_fill(to_mask, mask_id)
    if random_fraction > 0:
        random_ids = torch.randint(random_low, vocab_size - len(excluded), ids.shape, generator=generator,
                                   device=device, dtype=ids.dtype)
        # The k-th allowed id: step over each excluded id at or below the value so far (ascending order).
        for e in excluded:
            random_ids += random_ids >= e
        inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels


# -- sentence pairs (NSP, SOP) -------------------------------------------------------------------------------


@dataclass
class PairExample:
    """Segments A and B (token ids, no specials) and the sentence label: 0 = B follows A, 1 = it does not.

    a_lines / b_lines: the offsets in A / B where a line of the text begins. A segment packs several lines, and
    the piece that opens a line may not look like a word start: byte-level BPE encodes each line without a space
    before its first word, so that piece has no "Ġ". Whole-word masking reads these offsets to start a word
    there instead of gluing it onto the previous line's last word."""

    a: list[int]
    b: list[int]
    label: int
    a_lines: list[int] = field(default_factory=list)
    b_lines: list[int] = field(default_factory=list)


Segment = tuple[list[int], list[int]]  # (token ids, offsets where a line begins)


def _join(sentences: list[list[int]]) -> Segment:
    """Consecutive sentences as one segment: their tokens, and where each of them begins."""
    tokens: list[int] = []
    lines: list[int] = []
    for sentence in sentences:
        lines.append(len(tokens))
        tokens.extend(sentence)
    return tokens, lines


def _cut(segment: Segment, lo: int, hi: int) -> Segment:
    tokens, lines = segment
    return tokens[lo:hi], [k - lo for k in lines if lo <= k < hi]


def _truncate_pair(a: Segment, b: Segment, max_tokens: int, rng: random.Random) -> tuple[Segment, Segment]:
    """Trim the longer segment one token at a time, from its front or its back at random (BERT's
    truncate_seq_pair), until len(a) + len(b) <= max_tokens."""
    a_lo, a_hi, b_lo, b_hi = 0, len(a[0]), 0, len(b[0])
    while (a_hi - a_lo) + (b_hi - b_lo) > max_tokens:
        if a_hi - a_lo > b_hi - b_lo:
            if rng.random() < 0.5:
                a_lo += 1
            else:
                a_hi -= 1
        elif rng.random() < 0.5:
            b_lo += 1
        else:
            b_hi -= 1
    return _cut(a, a_lo, a_hi), _cut(b, b_lo, b_hi)


def _pair(a: Segment, b: Segment, label: int) -> PairExample:
    return PairExample(a[0], b[0], label, a[1], b[1])


def _clean(documents: list[list[list[int]]], max_tokens: int, short_seq_prob: float) -> list[list[list[int]]]:
    if max_tokens < 2:
        raise ValueError(f"a sentence pair needs max_tokens >= 2 (one token for each segment), not {max_tokens}")
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ValueError(f"short_seq_prob must be in [0, 1], not {short_seq_prob}")
    return [[s for s in doc if s] for doc in documents]  # empty sentences carry nothing


def _pair_target(rng: random.Random, max_tokens: int, short_seq_prob: float) -> tuple[int, bool]:
    """(the length a pair is built to, whether it was drawn short). BERT's short_seq_prob: with that probability
    the length is uniform over [2, max_tokens] instead of max_tokens, so that pretraining also sees inputs as
    short as fine-tuning's. Nothing is drawn when short_seq_prob is 0: the pairs are then those of before.

    Departures from BERT's create_pretraining_data (and transformers' TextDatasetForNextSentencePrediction): the
    length is drawn for each pair, not once for a whole document (whose pairs would then all be short or all be
    long), and the pair is truncated to it, not to max_tokens (there the sentence crossing a short length could
    take the pair back up to the maximum), so a short pair is never longer than its draw."""
    if short_seq_prob > 0 and rng.random() < short_seq_prob:
        return rng.randint(2, max_tokens), True
    return max_tokens, False


def _take(doc: list[list[int]], i: int, target: int, short: bool) -> list[list[int]]:
    """Sentences of doc from i on, until they hold at least target tokens (or the document ends).

    As in BERT's data creation, the sentence that crosses the limit stays in the chunk and the pair is
    truncated afterwards: stopping before it would leave many one-sentence chunks, which cannot be split.
    A short chunk takes at least two sentences (when there are), so that it can be split into A and B: one
    sentence alone reaches most short lengths, and its chunk would be skipped, the sentence lost."""
    chunk, length = [], 0
    while i + len(chunk) < len(doc) and (length < target or (short and len(chunk) < 2)):
        chunk.append(doc[i + len(chunk)])
        length += len(chunk[-1])
    return chunk


def make_nsp_pairs(documents: list[list[list[int]]], max_tokens: int, rng: random.Random,
                   short_seq_prob: float = 0.0) -> list[PairExample]:
    """BERT's next-sentence-prediction pairs, len(a) + len(b) <= max_tokens (the caller adds [CLS] and 2 [SEP]).

    Each chunk of consecutive sentences is split at a random sentence boundary. With probability 1/2, B
    is the rest of the chunk, the real continuation (label 0, IsNext); otherwise B is a run of consecutive
    sentences from a random start in another document, long enough to fill the budget (label 1, NotNext),
    and the chunk's unused sentences are put back to start the next chunk, as BERT does. Chunks of a
    single sentence (one-sentence documents, or a sentence that fills the budget alone) are skipped: BERT
    would pair them with a random B only, which tilts the labels towards NotNext. With probability
    short_seq_prob a pair is built to a shorter length, drawn uniformly from [2, max_tokens] (_pair_target).
    """
    docs = _clean(documents, max_tokens, short_seq_prob)
    usable = [d for d in range(len(docs)) if docs[d]]
    if len(usable) < 2:
        raise ValueError(f"next-sentence prediction needs at least 2 non-empty documents, got {len(usable)}")
    pairs = []
    for d, doc in enumerate(docs):
        here = bisect.bisect_left(usable, d)  # d's place among the usable documents (when it is one)
        i = 0
        while i < len(doc) - 1:  # (a lone last sentence cannot be split into A and B)
            target, short = _pair_target(rng, max_tokens, short_seq_prob)
            chunk = _take(doc, i, target, short)
            i += len(chunk)
            if len(chunk) < 2:
                continue
            split = rng.randint(1, len(chunk) - 1)  # A = chunk[:split], at least one sentence on each side
            a = _join(chunk[:split])
            if rng.random() < 0.5:
                b, label = _join(chunk[split:]), 0
            else:
                # A uniform pick among the other documents, without building their list for every pair (that
                # made an epoch's pairs quadratic in the number of documents: 8,000 took 2.7 s, a million hours).
                k = rng.randrange(len(usable) - 1)  # the same draw as rng.choice over the others
                other = usable[k + (k >= here)]
                source = docs[other]
                start = rng.randrange(len(source))
                b = _join(_take(source, start, max(1, target - len(a[0])), False))
                label = 1
                i -= len(chunk) - split  # B's real sentences were not used: they open the next chunk
            pairs.append(_pair(*_truncate_pair(a, b, target, rng), label))
    return pairs


def _chunks(document: list[list[int]], max_tokens: int, rng: random.Random,
            short_seq_prob: float) -> Iterator[tuple[list[list[int]], int]]:
    """(chunk of consecutive sentences, the length its pair is built to), one after another (see _take)."""
    i = 0
    while i < len(document) - 1:  # (a lone last sentence cannot be split into A and B)
        target, short = _pair_target(rng, max_tokens, short_seq_prob)
        chunk = _take(document, i, target, short)
        i += len(chunk)
        yield chunk, target


def make_sop_pairs(documents: list[list[list[int]]], max_tokens: int, rng: random.Random,
                   short_seq_prob: float = 0.0) -> list[PairExample]:
    """ALBERT's sentence-order-prediction pairs, len(a) + len(b) <= max_tokens.

    Each chunk of consecutive sentences is split at a random sentence boundary into A and B, both from
    the same document. With probability 1/2 they keep their order (label 0); otherwise they are swapped,
    (B, A) (label 1). Truncation happens before the swap, so a negative holds exactly the tokens its
    positive would have. Chunks of a single sentence are skipped (there is no order to predict).
    short_seq_prob: as make_nsp_pairs'.
    """
    docs = _clean(documents, max_tokens, short_seq_prob)
    pairs = []
    for doc in docs:
        for chunk, target in _chunks(doc, max_tokens, rng, short_seq_prob):
            if len(chunk) < 2:
                continue
            split = rng.randint(1, len(chunk) - 1)
            a, b = _truncate_pair(_join(chunk[:split]), _join(chunk[split:]), target, rng)
            if rng.random() < 0.5:
                pairs.append(_pair(a, b, 0))
            else:
                pairs.append(_pair(b, a, 1))
    return pairs


# -- encoding and batching -----------------------------------------------------------------------------------


def encode_pair(a: list[int], b: list[int], cls_id: int, sep_id: int) -> tuple[list[int], list[int]]:
    """[CLS] A [SEP] B [SEP] and its token type ids: 0 for [CLS] A [SEP], 1 for B [SEP]."""
    ids = [cls_id, *a, sep_id, *b, sep_id]
    type_ids = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    return ids, type_ids


def encode_single(a: list[int], cls_id: int, sep_id: int) -> tuple[list[int], list[int]]:
    """[CLS] A [SEP], all token type 0."""
    return [cls_id, *a, sep_id], [0] * (len(a) + 2)


def pad_batch(seqs: list[list[int]], pad_id: int, type_ids: list[list[int]] | None = None) -> dict[str, Tensor]:
    """Right-pad to the longest sequence -> ids (B, T) int64, type_ids (B, T) int64 (0 at padding, and
    everywhere when not given), attention_mask (B, T) bool, True at real tokens."""
    if not seqs:
        raise ValueError("pad_batch needs at least one sequence")
    if type_ids is not None and [len(t) for t in type_ids] != [len(s) for s in seqs]:
        raise ValueError("type_ids must have one list per sequence, each as long as its sequence")
    B, T = len(seqs), max(len(s) for s in seqs)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    types = torch.zeros((B, T), dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.bool)
    for r, seq in enumerate(seqs):
        n = len(seq)
        ids[r, :n] = torch.tensor(seq, dtype=torch.long)
        attention_mask[r, :n] = True
        if type_ids is not None:
            types[r, :n] = torch.tensor(type_ids[r], dtype=torch.long)
    return {"ids": ids, "type_ids": types, "attention_mask": attention_mask}


def special_mask(ids: Tensor, special_ids: Collection[int]) -> Tensor:
    """Bool, shaped like ids: True where ids is one of special_ids (pass the pad id among them to cover padding)."""
    if not special_ids:
        return torch.zeros_like(ids, dtype=torch.bool)
    return torch.isin(ids, torch.tensor(sorted(special_ids), dtype=ids.dtype, device=ids.device))
