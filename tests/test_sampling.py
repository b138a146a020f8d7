"""Generation from decoder-only models: logits processors, cached == uncached == the plain loop, left
padding, eos and stop sequences, seeds, the context window, and stop strings."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tformer.errors import TformerError
from tformer.generation.sampling import (
    NgramBan,
    apply_temperature,
    generate,
    generate_text,
    next_token,
    penalize_repetition,
    top_k_filter,
    top_p_filter,
)
from tformer.models.gpt import GPTConfig, LMOutput
from tformer.nn.cache import DecoderCache
from tformer.registry import create_model
from tformer.tokenization import train_lm_tokenizer

PROMPTS = [[1, 2, 3, 4, 5], [7], [9, 8, 7, 6, 5, 4, 3, 2, 1]]


def random_gpt(**overrides) -> nn.Module:
    """A 2-layer random GPT whose greedy continuations vary: the default init with a tied output mostly
    repeats the last token, which would hide position and padding mistakes."""
    torch.manual_seed(0)
    model = create_model("gpt-micro", n_layers=2, tie_output=False, **overrides)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.5 if "embed" in name else 0.3)
    return model


def plain_loop(model, prompt: list[int], n: int) -> list[int]:
    """The reference: feed the whole sequence (cropped to the window, as nanoGPT does), take the argmax."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ctx = torch.tensor([seq[-model.config.max_len :]])
            seq.append(int(model(ctx).logits[0, -1].argmax()))
    return seq[len(prompt) :]


class NextTokenStub(nn.Module):
    """A 'language model' that always predicts (last token + 1) mod V, counting its forward calls."""

    def __init__(self, vocab_size: int, max_len: int = 64):
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab_size, max_len=max_len, d_model=2, n_heads=1, n_layers=1)
        self.unused = nn.Parameter(torch.zeros(1))
        self.calls = 0

    def new_cache(self) -> DecoderCache:
        return DecoderCache(self.config.n_layers)

    def forward(self, ids, attention_mask=None, positions=None, cache=None, keep=None, need_weights=False,
                return_hidden=False):
        self.calls += 1
        logits = F.one_hot((ids + 1) % self.config.vocab_size, self.config.vocab_size).float() * 10
        return LMOutput(logits[keep] if keep is not None else logits)


# --------------------------------------------------------------------------------------------------
# Logits processors


def test_temperature_divides_and_zero_is_greedy():
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 0.0]])
    assert torch.equal(apply_temperature(logits, 0.5), logits * 2)
    assert apply_temperature(logits, 1.0) is logits
    hot = apply_temperature(logits, 4.0).softmax(-1)
    assert (hot.max(-1).values < logits.softmax(-1).max(-1).values).all()  # flatter
    g = torch.Generator().manual_seed(0)
    assert next_token(logits, do_sample=True, temperature=0.0, generator=g).tolist() == [1, 0]
    with pytest.raises(TformerError):
        apply_temperature(logits, 0.0)


def test_top_k_keeps_exactly_k():
    logits = torch.randn(4, 20, generator=torch.Generator().manual_seed(0))
    out = top_k_filter(logits, 3)
    assert (torch.isfinite(out).sum(-1) == 3).all()
    top = logits.topk(3, dim=-1).indices
    assert torch.equal(out.gather(-1, top), logits.gather(-1, top))
    ties = torch.zeros(2, 6)
    assert (torch.isfinite(top_k_filter(ties, 2)).sum(-1) == 2).all()  # exactly k, even with ties
    assert top_k_filter(logits, 0) is logits
    assert torch.equal(top_k_filter(logits, 50), logits)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3], [0.05, 0.05, 0.8, 0.1]])
    logits = probs.log()

    def kept(p):
        return [sorted(torch.isfinite(row).nonzero().flatten().tolist()) for row in top_p_filter(logits, p)]

    assert kept(0.7) == [[1, 3], [2]]  # 0.5 < 0.7 <= 0.5 + 0.3;  0.8 alone reaches 0.7
    assert kept(0.85) == [[0, 1, 3], [2, 3]]
    assert kept(0.3) == [[1], [2]]
    assert kept(0.0) == [[1], [2]]  # always at least the most probable token
    assert kept(0.999) == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert top_p_filter(logits, 1.0) is logits
    uniform = torch.zeros(1, 4)  # probabilities exactly 1/4: two of them reach p = 0.5 exactly
    assert torch.isfinite(top_p_filter(uniform, 0.5)).sum() == 2
    assert torch.equal(top_p_filter(logits, 0.7)[0, [1, 3]], logits[0, [1, 3]])  # kept logits unchanged


def test_sampling_follows_the_filtered_distribution():
    logits = torch.tensor([0.4, 0.3, 0.2, 0.1]).log().expand(20000, 4)
    g = torch.Generator().manual_seed(0)
    freq = torch.bincount(next_token(logits, True, 1.0, top_k=2, generator=g), minlength=4) / 20000
    assert torch.allclose(freq, torch.tensor([4 / 7, 3 / 7, 0, 0]), atol=0.02)
    freq = torch.bincount(next_token(logits, True, 1.0, top_k=3, top_p=0.6, generator=g), minlength=4) / 20000
    assert torch.allclose(freq, torch.tensor([4 / 7, 3 / 7, 0, 0]), atol=0.02)
    freq = torch.bincount(next_token(logits, True, 1.0, top_p=0.8, generator=g), minlength=4) / 20000
    assert torch.allclose(freq, torch.tensor([4 / 9, 3 / 9, 2 / 9, 0]), atol=0.02)


# --------------------------------------------------------------------------------------------------
# Greedy decoding


def test_sampling_survives_infinite_logits_and_vanishing_temperatures():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[1.0, float("inf"), 2.0, float("inf")], [3.0, 1.0, 2.0, 0.5]])
    for _ in range(20):  # +inf: certain (shared between ties); a tiny temperature: the argmax, not NaN
        tok = next_token(logits, do_sample=True, temperature=1e-40, generator=g)
        assert tok[0].item() in (1, 3) and tok[1].item() == 0
    assert next_token(logits, do_sample=True, temperature=1.0, top_p=0.5, generator=g)[0].item() in (1, 3)
    large = torch.tensor([[3e38, 1e38, -3e38]])
    assert next_token(large, do_sample=True, temperature=0.5, generator=g).item() == 0
    # A temperature that is 0 in float32 divided 0 by 0 (NaN, and multinomial failed): it is greedy decoding.
    for t in (1e-300, 1e-45):
        assert next_token(logits[1:], do_sample=True, temperature=t, generator=g).item() == 0


def test_repetition_penalty_lowers_seen_tokens_whatever_their_sign():
    logits = torch.tensor([[2.0, -2.0, 3.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert torch.equal(penalize_repetition(logits, seen, 2.0), torch.tensor([[1.0, -4.0, 3.0, -1.0]]))
    assert torch.equal(penalize_repetition(logits, seen, 0.5), torch.tensor([[4.0, -1.0, 3.0, -1.0]]))
    assert penalize_repetition(logits, seen, 1.0) is logits


def _ngrams(row: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(row[i : i + n]) for i in range(len(row) - n + 1)]


def test_ngram_ban_names_the_tokens_that_would_repeat_an_ngram():
    assert NgramBan(3, [1, 2, 3, 1, 2]).banned() == [3]
    assert NgramBan(3, [1, 2, 3, 1, 2, 4, 1, 2]).banned() == [3, 4]
    assert NgramBan(2, [5, 6, 5]).banned() == [6]
    assert NgramBan(1, [5, 6, 5]).banned() == [5, 6]
    assert NgramBan(3, [1]).banned() == [] and NgramBan(2, [1, 2]).banned() == []
    ban = NgramBan(2, [7])
    ban.append(8)
    ban.append(7)
    assert ban.banned() == [8]
    with pytest.raises(TformerError, match="at least 1"):
        NgramBan(0, [])


def test_generation_never_repeats_an_ngram_when_asked():
    model = random_gpt()
    plain = generate(model, PROMPTS, 30)
    assert any(len(set(_ngrams(p + r, 2))) < len(_ngrams(p + r, 2)) for p, r in zip(PROMPTS, plain))  # it does repeat
    for n in (2, 3):
        for sampled in (False, True):
            out = generate(model, PROMPTS, 30, no_repeat_ngram_size=n, do_sample=sampled, seed=0)
            assert [len(r) for r in out] == [30, 30, 30]
            for p, r in zip(PROMPTS, out):
                grams = _ngrams(p + r, n)
                assert len(set(grams)) == len(grams), (n, p, r)
    # rows stay independent under left padding, and the sliding window keeps the ban on the whole row
    banned = generate(model, PROMPTS, 12, no_repeat_ngram_size=2)
    assert banned == [generate(model, [p], 12, no_repeat_ngram_size=2)[0] for p in PROMPTS]
    small = random_gpt(max_len=8)
    row = PROMPTS[0] + generate(small, [PROMPTS[0]], 20, no_repeat_ngram_size=2)[0]
    assert len(set(_ngrams(row, 2))) == len(_ngrams(row, 2))


def test_repetition_penalty_changes_greedy_choices_row_by_row():
    model = random_gpt()
    plain = generate(model, PROMPTS, 20)
    penalized = generate(model, PROMPTS, 20, repetition_penalty=3.0)
    assert penalized != plain
    repeats = [sum(t in p + r[:i] for i, t in enumerate(r)) for p, r in zip(PROMPTS, plain)]
    fewer = [sum(t in p + r[:i] for i, t in enumerate(r)) for p, r in zip(PROMPTS, penalized)]
    assert sum(fewer) < sum(repeats)
    assert penalized == [generate(model, [p], 20, repetition_penalty=3.0)[0] for p in PROMPTS]
    assert generate(model, PROMPTS, 20, repetition_penalty=1.0) == plain


def test_repetition_options_are_checked():
    model = random_gpt()
    for bad in (0, -1.0, float("nan"), float("inf"), "2"):
        with pytest.raises(TformerError, match="repetition_penalty must be a positive number"):
            generate(model, PROMPTS, 3, repetition_penalty=bad)
    import numpy as np

    assert generate(model, PROMPTS, 5, no_repeat_ngram_size=np.int64(2), repetition_penalty=np.float32(1.5)) == \
        generate(model, PROMPTS, 5, no_repeat_ngram_size=2, repetition_penalty=1.5)
    for bad in (-1, 1.5, True):
        with pytest.raises(TformerError, match="no_repeat_ngram_size must be a non-negative integer"):
            generate(model, PROMPTS, 3, no_repeat_ngram_size=bad)
    with pytest.raises(TformerError, match="no_repeat_ngram_size=1 leaves no token to choose at new token"):
        generate(random_gpt(vocab_size=16), [[1]], 40, no_repeat_ngram_size=1)
    # With an end-of-text token every row ends before it runs out (the eos token is never banned before it is
    # drawn); a row that ended keeps drawing unbanned tokens, which are dropped, while the others go on.
    prompts = [[1], list(range(2, 14))]  # the second row has at most 3 tokens left before the eos token
    rows = generate(random_gpt(vocab_size=16, eos_id=15), prompts, 40, no_repeat_ngram_size=1)
    assert all(len(set(p + r)) == len(p + r) and 15 not in r for p, r in zip(prompts, rows))
    assert len(rows[1]) < 4 < len(rows[0])


def test_cached_uncached_plain_loop_and_alone_agree():
    model = random_gpt()
    cached = generate(model, PROMPTS, 12)
    assert cached == generate(model, PROMPTS, 12, use_cache=False)
    assert cached == [plain_loop(model, p, 12) for p in PROMPTS]
    assert cached == [generate(model, [p], 12)[0] for p in PROMPTS]  # left padding changes nothing
    assert len({tuple(r) for r in cached}) == 3 and all(len(set(r)) > 1 for r in cached)  # not degenerate


def test_sliding_window_past_the_context():
    model = random_gpt(max_len=8)
    out = generate(model, PROMPTS[:2] + [[5, 4, 3, 2, 1, 0, 1, 2]], 20)  # the last prompt fills the window
    assert [len(r) for r in out] == [20, 20, 20]
    assert out == [plain_loop(model, p, 20) for p in PROMPTS[:2] + [[5, 4, 3, 2, 1, 0, 1, 2]]]
    assert out == generate(model, PROMPTS[:2] + [[5, 4, 3, 2, 1, 0, 1, 2]], 20, use_cache=False)
    with pytest.raises(TformerError, match="context window of 8"):
        generate(model, [list(range(9))], 5)


def test_eos_and_stop_sequences_end_rows():
    model = random_gpt()
    full = generate(model, PROMPTS, 16)
    eos = full[2][3]
    cut = [r[: r.index(eos)] if eos in r else r for r in full]
    assert generate(model, PROMPTS, 16, eos_id=eos) == cut
    assert len(cut[2]) < 16

    stop = full[0][4:6]
    first_end = next(j for j in range(2, 17) if full[0][j - 2 : j] == stop)
    out = generate(model, PROMPTS, 16, stop_ids=[stop])
    assert out[0] == full[0][: first_end - 2]

    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    k = full[2].index(eos)
    assert generate(model, [PROMPTS[2]], 16, eos_id=eos) == [full[2][:k]]
    hook.remove()
    assert len(calls) == k + 1  # every row done: generation stops (prefill + k steps)


def test_ignore_eos_goes_on_past_the_end_of_text_token():
    """ignore_eos=True turns off the model's own eos_id (eos_id=None only means 'the model's'): the rows run
    to max_new_tokens, the eos tokens written on the way included, and are what a model without eos_id gives."""
    full = generate(random_gpt(), PROMPTS, 16)  # no eos_id in the config: nothing ends a row
    eos = full[2][3]
    with_eos = random_gpt(eos_id=eos)
    assert generate(with_eos, PROMPTS, 16) == [r[: r.index(eos)] if eos in r else r for r in full]
    assert generate(with_eos, PROMPTS, 16, ignore_eos=True) == full
    assert generate(with_eos, PROMPTS, 16, ignore_eos=True, use_cache=False) == full
    assert generate(with_eos, PROMPTS, 16, eos_id=full[0][1], ignore_eos=True) == full  # a given eos_id too
    stub = NextTokenStub(8)
    assert generate(stub, [[1]], 10, eos_id=4) == [[2, 3]]
    assert generate(stub, [[1]], 10, eos_id=4, ignore_eos=True) == [[2, 3, 4, 5, 6, 7, 0, 1, 2, 3]]
    # the eos token still starts an empty prompt
    assert generate(with_eos, [[], [3]], 5, ignore_eos=True) == generate(with_eos, [[eos], [3]], 5, ignore_eos=True)
    with pytest.raises(TformerError, match="ignore_eos must be True or False, not 'yes'"):
        generate(with_eos, PROMPTS, 3, ignore_eos="yes")


def test_empty_prompt_starts_from_eos_else_errors():
    with_eos = random_gpt(eos_id=0)
    assert generate(with_eos, [[], [3]], 5) == generate(with_eos, [[0], [3]], 5)
    with pytest.raises(TformerError, match="empty"):
        generate(random_gpt(), [[]], 5)


def test_bad_arguments_raise_tformer_error():
    model = random_gpt()
    for bad in ([list(range(33))], [[64]], [1, 2, 3]):
        with pytest.raises(TformerError):
            generate(model, bad, 3)
    with pytest.raises(TformerError):
        generate(model, PROMPTS, -1)
    assert generate(model, PROMPTS, 0) == [[], [], []]
    with pytest.raises(TformerError, match="eos_id must be a token id below the vocabulary size 64, not 64"):
        generate(model, PROMPTS, 3, eos_id=64)  # rows never stopped
    with pytest.raises(TformerError, match="seed must be an integer"):
        generate(model, PROMPTS, 3, do_sample=True, seed=2**64)  # torch's own ValueError before
    assert len(generate(model, [list(range(32))], 3)[0]) == 3  # a prompt filling the window is fine
    # more tokens than memory holds: refused before anything is allocated (it used to fail inside torch)
    with pytest.raises(TformerError, match="new tokens for 3 sequence.*GiB"):
        generate(model, PROMPTS, 10**13)


def test_training_mode_is_restored():
    model = random_gpt()
    model.train()
    generate(model, PROMPTS, 2)
    assert model.training
    model.eval()
    generate(model, PROMPTS, 2)
    assert not model.training


# --------------------------------------------------------------------------------------------------
# Sampling


def test_seed_reproduces_samples_within_top_k_and_top_p():
    model = random_gpt()
    kw = {"do_sample": True, "temperature": 1.5, "top_k": 5, "seed": 3}
    a = generate(model, PROMPTS, 20, **kw)
    assert a == generate(model, PROMPTS, 20, **kw)
    assert a == generate(model, PROMPTS, 20, use_cache=False, **kw)
    assert a != generate(model, PROMPTS, 20, **{**kw, "seed": 4})
    assert a != generate(model, PROMPTS, 20)  # not greedy
    nucleus = generate(model, PROMPTS, 20, do_sample=True, temperature=1.5, top_p=0.6, seed=3)
    with torch.no_grad():
        for prompt, new, new_p in zip(PROMPTS, a, nucleus):
            logits = model(torch.tensor([prompt + new])).logits[0, len(prompt) - 1 : -1]  # predicts new[j]
            allowed = logits.topk(5, dim=-1).indices
            assert all(t in allowed[j].tolist() for j, t in enumerate(new))
            logits = model(torch.tensor([prompt + new_p])).logits[0, len(prompt) - 1 : -1] / 1.5
            kept = torch.isfinite(top_p_filter(logits, 0.6))
            assert all(kept[j, t] for j, t in enumerate(new_p))


# --------------------------------------------------------------------------------------------------
# Text


@pytest.fixture(scope="module")
def letters():
    return train_lm_tokenizer(["abcdefgh"], "char")  # a..h -> 0..7


def test_generate_text_returns_the_continuation(letters):
    stub = NextTokenStub(letters.vocab_size)
    assert generate_text(stub, letters, ["ab", "g"], 4) == ["cdef", "habc"]


def test_stop_strings_across_tokens_cut_and_stop_early(letters):
    stub = NextTokenStub(letters.vocab_size)
    assert generate_text(stub, letters, ["a", "c"], 40, stop=["fg"]) == ["bcde", "de"]
    assert stub.calls < 40 // 2  # stopped once every row held a stop string, not after 40 steps
    assert generate_text(stub, letters, ["a"], 40, stop=["h", "de"]) == ["bc"]  # the earliest stop wins
    assert generate_text(stub, letters, ["a"], 3, stop=["xyz"]) == ["bcd"]
    model = random_gpt(vocab_size=letters.vocab_size)
    text = generate_text(model, letters, ["abc", ""], 6, stop=["a"], eos_id=7, do_sample=True, seed=0)
    assert all("a" not in t and "h" not in t and len(t) <= 6 for t in text)


class ScriptedStub(NextTokenStub):
    """A 'language model' whose k-th call predicts script[k] (call 0 is the prompt)."""

    def __init__(self, vocab_size: int, script: list[int]):
        super().__init__(vocab_size, max_len=256)
        self.script = script

    def forward(self, ids, attention_mask=None, positions=None, cache=None, keep=None, need_weights=False,
                return_hidden=False):
        k = min(self.calls, len(self.script) - 1)
        self.calls += 1
        logits = F.one_hot(torch.full(ids.shape, self.script[k]), self.config.vocab_size).float() * 10
        return LMOutput(logits[keep] if keep is not None else logits)


def test_streamer_shows_the_text_as_it_grows_and_joins_to_the_result(letters):
    pieces = []
    out = generate_text(NextTokenStub(letters.vocab_size), letters, ["a"], 12, streamer=pieces.append)
    assert out == ["bcdefghabcde"] and "".join(pieces) == out[0]
    assert len(pieces) >= 10  # a piece per token, not the whole text at the end

    pieces = []
    out = generate_text(NextTokenStub(letters.vocab_size), letters, ["a"], 40, stop=["efx", "fg"],
                        streamer=pieces.append)
    assert out == ["bcde"] and "".join(pieces) == "bcde"  # "e" and "f" waited: both could start a stop string
    assert all("f" not in p for p in pieces)
    with pytest.raises(TformerError, match="one prompt"):
        generate_text(NextTokenStub(letters.vocab_size), letters, ["a", "b"], 3, streamer=pieces.append)
    with pytest.raises(TformerError, match="streamer must be a function"):
        generate_text(NextTokenStub(letters.vocab_size), letters, ["a"], 3, streamer=pieces)


def test_streamer_waits_for_every_byte_of_a_character():
    tok = train_lm_tokenizer(["plain ascii text only"], "byte_bpe", vocab_size=270)
    wanted = "snow \u2603 \u00e9t\u00e9 ok"
    script = tok.encode(wanted)
    assert len(script) > len(wanted)  # the snowman and the accents are several byte tokens each
    pieces = []
    out = generate_text(ScriptedStub(tok.vocab_size, script), tok, ["x"], len(script), streamer=pieces.append)
    assert out == [wanted] and "".join(pieces) == wanted
    assert all("\ufffd" not in p for p in pieces) and len(pieces) > 5


def test_generate_text_with_ignore_eos_leaves_the_token_out_and_goes_on():
    tok = train_lm_tokenizer(["plain ascii text only"], "byte_bpe", vocab_size=270)
    script = tok.encode("ab") + [tok.eos_id] + tok.encode("cd")
    assert generate_text(ScriptedStub(tok.vocab_size, script), tok, ["x"], len(script)) == ["ab"]
    pieces = []
    out = generate_text(ScriptedStub(tok.vocab_size, script), tok, ["x"], len(script), ignore_eos=True,
                        streamer=pieces.append)
    assert out == ["abcd"] and "".join(pieces) == "abcd"
    out = generate_text(ScriptedStub(tok.vocab_size, script), tok, ["x"], 40, ignore_eos=True, stop=["c"])
    assert out == ["ab"]  # stop strings still end the text


def test_python_callers_get_named_errors_for_the_wrong_kind_of_argument():
    """One string where a list is meant would otherwise run once per character; a tensor of prompts is the
    natural thing to pass and works; sampling options out of range are named."""
    from tformer.generation.sampling import generate, generate_text
    from tformer.generation.scoring import choose

    torch.manual_seed(0)
    model = create_model("gpt-micro", vocab_size=40).eval()
    tok = train_lm_tokenizer(["the cat sat on the mat"], kind="char")
    assert generate(model, torch.tensor([[1, 2], [3, 4]]), 3) == generate(model, [[1, 2], [3, 4]], 3)
    for call, needle in [
        (lambda: generate_text(model, tok, "the cat", 3), "prompts must be a list of strings, not one string"),
        (lambda: generate_text(model, tok, ["the", 3], 3), r"prompts\[1\] is int"),
        (lambda: generate(model, "the cat", 3), "not one list of ids or text"),
        (lambda: generate(model, [[1, 2]], 3, do_sample=True, top_k=-1), "top_k must be a non-negative"),
        (lambda: generate(model, [[1, 2]], 3, do_sample=True, top_p=0.0), r"top_p must be in \(0, 1\]"),
        (lambda: choose(model, tok, "the", " cat"), "choices must be a list of strings"),
    ]:
        with pytest.raises(TformerError, match=needle):
            call()
    assert generate_text(model, tok, ["the"], 3, stop="x") == generate_text(model, tok, ["the"], 3, stop=["x"])
