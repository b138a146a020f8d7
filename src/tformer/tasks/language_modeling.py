"""Language modelling: text -> char or byte-level BPE tokens -> GPT -> next-token cross-entropy.

`LanguageModelingTask` wires the job for the trainer; `load_lm` opens a saved model directory (tformer's
own, or a Hugging Face GPT-2 directory) for generation and scoring.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from tformer.config import RunConfig, check_section, refuse_decided_options
from tformer.data.text import BlockSampler, encode_corpus, read_corpus, sequential_blocks, split_paths, split_train_valid
from tformer.errors import TformerError
from tformer.models.gpt import GPT, GPTConfig
from tformer.registry import get_config, require_family
from tformer.tokenization import Tokenizer, load_gpt2_tokenizer, train_lm_tokenizer, warn_if_vocab_grew
from tformer.training import checkpoint
from tformer.training.losses import label_smoothed_cross_entropy

# What a language model trains with unless the run says otherwise (nanoGPT's and GPT-2/3's practice):
# AdamW with decay 0.1 on matrices only, beta2 0.99 for small batches, warmup then cosine to lr/10.
LM_TRAIN_DEFAULTS = dict(schedule="cosine", lr=1e-3, min_lr=1e-4, warmup_steps=100, adam_beta2=0.99,
                         adam_eps=1e-8, weight_decay=0.1, clip_norm=1.0, label_smoothing=0.0, batch_size=12,
                         max_steps=2000, eval_every=250, save_every=500, log_every=50)


def lm_run_defaults() -> RunConfig:
    run = RunConfig(model={"preset": "gpt-char"})
    for key, value in LM_TRAIN_DEFAULTS.items():
        setattr(run.train, key, value)
    run.data.tokenizer = "char"
    return run


def build_tokenizer(run: RunConfig, texts: list[str]) -> Tokenizer:
    d = run.data
    if d.tokenizer_file:
        return load_gpt2_tokenizer(d.tokenizer_file)
    if d.tokenizer == "wordpiece":
        raise TformerError("data.tokenizer=wordpiece is for BERT-family encoders; a GPT takes char or byte_bpe")
    kind = "byte_bpe" if d.tokenizer in ("bpe", "byte_bpe") else "char"
    tokenizer = train_lm_tokenizer(texts, kind, d.vocab_size)
    if kind == "byte_bpe":  # a character vocabulary is the text's characters, whatever vocab_size says
        warn_if_vocab_grew(tokenizer, d.vocab_size)
    return tokenizer


class LanguageModelingTask:
    selection_metric = ("loss", "min")  # what train.early_stopping watches

    def __init__(self, run: RunConfig, train_texts: list[str], valid_texts: list[str] | None = None,
                 tokenizer: Tokenizer | None = None, model: GPT | None = None, names: list[str] | None = None,
                 valid_names: list[str] | None = None):
        check_section(run.data)  # values set from Python meet a file's checks
        self.run = run
        d, t = run.data, run.train
        if d.block_size < 1:
            raise TformerError(f"data.block_size must be at least 1, not {d.block_size}")
        if t.batch_size < 1:
            raise TformerError(f"train.batch_size must be at least 1, not {t.batch_size}")
        self.tokenizer = tokenizer or build_tokenizer(run, train_texts)
        ids = encode_corpus(train_texts, self.tokenizer, names)
        if valid_texts:
            self.train_ids, self.valid_ids = ids, encode_corpus(valid_texts, self.tokenizer, valid_names)
        else:
            self.train_ids, self.valid_ids = split_train_valid(ids, d.valid_fraction)
        if len(self.valid_ids) < 2 and (valid_texts or d.valid_fraction > 0):
            # One token predicts nothing: validation would be skipped, and the run would report no loss for it.
            where = ", ".join(valid_names or ["the validation text"]) if valid_texts else \
                f"data.valid_fraction={d.valid_fraction} of the text"
            warnings.warn(f"{where}: {len(self.valid_ids)} token(s), too few to validate on (2 at least); "
                          "this run has no validation loss", stacklevel=2)
        self.sampler = BlockSampler(self.train_ids, d.block_size, t.batch_size)
        if model is None:
            options = {k: v for k, v in run.model.items() if k != "preset"}
            refuse_decided_options(options, {"vocab_size": self.tokenizer.vocab_size, "eos_id": self.tokenizer.eos_id},
                                   "a language model takes it from its tokenizer (data.vocab_size sizes a BPE one)")
            # The window is the training block unless the run sets it: positions never trained are noise.
            options.setdefault("max_len", d.block_size)
            try:
                preset = run.model.get("preset", "gpt-char")
                require_family(preset, "gpt", "language modelling")
                config = get_config(preset, **options)
                config = replace(config, vocab_size=self.tokenizer.vocab_size, eos_id=self.tokenizer.eos_id)
            except (TypeError, ValueError) as exc:
                raise TformerError(f"model options: {exc}") from None
            torch.manual_seed(t.seed)
            model = GPT(config)
        if d.block_size > model.config.max_len:
            raise TformerError(f"data.block_size={d.block_size} exceeds the model's window of "
                               f"{model.config.max_len} positions")
        self.model = model

    # -- what the trainer calls -------------------------------------------------------------------------

    def train_batches(self, epoch: int, seed: int) -> list[Tensor]:
        return self.sampler.epoch(epoch, seed)

    def collate(self, starts: Tensor, device: torch.device) -> dict[str, Tensor]:
        x, y = self.sampler.gather(starts)
        return {"x": x.to(device, non_blocking=True), "y": y.to(device, non_blocking=True)}

    def count_tokens(self, batch: dict[str, Tensor]) -> int:
        return batch["y"].numel()

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        logits = model(batch["x"]).logits
        loss, nll, n = label_smoothed_cross_entropy(logits, batch["y"], self.run.train.label_smoothing)
        return loss, {"nll": nll, "tokens": n}

    def flops_per_token(self) -> float:
        return self.model.flops_per_token(self.run.data.block_size)

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        if len(self.valid_ids) < 2:
            return {}
        x, y = sequential_blocks(self.valid_ids, min(self.run.data.block_size, len(self.valid_ids) - 1))
        device = next(model.parameters()).device
        bs = self.run.train.batch_size * 4
        limit = self.run.train.eval_batches
        nll, count = 0.0, 0
        for i, start in enumerate(range(0, len(x), bs)):
            if limit and i >= limit:
                break
            logits = model(x[start : start + bs].to(device)).logits
            _, batch_nll, n = label_smoothed_cross_entropy(logits, y[start : start + bs].to(device), 0.0)
            nll, count = nll + float(batch_nll), count + int(n)
        loss = nll / max(count, 1)
        return {"loss": loss, "ppl": math.exp(min(loss, 50.0))}

    def save(self, path: Path, model: nn.Module, trainer_state: dict | None = None,
             optimizer_state: dict | None = None) -> None:
        config = {**model.config.to_dict(), "tformer_run": self.run.to_dict()}
        checkpoint.save_model(path, model, config, self.tokenizer, None, trainer_state, optimizer_state)


def build_lm_task(run: RunConfig, resume_dir: str | Path | None = None) -> LanguageModelingTask:
    """Read the text named by run.data; when resuming, reuse the saved tokenizer and model shape."""
    paths, valid_paths = split_paths(run.data.train_text), split_paths(run.data.valid_text)
    texts = read_corpus(paths)
    valid = read_corpus(valid_paths) if valid_paths else None
    if resume_dir is not None and (Path(resume_dir) / checkpoint.CONFIG).is_file():
        model, tokenizer = load_lm(resume_dir)
        return LanguageModelingTask(run, texts, valid, tokenizer, model.train(), names=paths,
                                    valid_names=valid_paths)
    return LanguageModelingTask(run, texts, valid, names=paths, valid_names=valid_paths)


# -- using a saved model ------------------------------------------------------------------------------


def load_lm(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer]:
    """(model in eval mode, tokenizer) from a tformer GPT directory or a Hugging Face GPT-2 directory."""
    path = Path(path)
    data = checkpoint.read_config(path)
    kind = data.get("model_type")
    if kind == "gpt2":
        from tformer.interop.gpt2 import load_gpt2

        model, tokenizer = load_gpt2(path, device), load_gpt2_tokenizer(path)
        check_vocabularies_agree(path, tokenizer, model.config.vocab_size)
        return model, tokenizer
    if kind != "gpt":
        raise TformerError(f"{path}: model_type {kind!r} is not a language model (expected gpt or gpt2)")
    model = GPT(checkpoint.from_saved(GPTConfig, data, str(path / checkpoint.CONFIG)))
    checkpoint.load_weights(path, model)
    tokenizer = Tokenizer.load(path / checkpoint.TOKENIZER, required=())
    check_vocabularies_agree(path, tokenizer, model.config.vocab_size)
    return model.to(device).eval(), tokenizer


def check_vocabularies_agree(path: Path, tokenizer: Tokenizer, vocab_size: int) -> None:
    """A tokenizer with more tokens than the model has rows is another model's: its ids would index past the
    embeddings. Fewer is fine (GPT-2 vocabularies are often padded up to a multiple of 64)."""
    if tokenizer.vocab_size > vocab_size:
        raise TformerError(f"{path / checkpoint.TOKENIZER} has {tokenizer.vocab_size} tokens, more than the "
                           f"vocab_size={vocab_size} of {path / checkpoint.CONFIG}: the two come from different "
                           "models")


def parameter_count_line(model: GPT) -> str:
    n = model.num_parameters()
    return f"{n:,} parameters ({n / 1e6:.2f}M; {model.num_parameters(exclude_positions=True):,} without positions)"


__all__ = ["LanguageModelingTask", "build_lm_task", "load_lm", "lm_run_defaults", "LM_TRAIN_DEFAULTS"]
