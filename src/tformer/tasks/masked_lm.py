"""Masked-language-model pretraining: text -> WordPiece/BPE -> BERT/RoBERTa/ALBERT -> MLM (+ NSP or SOP).

The text is BERT's pretraining format: one sentence (or paragraph) per line, a blank line between documents,
and every file a document of its own. Each epoch builds its examples afresh from (seed, epoch):
    nsp / sop   [CLS] A [SEP] B [SEP] pairs (tformer.data.collators.make_nsp_pairs / make_sop_pairs), a share
                data.short_seq_prob of them built to a shorter length (BERT's short_seq_prob)
    none        [CLS] consecutive sentences of one document up to the length limit [SEP] (RoBERTa)
then masks 15% of the tokens, 80/10/10 (`mask_tokens`): per batch from (seed, epoch, batch) with dynamic
masking (RoBERTa), or once per example from (seed, example) with static masking (the original BERT, which
masked its data once when writing it to disk). The loss is the masked tokens' cross-entropy plus the
sentence objective's, each a mean; validation reports both losses and masked-token accuracy on held-out
documents, masked the same way every time.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tformer.config import RunConfig, check_section
from tformer.data.collators import (PairExample, SpanMasking, encode_pair, encode_single, make_nsp_pairs,
                                    make_sop_pairs, mask_tokens, pad_batch)
from tformer.data.parallel import read_text
from tformer.data.text import split_paths
from tformer.encoder_tokenization import EncoderTokenizer, train_encoder_bpe, train_wordpiece
from tformer.errors import TformerError
from tformer.models.bert import BertConfig, BertForPreTraining, BertModel
from tformer.registry import get_config, require_family
from tformer.tokenization import warn_if_vocab_grew
from tformer.training import checkpoint

# BERT's recipe scaled to a small run: AdamW (0.9, 0.999), decay 0.01, warmup then linear-ish (cosine) decay.
MLM_TRAIN_DEFAULTS = dict(schedule="cosine", lr=5e-4, min_lr=5e-5, warmup_steps=200, adam_beta2=0.999, adam_eps=1e-6,
                          weight_decay=0.01, clip_norm=1.0, label_smoothing=0.0, batch_size=32, max_steps=2000,
                          eval_every=250, save_every=500, log_every=50)
# model_type of the encoders load_encoder reads: tformer's own, and Hugging Face's BERT, RoBERTa and ALBERT
ENCODER_MODEL_TYPES = ("encoder", "bert", "roberta", "albert")
DOCUMENT_LINES = 100  # a text without blank lines is cut into documents of this many lines (NSP needs several)


def mlm_run_defaults(preset: str = "bert-small") -> RunConfig:
    """Pretraining's defaults; the tokenizer is the preset's family's: RoBERTa's byte-level BPE, else WordPiece."""
    run = RunConfig(model={"preset": "bert-small"})
    for key, value in MLM_TRAIN_DEFAULTS.items():
        setattr(run.train, key, value)
    run.data.tokenizer = "bpe" if getattr(get_config(preset), "family", "") == "roberta" else "wordpiece"
    run.data.block_size = 128
    return run


def read_documents(paths: list[str]) -> list[list[str]]:
    """Documents (lists of non-empty lines) from text files: blank lines and file ends separate them."""
    if not paths:
        raise TformerError("masked-LM pretraining needs data.train_text (one or more text files)")
    documents: list[list[str]] = []
    for path in paths:
        current: list[str] = []
        for line in read_text(path).splitlines():
            line = line.strip()
            if line:
                current.append(line)
            elif current:
                documents.append(current)
                current = []
        if current:
            documents.append(current)
    if len(documents) == 1 and len(documents[0]) > DOCUMENT_LINES:
        lines = documents[0]
        documents = [lines[i : i + DOCUMENT_LINES] for i in range(0, len(lines), DOCUMENT_LINES)]
    return documents


def build_encoder_tokenizer(run: RunConfig, documents: list[list[str]]) -> EncoderTokenizer:
    d = run.data
    if d.tokenizer_file:
        return EncoderTokenizer.load(d.tokenizer_file)
    lines = (line for doc in documents for line in doc)
    if d.tokenizer in ("wordpiece", "bpe", "byte_bpe"):
        tokenizer = (train_wordpiece if d.tokenizer == "wordpiece" else train_encoder_bpe)(lines, d.vocab_size)
        warn_if_vocab_grew(tokenizer, d.vocab_size)
        return tokenizer
    raise TformerError(f"data.tokenizer={d.tokenizer!r}: masked-LM pretraining takes wordpiece or bpe")


def _flags(n: int, offsets: list[int]) -> list[int]:
    out = [0] * n
    for k in offsets:
        out[k] = 1
    return out


@dataclass
class MLMBatch:
    """What train_batches hands the trainer: the examples and the seed their masks come from."""

    examples: list[PairExample]
    mask_seed: int
    indices: list[int]  # the examples' positions in this epoch (static masking seeds by example)


class MaskedLMTask:
    selection_metric = ("mlm_loss", "min")  # what train.early_stopping watches

    def __init__(self, run: RunConfig, documents: list[list[str]], valid_documents: list[list[str]] | None = None,
                 tokenizer: EncoderTokenizer | None = None, model: BertForPreTraining | None = None):
        check_section(run.data)  # values set from Python meet a file's checks
        self.run = run
        d, t = run.data, run.train
        if d.block_size < 8:
            raise TformerError(f"data.block_size must be at least 8 tokens, not {d.block_size}")
        if t.batch_size < 1:
            raise TformerError(f"train.batch_size must be at least 1, not {t.batch_size}")
        if not 0.0 < d.mlm_probability < 1.0:
            raise TformerError(f"data.mlm_probability must be in (0, 1), not {d.mlm_probability}")
        self.tokenizer = tok = tokenizer or build_encoder_tokenizer(run, documents)
        if model is None:
            options = {k: v for k, v in run.model.items() if k != "preset"}
            try:
                preset = run.model.get("preset", "bert-small")
                require_family(preset, "encoder", "masked-LM pretraining")
                config = get_config(preset, **options)
                config = replace(config, vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                                 max_len=max(config.max_len, d.block_size + config.position_offset))
            except (TypeError, ValueError) as exc:
                raise TformerError(f"model options: {exc}") from None
            torch.manual_seed(t.seed)
            model = BertForPreTraining(config)
        self.model = model
        c = model.config
        if d.block_size > c.max_tokens:
            raise TformerError(f"data.block_size={d.block_size} exceeds the model's {c.max_tokens} positions")
        self.objective = c.sentence_objective
        if self.objective != "none" and c.type_vocab_size < 2:  # B is segment 1: else every batch fails
            raise TformerError(f"model.sentence_objective={self.objective!r} needs segment embeddings for A and B "
                               f"(model.type_vocab_size=2), and this model has {c.type_vocab_size} (RoBERTa's: "
                               f"pretrain it with sentence_objective='none')")
        given_valid = valid_documents is not None
        if valid_documents is None:
            documents, valid_documents = self._split(documents, d.valid_fraction)
        self.train_docs = self._encode(documents)
        self.valid_docs = self._encode(valid_documents)
        if self.objective == "nsp" and len(self.train_docs) < 2:
            raise TformerError("next-sentence prediction needs at least 2 documents (separate them by blank lines)")
        if self.objective == "nsp" and given_valid and len(self.valid_docs) < 2:  # else validation is silently empty
            raise TformerError(f"data.valid_text: next-sentence prediction needs at least 2 documents to validate on, "
                               f"and {d.valid_text} holds {len(self.valid_docs)} (separate them by blank lines)")
        if self.objective in ("nsp", "sop"):
            self._warn_long_lines(d.block_size - 3)
        # Random replacements come from the ordinary vocabulary, never from the special tokens (wherever they
        # sit: a pretrained BERT vocabulary has [PAD]=0 and [UNK], [CLS], [SEP], [MASK] = 100..103).
        self.random_exclude = tok.special_ids
        self.span = SpanMasking() if d.masking == "span" else None
        self._epoch_cache: tuple[int, list[PairExample]] | None = None

    # -- data ------------------------------------------------------------------------------------------

    @staticmethod
    def _split(documents: list[list[str]], fraction: float) -> tuple[list[list[str]], list[list[str]]]:
        if not 0.0 <= fraction < 1.0:
            raise TformerError(f"data.valid_fraction must be in [0, 1), not {fraction}")
        n_valid = int(round(len(documents) * fraction))
        if fraction > 0 and len(documents) >= 4:
            n_valid = max(n_valid, 1)
        else:
            n_valid = 0
        return documents[: len(documents) - n_valid], documents[len(documents) - n_valid:]

    def _encode(self, documents: list[list[str]]) -> list[list[list[int]]]:
        out = []
        for doc in documents:
            sentences = [s for s in self.tokenizer.encode_plain_batch(doc) if s]
            if sentences:
                out.append(sentences)
        return out

    def _warn_long_lines(self, budget: int) -> None:
        """NSP/SOP pair whole lines, as BERT's data did: a line that alone exceeds a pair's budget is mostly cut
        off (or, in a chunk of its own, skipped), silently losing most of a paragraph-per-line corpus."""
        lengths = [len(s) for doc in self.train_docs for s in doc]
        long_ = [n for n in lengths if n > budget]
        if long_:
            warnings.warn(f"{len(long_)} of {len(lengths)} training lines are longer than the {budget} tokens a "
                          f"sentence pair holds (data.block_size={self.run.data.block_size}); {self.objective} pairs "
                          f"whole lines, so most of each is cut off or skipped (they hold {sum(long_) / sum(lengths):.0%} "
                          f"of the text): write one sentence per line, or raise data.block_size", UserWarning,
                          stacklevel=3)

    def examples(self, documents: list[list[list[int]]], seed: int) -> list[PairExample]:
        """This epoch's sequences (pairs for NSP/SOP, packed sentences otherwise), before masking."""
        rng = random.Random(seed)
        budget = self.run.data.block_size - 3
        short = self.run.data.short_seq_prob
        if self.objective == "nsp":
            return make_nsp_pairs(documents, budget, rng, short) if len(documents) >= 2 else []
        if self.objective == "sop":
            return make_sop_pairs(documents, budget, rng, short)
        budget = self.run.data.block_size - 2
        out = []
        for doc in documents:
            chunk: list[int] = []
            lines: list[int] = []  # where each line begins in chunk (whole-word masking starts a word there)
            for sentence in doc:
                if chunk and len(chunk) + len(sentence) > budget:
                    out.append(PairExample(chunk, [], 0, lines))
                    chunk, lines = [], []
                # A line longer than the limit (a paragraph) is cut into consecutive pieces, not truncated: its
                # tail is text to learn from too (truncating dropped about half of a paragraph-per-line corpus).
                # Only its first piece begins a line; the others begin after <s>, a word start anyway.
                whole = True
                while len(sentence) > budget:
                    out.append(PairExample(sentence[:budget], [], 0, [0] if whole else []))
                    sentence, whole = sentence[budget:], False
                if whole:
                    lines.append(len(chunk))
                chunk = chunk + sentence
            if chunk:
                out.append(PairExample(chunk, [], 0, lines))
        return out

    def _epoch_examples(self, epoch: int, seed: int) -> list[PairExample]:
        key = (epoch, seed)
        if self._epoch_cache is None or self._epoch_cache[0] != key:
            # Static masking keeps one set of examples (and masks) for every epoch; dynamic rebuilds them.
            base = seed if self.run.data.static_masking else seed * 1_000_003 + epoch
            self._epoch_cache = (key, self.examples(self.train_docs, base))
        return self._epoch_cache[1]

    @property
    def epoch_sizes_vary(self) -> bool:
        """Whether epochs hold different numbers of examples: NSP/SOP pairs are drawn anew each epoch (unless
        static), and with them how many there are. The trainer then counts each epoch's steps for its schedule."""
        return self.objective in ("nsp", "sop") and not self.run.data.static_masking

    def train_batches(self, epoch: int, seed: int) -> list[MLMBatch]:
        examples = self._epoch_examples(epoch, seed)
        if not examples:
            raise TformerError("the training text makes no examples (is it empty?)")
        order = list(range(len(examples)))
        random.Random(seed * 7919 + epoch).shuffle(order)
        bs = self.run.train.batch_size
        batches = []
        for k, start in enumerate(range(0, len(order), bs)):
            idx = order[start : start + bs]
            batches.append(MLMBatch([examples[i] for i in idx], (seed * 1_000_003 + epoch) * 100_003 + k, idx))
        return batches

    def _tensors(self, examples: list[PairExample]) -> dict[str, Tensor]:
        tok = self.tokenizer
        seqs, types, line_starts = [], [], []
        for ex in examples:
            # 1 where a line of the text begins, framed as the ids are (0 at the special tokens)
            a_flags, b_flags = _flags(len(ex.a), ex.a_lines), _flags(len(ex.b), ex.b_lines)
            if ex.b:
                ids, type_ids = encode_pair(ex.a, ex.b, tok.cls_id, tok.sep_id)
                flags = encode_pair(a_flags, b_flags, 0, 0)[0]
            else:
                ids, type_ids = encode_single(ex.a, tok.cls_id, tok.sep_id)
                flags = encode_single(a_flags, 0, 0)[0]
            seqs.append(ids)
            types.append(type_ids)
            line_starts.append(flags)
        batch = pad_batch(seqs, tok.pad_id, types)
        batch["sentence_labels"] = torch.tensor([ex.label for ex in examples], dtype=torch.long)
        batch["line_starts"] = pad_batch(line_starts, 0)["ids"].bool()
        return batch

    def _mask(self, batch: dict[str, Tensor], seeds: list[int] | int) -> dict[str, Tensor]:
        tok = self.tokenizer
        batch = dict(batch)
        line_starts = batch.pop("line_starts")  # the masks' input only, not the model's
        ids = batch["ids"]
        special = ~batch["attention_mask"] | torch.isin(ids, torch.tensor(sorted(tok.special_ids)))
        starts = None
        if self.run.data.masking in ("whole_word", "span"):
            # The tokenizer tells word starts from the pieces; a line's first piece starts a word as well, which
            # byte-level BPE's pieces do not show where lines are packed together (no space, no "Ġ", before it).
            starts = torch.tensor([tok.word_starts(row) for row in ids.tolist()], dtype=torch.bool) | line_starts
        kwargs = dict(vocab_size=tok.vocab_size, mask_id=tok.mask_id, mlm_probability=self.run.data.mlm_probability,
                      word_starts=starts, span=self.span, random_exclude=self.random_exclude)
        if isinstance(seeds, int):
            g = torch.Generator().manual_seed(seeds)
            inputs, labels = mask_tokens(ids, special, generator=g, **kwargs)
        else:  # one generator per example: its mask is the same whichever batch it lands in
            rows = []
            for r, s in enumerate(seeds):
                g = torch.Generator().manual_seed(s)
                one = {k: (v[r : r + 1] if v is not None else None) for k, v in kwargs.items() if k == "word_starts"}
                rows.append(mask_tokens(ids[r : r + 1], special[r : r + 1], generator=g,
                                        **{**kwargs, **one}))
            inputs = torch.cat([r[0] for r in rows])
            labels = torch.cat([r[1] for r in rows])
        return {**batch, "ids": inputs, "labels": labels}

    def collate(self, batch: MLMBatch, device: torch.device) -> dict[str, Tensor]:
        tensors = self._tensors(batch.examples)
        if self.run.data.static_masking:
            seeds = [self.run.train.seed * 1_000_003 + i for i in batch.indices]
            tensors = self._mask(tensors, seeds)
        else:
            tensors = self._mask(tensors, batch.mask_seed)
        return {k: v.to(device, non_blocking=True) for k, v in tensors.items()}

    def count_tokens(self, batch: dict[str, Tensor]) -> int:
        return max(int((batch["labels"] != -100).sum()), 1)

    def _losses(self, model: nn.Module, batch: dict[str, Tensor]):
        attention_mask = batch["attention_mask"]
        if bool(attention_mask.all()):
            attention_mask = None  # no padding: the fused attention kernels run without a mask
        picked = batch["labels"] != -100
        out = model(batch["ids"], batch["type_ids"], attention_mask, mlm_positions=picked)
        targets = batch["labels"][picked]
        mlm = F.cross_entropy(out.mlm_logits.float(), targets, reduction="sum")
        correct = (out.mlm_logits.argmax(-1) == targets).sum()
        sentence = sentence_correct = None
        if out.sentence_logits is not None:
            sentence = F.cross_entropy(out.sentence_logits.float(), batch["sentence_labels"], reduction="sum")
            sentence_correct = (out.sentence_logits.argmax(-1) == batch["sentence_labels"]).sum()
        return mlm, int(targets.numel()), correct, sentence, sentence_correct

    def count_examples(self, batch: dict[str, Tensor]) -> int:
        """The pairs the NSP/SOP loss sums over."""
        return batch["ids"].size(0)

    def loss(self, model: nn.Module, batch: dict[str, Tensor], example_weight: float | None = None
             ) -> tuple[Tensor, dict]:
        """MLM loss summed over the masked tokens, plus the NSP/SOP loss summed over the pairs times example_weight.

        The trainer divides the whole by the step's count_tokens (the masked tokens, at least 1 per micro-batch), so
        the sentence part ends as a mean over pairs when example_weight is the step's tokens over its pairs, which
        the trainer passes (over all its micro-batches and processes: accumulating micro-batches then gives the
        gradient of one batch of them all). Without it, this batch's own ratio: a step of this batch alone."""
        mlm, n, _, sentence, _ = self._losses(model, batch)
        total = mlm
        if sentence is not None:
            if example_weight is None:
                # (max(n, 1), as count_tokens: a batch where no token was picked keeps its NSP loss)
                example_weight = self.count_tokens(batch) / self.count_examples(batch)
            total = mlm + sentence * example_weight
        return total, {"mlm": mlm.detach(), "tokens": n}

    def input_tokens(self, batch: dict[str, Tensor]) -> int:
        """Tokens the encoder read (padding aside): what tokens/s counts."""
        return int(batch["attention_mask"].sum())

    def flops_per_token(self) -> float:
        """Training FLOPs per input token: 6 x encoder weights + attention scores (Kaplan et al. 2020), plus the
        output head, which runs only at the mlm_probability share of the tokens."""
        c = self.model.config
        # Every applied layer counts (ALBERT applies one layer's weights N times).
        n = sum(p.numel() for layer in self.model.bert.encoder.stack() for p in layer.parameters())
        head = c.d_model * c.d_embed + c.d_embed * c.vocab_size
        return 6 * n + 12 * c.n_layers * c.d_model * self.run.data.block_size \
            + 6 * head * self.run.data.mlm_probability

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        if not self.valid_docs:
            return {}
        seed = self.run.train.seed + 12345
        examples = self.examples(self.valid_docs, seed)
        if not examples:
            return {}
        device = next(model.parameters()).device
        limit = self.run.train.eval_batches
        bs = self.run.train.batch_size
        mlm = correct = n = 0.0
        sent = sent_correct = pairs = 0.0
        for k, start in enumerate(range(0, len(examples), bs)):
            if limit and k >= limit:
                break
            batch = self._mask(self._tensors(examples[start : start + bs]), seed + k)
            batch = {key: v.to(device) for key, v in batch.items()}
            m, count, c, s, sc = self._losses(model, batch)
            mlm, n, correct = mlm + float(m), n + count, correct + float(c)
            if s is not None:
                sent, sent_correct, pairs = sent + float(s), sent_correct + float(sc), pairs + batch["ids"].size(0)
        out = {}
        if n:  # a validation text too short to have a token picked has no MLM score (not a loss of 0, ppl 1)
            out = {"mlm_loss": mlm / n, "mlm_accuracy": correct / n}
            out["ppl"] = math.exp(min(out["mlm_loss"], 50.0))
        if pairs:
            out[f"{self.objective}_loss"] = sent / pairs
            out[f"{self.objective}_accuracy"] = sent_correct / pairs
        return out

    def save(self, path: Path, model: nn.Module, trainer_state: dict | None = None,
             optimizer_state: dict | None = None) -> None:
        config = {**model.config.to_dict(), "tformer_run": self.run.to_dict()}
        checkpoint.save_model(path, model, config, self.tokenizer, None, trainer_state, optimizer_state)


def build_mlm_task(run: RunConfig, resume_dir: str | Path | None = None) -> MaskedLMTask:
    documents = read_documents(split_paths(run.data.train_text))
    valid = read_documents(split_paths(run.data.valid_text)) if run.data.valid_text else None
    if resume_dir is not None and (Path(resume_dir) / checkpoint.CONFIG).is_file():
        model, tokenizer = load_encoder(resume_dir)
        if not isinstance(model, BertForPreTraining):
            raise TformerError(f"{resume_dir}: holds no masked-LM head to continue pretraining")
        return MaskedLMTask(run, documents, valid, tokenizer, model.train())
    return MaskedLMTask(run, documents, valid)


# -- using a saved encoder ----------------------------------------------------------------------------


def load_encoder(path: str | Path, device: str | torch.device = "cpu"
                 ) -> tuple[BertModel | BertForPreTraining, EncoderTokenizer]:
    """(model in eval mode, tokenizer) from a tformer encoder directory or a Hugging Face BERT / RoBERTa /
    ALBERT directory (the model is BertForPreTraining when the checkpoint has a masked-LM head)."""
    path = Path(path)
    data = checkpoint.read_config(path)
    kind = data.get("model_type")
    if kind in ENCODER_MODEL_TYPES[1:]:
        from tformer.interop.bert import load_hf_encoder

        return load_hf_encoder(path, device), EncoderTokenizer.load(path)
    if kind != "encoder":
        raise TformerError(f"{path}: model_type {kind!r} is not an encoder (expected bert, roberta, albert or a "
                           f"tformer encoder)")
    model = BertForPreTraining(checkpoint.from_saved(BertConfig, data, str(path / checkpoint.CONFIG)))
    checkpoint.load_weights(path, model)
    return model.to(device).eval(), EncoderTokenizer.load(path / checkpoint.TOKENIZER)


__all__ = ["MaskedLMTask", "build_mlm_task", "load_encoder", "mlm_run_defaults", "read_documents"]
