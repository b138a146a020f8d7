"""Generation from decoder-only models: logits processors, cached == uncached == the plain loop, left
padding, eos and stop sequences, seeds, the context window, and stop strings."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tformer.errors import TformerError
from tformer.generation.sampling import (
    apply_temperature,
    generate,
    generate_text,
    next_token,
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
