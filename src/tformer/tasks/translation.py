"""Translation: parallel text -> BPE -> encoder-decoder Transformer -> label-smoothed loss -> BLEU.

`TranslationTask` wires one job end to end for the trainer; `load_translator` and `translate_lines` use a
saved model directory; `evaluate_files` scores one against reference files.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from tformer.config import RunConfig, check_section, refuse_decided_options
from tformer.data.batching import collate_translation, pad, token_batches
from tformer.data.parallel import read_parallel
from tformer.errors import TformerError
from tformer.generation.search import translate_ids
from tformer.metrics import bleu, chrf
from tformer.models.transformer import Transformer, TransformerConfig
from tformer.models.validation import check_texts
from tformer.registry import get_config, require_family
from tformer.tokenization import Tokenizer, train_tokenizer, warn_if_vocab_grew
from tformer.training import checkpoint
from tformer.training.losses import label_smoothed_cross_entropy


class TranslationTask:
    selection_metric = ("loss", "min")  # what train.early_stopping watches (fairseq's default too)

    def __init__(self, run: RunConfig, pairs: Sequence[tuple[str, str]], valid_pairs: Sequence[tuple[str, str]] = (),
                 src_tok: Tokenizer | None = None, tgt_tok: Tokenizer | None = None, model: Transformer | None = None):
        check_section(run.data)  # values set from Python meet a file's checks
        self.run = run
        d = run.data
        if d.tokenizer_file and src_tok is None:  # it would be ignored: translation learns its BPE from the pairs
            raise TformerError(f"data.tokenizer_file={d.tokenizer_file!r} is for GPT language models; a translation "
                               "model learns its BPE from the training pairs (data.vocab_size sizes it)")
        if src_tok is None:
            if d.joint_vocab:
                src_tok = tgt_tok = train_tokenizer([s for p in pairs for s in p], d.vocab_size, d.tokenizer)
            else:
                src_tok = train_tokenizer([s for s, _ in pairs], d.vocab_size, d.tokenizer)
                tgt_tok = train_tokenizer([t for _, t in pairs], d.vocab_size, d.tokenizer)
            if d.tokenizer == "bpe":
                for tok in dict.fromkeys((src_tok, tgt_tok)):
                    warn_if_vocab_grew(tok, d.vocab_size)
        self.src_tok, self.tgt_tok = src_tok, tgt_tok or src_tok
        src_ids = self.src_tok.encode_batch([s for s, _ in pairs])
        tgt_ids = self.tgt_tok.encode_batch([t for _, t in pairs])
        self.examples = [(s, t) for s, t in zip(src_ids, tgt_ids) if 0 < len(s) <= d.max_len and len(t) + 1 <= d.max_len]
        if not self.examples:
            raise TformerError(f"no training pair fits data.max_len={d.max_len} tokens")
        if len(self.examples) < len(pairs):  # as fairseq reports the examples it skips
            warnings.warn(f"{len(pairs) - len(self.examples)} of {len(pairs)} training pairs left out: a side longer "
                          f"than data.max_len={d.max_len} tokens (with </s>), or an empty source", stacklevel=2)
        self.lengths = [max(len(s), len(t) + 1) for s, t in self.examples]
        self.valid_pairs = list(valid_pairs)
        if model is None:
            options = {k: v for k, v in run.model.items() if k != "preset"}
            joint = self.src_tok is self.tgt_tok
            preset = run.model.get("preset", "transformer-small")
            require_family(preset, "transformer", "translation")
            decided = {"src_vocab_size": self.src_tok.vocab_size, "tgt_vocab_size": self.tgt_tok.vocab_size,
                       "pad_id": self.tgt_tok.pad_id, "bos_id": self.tgt_tok.bos_id, "eos_id": self.tgt_tok.eos_id}
            refuse_decided_options(options, decided, "a translation model takes it from its tokenizers")
            if options.get("share_embeddings") and not joint:
                raise TformerError("model.share_embeddings=true needs one vocabulary for both languages: "
                                   "set data.joint_vocab=true as well")
            try:
                config = get_config(preset, **options)
                config = replace(config, share_embeddings=joint and options.get("share_embeddings", True), **decided)
            except (TypeError, ValueError) as exc:
                raise TformerError(f"model options: {exc}") from None
            torch.manual_seed(run.train.seed)
            model = Transformer(config)
        if d.max_len > model.config.max_len:  # learned positions would fail mid-run; sinusoidal ones cut at translation
            raise TformerError(f"data.max_len={d.max_len} is more than the model's {model.config.max_len} positions "
                               "(model.max_len): lower data.max_len or raise model.max_len")
        self.model = model

    # -- what the trainer calls -------------------------------------------------------------------------

    def train_batches(self, epoch: int, seed: int) -> list[list[int]]:
        return token_batches(self.lengths, self.run.train.max_tokens, shuffle=True, seed=seed, epoch=epoch)

    def collate(self, batch: list[int], device: torch.device) -> dict[str, Tensor]:
        c = self.model.config
        out = collate_translation([self.examples[i] for i in batch], c.pad_id, c.bos_id, c.eos_id)
        return {k: v.to(device, non_blocking=True) for k, v in out.items()}

    def count_tokens(self, batch: dict[str, Tensor]) -> int:
        return int((batch["tgt_out"] != self.model.config.pad_id).sum())

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        keep = batch["tgt_out"] != self.model.config.pad_id
        logits = model(batch["src"], batch["tgt_in"], keep=keep).logits  # (N, V) at non-padding positions
        loss, nll, n = label_smoothed_cross_entropy(logits, batch["tgt_out"][keep], self.run.train.label_smoothing)
        return loss, {"nll": nll, "tokens": n}  # tensors: no device sync on the hot path

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        if not self.valid_pairs:
            return {}
        pairs = self.valid_pairs[: self.run.train.eval_max_sentences]
        c = self.model.config
        device = next(model.parameters()).device
        src_ids = self.src_tok.encode_batch([s for s, _ in pairs])
        tgt_ids = self.tgt_tok.encode_batch([t for _, t in pairs])
        nll, count = 0.0, 0
        order = sorted(range(len(pairs)), key=lambda i: len(src_ids[i]))
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            b = collate_translation([(src_ids[i][: c.max_len], tgt_ids[i][: c.max_len - 1]) for i in idx],
                                    c.pad_id, c.bos_id, c.eos_id)
            b = {k: v.to(device) for k, v in b.items()}
            keep = b["tgt_out"] != c.pad_id
            logits = model(b["src"], b["tgt_in"], keep=keep).logits
            _, batch_nll, n = label_smoothed_cross_entropy(logits, b["tgt_out"][keep], 0.0)
            nll, count = nll + float(batch_nll), count + int(n)
        hyps = translate_lines(model, self.src_tok, self.tgt_tok, [s for s, _ in pairs],
                               beam_size=self.run.train.eval_beam_size)
        return {"loss": nll / max(count, 1), "ppl": float(torch.tensor(nll / max(count, 1)).exp()),
                "bleu": bleu(hyps, [t for _, t in pairs])}

    def save(self, path: Path, model: nn.Module, trainer_state: dict | None = None,
             optimizer_state: dict | None = None) -> None:
        config = {**model.config.to_dict(), "tformer_run": self.run.to_dict()}
        target_tok = None if self.tgt_tok is self.src_tok else self.tgt_tok
        checkpoint.save_model(path, model, config, self.src_tok, target_tok, trainer_state, optimizer_state)


def build_task(run: RunConfig, resume_dir: str | Path | None = None) -> TranslationTask:
    """Read the data named by run.data; when resuming, reuse the saved tokenizers and model shape."""
    d = run.data
    if not d.train_src or not d.train_tgt:
        raise TformerError("training needs data.train_src and data.train_tgt (two aligned text files)")
    if bool(d.valid_src) != bool(d.valid_tgt):
        given, missing = ("valid_src", "valid_tgt") if d.valid_src else ("valid_tgt", "valid_src")
        raise TformerError(f"data.{given} is set but data.{missing} is not: validation needs both sides "
                           f"(--{missing.replace('_', '-')})")
    pairs = read_parallel(d.train_src, d.train_tgt)
    valid = read_parallel(d.valid_src, d.valid_tgt) if d.valid_src and d.valid_tgt else []
    if resume_dir is not None and (Path(resume_dir) / checkpoint.CONFIG).is_file():
        model, src_tok, tgt_tok = load_translator(resume_dir)
        return TranslationTask(run, pairs, valid, src_tok, tgt_tok, model)
    return TranslationTask(run, pairs, valid)


# -- using a saved model ------------------------------------------------------------------------------


def load_translator(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, Tokenizer, Tokenizer]:
    """(model in eval mode, source tokenizer, target tokenizer) from a model directory."""
    path = Path(path)
    data = checkpoint.read_config(path)
    if data.get("model_type") != "transformer":
        raise TformerError(f"{path}: model_type {data.get('model_type')!r} is not an encoder-decoder transformer")
    model = Transformer(checkpoint.from_saved(TransformerConfig, data, str(path / checkpoint.CONFIG)))
    checkpoint.load_weights(path, model)
    src_tok = Tokenizer.load(path / checkpoint.TOKENIZER)
    tgt_path = path / checkpoint.TARGET_TOKENIZER
    tgt_tok = Tokenizer.load(tgt_path) if tgt_path.is_file() else src_tok
    c = model.config
    for file, tok, size in ((checkpoint.TOKENIZER, src_tok, c.src_vocab_size),
                            (tgt_path.name if tgt_path.is_file() else checkpoint.TOKENIZER, tgt_tok, c.tgt_vocab_size)):
        if tok.vocab_size != size:  # another model's tokenizer: every id would mean another word
            raise TformerError(f"{path / file}: {tok.vocab_size} tokens, but the model was trained with {size}; "
                               "this is not the model's own tokenizer")
    return model.to(device).eval(), src_tok, tgt_tok


def translate_lines(model: Transformer, src_tok: Tokenizer, tgt_tok: Tokenizer, lines: Sequence[str],
                    beam_size: int = 1, max_tokens: int = 4000, length_penalty: float = 1.0,
                    max_len: int | None = None) -> list[str]:
    """Translate sentences in length-sorted batches of about max_tokens source tokens; output in input order."""
    lines = check_texts(lines, "lines")
    if not isinstance(beam_size, int) or beam_size < 1:
        raise TformerError(f"beam size must be a positive integer (1: greedy), not {beam_size!r}")
    if beam_size > tgt_tok.vocab_size:  # beam search keeps beam_size distinct tokens after each step
        raise TformerError(f"beam size {beam_size} (--beam) is more than the target vocabulary's "
                           f"{tgt_tok.vocab_size} tokens")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    c = model.config
    ids = src_tok.encode_batch(list(lines))
    if n_cut := sum(len(s) > c.max_len for s in ids):  # as the encoders' embed does: cut, and said once
        warnings.warn(f"{n_cut} of {len(ids)} sentence(s) were longer than the model's {c.max_len} source "
                      f"positions and were cut to them", UserWarning, stacklevel=2)
        ids = [s[: c.max_len] for s in ids]
    out: list[str] = [""] * len(ids)
    # An empty (or blank) line has nothing to translate: it stays empty, keeping the lines aligned. A blank line
    # is not always empty in tokens (a space can be the word-start symbol), so the text decides.
    order = sorted((i for i in range(len(ids)) if ids[i] and lines[i].strip()), key=lambda i: len(ids[i]))
    start = 0
    while start < len(order):
        # Grow the batch while its padded size (sentences x longest) stays within max_tokens.
        end, longest = start, 1
        while end < len(order) and max(longest, len(ids[order[end]])) * (end - start + 1) <= max_tokens:
            longest = max(longest, len(ids[order[end]]))
            end += 1
        idx = order[start : max(end, start + 1)]
        src = pad([ids[i] for i in idx], c.pad_id).to(device)
        limit = max_len or min(c.max_len - 1, src.size(1) * 2 + 10)
        for i, toks in zip(idx, translate_ids(model, src, beam_size, limit, length_penalty)):
            out[i] = tgt_tok.decode(toks)
        start += len(idx)
    model.train(was_training)
    return out


def evaluate_files(model_dir: str | Path, src_path: str | Path, ref_path: str | Path, beam_size: int = 4,
                   device: str = "cpu", max_tokens: int = 4000) -> dict:
    """BLEU and chrF of the model's translations of src_path against ref_path, and the speed."""
    pairs = read_parallel(src_path, ref_path)
    model, src_tok, tgt_tok = load_translator(model_dir, device)
    start = time.perf_counter()
    hyps = translate_lines(model, src_tok, tgt_tok, [s for s, _ in pairs], beam_size, max_tokens)
    seconds = time.perf_counter() - start
    refs = [r for _, r in pairs]
    return {"bleu": bleu(hyps, refs), "chrf": chrf(hyps, refs), "sentences": len(pairs),
            "seconds": seconds, "sentences_per_s": len(pairs) / max(seconds, 1e-9), "hypotheses": hyps}
