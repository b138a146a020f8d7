"""Scoring text with a decoder-only language model: log-likelihood, perplexity, multiple choice.

A language model factorises P(u_1 .. u_n) = prod_i P(u_i | u_1 .. u_{i-1}) (Radford et al. 2018, eq. 1), so
every score here is a sum of next-token log-probabilities, in nats:

    token_logprobs       log p(u_i | u_<i) for each scored token
    score_text(s)        sum, mean negative log-likelihood, perplexity = exp(mean NLL), bits per token
    continuation_logprob log P(continuation | context)
    choose               multiple choice by the likelihood of each candidate completion (GPT-3, section 2.4)

Choices made here, and where they depart from other evaluations:

* The first token. Without context the model has nothing to predict u_1 from, so it is not scored (a text
  of n tokens scores n - 1). A model whose config names an `eos_id` was trained on documents separated by
  that token (GPT-2's <|endoftext|>), so the text is read as if it followed one: a leading eos is fed as
  context and u_1 is scored too (n tokens score n). The eos itself is never scored.
* Texts longer than the context window (config.max_len) are read in overlapping windows `stride` tokens
  apart (the "strided" perplexity evaluation): every token is scored exactly once, in the first window that
  reaches it, and so sees at least max_len - stride tokens of context (all of them near the start).
  stride=1 gives every token the full window (slowest, lowest perplexity); the default is max_len // 2.
  When the text is slid along, the leading eos falls out of the window like any other token.
* Sequences that fit the window are batched right-padded: causal attention never looks right, so padding
  needs neither a mask nor special positions and each row's scores equal those of the row alone (up to
  floating-point summation order).
* Token counts are in the model's tokens, so perplexities of models with different tokenizers are not
  comparable (GPT-2 reports per-word and per-byte figures for that reason); bits_per_token is
  mean NLL / ln 2.

Everything runs under torch.inference_mode() with dropout off; the model's train/eval mode is restored.

Shapes: B rows, T positions, V vocabulary, N scored tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from tformer.errors import TformerError
from tformer.models.validation import check_texts

_BATCH_ROWS = 16  # sequences per forward pass when batching


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Dropout off and no autograd inside; the model's previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _prefix(model: nn.Module) -> list[int]:
    """[eos] for a model trained on eos-separated documents, else nothing (see the module docstring)."""
    eos = model.config.eos_id
    return [eos] if eos is not None else []


def _check_ids(model: nn.Module, ids: Sequence[int]) -> list[int]:
    ids = [int(i) for i in ids]
    vocab = model.config.vocab_size
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise TformerError(f"token id {bad[0]} is outside the model's vocabulary of {vocab} "
                           "(was the text encoded with this model's tokenizer?)")
    return ids


def _rows_logprobs(model: nn.Module, rows: list[list[int]], starts: list[int]) -> list[Tensor]:
    """For each row (at most max_len ids), log p(row[j] | row[:j]) for j in starts[r] .. len(row) - 1.

    Rows are right-padded and run _BATCH_ROWS at a time; only the positions that predict a scored token are
    projected to the vocabulary (`keep`). Returns float32 CPU tensors, one per row.
    """
    device = _device(model)
    out: list[Tensor] = []
    for lo in range(0, len(rows), _BATCH_ROWS):
        chunk, chunk_starts = rows[lo : lo + _BATCH_ROWS], starts[lo : lo + _BATCH_ROWS]
        t = max(len(r) for r in chunk)
        ids = torch.zeros(len(chunk), t, dtype=torch.long)  # (B, T); padding id 0 is never read
        keep = torch.zeros(len(chunk), t, dtype=torch.bool)  # (B, T) True where the logits predict a target
        targets = []
        for b, (row, s) in enumerate(zip(chunk, chunk_starts)):
            ids[b, : len(row)] = torch.tensor(row)
            keep[b, s - 1 : len(row) - 1] = True  # position j - 1 predicts row[j]
            targets.extend(row[s:])
        logits = model(ids.to(device), keep=keep.to(device)).logits  # (N, V), rows in order
        logp = torch.log_softmax(logits.float(), dim=-1)
        picked = logp.gather(1, torch.tensor(targets, device=device)[:, None])[:, 0].cpu()  # (N,)
        out.extend(picked.split([len(r) - s for r, s in zip(chunk, chunk_starts)]))
    return out


def _windows(length: int, first: int, max_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, start) windows [begin, end) over a sequence, scoring positions start .. end - 1.

    Every position from `first` on is scored once; the first position a window scores has at least
    min(position, max_len - stride) tokens of context before it, and every earlier token when the sequence
    fits in the window (a window never ends before the sequence for want of starting earlier).
    """
    out, pos = [], first
    while pos < length:
        begin = max(0, min(pos - (max_len - stride), length - max_len))
        end = min(length, begin + max_len)
        out.append((begin, end, pos))
        pos = end
    return out


def token_logprobs(model: nn.Module, ids: Sequence[int], context_len: int = 0, stride: int | None = None) -> Tensor:
    """log p(ids[i] | ids[:i]) for i >= max(1, context_len), as a float32 CPU tensor.

    With a model eos_id the text is read after a leading eos, so ids[0] can be scored as well: the result
    then covers i >= context_len. ids[:context_len] are context only (a prompt). Sequences longer than the
    context window are scored in windows `stride` tokens apart (default max_len // 2): each token once,
    with at least max_len - stride tokens of context.
    """
    max_len = model.config.max_len
    stride = max_len // 2 if stride is None else stride
    if not 1 <= stride < max_len:
        raise TformerError(f"stride must be between 1 and max_len - 1 = {max_len - 1}, not {stride}")
    ids = _check_ids(model, ids)
    if not 0 <= context_len <= len(ids):
        raise TformerError(f"context_len must be between 0 and the {len(ids)} tokens given, not {context_len}")
    prefix = _prefix(model)
    seq = prefix + ids
    first = max(1, len(prefix) + context_len)  # first scored position in seq
    windows = _windows(len(seq), first, max_len, stride)
    if not windows:
        return torch.zeros(0)
    with _evaluating(model):
        parts = _rows_logprobs(model, [seq[b:e] for b, e, _ in windows], [s - b for b, _, s in windows])
    return torch.cat(parts)


def _summary(logprobs: Tensor) -> dict:
    n = logprobs.numel()
    total = float(logprobs.double().sum())
    mean_nll = -total / n
    return {"tokens": n, "log_likelihood": total, "mean_nll": mean_nll, "perplexity": math.exp(mean_nll),
            "bits_per_token": mean_nll / math.log(2)}


def score_text(model: nn.Module, tokenizer, text: str, stride: int | None = None) -> dict:
    """{tokens, log_likelihood, mean_nll, perplexity, bits_per_token} of one text (nats; tokens = scored).

    tokens is len(encode(text)) for a model with an eos_id, one less otherwise (the first token has no
    context); perplexity = exp(mean_nll), bits_per_token = mean_nll / ln 2.
    """
    return score_texts(model, tokenizer, [text], stride=stride)[0]


def score_texts(model: nn.Module, tokenizer, texts: Sequence[str], stride: int | None = None,
                names: Sequence[str] | None = None) -> list[dict]:
    """score_text for each text, each scored on its own (no context carried between texts).

    Texts that fit the context window run together, right-padded, in batches; longer ones are slid along
    one by one (see token_logprobs). A text with no token to score (empty, or a single token without eos)
    is an error naming it: by names[k] when given (a file and line, say), else by its index.
    """
    names = names or [f"text {k}" for k in range(len(texts))]
    encoded = []
    for name, text in zip(names, texts):
        tokenizer.check_chars(text, name)
        encoded.append(_check_ids(model, tokenizer.encode(text)))
    prefix = _prefix(model)
    first = max(1, len(prefix))
    for name, ids in zip(names, encoded):
        if len(prefix) + len(ids) <= first:
            why = "an empty text" if not ids else "the first token has no context when the model has no eos_id"
            raise TformerError(f"{name}: {len(ids)} token(s), nothing to score ({why})")
    short = [k for k, ids in enumerate(encoded) if len(prefix) + len(ids) <= model.config.max_len]
    logprobs: dict[int, Tensor] = {}
    if short:
        with _evaluating(model):
            scored = _rows_logprobs(model, [prefix + encoded[k] for k in short], [first] * len(short))
        logprobs.update(zip(short, scored))
    for k, ids in enumerate(encoded):
        if k not in logprobs:
            logprobs[k] = token_logprobs(model, ids, stride=stride)
    return [_summary(logprobs[k]) for k in range(len(encoded))]


def _encode_pair(model: nn.Module, tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    ctx = _check_ids(model, tokenizer.encode(context))
    cont = _check_ids(model, tokenizer.encode(continuation))
    if not cont:
        raise TformerError(f"continuation {continuation!r} encodes to no tokens")
    if not ctx and not _prefix(model):
        raise TformerError("an empty context leaves the continuation's first token unconditioned; "
                           "give a context, or use a model with an eos_id")
    return ctx, cont


def continuation_logprob(model: nn.Module, tokenizer, context: str, continuation: str) -> tuple[float, int]:
    """(log P(continuation | context) in nats, number of continuation tokens).

    Context and continuation are encoded separately and their ids concatenated, so exactly the
    continuation's own tokens are scored, whatever the tokenizer would merge across the boundary. Encoding
    them jointly can merge the last context characters with the first continuation characters into one
    token, which would then be half prompt, half answer. With a BPE that attaches spaces to the following
    word (GPT-2), put the space at the start of the continuation ("Answer:" + " Paris"), not at the end of
    the context: separate encoding then yields the same ids as the joint text would.
    """
    ctx, cont = _encode_pair(model, tokenizer, context, continuation)
    logprobs = token_logprobs(model, ctx + cont, context_len=len(ctx))
    return float(logprobs.double().sum()), len(cont)


def choose(model: nn.Module, tokenizer, prompt: str, choices: Sequence[str], normalize: str = "mean") -> dict:
    """Multiple choice: the candidate completion of `prompt` the model finds most likely.

    As GPT-3's evaluation (Brown et al. 2020, section 2.4) compares "the LM likelihood of each completion":
    normalize="sum" ranks by log P(choice | prompt), "mean" by that divided by the choice's token count
    (so longer candidates are not penalised for their length). Returns {index, choice, scores} with one
    score per choice; ties go to the first. When every prompt + choice fits the context window, all
    candidates run in one right-padded batch; otherwise each is scored on its own with sliding windows.
    Prompts should not end in a space; let the choices begin with one (see continuation_logprob).
    """
    if normalize not in ("sum", "mean"):
        raise TformerError(f"normalize must be 'sum' or 'mean', not {normalize!r}")
    choices = check_texts(choices, "choices")
    if not choices:
        raise TformerError("choose needs at least one choice")
    pairs = [_encode_pair(model, tokenizer, prompt, c) for c in choices]
    prefix = _prefix(model)
    rows = [prefix + ctx + cont for ctx, cont in pairs]
    if max(len(r) for r in rows) <= model.config.max_len:
        with _evaluating(model):
            parts = _rows_logprobs(model, rows, [len(prefix) + len(ctx) for ctx, _ in pairs])
    else:
        parts = [token_logprobs(model, ctx + cont, context_len=len(ctx)) for ctx, cont in pairs]
    sums = [float(p.double().sum()) for p in parts]
    scores = sums if normalize == "sum" else [s / len(cont) for s, (_, cont) in zip(sums, pairs)]
    best = max(range(len(scores)), key=scores.__getitem__)  # the first of equals
    return {"index": best, "choice": choices[best], "scores": scores}
