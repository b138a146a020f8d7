"""Reading corpora (plain and gzip, errors that name the file and line), token batching, sharding, collation."""

import gzip
import random

import pytest
import torch

from tformer.data.batching import collate_translation, pad, shard, token_batches
from tformer.data.parallel import read_lines, read_parallel, read_text_input
from tformer.errors import TformerError

# --------------------------------------------------------------------------------------------------
# Reading files


def test_read_lines_plain(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("Hallo Welt\nzweite Zeile\n\nüber\n", encoding="utf-8")
    assert read_lines(p) == ["Hallo Welt", "zweite Zeile", "", "über"]


def test_read_lines_crlf_and_bom(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("\ufeffone\r\ntwo\r\n".encode("utf-8"))
    assert read_lines(p) == ["one", "two"]


def test_read_lines_splits_on_newlines_only(tmp_path):
    # Corpora contain U+2028 (line separator), U+0085 (NEL), form feeds and other characters that
    # str.splitlines() treats as line breaks; a line of a corpus file ends at "\n" only, otherwise the
    # two sides of a parallel corpus fall out of alignment (and translate prints extra output lines).
    p = tmp_path / "odd.txt"
    lines = ["a\u2028b", "c\x85d", "e\x0cf", "g\x1ch", "i\x0bj", "k\u2029l"]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_lines(p) == lines


def test_read_parallel_stays_aligned_with_line_separators(tmp_path):
    src, tgt = tmp_path / "p.de", tmp_path / "p.en"
    src.write_text("erste\u2028Zeile\nzweite\n", encoding="utf-8")
    tgt.write_text("first line\nsecond\n", encoding="utf-8")
    assert read_parallel(src, tgt) == [("erste\u2028Zeile", "first line"), ("zweite", "second")]


def test_read_lines_gzip(tmp_path):
    p = tmp_path / "a.txt.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write("eins\nzwei\ndrei\n")
    assert read_lines(p) == ["eins", "zwei", "drei"]
    assert read_lines(str(p)) == ["eins", "zwei", "drei"]
    # Told by its first bytes: an upper-case .GZ, or no such suffix, was read as text ("byte 0x8b").
    for name in ("A.TXT.GZ", "a.txt"):
        (tmp_path / name).write_bytes(p.read_bytes())
        assert read_lines(tmp_path / name) == ["eins", "zwei", "drei"]


def test_missing_file(tmp_path):
    p = tmp_path / "nope.txt"
    with pytest.raises(TformerError, match="nope.txt") as e:
        read_lines(p)
    assert "not found" in str(e.value)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.de"
    p.write_text("")
    with pytest.raises(TformerError, match="empty.de") as e:
        read_lines(p)
    assert "empty" in str(e.value).replace("empty.de", "")
    assert read_lines(p, allow_empty=True) == []


def test_bad_utf8_names_file_and_line(tmp_path):
    p = tmp_path / "bad.en"
    p.write_bytes(b"fine\nalso fine\nbroken \xff here\nok\n")
    with pytest.raises(TformerError) as e:
        read_lines(p)
    msg = str(e.value)
    assert f"{p}:3" in msg
    assert "UTF-8" in msg
    assert "\n" not in msg


def test_bad_utf8_in_gzip_names_line(tmp_path):
    p = tmp_path / "bad.txt.gz"
    with gzip.open(p, "wb") as f:
        f.write(b"a\n\xc3\x28\n")
    with pytest.raises(TformerError, match=r"bad\.txt\.gz:2"):
        read_lines(p)


def test_corrupt_gzip(tmp_path):
    p = tmp_path / "corrupt.gz"
    p.write_bytes(b"this is not gzip data at all")
    with pytest.raises(TformerError, match="corrupt.gz"):
        read_lines(p)


def test_directory(tmp_path):
    d = tmp_path / "folder"
    d.mkdir()
    with pytest.raises(TformerError, match="folder") as e:
        read_lines(d)
    assert "directory" in str(e.value)


def test_read_parallel(tmp_path):
    src, tgt = tmp_path / "train.de", tmp_path / "train.en"
    src.write_text("Hallo\nWelt\n", encoding="utf-8")
    tgt.write_text("Hello\nWorld\n", encoding="utf-8")
    assert read_parallel(src, tgt) == [("Hallo", "Hello"), ("Welt", "World")]


def test_read_parallel_line_count_mismatch(tmp_path):
    src, tgt = tmp_path / "train.de", tmp_path / "train.en"
    src.write_text("a\nb\nc\n")
    tgt.write_text("x\ny\n")
    with pytest.raises(TformerError) as e:
        read_parallel(src, tgt)
    msg = str(e.value)
    assert "train.de" in msg and "train.en" in msg
    assert "3" in msg and "2" in msg


def test_read_parallel_missing_side(tmp_path):
    src = tmp_path / "train.de"
    src.write_text("a\n")
    with pytest.raises(TformerError, match="train.en"):
        read_parallel(src, tmp_path / "train.en")


def test_read_text_input_stdin_and_file(tmp_path):
    import io

    assert read_text_input("-", io.StringIO("a\nb\n")) == ["a", "b"]
    assert read_text_input(None, io.StringIO("c\n")) == ["c"]
    p = tmp_path / "in.txt"
    p.write_text("d\n")
    assert read_text_input(p) == ["d"]


def test_read_text_input_stdin_splits_on_newlines_only():
    import io

    assert read_text_input("-", io.StringIO("x\u2028y\nz\n")) == ["x\u2028y", "z"]


# --------------------------------------------------------------------------------------------------
# Token batching


def _lengths(n=400, seed=0):
    rng = random.Random(seed)
    return [rng.randint(1, 60) for _ in range(n)]


def _padded(batch, lengths):
    return len(batch) * max(lengths[i] for i in batch)


def test_every_index_exactly_once():
    lengths = _lengths()
    for shuffle in (True, False):
        batches = token_batches(lengths, max_tokens=200, shuffle=shuffle, seed=3)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(lengths)))
        assert all(b for b in batches)


def test_padded_size_within_budget():
    lengths = _lengths()
    batches = token_batches(lengths, max_tokens=150)
    assert all(_padded(b, lengths) <= 150 for b in batches)
    # Batches are reasonably full: merging with one more example would usually overflow.
    assert sum(len(b) for b in batches) / len(batches) > 3


def test_oversize_examples_get_batches_of_their_own():
    lengths = [5, 300, 6, 7, 250, 5]
    batches = token_batches(lengths, max_tokens=100, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        if _padded(b, lengths) > 100:
            assert len(b) == 1 and lengths[b[0]] > 100
    assert [1] in batches and [4] in batches


def test_max_sentences():
    lengths = [3] * 50
    batches = token_batches(lengths, max_tokens=1000, max_sentences=8)
    assert max(len(b) for b in batches) == 8
    assert sum(len(b) for b in batches) == 50


def test_deterministic_for_seed_and_epoch():
    lengths = _lengths()
    a = token_batches(lengths, 200, seed=5, epoch=2)
    b = token_batches(lengths, 200, seed=5, epoch=2)
    assert a == b
    assert token_batches(lengths, 200, seed=5, epoch=3) != a
    assert token_batches(lengths, 200, seed=6, epoch=2) != a


def test_epochs_shuffle_batch_order():
    lengths = _lengths()
    orders = [token_batches(lengths, 200, seed=0, epoch=e) for e in range(3)]
    firsts = {tuple(o[0]) for o in orders}
    assert len(firsts) > 1


def test_unshuffled_is_sorted_by_length():
    lengths = _lengths()
    batches = token_batches(lengths, 200, shuffle=False)
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)


def test_batches_are_length_sorted_within():
    lengths = _lengths()
    for b in token_batches(lengths, 200, seed=1):
        ls = [lengths[i] for i in b]
        assert ls == sorted(ls)


def _padding_fraction(batches, lengths):
    fracs = [1 - sum(lengths[i] for i in b) / _padded(b, lengths) for b in batches]
    return sum(fracs) / len(fracs)


def test_bucketing_reduces_padding():
    lengths = _lengths(600, seed=1)
    bucketed = token_batches(lengths, max_tokens=300, seed=0)
    # Random batching: the same greedy cut over a random order.
    rng = random.Random(0)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    random_batches, cur = [], []
    for i in order:
        if cur and max(lengths[j] for j in cur + [i]) * (len(cur) + 1) > 300:
            random_batches.append(cur)
            cur = []
        cur.append(i)
    random_batches.append(cur)
    bucket_pad = _padding_fraction(bucketed, lengths)
    random_pad = _padding_fraction(random_batches, lengths)
    assert bucket_pad < 0.1
    assert random_pad > 0.3
    assert bucket_pad < random_pad / 3


def test_shard_disjoint_equal():
    batches = token_batches(_lengths(), 200, seed=0)
    world = 3
    shares = [shard(batches, r, world) for r in range(world)]
    sizes = {len(s) for s in shares}
    assert len(sizes) == 1
    assert sizes.pop() == len(batches) // world
    seen = [tuple(b) for s in shares for b in s]
    assert len(seen) == len(set(seen))
    idx = [i for s in shares for b in s for i in b]
    assert len(idx) == len(set(idx))
    assert len(seen) == len(batches) - len(batches) % world
    assert shard(batches, 0, 1) == batches


# --------------------------------------------------------------------------------------------------
# Padding and collation


def test_pad():
    out = pad([[5, 6, 7], [8], []], pad_id=0)
    assert out.dtype == torch.long
    assert out.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert pad([[4]], pad_id=9).tolist() == [[4]]


def test_collate_translation():
    pairs = [([10, 11, 12], [20, 21]), ([13], [22, 23, 24])]
    batch = collate_translation(pairs, pad_id=0, bos_id=1, eos_id=2)
    assert batch["src"].tolist() == [[10, 11, 12], [13, 0, 0]]
    assert batch["tgt_in"].tolist() == [[1, 20, 21, 0], [1, 22, 23, 24]]
    assert batch["tgt_out"].tolist() == [[20, 21, 2, 0], [22, 23, 24, 2]]
    # tgt_out is tgt_in shifted one position left, wherever tgt_in is not padding.
    tin, tout = batch["tgt_in"], batch["tgt_out"]
    real = tin[:, 1:] != 0
    assert torch.equal(tin[:, 1:][real], tout[:, :-1][real])
    assert torch.equal((tin != 0).sum(1), (tout != 0).sum(1))
    assert tin.shape == tout.shape


def test_collate_other_pad_id():
    batch = collate_translation([([4], [5]), ([4, 4], [])], pad_id=7, bos_id=1, eos_id=2)
    assert batch["src"].tolist() == [[4, 7], [4, 4]]
    assert batch["tgt_in"].tolist() == [[1, 5], [1, 7]]
    assert batch["tgt_out"].tolist() == [[5, 2], [2, 7]]
