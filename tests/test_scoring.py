"""Scoring text with a language model (log-likelihood, strided perplexity, multiple choice) and prompt builders."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tformer.errors import TformerError
from tformer.generation.prompts import few_shot_prompt, qa_prompt, tldr_prompt
from tformer.generation.scoring import (
    choose,
    continuation_logprob,
    score_text,
    score_texts,
    token_logprobs,
)
from tformer.models.gpt import GPT
from tformer.registry import create_model
from tformer.tokenization import train_lm_tokenizer

CORPUS = "the cat sat. " * 40


def random_model(vocab_size: int = 64, max_len: int = 32, eos_id: int | None = None) -> GPT:
    """gpt-micro with large random weights, so log-probabilities differ clearly from token to token."""
    torch.manual_seed(0)
    model = create_model("gpt-micro", vocab_size=vocab_size, max_len=max_len, eos_id=eos_id)
    for p in model.parameters():
        nn.init.normal_(p, std=0.5)
    return model


def manual_logprobs(model: GPT, seq: list[int]) -> torch.Tensor:
    """log p(seq[j] | seq[:j]) for j >= 1 from one plain forward pass."""
    with torch.no_grad():
        logits = model.eval()(torch.tensor([seq])).logits[0]  # (T, V)
    return torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(seq[1:])[:, None])[:, 0]


@pytest.fixture(scope="module")
def trained():
    """gpt-micro trained for a couple of seconds on "the cat sat. the cat sat. ..." (character level)."""
    torch.manual_seed(0)
    tok = train_lm_tokenizer([CORPUS], "char")
    model = create_model("gpt-micro", vocab_size=tok.vocab_size, max_len=32)
    data = torch.tensor(tok.encode(CORPUS))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        starts = torch.randint(0, len(data) - 33, (8,))
        batch = torch.stack([data[s : s + 33] for s in starts.tolist()])
        logits = model(batch[:, :-1]).logits
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3, loss.item()
    return model, tok


def test_token_logprobs_equal_a_manual_log_softmax_gather():
    model = random_model().train()
    ids = torch.randint(0, 64, (20,)).tolist()
    expected = manual_logprobs(model, ids)
    assert expected.std() > 0.5  # the weights make a wrong gather or shift visible
    model.train()
    got = token_logprobs(model, ids)
    assert model.training  # the caller's mode is restored
    assert got.shape == (19,)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(token_logprobs(model, ids, context_len=5), expected[4:], atol=1e-5, rtol=0)
    assert token_logprobs(model, ids, context_len=20).numel() == 0
    with pytest.raises(TformerError):
        token_logprobs(model, ids, context_len=21)
    with pytest.raises(TformerError):
        token_logprobs(model, [1, 2, 64])  # outside the vocabulary


def test_a_model_with_eos_scores_the_first_token_after_a_leading_eos():
    model = random_model(eos_id=63)
    ids = torch.randint(0, 63, (10,)).tolist()
    got = token_logprobs(model, ids)
    assert got.shape == (10,)
    torch.testing.assert_close(got, manual_logprobs(model, [63] + ids), atol=1e-5, rtol=0)
    torch.testing.assert_close(token_logprobs(model, ids, context_len=3), got[3:], atol=1e-5, rtol=0)


def test_strided_scoring_scores_every_token_once_with_enough_context():
    model = random_model(max_len=32)
    ids = torch.randint(0, 64, (80,)).tolist()
    head = token_logprobs(model, ids[:32])
    for stride in (1, 8, 16, 31):
        got = token_logprobs(model, ids, stride=stride)
        assert got.shape == (79,) and torch.isfinite(got).all()
        torch.testing.assert_close(got[:31], head, atol=1e-5, rtol=0)  # the first window is the plain prefix
    # stride 1: every token sees the whole window (its 31 predecessors), exactly.
    got = token_logprobs(model, ids, stride=1)
    for p in range(32, 80):
        expected = manual_logprobs(model, ids[p - 31 : p + 1])[-1]
        torch.testing.assert_close(got[p - 1], expected, atol=1e-5, rtol=0)
    # stride 16: each token's score is that of some window giving it >= 32 - 16 tokens of context.
    got = token_logprobs(model, ids, stride=16)
    for p in range(32, 80):
        candidates = torch.stack([manual_logprobs(model, ids[p - c : p + 1])[-1] for c in range(16, 32)])
        assert (candidates - got[p - 1]).abs().min() < 1e-5, p
    # A text that fits the window is one window, whatever the stride.
    short = ids[:25]
    torch.testing.assert_close(token_logprobs(model, short, stride=3), token_logprobs(model, short), atol=1e-6, rtol=0)
    for bad in (0, 32):
        with pytest.raises(TformerError):
            token_logprobs(model, ids, stride=bad)


def test_a_context_that_fits_the_window_is_read_whole():
    """The first window started max_len - stride tokens before the first scored position even when the whole
    sequence fitted: a 20-token prompt lost its first 4 tokens in a 32-token window (stride 16), and a choice's
    score depended on the length of the other choices."""
    model = random_model(max_len=32)
    ids = torch.randint(0, 64, (25,)).tolist()
    got = token_logprobs(model, ids, context_len=20)
    torch.testing.assert_close(got, manual_logprobs(model, ids)[-5:], atol=1e-5, rtol=0)
    tok = train_lm_tokenizer([CORPUS], "char")
    model = random_model(vocab_size=tok.vocab_size)
    prompt = "the cat sat. the cat"  # 20 characters: 20 + 4 fits the 32-character window
    total, n = continuation_logprob(model, tok, prompt, " sat")
    ids = tok.encode(prompt + " sat")
    assert total == pytest.approx(float(manual_logprobs(model, ids)[-4:].sum()), abs=1e-5)
    alone = choose(model, tok, prompt, [" sat", " hat"], normalize="sum")["scores"][0]
    beside_a_long_one = choose(model, tok, prompt, [" sat", " hat. the cat sat. "], normalize="sum")["scores"][0]
    assert alone == pytest.approx(total, abs=1e-5) and beside_a_long_one == pytest.approx(total, abs=1e-5)


def test_score_text_reports_consistent_summaries_and_batches_like_one_at_a_time():
    tok = train_lm_tokenizer([CORPUS], "char")
    model = random_model(vocab_size=tok.vocab_size)
    text = "the cat sat."
    s = score_text(model, tok, text)
    lp = token_logprobs(model, tok.encode(text))
    assert s["tokens"] == len(text) - 1
    assert s["log_likelihood"] == pytest.approx(float(lp.sum()), abs=1e-5)
    assert s["mean_nll"] == pytest.approx(-s["log_likelihood"] / s["tokens"])
    assert s["perplexity"] == pytest.approx(math.exp(s["mean_nll"]))
    assert s["bits_per_token"] == pytest.approx(s["mean_nll"] / math.log(2))
    texts = ["the cat", "the cat sat. " * 4, "sat.", "a cat ate the hat. " * 2]  # two beyond max_len = 32
    batched = score_texts(model, tok, texts)
    for text, got in zip(texts, batched):
        single = token_logprobs(model, tok.encode(text))
        assert got["tokens"] == len(single)
        assert got["log_likelihood"] == pytest.approx(float(single.sum()), abs=1e-4)
    with pytest.raises(TformerError, match="text 1"):
        score_texts(model, tok, ["the cat", "t"])
    with_eos = random_model(vocab_size=tok.vocab_size, eos_id=0)
    with pytest.raises(TformerError, match=r"text 0: 0 token\(s\), nothing to score \(an empty text\)"):
        score_text(with_eos, tok, "")  # it blamed a missing eos_id the model has


def test_choose_picks_the_likely_completion_and_batched_scores_equal_single_ones(trained):
    model, tok = trained
    choices = [" hat.", " sat.", " eat the", " c"]
    for normalize in ("mean", "sum"):
        result = choose(model, tok, "the cat", choices, normalize=normalize)
        assert result["index"] == 1 and result["choice"] == " sat."
        for choice, score in zip(choices, result["scores"]):
            total, n = continuation_logprob(model, tok, "the cat", choice)
            assert n == len(choice)
            assert score == pytest.approx(total / n if normalize == "mean" else total, abs=1e-5)
    assert choose(model, tok, "the", [" sat", " cat"])["index"] == 1
    # A prompt longer than the window: scored one choice at a time, in sliding windows.
    long_prompt = "the cat sat. " * 4 + "the cat"
    assert choose(model, tok, long_prompt, [" hat.", " sat."])["index"] == 1
    with pytest.raises(TformerError):
        choose(model, tok, "the cat", choices, normalize="max")


def test_continuation_logprob_is_the_sum_over_the_continuation_tokens(trained):
    model, tok = trained
    ctx, cont = tok.encode("the cat"), tok.encode(" sat.")
    total, n = continuation_logprob(model, tok, "the cat", " sat.")
    assert n == 5
    assert total == pytest.approx(float(manual_logprobs(model, ctx + cont)[-5:].sum()), abs=1e-5)
    assert total > math.log(0.5)  # the trained model is confident
    with pytest.raises(TformerError):
        continuation_logprob(model, tok, "", " sat.")  # no eos: nothing to condition the first token on


def test_unknown_characters_raise_tformer_error(trained):
    model, tok = trained
    with pytest.raises(TformerError, match="character"):
        score_text(model, tok, "the dog!")
    with pytest.raises(TformerError, match="character"):
        choose(model, tok, "the cat", [" sat.", " sat!"])
    with pytest.raises(TformerError, match="character"):
        continuation_logprob(model, tok, "the 猫", " sat.")


def test_prompt_builders_produce_the_exact_strings():
    assert few_shot_prompt([], "3 + 5") == "Input: 3 + 5\nOutput:"
    assert few_shot_prompt([("2 + 2", "4")], "3 + 5", instruction="Add.") == (
        "Add.\n\nInput: 2 + 2\nOutput: 4\n\nInput: 3 + 5\nOutput:")
    assert few_shot_prompt([("2 + 2", "4"), ("1 + 1", "2")], "3 + 5") == (
        "Input: 2 + 2\nOutput: 4\n\nInput: 1 + 1\nOutput: 2\n\nInput: 3 + 5\nOutput:")
    # GPT-2's translation format, and an output prefix that already ends in whitespace.
    assert few_shot_prompt([("cheese", "fromage")], "sea otter", input_prefix="", output_prefix="=",
                           separator="\n", input_output_separator=" ") == "cheese = fromage\nsea otter ="
    assert few_shot_prompt([("a", "b")], "c", output_prefix="Out:\n") == "Input: a\nOut:\nb\n\nInput: c\nOut:\n"
    assert tldr_prompt("A long article.") == "A long article.\nTL;DR:"
    assert qa_prompt("Who?", context="Doc.", examples=[("What?", "This.")]) == "Doc.\nQ: What?\nA: This.\nQ: Who?\nA:"
    assert qa_prompt("Who?") == "Q: Who?\nA:"
