"""Fine-tuning metrics on hand-worked examples: accuracy, macro-F1, MCC, Pearson/Spearman, and entity P/R/F1 under
conlleval's rules; compared with sklearn/scipy/seqeval on random data when they are installed."""

import math
import random

import pytest

from tformer.errors import TformerError
from tformer.metrics import (accuracy, entity_prf, entity_spans, macro_f1, matthews_corrcoef, pearson,
                             spearman)

# three classes; confusion (rows gold, columns pred) a: [2 1 0], b: [0 1 1], c: [0 0 1]
GOLD3 = ["a", "a", "a", "b", "b", "c"]
PRED3 = ["a", "a", "b", "b", "c", "c"]


def test_accuracy():
    assert accuracy(PRED3, GOLD3) == pytest.approx(4 / 6)
    assert accuracy([], []) == 0.0
    with pytest.raises(ValueError, match="3 predictions for 2"):
        accuracy([1, 2, 3], [1, 2])


def test_macro_f1_hand_worked():
    # a: tp 2 fp 0 fn 1 -> 4/5; b: tp 1 fp 1 fn 1 -> 1/2; c: tp 1 fp 1 fn 0 -> 2/3
    assert macro_f1(PRED3, GOLD3) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    # a class that is only predicted counts, with F1 0: a -> 2/3, b -> 0
    assert macro_f1(["a", "b"], ["a", "a"]) == pytest.approx(1 / 3)
    assert macro_f1([1, 0, 1], [1, 0, 1]) == 1.0


def test_mcc_binary_known_confusion_matrix():
    # TP 6, TN 3, FP 1, FN 2: (6*3 - 1*2) / sqrt(7 * 8 * 4 * 5)
    gold = [1] * 6 + [0] * 3 + [0] * 1 + [1] * 2
    pred = [1] * 6 + [0] * 3 + [1] * 1 + [0] * 2
    assert matthews_corrcoef(pred, gold) == pytest.approx(16 / math.sqrt(1120))
    assert matthews_corrcoef([0, 1, 0, 1], [0, 1, 0, 1]) == 1.0
    assert matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == -1.0
    assert matthews_corrcoef([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0  # constant prediction: undefined -> 0
    assert matthews_corrcoef([], []) == 0.0


def test_mcc_multiclass_gorodkin():
    # s 6, c 4, t = (3, 2, 1), p = (2, 2, 2): (4*6 - 12) / sqrt((36 - 12) * (36 - 14))
    assert matthews_corrcoef(PRED3, GOLD3) == pytest.approx(12 / math.sqrt(24 * 22))


def test_pearson_and_spearman_hand_worked():
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(3 / math.sqrt(2 * 42 / 9))
    assert spearman([1, 2, 3], [1, 2, 4]) == pytest.approx(1.0)
    # ties share their average rank: x ranks (1, 2.5, 2.5, 4), y ranks (1, 3, 2, 4)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert spearman([10, 20, 30], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0 and pearson([1.0], [2.0]) == 0.0


# -- entities ---------------------------------------------------------------------------------------------


def test_entity_spans_bio_with_conlleval_leniency():
    assert entity_spans(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    assert entity_spans(["O", "I-PER", "I-PER", "O"]) == {("PER", 1, 3)}  # a stray I- starts an entity
    assert entity_spans(["B-PER", "I-LOC", "I-LOC"]) == {("PER", 0, 1), ("LOC", 1, 3)}  # type change
    assert entity_spans(["B-PER", "B-PER", "I-PER"]) == {("PER", 0, 1), ("PER", 1, 3)}
    assert entity_spans(["O", "O"]) == set() and entity_spans([]) == set()


def test_entity_spans_iob1():
    assert entity_spans(["I-PER", "I-PER", "B-PER"], scheme="IOB1") == {("PER", 0, 2), ("PER", 2, 3)}
    assert entity_spans(["I-ORG", "I-ORG", "I-LOC", "O", "I-MISC"], scheme="IOB1") == {
        ("ORG", 0, 2), ("LOC", 2, 3), ("MISC", 4, 5)}


def test_entity_spans_rejects_unknown_tags_and_schemes():
    with pytest.raises(TformerError, match="'E-PER'"):
        entity_spans(["B-PER", "E-PER"])
    with pytest.raises(TformerError, match="'B-'"):
        entity_spans(["B-"])
    with pytest.raises(TformerError, match="unknown tag scheme 'BIOES'"):
        entity_spans(["O"], scheme="BIOES")


def test_entity_prf_type_error_and_boundary_error():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG"], ["B-MISC", "O", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG", "O", "B-ORG", "O"],  # LOC typed ORG; ORG cut short
            ["B-MISC", "O", "B-LOC"]]                             # a spurious LOC
    # gold 4 entities, predicted 5, 2 correct (PER, MISC)
    scores = entity_prf(pred, gold)
    assert scores["precision"] == pytest.approx(2 / 5) and scores["recall"] == pytest.approx(2 / 4)
    assert scores["f1"] == pytest.approx(2 * 0.4 * 0.5 / 0.9)
    assert scores["per_type"] == {
        "LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "MISC": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
        "ORG": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "PER": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
    }


def test_entity_prf_edges():
    # entities never run across sentences
    assert entity_prf([["I-PER"], ["I-PER"]], [["B-PER"], ["B-PER"]])["f1"] == 1.0
    none = entity_prf([["O"]], [["O"]])
    assert (none["precision"], none["recall"], none["f1"], none["per_type"]) == (0.0, 0.0, 0.0, {})
    only_pred = entity_prf([["B-PER"]], [["O"]])
    assert only_pred["per_type"]["PER"]["support"] == 0 and only_pred["precision"] == 0.0
    with pytest.raises(ValueError, match="sentence 1: 1 predicted tags for 2"):
        entity_prf([["O"], ["O"]], [["O"], ["O", "O"]])
    with pytest.raises(ValueError, match="1 predicted sentences for 2"):
        entity_prf([["O"]], [["O"], ["O"]])


def _conlleval_chunks(tags):
    """An independent reference: conlleval's startOfChunk/endOfChunk tests, applied tag by tag."""
    chunks, prev_tag, prev_type, start = [], "O", "", None
    for i, tag in enumerate(tags + ["O"]):
        cur_tag, cur_type = ("O", "") if tag == "O" else tuple(tag.split("-", 1))
        end = (prev_tag in "BI" and cur_tag in "BO") or (prev_tag != "O" and prev_type != cur_type)
        begin = cur_tag == "B" or (prev_tag == "O" and cur_tag == "I") or (cur_tag != "O" and prev_type != cur_type)
        if end and start is not None:
            chunks.append((prev_type, start, i))
            start = None
        if begin:
            start = i
        prev_tag, prev_type = cur_tag, cur_type
    return chunks


def _random_tags(rng, n):
    return [rng.choice(["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]) for _ in range(n)]


def test_entity_spans_match_conlleval_rules_on_random_tags():
    rng = random.Random(0)
    for _ in range(2000):
        tags = _random_tags(rng, rng.randint(0, 12))
        chunks = _conlleval_chunks(tags)
        assert len(chunks) == len(set(chunks))
        assert entity_spans(tags) == set(chunks) == entity_spans(tags, scheme="IOB1"), tags


# -- against reference libraries, when installed -------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:A single label was found")
def test_classification_metrics_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(1)
    for trial in range(60):
        k, n = rng.randint(2, 5), rng.randint(1, 40)
        gold = [rng.randrange(k) for _ in range(n)]
        pred = [g if rng.random() < 0.5 else rng.randrange(k) for g in gold]
        assert accuracy(pred, gold) == pytest.approx(metrics.accuracy_score(gold, pred))
        assert macro_f1(pred, gold) == pytest.approx(metrics.f1_score(gold, pred, average="macro", zero_division=0))
        assert matthews_corrcoef(pred, gold) == pytest.approx(metrics.matthews_corrcoef(gold, pred), abs=1e-12)


def test_correlations_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(2)
    for _ in range(100):
        n = rng.randint(3, 50)
        gold = [rng.choice([0.0, 1.0, 2.5, 3.0, 4.2, 5.0]) for _ in range(n)]  # many ties
        pred = [g + rng.gauss(0, 1.5) if rng.random() < 0.8 else round(g) for g in gold]
        if len(set(gold)) < 2:
            continue
        assert pearson(pred, gold) == pytest.approx(stats.pearsonr(pred, gold)[0], abs=1e-10)
        assert spearman(pred, gold) == pytest.approx(stats.spearmanr(pred, gold)[0], abs=1e-10)


def test_entity_prf_matches_seqeval():
    seqeval_metrics = pytest.importorskip("seqeval.metrics")
    rng = random.Random(3)
    for _ in range(50):
        gold = [_random_tags(rng, rng.randint(1, 10)) for _ in range(rng.randint(1, 8))]
        pred = [[t if rng.random() < 0.6 else rng.choice(["O", "B-PER", "I-LOC", "I-ORG"]) for t in s] for s in gold]
        ours = entity_prf(pred, gold)
        assert ours["precision"] == pytest.approx(seqeval_metrics.precision_score(gold, pred, zero_division=0))
        assert ours["recall"] == pytest.approx(seqeval_metrics.recall_score(gold, pred, zero_division=0))
        assert ours["f1"] == pytest.approx(seqeval_metrics.f1_score(gold, pred, zero_division=0))
