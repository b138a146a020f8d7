"""The decoder-only model: shapes, causality, caching, gradients, presets, parameter counts."""

from __future__ import annotations

import pytest
import torch

from tformer.models.gpt import GPT, GPTConfig
from tformer.registry import create_model, family, get_config
from tformer.training.optim import parameter_groups


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, max_len=32, d_model=32, n_heads=4, n_layers=2, dropout=0.0,
                         attention_dropout=0.0, **kw)).eval()


def test_gpt2_presets_have_the_published_parameter_counts():
    # Hugging Face's GPT2LMHeadModel reports these numbers (tied output counted once, positions included).
    assert GPT(get_config("gpt2")).num_parameters() == 124_439_808
    assert GPT(get_config("gpt2-medium")).num_parameters() == 354_823_168
    assert family("gpt2") == "gpt" and family("transformer-base") == "transformer"


def test_output_is_tied_to_the_token_embedding():
    m = tiny()
    assert m.output.weight is m.tok_embed.weight
    untied = tiny(tie_output=False)
    assert untied.output.weight is not untied.tok_embed.weight


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_future_tokens_never_change_earlier_logits(norm):
    m = tiny(norm_position=norm)
    ids = torch.randint(0, 50, (2, 12))
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 50
    a, b = m(ids).logits, m(changed).logits
    assert a.shape == (2, 12, 50)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_causal_kernel_equals_explicit_mask_and_weights_path():
    m = tiny()
    ids = torch.randint(0, 50, (3, 10))
    fast = m(ids).logits  # is_causal, no mask built
    masked = m(ids, attention_mask=torch.ones(3, 10, dtype=torch.bool)).logits  # explicit causal & padding mask
    out = m(ids, need_weights=True)
    torch.testing.assert_close(fast, masked, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast, out.logits, atol=1e-5, rtol=1e-5)
    w = out.attentions[0]
    assert w.shape == (3, 4, 10, 10)
    assert torch.all(w.triu(diagonal=1) == 0)  # nothing attends to the future
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 10))


def test_cached_steps_equal_the_full_forward():
    m = tiny()
    ids = torch.randint(0, 50, (2, 9))
    full = m(ids).logits
    cache = m.new_cache()
    first = m(ids[:, :5], cache=cache).logits
    steps = [m(ids[:, i : i + 1], cache=cache).logits for i in range(5, 9)]
    torch.testing.assert_close(torch.cat([first, *steps], 1), full, atol=1e-5, rtol=1e-5)


def test_left_padding_with_mask_and_positions_matches_the_unpadded_row():
    m = tiny()
    short = torch.randint(4, 50, (1, 5))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1)
    mask = padded != 0
    mask[:, :3] = False
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    out = m(padded, attention_mask=mask, positions=positions).logits[:, 3:]
    torch.testing.assert_close(out, m(short).logits, atol=1e-5, rtol=1e-5)


def test_keep_projects_only_the_selected_positions():
    m = tiny()
    ids = torch.randint(0, 50, (2, 6))
    keep = torch.zeros(2, 6, dtype=torch.bool)
    keep[0, 2] = keep[1, 5] = True
    out = m(ids, keep=keep).logits
    full = m(ids).logits
    torch.testing.assert_close(out, torch.stack([full[0, 2], full[1, 5]]))


def test_gradients_reach_every_parameter():
    m = tiny().train()
    ids = torch.randint(0, 50, (2, 8))
    m(ids).logits.logsumexp(-1).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_window_is_enforced():
    m = tiny()
    with pytest.raises(ValueError, match="context window"):
        m(torch.zeros(1, 33, dtype=torch.long))


def test_weight_decay_skips_norms_biases_and_embeddings():
    m = create_model("gpt-micro")
    groups = parameter_groups(m, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    names = {id(p): n for n, p in m.named_parameters()}
    decayed_names = sorted(names[i] for i in decayed)
    assert decayed_names and all(n.endswith("weight") and "norm" not in n for n in decayed_names)
    assert id(m.tok_embed.weight) not in decayed and id(m.pos_embed.weight) not in decayed
    assert id(m.decoder.layers[0].ff.w1.weight) in decayed


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=100, max_len=16, d_model=256, n_heads=4, n_layers=8))
    std_w1 = m.decoder.layers[0].ff.w1.weight.std().item()
    std_w2 = m.decoder.layers[0].ff.w2.weight.std().item()
    assert abs(std_w1 - 0.02) < 0.002
    assert abs(std_w2 - 0.02 / 4) < 0.001  # 1/sqrt(2N) with N = 8


def test_flops_per_token_follows_6n_plus_attention():
    m = tiny()
    n = m.num_parameters(exclude_positions=True)
    assert m.flops_per_token(16) == 6 * n + 12 * 2 * 32 * 16


def test_an_untied_token_embedding_is_a_lookup_in_the_flop_count():
    """Only the matmuls count: with its own output matrix the input embedding is a lookup (MFU was overstated)."""
    tied, untied = tiny(), tiny(tie_output=False)
    extra = untied.num_parameters() - tied.num_parameters()
    assert extra == untied.output.weight.numel()
    assert untied.flops_per_token(16) == tied.flops_per_token(16)  # the same matmuls


def test_generate_method_gives_the_generation_modules_tokens():
    """model.generate is generation.sampling.generate with the model: the same tokens for lists and tensors, and
    every option reaches it (sampling with a seed, an eos token that ends rows, ignore_eos)."""
    from tformer.generation.sampling import generate

    model = tiny()
    with torch.no_grad():  # varied continuations (the default init mostly repeats the last token)
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.5)
    prompts = [[1, 2, 3], [7], [9, 8, 7, 6]]
    greedy = generate(model, prompts, 10)
    assert model.generate(prompts, 10) == greedy and len({tuple(r) for r in greedy}) == 3
    assert model.generate(torch.tensor([[1, 2, 3], [4, 5, 6]]), max_new_tokens=10) == \
        generate(model, [[1, 2, 3], [4, 5, 6]], 10)
    sampled = model.generate(prompts, 10, do_sample=True, seed=3, temperature=1.5)
    assert sampled == generate(model, prompts, 10, do_sample=True, seed=3, temperature=1.5) and sampled != greedy
    eos = greedy[0][2]
    assert model.generate(prompts, 10, eos_id=eos) == generate(model, prompts, 10, eos_id=eos) != greedy
    assert model.generate(prompts, 10, eos_id=eos, ignore_eos=True) == greedy
