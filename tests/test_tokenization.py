"""BPE and character tokenizers: special ids, round trips, save/load, decoding rules, load errors."""

import pytest

from tformer.errors import TformerError
from tformer.tokenization import SPECIAL_TOKENS, Tokenizer, train_tokenizer

CORPUS = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog met on the mat",
    "the mat is on the log",
    "dogs and cats are not the same",
    "on the log sat a small cat",
] * 5


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_tokenizer(CORPUS, vocab_size=80)


@pytest.fixture(scope="module")
def char() -> Tokenizer:
    return train_tokenizer(CORPUS, kind="char")


def test_special_ids(bpe, char):
    for tok in (bpe, char):
        assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
        assert [tok.id_to_token(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"] == SPECIAL_TOKENS


def test_bpe_learns_merges(bpe, char):
    assert char.vocab_size < bpe.vocab_size <= 80
    # Frequent words become single tokens; the same sentence needs fewer BPE tokens than characters.
    assert bpe.tokens("the cat") == ["▁the", "▁cat"]
    text = "the dog sat on the mat"
    assert len(bpe.encode(text)) < len(char.encode(text))


@pytest.mark.parametrize("text", [
    "the cat sat on the mat",
    "a dog and a cat",
    "the  mat   is on the log",  # runs of spaces
    "the cat ",  # trailing space
    "dogs",
    "cat dog cat dog",
])
def test_round_trip(bpe, char, text):
    for tok in (bpe, char):
        ids = tok.encode(text)
        assert all(isinstance(i, int) for i in ids)
        assert tok.unk_id not in ids
        assert tok.decode(ids) == text


def test_unknown_characters_become_unk(bpe):
    ids = bpe.encode("the zebra")
    assert bpe.unk_id in ids


def test_encode_batch_matches_encode(bpe):
    texts = ["the cat", "a dog sat on the log", "mat"]
    assert bpe.encode_batch(texts) == [bpe.encode(t) for t in texts]
    assert bpe.decode_batch(bpe.encode_batch(texts)) == texts


def test_save_and_load(tmp_path, bpe):
    path = tmp_path / "tokenizer.json"
    bpe.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.vocab_size == bpe.vocab_size
    for text in CORPUS[:6] + ["the zebra sat"]:
        assert loaded.encode(text) == bpe.encode(text)
        assert loaded.decode(loaded.encode(text)) == bpe.decode(bpe.encode(text))
    assert (loaded.pad_id, loaded.bos_id, loaded.eos_id, loaded.unk_id) == (0, 1, 2, 3)


def test_char_one_token_per_character(char):
    text = "the cat sat"
    tokens = char.tokens(text)
    assert all(len(t) == 1 for t in tokens)
    # Every character, with "▁" marking each word start (the spaces).
    assert "".join(tokens) == "▁" + text.replace(" ", "▁")
    assert len(tokens) == len(text) + 1
    assert tokens == ["▁", "t", "h", "e", "▁", "c", "a", "t", "▁", "s", "a", "t"]


def test_char_vocabulary_is_the_alphabet(char):
    alphabet = set("".join(CORPUS).replace(" ", "")) | {"▁"}
    assert char.vocab_size == len(SPECIAL_TOKENS) + len(alphabet)
    assert {char.id_to_token(i) for i in range(4, char.vocab_size)} == alphabet


def test_decode_stops_at_eos(bpe):
    ids = bpe.encode("the cat sat")
    more = bpe.encode("on the mat")
    assert bpe.decode(ids + [bpe.eos_id] + more) == "the cat sat"
    assert bpe.decode([bpe.eos_id] + ids) == ""


def test_decode_drops_other_specials(bpe):
    ids = bpe.encode("the dog")
    assert bpe.decode([bpe.bos_id] + ids + [bpe.pad_id, bpe.pad_id]) == "the dog"


def test_decode_accepts_tensors(bpe):
    import torch

    ids = bpe.encode("the log")
    assert bpe.decode(torch.tensor(ids + [bpe.eos_id, 5])) == "the log"


def test_load_missing_file(tmp_path):
    p = tmp_path / "missing_tokenizer.json"
    with pytest.raises(TformerError, match="missing_tokenizer.json"):
        Tokenizer.load(p)


def test_load_directory(tmp_path):
    with pytest.raises(TformerError, match=str(tmp_path.name)):
        Tokenizer.load(tmp_path)


def test_load_garbage_file(tmp_path):
    p = tmp_path / "garbage_tokenizer.json"
    p.write_text("this is { not a tokenizer")
    with pytest.raises(TformerError, match="garbage_tokenizer.json") as e:
        Tokenizer.load(p)
    assert "\n" not in str(e.value)


def test_load_json_that_is_not_a_tokenizer(tmp_path):
    p = tmp_path / "other.json"
    p.write_text('{"hello": [1, 2, 3]}')
    with pytest.raises(TformerError, match="other.json"):
        Tokenizer.load(p)


def test_tokenizer_without_special_tokens_rejected(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=40, show_progress=False))
    with pytest.raises(TformerError, match="<pad>"):
        Tokenizer(hf)


def test_unknown_kind():
    with pytest.raises(TformerError, match="wordpiece"):
        train_tokenizer(CORPUS, kind="wordpiece")
