"""Pretraining collators: MLM masking rates and invariants (token, whole-word, span), NSP/SOP pairs, encoding."""

from __future__ import annotations

import math
import random
import time

import pytest
import torch

from tformer.data.collators import (PairExample, SpanMasking, encode_pair, encode_single, make_nsp_pairs,
                                    make_sop_pairs, mask_tokens, pad_batch, special_mask)

PAD, CLS, SEP, MASK = 0, 1, 2, 3
LOW = 5  # ids below this are special; ordinary ids and random replacements come from [LOW, VOCAB)
VOCAB = 50_000


def batch_with_specials(B: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] a [SEP] b [SEP] [PAD]...: random ordinary ids, a [SEP] in the middle, right padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(LOW, VOCAB, (B, T), generator=g)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g).tolist()
    for r, n in enumerate(lengths):
        ids[r, 0] = CLS
        ids[r, n // 2] = SEP
        ids[r, n - 1] = SEP
        ids[r, n:] = PAD
    return ids, special_mask(ids, {PAD, CLS, SEP})


def mask(ids, special, seed=0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    kwargs.setdefault("random_low", LOW)
    return mask_tokens(ids, special, vocab_size=VOCAB, mask_id=MASK, generator=g, **kwargs)


def within(observed: float, expected: float, n: int, sigmas: float = 4.0) -> bool:
    """observed is a binomial proportion over n trials: is it within `sigmas` standard deviations?"""
    return abs(observed - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n)


def runs(row: list[bool]) -> list[tuple[int, int]]:
    """[start, end) of each maximal run of True."""
    out, start = [], None
    for t, v in enumerate(row + [False]):
        if v and start is None:
            start = t
        elif not v and start is not None:
            out.append((start, t))
            start = None
    return out


# -- token-level masking ---------------------------------------------------------------------------------------


def test_rates_80_10_10_and_invariants():
    ids, special = batch_with_specials(64, 512, seed=0)
    inputs, labels = mask(ids, special, seed=1)
    picked = labels != -100
    n = int((~special).sum())
    assert within(picked.sum().item() / n, 0.15, n)
    # Never at specials or padding, which stay as they were.
    assert not picked[special].any()
    assert torch.equal(inputs[special], ids[special])
    # Labels are the original ids at picked positions; unpicked positions are untouched.
    assert torch.equal(labels[picked], ids[picked])
    assert torch.equal(inputs[~picked], ids[~picked])

    m = int(picked.sum())
    orig, new = ids[picked], inputs[picked]
    masked = new == MASK
    same = new == orig
    random_ = ~masked & ~same
    # A random draw equals the original with probability 1/(VOCAB - LOW): it then counts as "unchanged".
    hit = 1 / (VOCAB - LOW)
    assert within(masked.float().mean().item(), 0.8, m)
    assert within(random_.float().mean().item(), 0.1 * (1 - hit), m)
    assert within(same.float().mean().item(), 0.1 + 0.1 * hit, m)
    assert ((new[random_] >= LOW) & (new[random_] < VOCAB)).all()  # never a special id


def test_random_replacements_skip_special_ids_anywhere_in_the_vocabulary():
    # A pretrained BERT vocabulary: [PAD]=0, then [UNK] [CLS] [SEP] [MASK] = 100..103, not a prefix of the ids.
    specials, vocab = {0, 100, 101, 102, 103}, 110
    ids = torch.full((200, 100), 50)
    g = torch.Generator().manual_seed(0)
    inputs, labels = mask_tokens(ids, torch.zeros_like(ids, dtype=torch.bool), vocab_size=vocab, mask_id=103,
                                 generator=g, mlm_probability=0.99, mask_fraction=0.0, random_fraction=1.0,
                                 random_exclude=specials)
    drawn = torch.bincount(inputs[labels != -100], minlength=vocab)
    allowed = [i for i in range(vocab) if i not in specials]
    assert drawn[sorted(specials)].sum() == 0  # never a special token
    # every other id, the last included, is drawn about equally often (uniform over the allowed ids: ~190 each)
    assert drawn[allowed].min() > 100 and drawn[allowed].max() < 300
    with pytest.raises(ValueError, match="leaves none"):
        mask_tokens(ids, torch.zeros_like(ids, dtype=torch.bool), vocab_size=3, mask_id=2, generator=g,
                    random_exclude={0, 1, 2})


def test_custom_fractions():
    ids, special = batch_with_specials(16, 256, seed=2)
    inputs, labels = mask(ids, special, mask_fraction=1.0, random_fraction=0.0)
    picked = labels != -100
    assert picked.any() and (inputs[picked] == MASK).all()
    inputs, labels = mask(ids, special, mask_fraction=0.0, random_fraction=0.0)
    assert torch.equal(inputs, ids) and (labels != -100).any()  # picked for the loss, all left unchanged


def test_same_seed_same_masks_other_seed_differs():
    ids, special = batch_with_specials(8, 128, seed=3)
    starts = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    for kwargs in ({}, {"word_starts": starts}, {"span": SpanMasking()}, {"span": SpanMasking(), "word_starts": starts}):
        a, b, c = mask(ids, special, 7, **kwargs), mask(ids, special, 7, **kwargs), mask(ids, special, 8, **kwargs)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert not torch.equal(a[1], c[1])


# -- whole-word masking ----------------------------------------------------------------------------------------


def words_batch(B: int, T: int, seed: int):
    """Batch with specials and padding, and words of 1-4 sub-tokens: (ids, special, word_starts, word index)."""
    ids, special = batch_with_specials(B, T, seed)
    rng = random.Random(seed)
    starts = torch.zeros_like(special)
    word = torch.full(ids.shape, -1)
    w = 0
    for r in range(B):
        t = 0
        while t < T:
            if special[r, t]:
                t += 1
                continue
            length = rng.randint(1, 4)
            starts[r, t] = True
            while length and t < T and not special[r, t]:
                word[r, t] = w
                t += 1
                length -= 1
            w += 1
    return ids, special, starts, word


def test_whole_word_masking_picks_words_whole():
    ids, special, starts, word = words_batch(64, 512, seed=4)
    inputs, labels = mask(ids, special, seed=5, word_starts=starts)
    picked = labels != -100
    assert not picked[special].any()
    n_words = int(word.max()) + 1
    per_word_picked = torch.zeros(n_words).index_add_(0, word[~special], picked[~special].float())
    per_word_len = torch.zeros(n_words).index_add_(0, word[~special], torch.ones(int((~special).sum())))
    # Every word is picked entirely or not at all.
    assert ((per_word_picked == 0) | (per_word_picked == per_word_len)).all()
    # Token pick rate ~15%: the count is a sum of word lengths, each word in with probability 0.15.
    n = per_word_len.sum().item()
    sd = math.sqrt(0.15 * 0.85 * (per_word_len ** 2).sum().item()) / n
    assert abs(picked.sum().item() / n - 0.15) < 4 * sd
    assert torch.equal(labels[picked], ids[picked]) and torch.equal(inputs[~picked], ids[~picked])
    # The 80/10/10 choice is per token: some picked words come out part [MASK], part not.
    masked_in_word = torch.zeros(n_words).index_add_(0, word[picked], (inputs[picked] == MASK).float())
    whole = per_word_picked > 0
    assert ((masked_in_word[whole] > 0) & (masked_in_word[whole] < per_word_len[whole])).any()


# -- span masking ----------------------------------------------------------------------------------------------


def truncated_geometric_mean(p: float, max_len: int) -> float:
    weights = [p * (1 - p) ** (k - 1) for k in range(1, max_len + 1)]
    return sum(k * w for k, w in zip(range(1, max_len + 1), weights)) / sum(weights)


def test_span_budget_per_row_and_specials():
    ids, special = batch_with_specials(64, 512, seed=6)
    inputs, labels = mask(ids, special, seed=7, span=SpanMasking())
    picked = labels != -100
    assert not picked[special].any() and torch.equal(inputs[special], ids[special])
    for r in range(ids.shape[0]):
        assert picked[r].sum().item() == round(0.15 * (~special[r]).sum().item())  # exactly the budget
    assert torch.equal(labels[picked], ids[picked]) and torch.equal(inputs[~picked], ids[~picked])
    # Contiguous spans: at 15% most picked tokens have a picked neighbour (per-token picking: ~28%).
    left = torch.zeros_like(picked)
    left[:, 1:] = picked[:, :-1]
    right = torch.zeros_like(picked)
    right[:, :-1] = picked[:, 1:]
    assert (picked & (left | right)).sum() > 0.6 * picked.sum()


def test_span_lengths_follow_the_truncated_geometric():
    assert truncated_geometric_mean(0.2, 10) == pytest.approx(3.8, abs=0.01)  # SpanBERT's stated mean
    # Sparse masking on long rows, so spans rarely merge and the cut last span of each row matters little.
    ids = torch.randint(LOW, VOCAB, (8, 8192), generator=torch.Generator().manual_seed(8))
    special = torch.zeros_like(ids, dtype=torch.bool)
    _, labels = mask(ids, special, seed=9, span=SpanMasking(), mlm_probability=0.02)
    lengths = [e - s for row in (labels != -100).tolist() for s, e in runs(row)]
    assert len(lengths) > 250
    probs = SpanMasking().length_probabilities()
    mean = truncated_geometric_mean(0.2, 10)
    var = sum((k + 1 - mean) ** 2 * probs[k].item() for k in range(10))
    assert abs(sum(lengths) / len(lengths) - mean) < 4 * math.sqrt(var / len(lengths)) + 0.15  # +merge/cut bias
    assert within(sum(n == 1 for n in lengths) / len(lengths), probs[0].item(), len(lengths))
    assert sum(n > 10 for n in lengths) / len(lengths) < 0.05  # only merged spans exceed max_len


def test_span_replacement_is_per_span():
    ids = torch.randint(LOW, VOCAB, (8, 8192), generator=torch.Generator().manual_seed(10))
    special = torch.zeros_like(ids, dtype=torch.bool)
    inputs, labels = mask(ids, special, seed=11, span=SpanMasking(), mlm_probability=0.02,
                          mask_fraction=0.5, random_fraction=0.0)
    mixed = long = 0
    for r, row in enumerate((labels != -100).tolist()):
        for s, e in runs(row):
            if e - s >= 3:
                long += 1
                m = (inputs[r, s:e] == MASK).sum().item()
                mixed += 0 < m < e - s
    # Per span, a run is all [MASK] or all kept unless two spans merged; per token most would be mixed.
    assert long > 100 and mixed < 0.15 * long


def test_word_level_spans():
    ids, special, starts, word = words_batch(32, 512, seed=12)
    _, labels = mask(ids, special, seed=13, span=SpanMasking(), word_starts=starts)
    picked = labels != -100
    assert not picked[special].any()
    for r in range(ids.shape[0]):
        row_words = word[r][~special[r]]
        row_picked = picked[r][~special[r]]
        budget = round(0.15 * row_words.numel())
        # Budget met, overshooting by less than the last word (words are at most 4 tokens).
        assert budget <= row_picked.sum().item() < budget + 4
        for w in row_words.unique():
            in_word = row_picked[row_words == w]
            assert in_word.all() or not in_word.any()


# -- argument checks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"mlm_probability": 0.0}, {"mlm_probability": 1.0}, {"mlm_probability": -0.1},
                                    {"mask_fraction": 0.95, "random_fraction": 0.1}, {"mask_fraction": -0.1},
                                    {"random_fraction": -0.1}, {"random_low": VOCAB}])
def test_bad_masking_arguments(kwargs):
    ids, special = batch_with_specials(2, 16, seed=0)
    with pytest.raises(ValueError):
        mask(ids, special, **kwargs)


def test_bad_shapes_and_span_settings():
    ids, special = batch_with_specials(2, 16, seed=0)
    with pytest.raises(ValueError, match="special"):
        mask(ids, special[:, :8])
    with pytest.raises(ValueError, match="word_starts"):
        mask(ids, special, word_starts=torch.ones(2, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch, length"):
        mask(ids[0], special[0])
    for bad in ({"p": 0.0}, {"p": 1.5}, {"max_len": 0}):
        with pytest.raises(ValueError):
            SpanMasking(**bad)


# -- NSP and SOP pairs -----------------------------------------------------------------------------------------


def sentence_docs(n_docs: int, seed: int, sentence_len: int = 5) -> list[list[list[int]]]:
    """Doc d, sentence s, token k has id d*1000 + s*10 + k: each token says where it came from."""
    rng = random.Random(seed)
    return [[[d * 1000 + s * 10 + k for k in range(sentence_len)] for s in range(rng.randint(1, 15))]
            for d in range(n_docs)]


def sentences_of(tokens: list[int], sentence_len: int = 5) -> tuple[int, list[int]]:
    """(document, sentence indices) of whole consecutive sentences; fails if they are not."""
    assert tokens and len(tokens) % sentence_len == 0
    doc = tokens[0] // 1000
    sents = [tokens[i] % 1000 // 10 for i in range(0, len(tokens), sentence_len)]
    expected = [doc * 1000 + s * 10 + k for s in sents for k in range(sentence_len)]
    assert tokens == expected and sents == list(range(sents[0], sents[0] + len(sents)))
    return doc, sents


def test_nsp_pairs_continuation_or_other_document():
    # Sentences of 5 and a budget of 20 never need truncation, so every segment is whole sentences.
    labels = []
    for seed in range(40):
        docs = sentence_docs(30, seed)
        for pair in make_nsp_pairs(docs, 20, random.Random(seed)):
            assert len(pair.a) + len(pair.b) <= 20
            doc_a, sents_a = sentences_of(pair.a)
            doc_b, sents_b = sentences_of(pair.b)
            if pair.label == 0:  # IsNext: B's first sentence is the one after A's last, same document
                assert doc_b == doc_a and sents_b[0] == sents_a[-1] + 1
            else:  # NotNext: B from another document
                assert pair.label == 1 and doc_b != doc_a
            labels.append(pair.label)
    assert len(labels) > 2000
    assert within(sum(labels) / len(labels), 0.5, len(labels))


def test_nsp_pairs_scale_linearly_with_the_number_of_documents():
    # 60,000 two-sentence documents: picking the other document by building the list of all the others for each
    # NotNext pair is quadratic (20,000 took 6.4 s here, so about a minute); one draw per pair takes about a second.
    # The bound is loose on purpose: it tells the two apart on a slow machine, it does not time anything.
    docs = [[[d * 2 + 10], [d * 2 + 11]] for d in range(60_000)]
    start = time.perf_counter()
    pairs = make_nsp_pairs(docs, 2, random.Random(0))
    assert len(pairs) == 60_000 and time.perf_counter() - start < 20.0
    others = [p for p in pairs if p.label == 1]
    # NotNext B comes from every other document alike: the sources spread over the whole corpus
    assert all((p.b[0] - 10) // 2 != (p.a[0] - 10) // 2 for p in others)
    assert len({(p.b[0] - 10) // 2 for p in others}) > 0.5 * len(others)


def test_nsp_and_sop_truncate_to_the_budget():
    rng = random.Random(0)
    docs = []
    for d in range(20):  # token id = d * 10000 + its position in the document, sentences of 1-30 tokens
        doc, pos = [], 0
        for _ in range(rng.randint(2, 12)):
            n = rng.randint(1, 30)
            doc.append([d * 10000 + pos + k for k in range(n)])
            pos += n
        docs.append(doc)
    contiguous = lambda seg: seg == list(range(seg[0], seg[0] + len(seg)))  # noqa: E731
    for make in (make_nsp_pairs, make_sop_pairs):
        pairs = make(docs, 25, random.Random(1))
        assert len(pairs) > 20
        for p in pairs:
            assert p.a and p.b and len(p.a) + len(p.b) <= 25
            assert contiguous(p.a) and contiguous(p.b)
            first, second = (p.a, p.b) if p.label == 0 else (p.b, p.a)
            if p.label == 0 or make is make_sop_pairs:  # the two are in document order, same document
                assert first[0] // 10000 == second[0] // 10000 and first[-1] < second[0]


def test_sop_pairs_swap_consecutive_segments():
    labels = []
    for seed in range(40):
        for pair in make_sop_pairs(sentence_docs(30, seed), 20, random.Random(seed)):
            doc_a, sents_a = sentences_of(pair.a)
            doc_b, sents_b = sentences_of(pair.b)
            assert doc_a == doc_b  # both segments always come from one document
            if pair.label == 0:
                assert sents_b[0] == sents_a[-1] + 1  # original order
            else:
                assert pair.label == 1 and sents_a[0] == sents_b[-1] + 1  # swapped
            labels.append(pair.label)
    assert len(labels) > 2000
    assert within(sum(labels) / len(labels), 0.5, len(labels))


def test_pairs_are_reproducible_and_need_enough_documents():
    docs = sentence_docs(10, 0)
    assert make_nsp_pairs(docs, 20, random.Random(3)) == make_nsp_pairs(docs, 20, random.Random(3))
    assert make_nsp_pairs(docs, 20, random.Random(3)) != make_nsp_pairs(docs, 20, random.Random(4))
    with pytest.raises(ValueError, match="2 non-empty documents"):
        make_nsp_pairs(docs[:1], 20, random.Random(0))
    with pytest.raises(ValueError, match="2 non-empty documents"):
        make_nsp_pairs([docs[0], [[]]], 20, random.Random(0))
    with pytest.raises(ValueError, match="max_tokens"):
        make_sop_pairs(docs, 1, random.Random(0))
    assert make_sop_pairs([[[1, 2, 3]]], 20, random.Random(0)) == []  # one sentence: no order to predict


class DrawRecorder(random.Random):
    """A seeded Random that records the pair lengths drawn: randint(2, max_tokens) (a split draws randint(1, ..))."""

    def __init__(self, seed: int, max_tokens: int):
        self.max_tokens = max_tokens
        self.drawn: list[int] = []
        super().__init__(seed)

    def randint(self, a: int, b: int) -> int:
        value = super().randint(a, b)
        if (a, b) == (2, self.max_tokens):
            self.drawn.append(value)
        return value


def varied_docs(seed: int) -> list[list[list[int]]]:
    """Documents of 10-30 sentences of 1-12 tokens (token ids say where they came from)."""
    rng = random.Random(seed)
    return [[[d * 10000 + s * 100 + k for k in range(rng.randint(1, 12))] for s in range(rng.randint(10, 30))]
            for d in range(20)]


@pytest.mark.parametrize("make", [make_nsp_pairs, make_sop_pairs])
def test_short_seq_prob_builds_each_pair_to_a_drawn_length(make):
    docs = varied_docs(0)
    for seed in range(5):
        rng = DrawRecorder(seed, 40)
        pairs = make(docs, 40, rng, short_seq_prob=1.0)
        # One length drawn per pair, none wasted: a short chunk takes two sentences, so it is never skipped
        assert len(pairs) == len(rng.drawn) > 50
        for pair, drawn in zip(pairs, rng.drawn):
            assert pair.a and pair.b and len(pair.a) + len(pair.b) <= drawn  # truncated to its draw, not to 40
        lengths = [len(p.a) + len(p.b) for p in pairs]
        # the pairs fill their drawn lengths (but at a document's end), which spread over [2, 40]
        assert sum(n == drawn for n, drawn in zip(lengths, rng.drawn)) > 0.7 * len(pairs)
        assert min(lengths) <= 6 and len(set(lengths)) > 25 and sum(lengths) / len(lengths) < 28

        # 0: nothing drawn, pairs fill the budget as without the option
        rng = DrawRecorder(seed, 40)
        full = make(docs, 40, rng, short_seq_prob=0.0)
        assert rng.drawn == [] and full == make(docs, 40, random.Random(seed))
        assert sum(len(p.a) + len(p.b) == 40 for p in full) > 0.7 * len(full)
        assert all(len(p.a) + len(p.b) <= 40 for p in full)


def test_short_seq_prob_draws_are_seeded():
    docs = varied_docs(1)
    for make in (make_nsp_pairs, make_sop_pairs):
        pairs = make(docs, 40, random.Random(3), short_seq_prob=0.1)
        assert pairs == make(docs, 40, random.Random(3), short_seq_prob=0.1)
        assert pairs != make(docs, 40, random.Random(4), short_seq_prob=0.1)
        rng = DrawRecorder(3, 40)
        assert make(docs, 40, rng, short_seq_prob=0.1) == pairs
        assert 0.03 * len(pairs) < len(rng.drawn) < 0.2 * len(pairs)  # about a tenth of the pairs are built short
        for bad in (-0.1, 1.5):
            with pytest.raises(ValueError, match="short_seq_prob"):
                make(docs, 40, random.Random(0), short_seq_prob=bad)


def test_pairs_say_where_each_line_begins():
    """A segment packs whole lines; the offsets where they begin survive truncation and the SOP swap."""
    docs = varied_docs(2)
    for make in (make_nsp_pairs, make_sop_pairs):
        pairs = make(docs, 40, random.Random(0), short_seq_prob=0.3)
        for p in pairs:
            for tokens, lines in ((p.a, p.a_lines), (p.b, p.b_lines)):
                # token id d*10000 + s*100 + k: k == 0 is the first token of its sentence
                assert lines == [i for i, t in enumerate(tokens) if t % 100 == 0]
        assert sum(len(p.a_lines) + len(p.b_lines) for p in pairs) > 2 * len(pairs)


# -- encoding and batching -------------------------------------------------------------------------------------


def test_encode_pad_and_special_mask():
    ids, types = encode_pair([10, 11], [12, 13, 14], CLS, SEP)
    assert ids == [CLS, 10, 11, SEP, 12, 13, 14, SEP]
    assert types == [0, 0, 0, 0, 1, 1, 1, 1]
    single, single_types = encode_single([10, 11, 12], CLS, SEP)
    assert single == [CLS, 10, 11, 12, SEP] and single_types == [0] * 5

    batch = pad_batch([ids, single], PAD, [types, single_types])
    assert batch["ids"].dtype == torch.long and batch["ids"].shape == (2, 8)
    assert batch["ids"][1].tolist() == single + [PAD] * 3
    assert batch["type_ids"].tolist() == [types, single_types + [0] * 3]
    assert batch["attention_mask"].tolist() == [[True] * 8, [True] * 5 + [False] * 3]
    assert (pad_batch([[5], [6, 7]], PAD)["type_ids"] == 0).all()
    with pytest.raises(ValueError):
        pad_batch([[5], [6, 7]], PAD, [[0]])

    sm = special_mask(batch["ids"], {PAD, CLS, SEP})
    assert sm.tolist() == [[True, False, False, True, False, False, False, True],
                           [True, False, False, False, True, True, True, True]]
    assert not special_mask(batch["ids"], set()).any()
    assert isinstance(PairExample([1], [2], 0), PairExample)
