"""Subword tokenizers over the Hugging Face `tokenizers` library.

BPE (Sennrich et al. 2016) learns merges of frequent symbol pairs from the training text. Words are split
on whitespace with a leading "▁" marking a word start (the SentencePiece convention), so decoding restores
the original spacing. `char` is the same model with no merges: one token per character (the demo uses it).
Special tokens, in this order and with these ids: <pad>=0, <s>=1, </s>=2, <unk>=3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from tformer.errors import TformerError

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]


class Tokenizer:
    """Text <-> token ids, with the special-token ids the models need."""

    def __init__(self, backend: HFTokenizer):
        self.backend = backend
        for tok in SPECIAL_TOKENS:
            if backend.token_to_id(tok) is None:
                raise TformerError(f"tokenizer lacks the special token {tok!r}")
        self.pad_id = backend.token_to_id(PAD)
        self.bos_id = backend.token_to_id(BOS)
        self.eos_id = backend.token_to_id(EOS)
        self.unk_id = backend.token_to_id(UNK)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

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
    def load(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise TformerError(f"{path}: tokenizer file not found")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as exc:  # the library's parse errors are long; ours names the file
            raise TformerError(f"{path}: not a valid tokenizer.json ({str(exc).splitlines()[0]})") from None


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
