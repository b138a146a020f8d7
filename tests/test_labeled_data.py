"""Labelled fine-tuning data: TSV/CSV/JSONL classification files, the label vocabulary, CoNLL tagging files,
and errors that name the file and line."""

import gzip
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from tformer.data.labeled import LabelVocab, TaggedSentence, TextExample, read_classification, read_conll
from tformer.errors import TformerError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def raises_at(where: str, *fragments: str):
    """pytest.raises for a one-line TformerError naming `where` (file:line) and containing each fragment."""
    return pytest.raises(TformerError, match="(?s)^" + "".join(f"(?=.*{re.escape(f)})" for f in (where, *fragments)))


# -- formats -----------------------------------------------------------------------------------------------


def test_tsv_strips_text_and_numbers_lines_from_the_header(tmp_path):
    p = write(tmp_path / "train.tsv", "sentence\tlabel\na fine film \t1\n\nnot good \t0\n")
    assert read_classification(p) == [TextExample("a fine film", None, "1", 2), TextExample("not good", None, "0", 4)]


def test_tsv_does_not_interpret_quotes(tmp_path):
    # GLUE's TSV files contain unbalanced quotes; a tab is the only separator
    p = write(tmp_path / "t.tsv", 'sentence\tlabel\n"it \'s a " wonder ,\t1\n')
    assert read_classification(p)[0].text == '"it \'s a " wonder ,'


def test_csv_with_quoted_commas_newlines_and_quotes(tmp_path):
    p = write(tmp_path / "t.csv", 'label,sentence\npositive,"fun, fast, and ""fresh"""\r\n'
                                  'negative,"two\nlines"\nnegative,plain\n')
    examples = read_classification(p)
    assert [(e.text, e.label, e.line) for e in examples] == [
        ('fun, fast, and "fresh"', "positive", 2), ("two\nlines", "negative", 3), ("plain", "negative", 5)]


def test_jsonl_with_integer_labels_and_extra_fields(tmp_path):
    rows = [{"idx": 0, "sentence": " good ", "label": 1}, {"idx": 1, "sentence": "bad", "label": 0}]
    p = write(tmp_path / "t.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_classification(p) == [TextExample("good", None, "1", 1), TextExample("bad", None, "0", 2)]


def test_gzip_and_explicit_format(tmp_path):
    p = tmp_path / "t.tsv.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write("sentence\tlabel\nüber gut\t1\n")
    assert read_classification(p)[0] == TextExample("über gut", None, "1", 2)
    q = write(tmp_path / "data.txt", "text,y\nhello,a\n")
    assert read_classification(q, text_column="text", label_column="y", fmt="csv")[0].label == "a"
    with raises_at(str(q), "cannot tell the format", ".tsv", "--task tagging"):  # a CoNLL file is often .txt
        read_classification(q)
    with raises_at("-", "from a file", "not from stdin"):
        read_classification("-")
    with raises_at(str(q), "columns must differ", "'text', 'text'"):
        read_classification(q, text_column="text", pair_column="text", label_column="y", fmt="csv")


def test_columns_by_option_sentence_pairs_and_unlabelled(tmp_path):
    p = write(tmp_path / "mrpc.tsv", "id\tquality\t#1 String\t#2 String\n7\t1\tHe left .\tHe went away .\n")
    [e] = read_classification(p, text_column="#1 String", pair_column="#2 String", label_column="quality")
    assert e == TextExample("He left .", "He went away .", "1", 2)
    [u] = read_classification(p, text_column="#1 String", pair_column="#2 String", label_column=None)
    assert u.label is None and u.pair == "He went away ."
    q = write(tmp_path / "test.tsv", "sentence\nno label here\n")  # prediction input without a label column
    assert read_classification(q, label_column=None) == [TextExample("no label here", None, None, 2)]


def test_regression_labels(tmp_path):
    p = write(tmp_path / "stsb.tsv", "sentence1\tsentence2\tscore\na\tb\t3.8\nc\td\t0\n")
    examples = read_classification(p, text_column="sentence1", pair_column="sentence2", label_column="score",
                                   label_type="float")
    assert [e.label for e in examples] == [3.8, 0.0] and isinstance(examples[1].label, float)
    bad = write(tmp_path / "bad.tsv", "sentence1\tsentence2\tscore\na\tb\t3.8\nc\td\thigh\n")
    with raises_at(f"{bad}:3", "'high'", "not a number"):
        read_classification(bad, text_column="sentence1", pair_column="sentence2", label_column="score",
                            label_type="float")
    nan = write(tmp_path / "nan.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": "b", "label": "nan"}\n')
    with raises_at(f"{nan}:2", "not a finite number"):
        read_classification(nan, label_type="float")


# -- errors name the file and line ---------------------------------------------------------------------------


def test_missing_and_empty_files(tmp_path):
    with raises_at(str(tmp_path / "nope.tsv"), "not found"):
        read_classification(tmp_path / "nope.tsv")
    empty = write(tmp_path / "empty.tsv", "")
    with raises_at(str(empty), "empty"):
        read_classification(empty)
    header_only = write(tmp_path / "h.csv", "sentence,label\n")
    with raises_at(str(header_only), "no rows after the header"):
        read_classification(header_only)


def test_missing_column_names_it_and_lists_the_present_ones(tmp_path):
    p = write(tmp_path / "t.tsv", "text\tlabel\nhi\t1\n")
    with raises_at(f"{p}:1", "no column 'sentence'", "'text', 'label'"):
        read_classification(p)
    j = write(tmp_path / "t.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": "b", "gold": 0}\n')
    with raises_at(f"{j}:2", "no field 'label'", "'sentence', 'gold'"):
        read_classification(j)


def test_wrong_number_of_fields(tmp_path):
    p = write(tmp_path / "t.tsv", "sentence\tlabel\nok\t1\nbroken row with no tab\nok\t0\n")
    with raises_at(f"{p}:3", "1 tab-separated fields", "header at line 1 has 2"):
        read_classification(p)
    c = write(tmp_path / "t.csv", 'sentence,label\n"a, b",1\n"multi\nline",0\nc,d,1\n')
    with raises_at(f"{c}:5", "3 comma-separated fields"):  # line 5: the quoted newline on lines 3-4 is counted
        read_classification(c)


def test_malformed_json_and_csv(tmp_path):
    j = write(tmp_path / "t.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": "b", "label": 0,}\n')
    with raises_at(f"{j}:2", "not valid JSON"):
        read_classification(j)
    arr = write(tmp_path / "t.json", '["a", 1]\n')
    with raises_at(f"{arr}:1", "expected a JSON object", "a list"):
        read_classification(arr)
    c = write(tmp_path / "t.csv", 'sentence,label\ngood,1\n"bad"x,0\n')
    with raises_at(f"{c}:3", "malformed CSV"):
        read_classification(c)


def test_empty_text_and_label_fields(tmp_path):
    p = write(tmp_path / "t.tsv", "sentence\tlabel\nfine\t1\n   \t0\n")
    with raises_at(f"{p}:3", "empty text", "'sentence'"):
        read_classification(p)
    q = write(tmp_path / "p.tsv", "a\tb\tlabel\nx\ty\t1\nx\t\t1\n")
    with raises_at(f"{q}:3", "empty text", "'b'"):
        read_classification(q, text_column="a", pair_column="b")
    r = write(tmp_path / "l.tsv", "sentence\tlabel\nx\t\n")
    with raises_at(f"{r}:2", "label", "empty"):
        read_classification(r)
    j = write(tmp_path / "t.jsonl", '{"sentence": 5, "label": 1}\n')
    with raises_at(f"{j}:1", "'sentence'", "a number", "expected a string"):
        read_classification(j)


def test_error_messages_are_one_line(tmp_path):
    c = write(tmp_path / "t.csv", 'sentence,label\n"multi\nline",0,extra\n')
    with pytest.raises(TformerError) as info:
        read_classification(c)
    assert "\n" not in str(info.value) and f"{c}:2" in str(info.value)


# -- label vocabulary ------------------------------------------------------------------------------------------


def test_label_vocab_order_round_trip_and_unseen_label():
    examples = [TextExample("t", None, label, i) for i, label in enumerate(["positive", "negative", "positive"])]
    vocab = LabelVocab.from_examples(examples)
    assert vocab.to_list() == ["negative", "positive"] and len(vocab) == 2
    assert vocab.encode("positive") == 1 and vocab.decode(0) == "negative"
    assert LabelVocab.from_list(vocab.to_list()) == vocab
    assert json.loads(json.dumps(vocab.to_list())) == ["negative", "positive"]  # saved as-is in config.json
    with pytest.raises(TformerError, match=re.escape(
            "label 'neutral' at dev.tsv:17 was not in the training labels (negative, positive)")):
        vocab.encode("neutral", "dev.tsv:17")
    dev = [TextExample("t", None, "positive", 2), TextExample("t", None, "neutral", 3)]
    with raises_at("dev.tsv:3", "'neutral'"):
        vocab.encode_examples(dev, "dev.tsv")
    with pytest.raises(IndexError):
        vocab.decode(2)


def test_label_vocab_numeric_labels_sort_numerically_and_stably():
    assert LabelVocab.from_labels(["10", "2", "0", "1"]).to_list() == ["0", "1", "2", "10"]
    assert LabelVocab.from_labels(["b", "-1", "a", "1.5"]).to_list() == ["-1", "1.5", "a", "b"]
    assert LabelVocab.from_labels(["1", "0"]) == LabelVocab.from_labels(["0", "1", "1"])  # order of first sight
    with raises_at("'a'", "more than once"):
        LabelVocab.from_list(["a", "b", "a"])
    with pytest.raises(TformerError, match="line 4 has no label"):
        LabelVocab.from_examples([TextExample("t", None, None, 4)])


# -- CoNLL ---------------------------------------------------------------------------------------------------


CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
1996-08-22 CD I-NP O"""  # no blank line (nor newline) after the last sentence


def test_conll_docstart_blank_lines_and_trailing_sentence(tmp_path):
    p = write(tmp_path / "train.txt", CONLL)
    assert read_conll(p) == [
        TaggedSentence(["EU", "rejects", "German"], ["B-ORG", "O", "B-MISC"], 3),
        TaggedSentence(["Peter", "Blackburn"], ["B-PER", "I-PER"], 7),
        TaggedSentence(["BRUSSELS", "1996-08-22"], ["B-LOC", "O"], 12),
    ]


def test_conll_columns_by_option_tabs_and_gzip(tmp_path):
    p = tmp_path / "t.conll.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write("1\tJohn\tNNP\tB-PER\n2\tran\tVBD\tO\n\n\n1\tOk\tUH\tO\n")
    sentences = read_conll(p, token_column=1, tag_column=2)
    assert sentences == [TaggedSentence(["John", "ran"], ["NNP", "VBD"], 1), TaggedSentence(["Ok"], ["UH"], 5)]


def test_conll_errors_name_file_and_line(tmp_path):
    p = write(tmp_path / "t.txt", "John B-PER\nsmith\n")
    with raises_at(f"{p}:2", "too few columns"):
        read_conll(p)
    q = write(tmp_path / "q.txt", "John NNP B-NP B-PER\n\nran VBD O\n")  # -1 would silently read another column
    with raises_at(f"{q}:3", "3 columns", "line 1 has 4"):
        read_conll(q)
    r = write(tmp_path / "r.txt", "-DOCSTART- -X- -X- O\n\n")
    with raises_at(str(r), "no sentences"):
        read_conll(r)
    with raises_at(str(tmp_path / "none.txt"), "not found"):
        read_conll(tmp_path / "none.txt")


# -- the shared real datasets --------------------------------------------------------------------------------


@pytest.mark.skipif(not (SHARED_DATA / "sst2").is_dir(), reason="shared SST-2 data not present")
def test_real_sst2():
    train = read_classification(SHARED_DATA / "sst2" / "train.tsv")
    dev = read_classification(SHARED_DATA / "sst2" / "dev.tsv")
    assert len(train) == 67349 and len(dev) == 872  # counts and balance from the data README
    assert Counter(e.label for e in train) == {"0": 29780, "1": 37569}
    assert Counter(e.label for e in dev) == {"0": 428, "1": 444}
    assert train[0] == TextExample("hide new secretions from the parental units", None, "0", 2)
    assert all(e.text == e.text.strip() and e.text for e in train)
    vocab = LabelVocab.from_examples(train)
    assert vocab.to_list() == ["0", "1"] and sum(vocab.encode_examples(dev, "dev.tsv")) == 444


@pytest.mark.skipif(not (SHARED_DATA / "conll2003").is_dir(), reason="shared CoNLL-2003 data not present")
def test_real_conll2003():
    from tformer.metrics import entity_spans

    expected = {"train": (14041, 203621, {"PER": 6600, "LOC": 7140, "ORG": 6321, "MISC": 3438}),
                "valid": (3250, 51362, {"PER": 1842, "LOC": 1837, "ORG": 1341, "MISC": 922})}
    for split, (n_sentences, n_tokens, entities) in expected.items():
        sentences = read_conll(SHARED_DATA / "conll2003" / f"{split}.txt")
        assert len(sentences) == n_sentences
        assert sum(len(s.tokens) for s in sentences) == n_tokens
        assert all(len(s.tokens) == len(s.tags) and "-DOCSTART-" not in s.tokens for s in sentences)
        assert Counter(kind for s in sentences for kind, _, _ in entity_spans(s.tags)) == entities
