"""Greedy decoding and beam search for encoder-decoder models.

The model offers `encode(src) -> (memory, src_mask)`, `decode(tgt_in, memory, src_mask, cache) -> logits`
and `new_cache()`; its config names pad_id, bos_id and eos_id. Both searches run the encoder once.

Greedy decoding, as the lectures describe it: feed the decoder <s>, take the most probable next token, feed
<s> and every token produced so far, repeat until </s>. With use_cache=True the decoder is fed only the
newest token and reads the keys/values of earlier positions (and the projected encoder output) from a
cache, which gives the same result with O(1) instead of O(t) new work per step.

Neither search ever produces <pad> or <s> (`never_generated`): no training target holds them, so an
untrained or undertrained model is the only one that ranks them first, and its output would then hold a
stray <s> (greedy used to cut its output at a <pad>, beam search kept both). fairseq's generator masks
<pad> the same way, and the opus-mt Marian models ban their pad token, which is also their decoder start
token, through bad_words_ids. The masked tokens' probability is not handed to the others (as fairseq and
transformers' logits processors do): scores stay the model's own log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tformer.nn.linear import transposed_weights


def never_generated(config) -> list[int]:
    """The target ids decoding never produces: <pad> and <s> (the decoder's start token), unless one of them is
    also </s>, which must stay possible."""
    return sorted({config.pad_id, config.bos_id} - {config.eos_id})


def _step_logits(model, tokens: Tensor, memory: Tensor, src_mask: Tensor, cache) -> Tensor:
    """Log-probabilities (B, V) of the next token after `tokens` (B, t), -inf for `never_generated` tokens."""
    if cache is not None:
        logits = model.decode(tokens[:, -1:], memory, src_mask, cache)
    else:
        logits = model.decode(tokens, memory, src_mask)
    logp = torch.log_softmax(logits[:, -1].float(), dim=-1)
    logp[:, never_generated(model.config)] = float("-inf")
    return logp


@torch.inference_mode()
@transposed_weights()
def greedy_decode(model, src: Tensor, max_len: int | None = None, use_cache: bool = True) -> list[list[int]]:
    """Token ids (without <s> and </s>) for each source row of src (B, S)."""
    cfg = model.config
    max_len = max_len or src.size(1) * 2 + 10
    memory, src_mask = model.encode(src)
    b = src.size(0)
    tokens = torch.full((b, 1), cfg.bos_id, dtype=torch.long, device=src.device)
    finished = torch.zeros(b, dtype=torch.bool, device=src.device)
    cache = model.new_cache() if use_cache else None
    for _ in range(max_len):
        next_tok = _step_logits(model, tokens, memory, src_mask, cache).argmax(dim=-1)
        next_tok = next_tok.masked_fill(finished, cfg.pad_id)
        tokens = torch.cat([tokens, next_tok[:, None]], dim=1)
        finished |= next_tok == cfg.eos_id
        if bool(finished.all()):
            break
    return [strip_after_eos(row, cfg.eos_id, cfg.pad_id) for row in tokens[:, 1:].tolist()]


def strip_after_eos(ids: list[int], eos_id: int, pad_id: int) -> list[int]:
    """The tokens before the first </s> or <pad>."""
    out = []
    for i in ids:
        if i == eos_id or i == pad_id:
            break
        out.append(i)
    return out


@dataclass
class Hypothesis:
    tokens: list[int]
    score: float  # length-normalised log-probability


@torch.inference_mode()
@transposed_weights()
def beam_search(model, src: Tensor, beam_size: int = 4, max_len: int | None = None, length_penalty: float = 1.0,
                n_best: int = 1) -> list[list[Hypothesis]]:
    """Batched beam search; for each source row, the n_best hypotheses, best first.

    Each step extends each of the K live hypotheses of a sentence by every token, keeps the 2K best
    extensions by total log-probability, moves those that end in </s> (among the top K) to the finished
    list (which keeps the K best by normalised score) and continues with the K best that did not end. A
    sentence is done when it has K finished hypotheses (transformers' early_stopping=True); done sentences
    leave the batch, so the work shrinks as decoding goes on. Finished hypotheses are ranked by
    sum(log p) / length^length_penalty (length counts </s>).
    With beam_size=1 this is exactly greedy decoding.

    The encoder output is not copied K times: the K hypotheses of a sentence attend to one copy of it.
    """
    cfg = model.config
    k = beam_size
    max_len = max_len or src.size(1) * 2 + 10
    b, device = src.size(0), src.device
    memory, src_mask = model.encode(src)  # (B, S, D), (B, 1, 1, S): shared by the K beams of each sentence
    tokens = torch.full((b * k, 1), cfg.bos_id, dtype=torch.long, device=device)
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # the K beams start identical: only the first is live at step 0
    cache = model.new_cache()
    banned = never_generated(cfg)
    finished: list[list[Hypothesis]] = [[] for _ in range(b)]
    alive = torch.arange(b, device=device)  # original sentence index of each sentence still decoding
    width = 2 * k  # candidates kept per beam and per sentence

    for step in range(max_len + 1):
        n = alive.numel()
        logits = model.decode(tokens[:, -1:], memory, src_mask, cache)[:, -1].float()  # (n*K, V)
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        logits[:, banned] = float("-inf")  # after the normaliser: the other tokens keep their log-probabilities
        per_beam = min(width, logits.size(-1))  # a vocabulary smaller than 2K offers every token
        if step == max_len:  # out of room: only </s> may follow
            beam_lp = torch.full((n * k, per_beam), float("-inf"), device=device)
            beam_lp[:, 0] = logits[:, cfg.eos_id] - lse[:, 0]
            beam_tok = torch.full((n * k, per_beam), cfg.eos_id, dtype=torch.long, device=device)
        else:
            # The sentence's 2K best extensions are among each beam's 2K best tokens: rank those only,
            # instead of materialising all K*V candidate scores.
            beam_lp, beam_tok = logits.topk(per_beam, dim=-1)
            beam_lp = beam_lp - lse  # log-probabilities (n*K, 2K)
        cand = (scores.view(n * k, 1) + beam_lp).view(n, k * per_beam)
        top_scores, top_pos = cand.topk(width, dim=-1)  # (n, 2K), best first
        top_beams = top_pos // per_beam
        top_tokens = beam_tok.view(n, k * per_beam).gather(1, top_pos)
        is_eos = top_tokens == cfg.eos_id

        # Finish: </s> candidates ranked within the top K of their sentence.
        done_rows = []
        eos_hits = (is_eos[:, :k] & torch.isfinite(top_scores[:, :k])).nonzero().tolist()
        if eos_hits:
            prefix = tokens.view(n, k, -1)[:, :, 1:]
            length = tokens.size(1)  # tokens so far (without <s>) + </s>
            touched = set()
            for row, col in eos_hits:
                sent = int(alive[row])
                beam = int(top_beams[row, col])
                finished[sent].append(Hypothesis(prefix[row, beam].tolist(),
                                                 float(top_scores[row, col]) / length**length_penalty))
                touched.add(sent)
            # Keep the K best by normalised score: a hypothesis ending now may beat a shorter one that ended
            # earlier (as transformers' beam scorer replaces its worst), so the first K to end are not the n-best.
            for sent in touched:
                finished[sent] = sorted(finished[sent], key=lambda h: h.score, reverse=True)[:k]
            done_rows = [r for r in range(n) if len(finished[int(alive[r])]) >= k]
        if step == max_len:
            break

        # Continue: the K best candidates that did not end.
        live_scores = top_scores.masked_fill(is_eos, float("-inf"))
        keep_scores, keep_pos = live_scores.topk(k, dim=-1)  # (n, K)
        keep_beams = top_beams.gather(1, keep_pos)
        keep_tokens = top_tokens.gather(1, keep_pos)
        rows = (torch.arange(n, device=device)[:, None] * k + keep_beams).view(-1)  # flat source row per new beam
        tokens = torch.cat([tokens.index_select(0, rows), keep_tokens.view(-1, 1)], dim=1)
        scores = keep_scores
        cache.select(rows)  # beams move only within their sentence: the encoder-side caches stay

        if done_rows:
            done = set(done_rows)
            keep_sent = torch.tensor([r for r in range(n) if r not in done], dtype=torch.long, device=device)
            if keep_sent.numel() == 0:
                break
            flat = (keep_sent[:, None] * k + torch.arange(k, device=device)).view(-1)
            tokens, scores, alive = tokens.index_select(0, flat), scores.index_select(0, keep_sent), alive[keep_sent]
            memory, src_mask = memory.index_select(0, keep_sent), src_mask.index_select(0, keep_sent)
            cache.select(flat, keep_sent)

    results = []
    for hyps in finished:
        hyps = sorted(hyps, key=lambda h: h.score, reverse=True)
        results.append(hyps[:n_best])
    return results


def translate_ids(model, src: Tensor, beam_size: int = 1, max_len: int | None = None,
                  length_penalty: float = 1.0, use_cache: bool = True) -> list[list[int]]:
    """Best token ids per source row: greedy for beam_size 1, beam search otherwise."""
    if beam_size <= 1:
        return greedy_decode(model, src, max_len, use_cache)
    return [h[0].tokens if h else [] for h in beam_search(model, src, beam_size, max_len, length_penalty)]
