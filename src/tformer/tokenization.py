"""Subword tokenizers over the Hugging Face `tokenizers` library.

BPE (Sennrich et al. 2016) learns merges of frequent symbol pairs from the training text. Words are split
on whitespace with a leading "▁" marking a word start (the SentencePiece convention), so decoding restores
the original spacing. `char` is the same model with no merges: one token per character (the demo uses it).
Special tokens, in this order and with these ids: <pad>=0, <s>=1, </s>=2, <unk>=3.

Language models use two more kinds (`train_lm_tokenizer`, `load_gpt2_tokenizer`):
  char       one token per character and no <unk>: a character outside the vocabulary is an error naming it;
  byte_bpe   GPT-2's byte-level BPE: text is bytes first, so every string encodes and nothing is unknown;
             its one special token is <|endoftext|>, which also separates documents.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tokenizers import AddedToken, Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from tformer.errors import TformerError

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
END_OF_TEXT = "<|endoftext|>"  # GPT-2's document separator


class Tokenizer:
    """Text <-> token ids, with the special-token ids the models need.

    `required` names the special tokens the vocabulary must hold (the translation models need all four);
    a missing optional one has id None.
    """

    def __init__(self, backend: HFTokenizer, required: Sequence[str] = SPECIAL_TOKENS):
        self.backend = backend
        for tok in required:
            if backend.token_to_id(tok) is None:
                raise TformerError(f"tokenizer lacks the special token {tok!r}")
        self.pad_id = backend.token_to_id(PAD)
        self.bos_id = backend.token_to_id(BOS)
        eos = backend.token_to_id(EOS)
        self.eos_id = eos if eos is not None else backend.token_to_id(END_OF_TEXT)
        self.unk_id = backend.token_to_id(UNK)
        # A character vocabulary (a WordLevel model over single characters) has no <unk>: it checks its input.
        self.is_char = isinstance(backend.model, models.WordLevel) and self.unk_id is None
        self._char_table = None
        if self.is_char:
            vocab = backend.get_vocab()
            self._char_codes = np.array(sorted(ord(c) for c in vocab if len(c) == 1), dtype=np.uint32)
            self._char_ids = np.array([vocab[chr(c)] for c in self._char_codes], dtype=np.int64)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def check_chars(self, text: str, where: str = "text") -> None:
        """A character vocabulary cannot encode what it never saw: name the first such character."""
        if not self.is_char:
            return
        vocab = self.backend.get_vocab()
        missing = sorted(set(text) - set(vocab))
        if missing:
            shown = ", ".join(repr(c) for c in missing[:5])
            raise TformerError(f"{where}: character(s) {shown} are not in the model's character vocabulary")

    def encode(self, text: str) -> list[int]:
        self.check_chars(text)
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        for t in texts:
            self.check_chars(t)
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def encode_corpus(self, text: str, where: str = "text") -> np.ndarray:
        """A whole corpus -> int64 ids, as encode(text) gives them. Characters are looked up directly (a megabyte
        in milliseconds); byte-level BPE text is encoded in chunks of lines, in parallel."""
        if self.is_char:
            try:
                self.check_chars(text, where)
            except TformerError as exc:  # name the first line that holds such a character
                missing = set(text) - set(self.backend.get_vocab())
                line = text.count("\n", 0, min(text.find(c) for c in missing)) + 1
                raise TformerError(str(exc).replace(f"{where}:", f"{where}:{line}:", 1)) from None
            codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            return self._char_ids[np.searchsorted(self._char_codes, codes)]
        pre = self.backend.pre_tokenizer
        if not isinstance(pre, pre_tokenizers.ByteLevel) or pre.add_prefix_space:  # each chunk would gain a space
            return np.array(self.backend.encode(text, add_special_tokens=False).ids, dtype=np.int64)
        encoded = self.backend.encode_batch(_line_chunks(text, 256), add_special_tokens=False)
        return np.fromiter((i for e in encoded for i in e.ids), dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; stops at </s> and drops the other special tokens."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            out.append(i)
        return self.backend.decode(out, skip_special_tokens=True)

    def decode_batch(self, batch: Iterable[Iterable[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def tokens(self, text: str) -> list[str]:
        return self.backend.encode(text, add_special_tokens=False).tokens

    def id_to_token(self, i: int) -> str:
        return self.backend.id_to_token(int(i))

    def save(self, path: str | Path) -> None:
        self.backend.save(str(path))

    @classmethod
    def load(cls, path: str | Path, required: Sequence[str] = SPECIAL_TOKENS) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise TformerError(f"{path}: tokenizer file not found")
        try:
            backend = HFTokenizer.from_file(str(path))
        except Exception as exc:  # the library's parse errors are long; ours names the file
            raise TformerError(f"{path}: not a valid tokenizer.json ({str(exc).splitlines()[0]})") from None
        return cls(backend, required)


def _new_backend() -> HFTokenizer:
    tok = HFTokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8000, kind: str = "bpe",
                    min_frequency: int = 2) -> Tokenizer:
    """Learn a BPE vocabulary of about `vocab_size` from `texts` (kind="char": characters only, no merges)."""
    if kind not in ("bpe", "char"):
        raise TformerError(f"tokenizer kind must be 'bpe' or 'char', not {kind!r}")
    backend = _new_backend()
    trainer = trainers.BpeTrainer(
        # char: a vocabulary too small for any merge leaves just the alphabet.
        vocab_size=vocab_size if kind == "bpe" else 1,
        min_frequency=min_frequency if kind == "bpe" else 1,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(backend)


# -- language-model tokenizers ------------------------------------------------------------------------


def piece_text(tokenizer, i: int) -> str:
    """Token i as a person reads it: a byte-level BPE piece ("Ġparis", "Ã©") as the text it stands for (" paris",
    "é") when its bytes are whole characters; any other piece (WordPiece, metaspace BPE, characters) as it is.
    `tokenizer` is a Tokenizer or an EncoderTokenizer (both wrap a tokenizers `backend`)."""
    piece = tokenizer.id_to_token(i)
    if isinstance(getattr(tokenizer.backend, "decoder", None), decoders.ByteLevel):
        text = tokenizer.backend.decode([int(i)], skip_special_tokens=False)
        if "\ufffd" not in text:  # a piece of a character alone decodes to U+FFFD
            return text
    return piece


def warn_if_vocab_grew(tokenizer, requested: int) -> None:
    """Trainers raise a vocabulary size below what the alphabet and special tokens need; say so, once."""
    if tokenizer.vocab_size > requested:
        warnings.warn(f"data.vocab_size={requested} is below the {tokenizer.vocab_size} symbols the alphabet and "
                      f"special tokens need: the vocabulary has {tokenizer.vocab_size}", UserWarning, stacklevel=2)


def train_lm_tokenizer(texts: Iterable[str], kind: str = "char", vocab_size: int = 50257) -> Tokenizer:
    """A tokenizer for language modelling, learned from `texts`.

    char: every distinct character, in code-point order (Tiny Shakespeare has 65).
    byte_bpe: GPT-2's scheme, BPE merges over the 256 byte symbols up to `vocab_size`, plus <|endoftext|>.
    """
    if kind == "char":
        chars: set[str] = set()
        for t in texts:
            chars.update(t)
        if not chars:
            raise TformerError("cannot build a character vocabulary from empty text")
        backend = HFTokenizer(models.WordLevel({c: i for i, c in enumerate(sorted(chars))}, unk_token=UNK))
        # Every character is its own pre-token ([\s\S] matches newlines too); decoding joins them as they are.
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
        backend.decoder = decoders.Fuse()
        return Tokenizer(backend, required=())
    if kind == "byte_bpe":
        backend = _byte_level(HFTokenizer(models.BPE()))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        backend.train_from_iterator(texts, trainer=trainer)
        return Tokenizer(backend, required=())
    raise TformerError(f"language-model tokenizer kind must be 'char' or 'byte_bpe', not {kind!r}")


def _line_chunks(text: str, lines_per_chunk: int) -> list[str]:
    """text in pieces of about `lines_per_chunk` lines that byte-level BPE encodes as it encodes the whole: a
    piece ends with a lone newline after a character that is not whitespace, and the next starts with one that is
    not whitespace either. GPT-2's pre-tokenizer makes that newline a word of its own in both places; any longer
    run of whitespace (a blank line, \r\n, trailing spaces) is cut differently at the end of a text."""
    chunks, current = [], []
    for line in text.splitlines(keepends=True):
        end = current[-1] if current else ""
        if (len(current) >= lines_per_chunk and len(end) >= 2 and end[-1] == "\n" and not end[-2].isspace()
                and not line[0].isspace()):
            chunks.append("".join(current))
            current = []
        current.append(line)
    if current:
        chunks.append("".join(current))
    return chunks


def _byte_level(backend: HFTokenizer) -> HFTokenizer:
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def load_gpt2_tokenizer(path: str | Path) -> Tokenizer:
    """GPT-2's byte-level BPE from a directory (or file) holding tokenizer.json, or vocab.json + merges.txt."""
    path = Path(path)
    if path.is_file():
        return Tokenizer.load(path, required=())
    if (path / "tokenizer.json").is_file():
        return Tokenizer.load(path / "tokenizer.json", required=())
    vocab, merges = path / "vocab.json", path / "merges.txt"
    if vocab.is_file() and merges.is_file():
        try:
            json.loads(vocab.read_text(encoding="utf-8"))
            backend = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
        except Exception as exc:
            raise TformerError(f"{path}: cannot read vocab.json/merges.txt ({str(exc).splitlines()[0]})") from None
        if backend.token_to_id(END_OF_TEXT) is not None:
            # As transformers' GPT2Tokenizer: the separator in a text is the one special token, never BPE'd bytes.
            backend.add_special_tokens([AddedToken(END_OF_TEXT, special=True)])
        return Tokenizer(_byte_level(backend), required=())
    raise TformerError(f"{path}: no tokenizer.json, nor vocab.json + merges.txt")
