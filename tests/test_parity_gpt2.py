"""Parity with transformers' GPT2LMHeadModel through real checkpoint directories, both ways."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tformer.errors import TformerError
from tformer.models.gpt import GPT, GPTConfig

transformers = pytest.importorskip("transformers")
from tformer.interop.gpt2 import (  # noqa: E402
    gpt2_config_to_tformer,
    gpt2_state_to_tformer,
    is_gpt2_dir,
    load_gpt2,
    save_gpt2,
    tformer_state_to_gpt2,
)

VOCAB, POSITIONS = 100, 32
HF_SIZES = dict(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)


def _randomize_(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random, norms and biases included (their defaults 1 and 0 would hide swapped names)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if "ln" in name or "norm" in name else 0.2 * noise)


def _hf_model(seed: int = 0, **options):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**{**HF_SIZES, **options}))
    _randomize_(model, seed)
    return model.eval()


def _left_padded_batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB - 1, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, :4] = False  # rows 1 and 2 are shorter prompts, padded on the left
    mask[2, :7] = False
    ids[~mask] = 0
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


@pytest.mark.parametrize("activation", ["gelu_new", "gelu", "gelu_pytorch_tanh", "relu"])
def test_load_gpt2_matches_transformers_logits(tmp_path, activation):
    ref = _hf_model(activation_function=activation, n_inner=48)
    ref.save_pretrained(tmp_path)
    assert is_gpt2_dir(tmp_path)
    ours = load_gpt2(tmp_path)
    assert not ours.training and ours.config.ff_width == 48

    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(input_ids=ids).logits, atol=1e-4, rtol=1e-4)

        ids, mask, positions = _left_padded_batch()
        a = ours(ids, attention_mask=mask, positions=positions).logits
        b = ref(input_ids=ids, attention_mask=mask.long(), position_ids=positions).logits
    torch.testing.assert_close(a[mask], b[mask], atol=1e-4, rtol=1e-4)  # real positions only


def test_load_gpt2_untied_head(tmp_path):
    ref = _hf_model(seed=1, tie_word_embeddings=False)
    assert ref.lm_head.weight.data_ptr() != ref.transformer.wte.weight.data_ptr()
    ref.save_pretrained(tmp_path)
    ours = load_gpt2(tmp_path)
    assert not ours.config.tie_output
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_an_untied_config_without_a_head_in_the_weights_says_what_the_head_is(tmp_path):
    """The head was quietly a copy of wte (transformers draws a random one and warns)."""
    from safetensors.torch import load_file, save_file

    ref = _hf_model(seed=6, tie_word_embeddings=False)
    ref.save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if k != "lm_head.weight"}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="unties lm_head from wte but the weights hold no lm_head.weight"):
        ours = load_gpt2(tmp_path)
    assert torch.equal(ours.output.weight, ours.tok_embed.weight) and not ours.config.tie_output


def test_a_head_that_differs_from_the_embeddings_is_loaded_untied(tmp_path):
    """config.json says tied, the file holds its own lm_head: transformers keeps both; so does tformer."""
    ref = _hf_model(seed=5, tie_word_embeddings=False)
    ref.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    with pytest.warns(UserWarning, match="lm_head.weight differs from wte.weight.*loaded untied"):
        ours = load_gpt2(tmp_path)
    assert not ours.config.tie_output
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.tok_embed.weight, ref.transformer.wte.weight)


def test_an_eos_outside_the_vocabulary_is_not_used(tmp_path):
    """GPT2Config's default eos_token_id (50256) survives in small configs; it must not reach the model."""
    from tformer.generation.scoring import token_logprobs

    ref = _hf_model(seed=6, eos_token_id=50256, bos_token_id=50256)
    ref.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="eos_token_id=50256 is not a token of the 100-token vocabulary"):
        ours = load_gpt2(tmp_path)
    assert ours.config.eos_id is None
    assert len(token_logprobs(ours, [1, 2, 3])) >= 2  # scoring used to index the embedding with 50256
    with pytest.raises(ValueError, match="eos_id must be a token id below vocab_size=100"):
        GPTConfig(vocab_size=VOCAB, max_len=8, d_model=8, n_heads=2, n_layers=1, eos_id=VOCAB)


def test_load_gpt2_from_old_pytorch_model_bin(tmp_path):
    """The original GPT-2 release: pytorch_model.bin, keys without "transformer.", causal-mask buffers."""
    ref = _hf_model(seed=4)
    ref.config.to_json_file(tmp_path / "config.json")
    state = {k.removeprefix("transformer."): v for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.ones(1, 1, POSITIONS, POSITIONS).tril()
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "pytorch_model.bin")
    ours = load_gpt2(tmp_path)
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def _greedy(model: GPT, ids: torch.Tensor, mask: torch.Tensor, n_new: int) -> torch.Tensor:
    """Greedy decoding of left-padded prompts with tformer's key/value cache; returns the (B, n_new) new ids."""
    cache = model.new_cache()
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(ids, attention_mask=mask, positions=positions, cache=cache).logits[:, -1]
    new = []
    for _ in range(n_new):
        next_ids = logits.argmax(-1, keepdim=True)  # (B, 1)
        new.append(next_ids)
        mask = torch.cat([mask, torch.ones_like(next_ids, dtype=torch.bool)], dim=1)
        positions = positions[:, -1:] + 1
        logits = model(next_ids, attention_mask=mask, positions=positions, cache=cache).logits[:, -1]
    return torch.cat(new, dim=1)


def test_greedy_generation_matches_transformers_generate(tmp_path):
    ref = _hf_model(seed=2)
    ref.save_pretrained(tmp_path)
    ours = load_gpt2(tmp_path)
    ids, mask, _ = _left_padded_batch()
    ids, mask = ids[:, :8], mask[:, :8]  # prompt + 10 new tokens fit in 32 positions
    mine = _greedy(ours, ids, mask, 10)
    with torch.no_grad():
        out = ref.generate(input_ids=ids, attention_mask=mask.long(), do_sample=False, max_new_tokens=10,
                           min_new_tokens=10, pad_token_id=0, use_cache=True)
    theirs = out[:, ids.size(1):]
    assert theirs.shape == (3, 10)
    assert torch.equal(mine, theirs)
    assert len(set(mine.flatten().tolist())) > 1  # not a degenerate model that repeats one token


@pytest.mark.parametrize("options", [dict(repetition_penalty=1.8), dict(repetition_penalty=0.7),
                                     dict(no_repeat_ngram_size=2), dict(no_repeat_ngram_size=1),
                                     dict(repetition_penalty=1.3, no_repeat_ngram_size=3)])
def test_repetition_options_match_transformers_generate(tmp_path, options):
    from tformer.generation.sampling import generate

    ref = _hf_model(seed=3)
    ref.save_pretrained(tmp_path)
    ours = load_gpt2(tmp_path)
    prompt = [5, 17, 5, 17, 42, 8, 5, 17]  # repeats inside the prompt: the options look at it too
    mine = generate(ours, [prompt], 16, **options)[0]
    with torch.no_grad():
        out = ref.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                           do_sample=False, max_new_tokens=16, min_new_tokens=16, pad_token_id=0, use_cache=True,
                           **options)
    theirs = out[0, len(prompt):].tolist()
    assert VOCAB - 1 not in theirs  # no end-of-text, which tformer would stop at and transformers forbids here
    assert mine == theirs
    assert mine != generate(ours, [prompt], 16)[0]  # the option changed the continuation


def test_a_pad_token_written_by_the_model_does_not_end_generation(tmp_path):
    """transformers' generate with pad_token_id set goes on past a pad token the model writes (the id only fills
    rows that already ended); tformer has no pad id for a GPT and gives the same tokens."""
    from tformer.generation.sampling import generate

    ref = _hf_model(seed=3)
    ref.save_pretrained(tmp_path)
    ours = load_gpt2(tmp_path)
    prompt = [5, 17, 42, 8]
    mine = generate(ours, [prompt], 16)[0]
    pad = mine[3]
    assert VOCAB - 1 not in mine and len(mine) == 16
    with torch.no_grad():
        out = ref.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                           do_sample=False, max_new_tokens=16, pad_token_id=pad, use_cache=True)
    assert out[0, len(prompt):].tolist() == mine  # the pad token and everything after it


def _tformer_model(seed: int = 0, **options) -> GPT:
    config = GPTConfig(**{"vocab_size": VOCAB, "max_len": POSITIONS, "d_model": 32, "n_heads": 2, "n_layers": 2,
                          "dropout": 0.0, "attention_dropout": 0.0, "eos_id": VOCAB - 1, **options})
    torch.manual_seed(seed)
    model = GPT(config)
    _randomize_(model, seed)
    return model.eval()


@pytest.mark.parametrize("options", [{}, {"activation": "gelu", "tie_output": False, "d_ff": 80}])
def test_save_gpt2_loads_in_transformers(tmp_path, options):
    from transformers import GPT2LMHeadModel

    ours = _tformer_model(seed=3, **options)
    save_gpt2(ours, tmp_path)
    saved = set(load_file(str(tmp_path / "model.safetensors")))
    assert ("transformer.wte.weight" in saved) and (("lm_head.weight" in saved) == ("tie_output" in options))
    ref = GPT2LMHeadModel.from_pretrained(tmp_path, local_files_only=True).eval()
    assert ref.config.tie_word_embeddings == ours.config.tie_output
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
    again = load_gpt2(tmp_path)
    assert again.config == ours.config


def test_save_gpt2_writes_tokenizer_and_replaces_the_model_files(tmp_path):
    from tformer.tokenization import train_lm_tokenizer

    tok = train_lm_tokenizer(["hello world"], kind="char")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    save_gpt2(_tformer_model(), tmp_path / "m", tokenizer=tok)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors", "notes.txt",
                                                                  "tokenizer.json", "tokenizer_config.json"]
    # transformers reads the folder's tokenizer as tformer does: without tokenizer_config.json it took it for
    # GPT-2's byte-level one and dropped the character vocabulary's spaces.
    from transformers import AutoTokenizer

    text = "hello world  low"
    assert AutoTokenizer.from_pretrained(str(tmp_path / "m"))(text)["input_ids"] == tok.encode(text)
    save_gpt2(_tformer_model(), tmp_path / "m")  # the earlier save's tokenizer would not belong to this model
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors", "notes.txt"]


@pytest.mark.parametrize("tie", [True, False])
def test_state_round_trip_is_exact(tie):
    model = _tformer_model(seed=5, tie_output=tie)
    state = model.state_dict()
    gpt2 = tformer_state_to_gpt2(state, 2)
    assert ("lm_head.weight" in gpt2) == (not tie)
    assert gpt2["transformer.h.0.mlp.c_fc.weight"].shape == (32, 128)  # Conv1D: (in, out)
    back = gpt2_state_to_tformer(gpt2, 2)
    assert back.keys() == state.keys()
    for name in state:
        assert torch.equal(back[name], state[name]), name
    # Unprefixed keys (GPT2Model.save_pretrained) and the old causal-mask buffers read the same.
    bare = {k.removeprefix("transformer."): v for k, v in gpt2.items()}
    bare["h.0.attn.bias"] = torch.ones(1, 1, 32, 32)
    bare["h.1.attn.masked_bias"] = torch.tensor(-1e4)
    assert all(torch.equal(gpt2_state_to_tformer(bare, 2)[k], v) for k, v in state.items())


def _one_line_error(fn, *args, match: str) -> None:
    with pytest.raises(TformerError, match=match) as info:
        fn(*args)
    assert "\n" not in str(info.value)


def test_bad_directories_raise_one_line_errors(tmp_path):
    _one_line_error(load_gpt2, tmp_path / "nowhere", match="not found")
    _one_line_error(load_gpt2, tmp_path, match="no config.json")
    assert not is_gpt2_dir(tmp_path)

    (tmp_path / "config.json").write_text('{"model_type": "gpt2", ')
    _one_line_error(load_gpt2, tmp_path, match="invalid JSON")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert not is_gpt2_dir(tmp_path)
    _one_line_error(load_gpt2, tmp_path, match="'bert', not 'gpt2'")

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", **HF_SIZES}))
    _one_line_error(load_gpt2, tmp_path, match="no model.safetensors")
    _one_line_error(save_gpt2, _tformer_model(norm_position="post"), tmp_path / "post", match="pre-LN")
    assert not (tmp_path / "post").exists()


def test_weights_that_do_not_fit_raise(tmp_path):
    _hf_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    _one_line_error(load_gpt2, tmp_path, match="lack h.2.ln_1.weight")
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_inner": 64}))
    _one_line_error(load_gpt2, tmp_path, match=r"do not fit config.json \(decoder.layers.0.ff.w1.weight")


@pytest.mark.parametrize("option, value", [("scale_attn_by_inverse_layer_idx", True), ("scale_attn_weights", False),
                                           ("add_cross_attention", True), ("activation_function", "quick_gelu")])
def test_unsupported_options_are_named(option, value):
    _one_line_error(gpt2_config_to_tformer, {"model_type": "gpt2", **HF_SIZES, option: value}, match=option)


def test_config_translation():
    c = gpt2_config_to_tformer({**HF_SIZES, "activation_function": "gelu_new", "n_inner": None,
                                "layer_norm_epsilon": 1e-6, "attn_pdrop": 0.05, "eos_token_id": [7, 8],
                                "reorder_and_upcast_attn": True})
    assert (c.activation, c.d_ff, c.eps, c.attention_dropout, c.eos_id) == ("gelu_tanh", 0, 1e-6, 0.05, 7)
