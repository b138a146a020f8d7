"""Tokenizers for BERT-family encoders (BERT, RoBERTa and their kin), over the Hugging Face `tokenizers` library.

An encoder reads one text or a pair of texts framed by special tokens, plus a segment ("token type") id per
token. The framing must be exactly Hugging Face's, because checkpoints loaded from there are compared against
`transformers`:

  wordpiece (BERT, Devlin et al. 2019)   [CLS] A [SEP]  and  [CLS] A [SEP] B [SEP]
      type ids 0 for [CLS] A [SEP], 1 for B and its [SEP]. Text is cleaned, optionally lowercased and stripped
      of accents, split on whitespace and punctuation (each CJK character on its own), then split greedily into
      the longest vocabulary pieces; a piece that continues a word starts with "##" ("unaffable" -> un ##aff
      ##able). Specials of a trained vocabulary: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4.
  bpe (RoBERTa, Liu et al. 2019)          <s> A </s>  and  <s> A </s></s> B </s>
      all type ids 0 (RoBERTa has one segment embedding). GPT-2's byte-level BPE: every string encodes, and a
      token that begins a word after a space starts with "Ġ". Specials of a trained vocabulary, in RoBERTa's
      order: <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4. Like RoBERTa, no space is added before the first word
      (add_prefix_space=False), so the first word of a text has no "Ġ".

The backend only splits text into pieces: padding and truncation are switched off in it (a Hugging Face
tokenizer.json may carry its own, e.g. all-MiniLM-L6-v2's pads everything to 128), and the special tokens
are added here, after our own truncation, so both are the same whatever file the tokenizer came from.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from tformer.errors import TformerError

# Token names per style: (cls, sep, mask, pad choices, unk choices). ALBERT's vocabulary pairs [CLS]/[SEP]/[MASK]
# with <pad>/<unk>, hence the alternatives.
_NAMES = {
    "wordpiece": ("[CLS]", "[SEP]", "[MASK]", ("[PAD]", "<pad>"), ("[UNK]", "<unk>")),
    "bpe": ("<s>", "</s>", "<mask>", ("<pad>",), ("<unk>",)),
}
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BPE_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
TRUNCATION = ("warn", "error")


@dataclass
class EncodedText:
    """One encoder input: token ids with the special tokens, their segment ids, whether it was cut, and how many
    tokens each text (the first, and the pair's second) had before any cut: 0 for a text the tokenizer keeps
    nothing of, which callers that read files refuse (tformer.tasks.finetune)."""

    ids: list[int]
    type_ids: list[int]
    truncated: bool = False
    lengths: tuple[int, ...] = ()


def _detect_style(vocab: dict[str, int], where: str) -> str:
    if "[CLS]" in vocab and "[MASK]" in vocab:
        return "wordpiece"
    if "<s>" in vocab and "<mask>" in vocab:
        return "bpe"
    raise TformerError(f"{where}: the vocabulary has neither [CLS]/[MASK] (BERT) nor <s>/<mask> (RoBERTa)")


def pair_lengths(n1: int, n2: int, budget: int) -> tuple[int, int]:
    """How many tokens of A and B to keep so that they fit `budget`, cutting the longer first.

    This is the `tokenizers` library's "longest_first" rule (which transformers' tokenizers use, BERT's and
    GPT-2's alike): the shorter input is kept whole if the longer one can absorb the cut; otherwise both get
    half, the odd token going to the one that was longer (to B on a tie, so A loses the extra token). transformers'
    pure-Python tokenizers (tokenization_python, BertTokenizerLegacy) give the odd token to A in every case
    instead. GPT-1 sentence pairs (tformer.tasks.finetune_gpt) are cut by this same rule.
    """
    short, long_ = sorted((n1, n2))
    if short > budget:
        long_ = short
    else:
        long_ = max(short, budget - short)
    if short + long_ > budget:
        short, long_ = budget // 2, budget // 2 + budget % 2
    return (long_, short) if n1 > n2 else (short, long_)


class EncoderTokenizer:
    """Text <-> ids for BERT-style encoders: [CLS] A [SEP] (B [SEP]) with segment (token type) ids.

    `style` ("wordpiece" or "bpe") is read from the vocabulary; `where` names the source in error messages.
    """

    def __init__(self, backend: HFTokenizer, where: str = "tokenizer"):
        # We pad and truncate ourselves, after adding the special tokens; the file's settings would fight that.
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        vocab = backend.get_vocab()
        self.style = _detect_style(vocab, where)
        cls, sep, mask, pads, unks = _NAMES[self.style]

        def need(choices: Sequence[str]) -> str:
            for tok in choices:
                if tok in vocab:
                    return tok
            raise TformerError(f"{where}: the vocabulary lacks the special token {choices[0]!r}")

        names = [need([cls]), need([sep]), need([mask]), need(pads), need(unks)]
        # Mark them as special in the backend (a bare vocab.txt does not) so that "[MASK]" typed in a text is one
        # token and decoding can skip them. RoBERTa's <mask> swallows the space before it, as Hugging Face's does,
        # so "the <mask>" predicts "Ġcapital" rather than a word after a lone space.
        declared = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        missing = [n for n in names if n not in declared]
        if missing:
            backend.add_special_tokens([AddedToken(n, lstrip=(n == "<mask>"), special=True) for n in missing])
        self.cls_id, self.sep_id, self.mask_id, self.pad_id, self.unk_id = (vocab[n] for n in names)
        self.special_ids = frozenset((self.cls_id, self.sep_id, self.mask_id, self.pad_id, self.unk_id))

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    # -- encoding -----------------------------------------------------------------------------------------

    def encode(self, text: str, pair: str | None = None, max_length: int | None = None,
               truncation: str = "warn") -> EncodedText:
        """One text (or pair) with its special tokens; see `encode_batch` for max_length and truncation."""
        return self._encode([text], None if pair is None else [pair], max_length, truncation)[0]

    def encode_batch(self, texts: Sequence[str], pairs: Sequence[str] | None = None, max_length: int | None = None,
                     truncation: str = "warn", names: Sequence[str] | None = None) -> list[EncodedText]:
        """Texts (and their pairs) with special tokens. An input longer than `max_length` (special tokens
        counted) is cut, longest segment first, keeping the special tokens, and one warning counts the cut inputs
        (truncation="warn"), or it is refused with an error naming it (truncation="error"): by `names` (where
        each text came from, e.g. "notes.txt:3"), else as "input K", counted from 1."""
        return self._encode(texts, pairs, max_length, truncation, names)

    def _encode(self, texts, pairs, max_length, truncation, names=None) -> list[EncodedText]:
        if truncation not in TRUNCATION:
            raise ValueError(f"truncation must be one of {TRUNCATION}, not {truncation!r}")
        texts = list(texts)
        if pairs is not None:
            pairs = list(pairs)
            if len(pairs) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
        n_special = self._n_special(pairs is not None)
        if max_length is not None and max_length < n_special + (1 if pairs is None else 2):
            # Less would leave a segment empty: a mistake in the settings, not in one input.
            raise TformerError(f"max_length={max_length} leaves no room for text beside the {n_special} special "
                               f"tokens")
        firsts = self.encode_plain_batch(texts)
        seconds = self.encode_plain_batch(pairs) if pairs is not None else [None] * len(texts)
        out, n_cut = [], 0
        for k, (a, b) in enumerate(zip(firsts, seconds)):
            length = len(a) + (len(b) if b is not None else 0) + n_special
            cut = max_length is not None and length > max_length
            if cut:
                if truncation == "error":
                    name = names[k] if names is not None else f"input {k + 1}"
                    raise TformerError(f"{name} has {length} tokens, more than max_length={max_length}")
                budget = max_length - n_special
                if b is None:
                    a = a[:budget]
                else:
                    keep_a, keep_b = pair_lengths(len(a), len(b), budget)
                    a, b = a[:keep_a], b[:keep_b]
                n_cut += 1
            framed = self._frame(a, b, cut)
            framed.lengths = (length - n_special,) if b is None else (len(firsts[k]), len(seconds[k]))
            out.append(framed)
        if n_cut:
            warnings.warn(f"{n_cut} of {len(texts)} input(s) were longer than max_length={max_length} tokens and "
                          f"were truncated to it", UserWarning, stacklevel=3)
        return out

    def _n_special(self, pair: bool) -> int:
        if not pair:
            return 2
        return 3 if self.style == "wordpiece" else 4

    def _frame(self, a: list[int], b: list[int] | None, truncated: bool) -> EncodedText:
        cls, sep = self.cls_id, self.sep_id
        ids = [cls, *a, sep]
        if b is None:
            return EncodedText(ids, [0] * len(ids), truncated)
        if self.style == "wordpiece":  # B and its [SEP] are segment 1
            return EncodedText(ids + [*b, sep], [0] * len(ids) + [1] * (len(b) + 1), truncated)
        ids += [sep, *b, sep]  # RoBERTa: </s></s> between the texts, one segment throughout
        return EncodedText(ids, [0] * len(ids), truncated)

    def encode_plain(self, text: str) -> list[int]:
        """Sub-word ids without special tokens (building pretraining data)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_plain_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    # -- tokens and words ---------------------------------------------------------------------------------

    @cached_property
    def _piece_starts_word(self) -> list[bool]:
        """Per id: does this piece, seen after another piece, begin a new word? (Whole-word masking asks.)"""
        vocab = self.backend.get_vocab()
        table = [False] * (max(vocab.values()) + 1)
        if isinstance(self.backend.model, models.WordPiece):
            prefix = self.backend.model.continuing_subword_prefix
            for tok, i in vocab.items():
                table[i] = not tok.startswith(prefix)
        else:
            # Byte-level BPE marks a word after a space with "Ġ"; SentencePiece vocabularies (ALBERT, XLM-R) with
            # "▁". Whichever the vocabulary uses more is its marker.
            marker = "▁" if sum(t.startswith("▁") for t in vocab) > sum(t.startswith("Ġ") for t in vocab) else "Ġ"
            for tok, i in vocab.items():
                table[i] = tok.startswith(marker)
        return table

    def word_starts(self, ids: Sequence[int]) -> list[bool]:
        """True at the first piece of each word; False on special tokens. With byte-level BPE the piece that
        opens a text or follows a special token also starts a word, as it has no space (no "Ġ") before it."""
        table, special = self._piece_starts_word, self.special_ids
        marks_start = isinstance(self.backend.model, models.WordPiece)
        out, after_special = [], True
        for i in ids:
            i = int(i)
            if i in special:
                out.append(False)
                after_special = True
                continue
            out.append(table[i] or (after_special and not marks_start))
            after_special = False
        return out

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str:
        return self.backend.id_to_token(int(i))

    def token_to_id(self, tok: str) -> int | None:
        return self.backend.token_to_id(tok)

    def tokens(self, text: str) -> list[str]:
        """The pieces of `text`, without special tokens."""
        return self.backend.encode(text, add_special_tokens=False).tokens

    # -- files --------------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write a tokenizer.json (it loads back here and in transformers' PreTrainedTokenizerFast)."""
        self.backend.save(str(path))

    @classmethod
    def load(cls, path: str | Path) -> "EncoderTokenizer":
        """From a tokenizer.json, a directory holding one, a BERT vocab.txt (with an optional tokenizer_config.json
        beside it), or a RoBERTa vocab.json + merges.txt (the directory or the vocab.json)."""
        path = Path(path)
        if path.is_dir():
            if (path / "tokenizer.json").is_file():
                return _load_json(path / "tokenizer.json")
            if (path / "vocab.txt").is_file():
                return _load_vocab_txt(path / "vocab.txt")
            if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
                return _load_vocab_merges(path / "vocab.json", path / "merges.txt")
            raise TformerError(f"{path}: no tokenizer.json, vocab.txt, nor vocab.json + merges.txt")
        if not path.is_file():
            raise TformerError(f"{path}: tokenizer file not found")
        if path.suffix == ".txt":
            return _load_vocab_txt(path)
        if path.name == "vocab.json":
            merges = path.with_name("merges.txt")
            if not merges.is_file():
                raise TformerError(f"{path}: no merges.txt beside it")
            return _load_vocab_merges(path, merges)
        return _load_json(path)


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _load_json(path: Path) -> EncoderTokenizer:
    try:
        backend = HFTokenizer.from_file(str(path))
    except Exception as exc:  # the library's parse errors are long; ours names the file
        raise TformerError(f"{path}: not a valid tokenizer.json ({_first_line(exc)})") from None
    return EncoderTokenizer(backend, where=str(path))


def _read_config(directory: Path) -> dict:
    """tokenizer_config.json beside the vocabulary, or {} when there is none."""
    path = directory / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TformerError(f"{path}: not valid JSON ({_first_line(exc)})") from None
    if not isinstance(config, dict):
        raise TformerError(f"{path}: expected a JSON object")
    return config


def _option(config: dict, key: str, default, where: Path, allow_none: bool = False):
    value = config.get(key, default)
    if not (isinstance(value, bool) or (allow_none and value is None)):
        raise TformerError(f"{where / 'tokenizer_config.json'}: {key} must be true or false, not {value!r}")
    return value


def _wordpiece_pipeline(backend: HFTokenizer, lowercase: bool, strip_accents: bool | None = None,
                        chinese_chars: bool = True) -> HFTokenizer:
    """BERT's text handling. strip_accents=None follows `lowercase`, as the original uncased BERT did."""
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=chinese_chars,
                                                    strip_accents=strip_accents, lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def _bert_post_processor(backend: HFTokenizer) -> None:
    # Not used by EncoderTokenizer (it frames inputs itself); it makes the saved tokenizer.json complete.
    backend.post_processor = processors.BertProcessing(("[SEP]", backend.token_to_id("[SEP]")),
                                                       ("[CLS]", backend.token_to_id("[CLS]")))


def _roberta_post_processor(backend: HFTokenizer) -> None:
    backend.post_processor = processors.RobertaProcessing(("</s>", backend.token_to_id("</s>")),
                                                          ("<s>", backend.token_to_id("<s>")))


def _load_vocab_txt(path: Path) -> EncoderTokenizer:
    """A BERT vocab.txt: one token a line, its id the line number. tokenizer_config.json beside it may set
    do_lower_case (default true: BERT uncased), strip_accents and tokenize_chinese_chars."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise TformerError(f"{path}: cannot read the vocabulary ({_first_line(exc)})") from None
    if lines and lines[-1] == "":  # the final newline ends the last token, it does not start one
        lines.pop()
    vocab: dict[str, int] = {}
    for i, tok in enumerate(lines):
        vocab[tok] = i  # a repeated token keeps its last line, as transformers does
    if _detect_style(vocab, str(path)) != "wordpiece":
        raise TformerError(f"{path}: a vocab.txt must be a BERT WordPiece vocabulary with [CLS] and [MASK]")
    if "[UNK]" not in vocab:
        raise TformerError(f"{path}: the vocabulary lacks the special token '[UNK]'")
    config = _read_config(path.parent)
    backend = HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    _wordpiece_pipeline(backend, lowercase=_option(config, "do_lower_case", True, path.parent),
                        strip_accents=_option(config, "strip_accents", None, path.parent, allow_none=True),
                        chinese_chars=_option(config, "tokenize_chinese_chars", True, path.parent))
    tok = EncoderTokenizer(backend, where=str(path))
    _bert_post_processor(backend)
    return tok


def _load_vocab_merges(vocab: Path, merges: Path) -> EncoderTokenizer:
    """RoBERTa's files: byte-level BPE, no space added before the first word unless tokenizer_config.json
    beside them sets add_prefix_space."""
    try:
        json.loads(vocab.read_text(encoding="utf-8"))
        backend = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    except Exception as exc:
        raise TformerError(f"{vocab.parent}: cannot read vocab.json/merges.txt ({_first_line(exc)})") from None
    prefix_space = _option(_read_config(vocab.parent), "add_prefix_space", False, vocab.parent)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    backend.decoder = decoders.ByteLevel()
    tok = EncoderTokenizer(backend, where=str(vocab))
    _roberta_post_processor(backend)
    return tok


# -- training -------------------------------------------------------------------------------------------


def train_wordpiece(texts: Iterable[str], vocab_size: int = 8000, lowercase: bool = True,
                    min_frequency: int = 2) -> EncoderTokenizer:
    """A BERT-style WordPiece vocabulary of at most `vocab_size` learned from `texts`, with [PAD]=0 [UNK]=1
    [CLS]=2 [SEP]=3 [MASK]=4. lowercase=True also strips accents (BERT uncased).

    The same texts always give the same vocabulary (see _learn_wordpiece_vocab)."""
    backend = _wordpiece_pipeline(HFTokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100)),
                                  lowercase=lowercase)
    vocab = _learn_wordpiece_vocab(backend, texts, vocab_size, min_frequency)
    backend.model = models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100)
    _bert_post_processor(backend)
    return EncoderTokenizer(backend, where="trained WordPiece vocabulary")


# The control characters Python's str.split() takes for whitespace; BERT's normaliser deletes them instead of
# reading them as a space, so deleting them first keeps "a\x1fb" one word, as BERT sees it. Every other
# character str.split() splits on is one the normaliser turns into a space.
_NOT_SEPARATORS = str.maketrans("", "", "\x0b\x0c\x1c\x1d\x1e\x1f\x85")


def _count_words(backend: HFTokenizer, texts: Iterable[str]) -> Counter[str]:
    """How often each word (after BERT's normaliser and pre-tokeniser) occurs in `texts`.

    Both steps work within a whitespace-separated chunk (they act on one character at a time, or split
    further), so each distinct chunk goes through them once, with its count: far fewer calls than one per
    word of the corpus (8.6 MB of text: 1-1.7 s against 7-9 s)."""
    chunks: Counter[str] = Counter()
    for text in texts:
        chunks.update(text.translate(_NOT_SEPARATORS).split())
    normalize, pre_tokenize = backend.normalizer.normalize_str, backend.pre_tokenizer.pre_tokenize_str
    words: Counter[str] = Counter()
    for chunk, count in chunks.items():
        for word, _ in pre_tokenize(normalize(chunk)):
            words[word] += count
    return words


def _learn_wordpiece_vocab(backend: HFTokenizer, texts: Iterable[str], vocab_size: int,
                           min_frequency: int) -> dict[str, int]:
    """WordPiece's vocabulary learned as BERT's was: by BPE merges, with pieces inside a word marked "##".

    The tokenizers library's WordPieceTrainer does the same, but numbers the "##" characters in the order it
    meets words in a hash map, so ties between equally frequent merges go differently in every process: the
    same texts gave a different vocabulary each time. Here every character inside a word is first replaced
    by a stand-in of its own (an unused private-use character), so that "##x" is an ordinary character of
    the alphabet, which the plain BPE trainer numbers in sorted order and then merges deterministically.
    The stand-ins become "##" pieces again afterwards; the result is a vocabulary of the same kind."""
    words = _count_words(backend, texts)
    chars = sorted({c for w in words for c in w})
    used = set(chars)
    stand_ins = (chr(cp) for cp in (*range(0xF0000, 0xFFFFE), *range(0x100000, 0x10FFFE)) if chr(cp) not in used)
    inside = dict(zip(chars, stand_ins))
    if len(inside) < len(chars):
        raise TformerError(f"WordPiece training: the texts use {len(chars):,} distinct characters, more than "
                           "it can mark")
    original = {v: k for k, v in inside.items()}

    def marked(word: str) -> str:
        return word[0] + "".join(inside[c] for c in word[1:])

    def training_text():
        for word, count in sorted(words.items()):
            piece = marked(word) + " "
            while count > 0:  # the trainer counts the words again; feed each as often as it occurs
                n = min(count, 4096)
                yield piece * n
                count -= n

    bpe = HFTokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Every character is also a word start, as in the library's trainer: a word that begins with one that
    # began no training word still splits into pieces instead of becoming [UNK].
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=WORDPIECE_SPECIALS, initial_alphabet=chars, show_progress=False)
    bpe.train_from_iterator(training_text(), trainer=trainer)
    vocab = {}
    for token, i in bpe.get_vocab().items():
        if token in WORDPIECE_SPECIALS:
            vocab[token] = i
        elif token[0] in original:  # a piece from inside a word (merges never join across a word's start)
            vocab["##" + "".join(original[c] for c in token)] = i
        else:
            vocab[token[0] + "".join(original.get(c, c) for c in token[1:])] = i
    return vocab


def train_encoder_bpe(texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2) -> EncoderTokenizer:
    """A RoBERTa-style byte-level BPE vocabulary of `vocab_size` learned from `texts`, with <s>=0 <pad>=1
    </s>=2 <unk>=3 <mask>=4. No space is added before a text's first word (RoBERTa's add_prefix_space=False)."""
    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, lstrip=(t == "<mask>"), special=True) for t in BPE_SPECIALS]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer=trainer)
    _roberta_post_processor(backend)
    return EncoderTokenizer(backend, where="trained byte-level BPE vocabulary")
