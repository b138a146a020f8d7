"""Text generation with decoder-only language models: greedy decoding and sampling.

The lectures' plain loop: feed the prompt, take a next token from the logits of the last position, append
it, feed the whole sequence again, repeat. `use_cache=False` is exactly that. The default feeds the prompt
once (prefill) and then only the newest token, reading earlier keys/values from the KV cache: the same
tokens for O(1) instead of O(t) new work per step.

The next token comes from small pure functions on (B, V) logits, applied in this order:
    repetition    every token already in the row (prompt included) made less likely: CTRL's penalty
                  (Keskar et al. 2019, sec. 4.1), as transformers' `repetition_penalty` applies it
    n-gram ban    no n-gram may appear twice in a row's sequence (`no_repeat_ngram_size`; Paulus et al. 2018)
    temperature   logits / t: t < 1 sharpens the distribution, t > 1 flattens it (t = 0 means greedy)
    top-k         keep the k most probable tokens (Fan et al. 2018)
    top-p         keep the smallest set of most probable tokens whose probability reaches p: the
                  "nucleus" (Holtzman et al. 2020, The Curious Case of Neural Text Degeneration, sec. 3.1)

Batches of prompts of different lengths are padded on the left, so that every row's next token is in the
last column; an attention mask hides the padding and per-row positions start at each row's first real
token, so a row generates exactly what it would generate alone.

Past the context window (model.config.max_len) generation continues with a sliding window, like nanoGPT's
crop: once the sequence is longer than max_len, each step runs the model without a cache on its last max_len
tokens (positions 0..max_len-1 again), which costs a full forward pass per step.

Shapes: B batch, P padded prompt length, N new tokens, V vocabulary.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable

import torch
from torch import Tensor

from tformer.errors import TformerError
from tformer.models.validation import check_texts
from tformer.nn.linear import transposed_weights

# On an accelerator, asking "are all rows done?" waits for the device; ask only every few steps there
# (a few extra tokens may be computed after the last row ended; they are dropped).
_DEVICE_CHECK_EVERY = 8
# Stop strings are found by decoding each row's continuation: every few steps is enough.
_STOP_STRING_CHECK_EVERY = 4


# -- logits processors: (B, V) -> (B, V) ---------------------------------------------------------------


def apply_temperature(logits: Tensor, t: float) -> Tensor:
    """logits / t. Temperature 0 (greedy) is `next_token`'s business, not a division by zero."""
    if not t > 0:
        raise TformerError(f"temperature must be positive here (0 means greedy decoding), not {t}")
    return logits if t == 1.0 else logits / t


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep exactly the k largest logits of each row (ties broken by topk), set the rest to -inf; k <= 0: off."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    values, index = logits.topk(k, dim=-1)  # (B, k)
    return torch.full_like(logits, float("-inf")).scatter_(-1, index, values)


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering: keep the smallest set of most probable tokens whose probabilities sum to at least p,
    and always the most probable one; set the rest to -inf. p >= 1: off."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability of the more probable tokens
    drop = before >= p  # the set already reached p without this token
    drop[..., 0] = False  # at least one token survives, whatever p is
    drop = torch.empty_like(drop).scatter_(-1, order, drop)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def penalize_repetition(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """The logits of tokens already seen (seen: (B, V) bool) divided by `penalty` where positive and multiplied
    by it where negative, so that penalty > 1 makes every repeat less likely whatever its logit's sign (a plain
    division would make a negative logit more likely); 1: off, below 1 favours repeats."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


class NgramBan:
    """The tokens that would complete an n-gram already in one row's sequence.

    An index from each (n-1)-gram seen to the tokens that followed it, grown one token at a time: O(n) per
    step, where scanning the sequence would be O(length)."""

    def __init__(self, n: int, tokens: list[int]):
        if n < 1:
            raise TformerError(f"no_repeat_ngram_size must be at least 1 (0: off), not {n}")
        self.n = n
        self.tokens: list[int] = []
        self.followers: dict[tuple[int, ...], set[int]] = {}
        for t in tokens:
            self.append(t)

    def append(self, token: int) -> None:
        self.tokens.append(token)
        if len(self.tokens) >= self.n:
            prefix = tuple(self.tokens[len(self.tokens) - self.n : -1])
            self.followers.setdefault(prefix, set()).add(token)

    def banned(self) -> list[int]:
        """The tokens not allowed next: those that followed the last n-1 tokens before."""
        if len(self.tokens) < self.n - 1:
            return []
        prefix = tuple(self.tokens[len(self.tokens) - self.n + 1 :]) if self.n > 1 else ()
        return sorted(self.followers.get(prefix, ()))


def next_token(logits: Tensor, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Token ids (B,) from next-token logits (B, V): the argmax (greedy), or a sample from the distribution
    left by temperature, top-k and top-p. Temperature 0 means greedy, and so does one too small for float32
    (below its smallest normal number, where logits / t would divide by zero: the distribution is the argmax
    to float precision anyway)."""
    if not do_sample or temperature < torch.finfo(torch.float32).tiny:
        return logits.argmax(dim=-1)
    logits = logits.float()
    # A logit of +inf (a repetition penalty far below 1 can make one) is a certainty: such tokens share all the
    # probability. Then the largest logit is moved to 0, so that no temperature, however small, overflows.
    infinite = logits == float("inf")
    logits = torch.where(infinite.any(dim=-1, keepdim=True), torch.where(infinite, 0.0, float("-inf")), logits)
    logits = apply_temperature(logits - logits.amax(dim=-1, keepdim=True), temperature)
    index = None
    if 0 < top_k < logits.size(-1):
        # top_k_filter, with the -inf columns left out: top-p then sorts k values, not V.
        logits, index = logits.topk(top_k, dim=-1)  # (B, k) each
    logits = top_p_filter(logits, top_p)
    choice = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)  # (B, 1)
    if index is not None:
        choice = index.gather(-1, choice)
    return choice.squeeze(-1)


# -- generation ----------------------------------------------------------------------------------------


def generate(model, prompts: list[list[int]], max_new_tokens: int, *, do_sample: bool = False,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
             ignore_eos: bool = False, seed: int | None = None, use_cache: bool = True,
             stop_ids: list[list[int]] | None = None, repetition_penalty: float = 1.0,
             no_repeat_ngram_size: int = 0) -> list[list[int]]:
    """The new tokens (at most max_new_tokens) that follow each prompt.

    prompts: a list of token-id lists (lengths may differ), or a (B, T) tensor of B prompts of T tokens each.
    A row ends at eos_id (default: model.config.eos_id) or at the end of a sequence in stop_ids; neither the
    eos token nor the stop sequence is returned, and stop sequences are only looked for in the new tokens.
    Nothing else ends a row: a padding token the model writes is a token like any other (transformers'
    generate only uses pad_token_id to fill rows that ended). ignore_eos=True (vLLM's option of that name): rows do not end at the eos token, so every row runs to
    max_new_tokens (or a stop sequence) and any eos token the model writes stays in its output; the model may
    still write it, where transformers' min_new_tokens would forbid it instead. An empty prompt starts from
    the eos token (with ignore_eos too), as GPT-2 starts from <|endoftext|>. `seed` makes sampling
    reproducible (a generator of its own; the global RNG is left alone). repetition_penalty (> 0; 1: off) and
    no_repeat_ngram_size (0: off) look at the whole row, prompt included, as transformers' options of those
    names do; they apply to greedy decoding and to sampling alike.
    """
    return _generate(model, prompts, max_new_tokens, do_sample=do_sample, temperature=temperature,
                     top_k=top_k, top_p=top_p, eos_id=eos_id, ignore_eos=ignore_eos, seed=seed,
                     use_cache=use_cache, stop_ids=stop_ids, repetition_penalty=repetition_penalty,
                     no_repeat_ngram_size=no_repeat_ngram_size)


def generate_text(model, tokenizer, prompts: list[str], max_new_tokens: int, *, stop: list[str] | None = None,
                  streamer: Callable[[str], object] | None = None, **options) -> list[str]:
    """The generated continuation of each prompt, cut before the first of the `stop` strings.

    A stop string may span several tokens: each row's continuation is decoded every few steps and the row
    ends once it holds a stop string. `options` are those of `generate`; eos_id defaults to the model's,
    else the tokenizer's. With ignore_eos=True the text goes on past an end-of-text token, which is left out
    of it (as decoding leaves out special tokens).

    streamer (one prompt only): called with each new piece of the continuation as soon as it is final, so a
    reader sees the text grow; the pieces joined are exactly the returned text. A piece is held back while it
    could still change: the start of a stop string, or a character whose bytes have not all arrived yet (byte-
    level BPE decodes an incomplete UTF-8 sequence as U+FFFD).
    """
    if options.get("eos_id") is None:
        eos = getattr(model.config, "eos_id", None)
        options["eos_id"] = eos if eos is not None else tokenizer.eos_id
    ignore_eos = options.get("ignore_eos", False)
    ends = None if ignore_eos else options["eos_id"]  # the token that ends a row, if any

    def decode(row: list[int]) -> str:
        if ignore_eos:  # the tokenizer's decode stops at its end-of-text token: leave that token out instead
            row = [t for t in row if t != tokenizer.eos_id]
        return tokenizer.decode(row)
    prompts = check_texts(prompts, "prompts")
    if isinstance(stop, str):
        stop = [stop]
    stop = [s for s in (stop or []) if s]
    ids = [tokenizer.encode(p) for p in prompts]
    if streamer is not None and not callable(streamer):
        raise TformerError(f"streamer must be a function taking each new piece of text, not {type(streamer).__name__}")
    if streamer is not None and len(prompts) != 1:
        raise TformerError(f"a streamer follows one prompt, not {len(prompts)}")
    shown = [""]  # what the streamer has been given so far

    def rows_done(new_ids: Tensor, finished: Tensor) -> Tensor:
        done = finished.tolist()
        for i, row in enumerate(new_ids.tolist()):
            if done[i] and streamer is None:
                continue
            text = decode(_trim(row, ends, options.get("stop_ids") or []))
            cut = _cut(text, stop)
            done[i] = done[i] or cut is not None
            if streamer is not None:
                final = text[:cut] if cut is not None else _settled(text, stop)
                if len(final) > len(shown[0]) and final.startswith(shown[0]):
                    streamer(final[len(shown[0]) :])
                    shown[0] = final
        return torch.tensor(done, device=finished.device)

    watch = bool(stop) or streamer is not None
    outs = _generate(model, ids, max_new_tokens, row_done=rows_done if watch else None,
                     row_done_every=1 if streamer is not None else None, **options)
    texts = [decode(row) for row in outs]
    texts = [t[: _cut(t, stop)] for t in texts]
    if streamer is not None and len(texts[0]) > len(shown[0]) and texts[0].startswith(shown[0]):
        streamer(texts[0][len(shown[0]) :])  # the rest: the last steps, and anything held back at the end
    return texts


def _settled(text: str, stop: list[str]) -> str:
    """text without the tail that may still change: an incomplete character (U+FFFD at the end) or the
    beginning of a stop string."""
    text = text.rstrip("\ufffd")
    hold = max((k for s in stop for k in range(1, min(len(s), len(text) + 1)) if text.endswith(s[:k])), default=0)
    return text[: len(text) - hold]


def check_generation_fits(model, rows: int, prompt_len: int, max_new_tokens: int) -> None:
    """A TformerError before anything is allocated when a generation's buffers would not fit in memory.

    Per row and column the token buffer holds an id, a position (int64 each) and a mask flag; the key/value
    cache holds 2 x n_layers x d_model values per row and position, up to the context window. A typo such as
    --num-samples 10000000 would otherwise swap the machine to a halt, or fail deep inside torch.
    """
    cfg = model.config
    param = next(iter(model.parameters()), None)
    if param is not None and param.device.type == "cuda":
        limit = torch.cuda.get_device_properties(param.device).total_memory
    else:
        try:
            limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # no sysconf (Windows): nothing to compare with
            return
    columns = prompt_len + max_new_tokens
    itemsize = param.element_size() if param is not None else 4
    width = 2 * getattr(cfg, "n_layers", 0) * getattr(cfg, "d_model", 0) * itemsize  # bytes per cached position
    needed = rows * columns * 17 + rows * min(columns, cfg.max_len) * width
    if needed > limit:
        raise TformerError(f"{max_new_tokens} new tokens for {rows} sequence(s) need about {needed / 2**30:,.0f} GiB "
                           f"for their tokens and key/value cache, more than the {limit / 2**30:,.0f} GiB of memory "
                           "here; ask for fewer new tokens or fewer sequences")


def _cut(text: str, stop: list[str]) -> int | None:
    """Where the earliest stop string starts in text; None without one."""
    found = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(found) if found else None


@torch.inference_mode()
@transposed_weights()
def _generate(model, prompts: list[list[int]], max_new_tokens: int, *, do_sample: bool = False,
              temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
              ignore_eos: bool = False, seed: int | None = None, use_cache: bool = True,
              stop_ids: list[list[int]] | None = None, repetition_penalty: float = 1.0,
              no_repeat_ngram_size: int = 0, row_done: Callable[[Tensor, Tensor], Tensor] | None = None,
              row_done_every: int | None = None) -> list[list[int]]:
    """`generate`, plus row_done(new ids (B, n), finished (B,)) -> finished, asked every few steps (every
    row_done_every steps when given)."""
    cfg = model.config
    window = cfg.max_len
    eos = eos_id if eos_id is not None else getattr(cfg, "eos_id", None)
    prompts = _check(prompts, max_new_tokens, cfg.vocab_size, window, eos, temperature, top_k, top_p)
    if not isinstance(ignore_eos, bool):
        raise TformerError(f"ignore_eos must be True or False, not {ignore_eos!r}")
    if ignore_eos:
        eos = None  # it still started the empty prompts above; it ends no row
    _check_repetition_options(repetition_penalty, no_repeat_ngram_size)
    if not prompts or max_new_tokens == 0:
        return [[] for _ in prompts]
    device = next(iter(model.parameters()), torch.empty(0)).device
    if seed is not None and (not isinstance(seed, numbers.Integral) or not -2**63 <= seed < 2**64):
        raise TformerError(f"seed must be an integer in [-2^63, 2^64), torch's range, not {seed!r}")
    generator = torch.Generator(device=device).manual_seed(seed) if do_sample and seed is not None else None

    # Left-padded token buffer, room for every new token reserved: (B, P + N).
    b, p_len = len(prompts), max(len(p) for p in prompts)
    check_generation_fits(model, b, p_len, max_new_tokens)
    pads = [p_len - len(p) for p in prompts]
    max_pad = max(pads)
    ids = torch.zeros(b, p_len + max_new_tokens, dtype=torch.long)
    real = torch.ones(b, p_len + max_new_tokens, dtype=torch.bool)  # attention mask: False at padding
    for i, (p, pad) in enumerate(zip(prompts, pads)):
        ids[i, pad:p_len] = torch.tensor(p, dtype=torch.long)
        real[i, :pad] = False
    ids, real = ids.to(device), real.to(device)
    columns = torch.arange(p_len + max_new_tokens, device=device)
    positions = (columns[None, :] - torch.tensor(pads, device=device)[:, None]).clamp(min=0)  # (B, P + N)

    stops = [torch.tensor(s, dtype=torch.long, device=device) for s in (stop_ids or []) if s]
    track = eos is not None or bool(stops) or row_done is not None
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    check_every = 1 if device.type == "cpu" else _DEVICE_CHECK_EVERY
    if row_done is not None:
        check_every = row_done_every or max(check_every, _STOP_STRING_CHECK_EVERY)
    seen = None  # (B, V): the tokens in each row so far, for the repetition penalty
    if repetition_penalty != 1.0:
        seen = torch.zeros(b, cfg.vocab_size, dtype=torch.bool, device=device)
        for i, p in enumerate(prompts):
            seen[i, torch.tensor(p, device=device)] = True
    bans = [NgramBan(int(no_repeat_ngram_size), p) for p in prompts] if no_repeat_ngram_size else None

    cache = None
    if use_cache:
        try:
            cache = model.new_cache(capacity=p_len + max_new_tokens)  # room for every step: never regrown
        except TypeError:  # a model whose cache takes no capacity
            cache = model.new_cache()
    cached = 0  # columns whose keys/values the cache holds
    was_training = model.training
    model.eval()
    try:
        n_new = max_new_tokens
        for step in range(max_new_tokens):
            n = p_len + step  # columns filled so far
            if cache is not None and n > window:
                cache = None  # past the context window: the sliding window recomputes every step
            if cache is not None:
                # Feed the columns not yet cached: the prompt at step 0, then the newest token.
                logits = _last_logits(model, ids[:, cached:n], real[:, :n] if max_pad else None,
                                      positions[:, cached:n] if max_pad else None, cache)
                cached = n
            else:
                start = max(0, n - window)
                padded = start < max_pad  # some row still has padding inside the window
                # Positions restart at 0 where a row's window begins (its first real token, or the crop).
                pos = torch.minimum(positions[:, start:n], columns[: n - start]) if padded else None
                logits = _last_logits(model, ids[:, start:n], real[:, start:n] if padded else None, pos, None)
            if seen is not None:
                logits = penalize_repetition(logits, seen, repetition_penalty)
            if bans is not None:
                _ban_ngrams(logits, bans, no_repeat_ngram_size, step, finished)
            tok = next_token(logits, do_sample, temperature, top_k, top_p, generator)  # (B,)
            ids[:, n] = tok
            if seen is not None:
                seen[torch.arange(b, device=device), tok] = True
            if bans is not None:
                for ban, t in zip(bans, tok.tolist()):
                    ban.append(t)
            if not track:
                continue
            if eos is not None:
                finished |= tok == eos
            for s in stops:
                if step + 1 >= s.numel():
                    finished |= (ids[:, n + 1 - s.numel() : n + 1] == s).all(dim=-1)
            if (step + 1) % check_every == 0 and step + 1 < max_new_tokens:
                if row_done is not None:
                    finished = row_done(ids[:, p_len : n + 1], finished)
                if bool(finished.all()):  # a host sync: not every step on a device
                    n_new = step + 1
                    break
    finally:
        model.train(was_training)
    rows = ids[:, p_len : p_len + n_new].tolist()
    return [_trim(row, eos, stop_ids or []) for row in rows]


def _ban_ngrams(logits: Tensor, bans: list[NgramBan], n: int, step: int, finished: Tensor) -> None:
    """Set to -inf, in place, the logits of tokens that would repeat an n-gram of their row (rows still going:
    what a finished row draws is dropped, and it must not run out of tokens)."""
    going = (~finished).tolist()
    for i, ban in enumerate(bans):
        banned = ban.banned() if going[i] else None
        if banned:
            logits[i, banned] = float("-inf")
    if bool(torch.isneginf(logits).all(dim=-1).any()):
        raise TformerError(f"no_repeat_ngram_size={n} leaves no token to choose at new token {step + 1}: every "
                           f"token of the vocabulary ({logits.size(-1)}) would repeat an n-gram; use a larger size")


def _check_repetition_options(penalty: float, ngram: int) -> None:
    if isinstance(penalty, bool) or not isinstance(penalty, numbers.Real) or not math.isfinite(penalty) \
            or penalty <= 0:
        raise TformerError(f"repetition_penalty must be a positive number (1: off), not {penalty!r}")
    if isinstance(ngram, bool) or not isinstance(ngram, numbers.Integral) or ngram < 0:
        raise TformerError(f"no_repeat_ngram_size must be a non-negative integer (0: off), not {ngram!r}")


def _last_logits(model, ids: Tensor, mask: Tensor | None, positions: Tensor | None, cache) -> Tensor:
    """Next-token logits (B, V) after ids (B, T), projecting only the last position to the vocabulary."""
    b, t = ids.shape
    if t == 1:
        return model(ids, attention_mask=mask, positions=positions, cache=cache).logits[:, -1].float()
    keep = torch.zeros(b, t, dtype=torch.bool, device=ids.device)
    keep[:, -1] = True
    return model(ids, attention_mask=mask, positions=positions, cache=cache, keep=keep).logits.float()


def _trim(row: list[int], eos: int | None, stop_ids: list[list[int]]) -> list[int]:
    """The tokens before whatever ended the row first: an eos token or a completed stop sequence."""
    first = (len(row), len(row))  # (index of the token that ended the row, where the row is cut)
    if eos is not None and eos in row:
        first = (row.index(eos),) * 2
    for s in stop_ids:
        m = len(s)
        for end in range(m - 1, min(first[0] + 1, len(row))):
            if m and row[end - m + 1 : end + 1] == s:
                first = min(first, (end, end - m + 1))
                break
    return row[: first[1]]


def _check(prompts, max_new_tokens: int, vocab_size: int, window: int, eos: int | None,
           temperature: float, top_k: int = 0, top_p: float = 1.0) -> list[list[int]]:
    """The prompts as lists of ints (an empty one -> [eos]; a (B, T) tensor is B prompts), or a TformerError
    naming what is wrong."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise TformerError(f"max_new_tokens must be a non-negative integer, not {max_new_tokens!r}")
    if temperature < 0:
        raise TformerError(f"temperature must be >= 0 (0 means greedy), not {temperature}")
    if eos is not None and not 0 <= eos < vocab_size:
        raise TformerError(f"eos_id must be a token id below the vocabulary size {vocab_size}, not {eos}")
    if not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool) or top_k < 0:
        raise TformerError(f"top_k must be a non-negative integer (0: all tokens), not {top_k!r}")
    if not 0 < top_p <= 1:
        raise TformerError(f"top_p must be in (0, 1] (1: all tokens), not {top_p!r}")
    if isinstance(prompts, Tensor):
        if prompts.dim() != 2:
            raise TformerError(f"a tensor of prompts must be (batch, tokens), not {tuple(prompts.shape)}")
        prompts = prompts.tolist()
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], (int, str))):
        raise TformerError("prompts must be a list of token-id lists (one per prompt), not one list of ids or "
                           "text; generate_text takes text")
    out = []
    for i, p in enumerate(prompts):
        p = [int(t) for t in p]
        if not p:
            if eos is None:
                raise TformerError(f"prompt {i} is empty and the model has no eos_id to start from")
            p = [eos]
        if len(p) > window:
            raise TformerError(f"prompt {i} has {len(p)} tokens, more than the model's context window of "
                               f"{window}; shorten it (keep its last {window} tokens)")
        if min(p) < 0 or max(p) >= vocab_size:
            raise TformerError(f"prompt {i} holds token ids outside the vocabulary 0..{vocab_size - 1}")
        out.append(p)
    return out
