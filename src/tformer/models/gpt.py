"""Decoder-only language models: GPT (Radford et al. 2018) and GPT-2 (Radford et al. 2019).

The Transformer's decoder without encoder-decoder attention, trained to predict the next token:
    h_0 = U W_e + W_p                       token embeddings plus learned positions
    h_l = block(h_{l-1})  for l = 1..N       masked self-attention + FFN (tformer.nn.layers.DecoderLayer)
    P(u) = softmax(h_N W_e^T)               output projection tied to the token embedding
GPT-2 moved LayerNorm to the input of each sub-block and added one after the last block (pre-LN, the
default here); GPT-1's post-LN is `norm_position="post"`. The FFN uses GELU (tanh form, as GPT-2).

Shapes: B batch, T new positions, S all positions so far (cache + new), D d_model, V vocabulary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

import torch
from torch import Tensor, nn

from tformer.models.validation import check_config, check_ids
from tformer.nn.cache import DecoderCache
from tformer.nn.dropout import Dropout
from tformer.nn.init import init_gpt_
from tformer.nn.layers import Decoder
from tformer.nn.linear import Linear
from tformer.nn.masks import causal_mask, check_boolean, combine, token_mask
from tformer.nn.positional import LearnedPositionalEmbedding


@dataclass(frozen=True)
class GPTConfig:
    """Sizes and options of a decoder-only language model; defaults are GPT-2 small (124M)."""

    vocab_size: int = 50257
    max_len: int = 1024  # context window (GPT-2's n_positions)
    d_model: int = 768
    n_heads: int = 12  # h
    n_layers: int = 12  # N
    d_ff: int = 0  # 0: 4 * d_model
    dropout: float = 0.1  # residual and embedding dropout
    attention_dropout: float = 0.1
    activation: Literal["gelu", "gelu_tanh", "relu"] = "gelu_tanh"
    norm_position: Literal["pre", "post"] = "pre"
    eps: float = 1e-5  # LayerNorm epsilon
    tie_output: bool = True
    eos_id: int | None = None  # <|endoftext|> (GPT-2: 50256); generation stops there by default

    def __post_init__(self):
        check_config(self, positive=("vocab_size", "max_len", "d_model", "n_heads", "n_layers", "eps"))
        if self.d_ff < 0:
            raise ValueError(f"d_ff must not be negative (0: 4 * d_model), not {self.d_ff}")
        if self.eos_id is not None and not 0 <= self.eos_id < self.vocab_size:
            raise ValueError(f"eos_id must be a token id below vocab_size={self.vocab_size} (or null), "
                             f"not {self.eos_id}")

    @property
    def ff_width(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def d_k(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return {"model_type": "gpt", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "GPTConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class LMOutput:
    logits: Tensor  # (B, T, V), or (N, V) for the positions `keep` selected
    hidden: Tensor | None = None  # (B, T, D) final states, when asked for
    attentions: list[Tensor] | None = None  # per layer (B, H, T, S)


class GPT(nn.Module):
    """Decoder-only Transformer language model."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.tok_embed = nn.Embedding(c.vocab_size, c.d_model)  # W_e
        self.pos_embed = LearnedPositionalEmbedding(c.d_model, c.max_len)  # W_p
        self.dropout = Dropout(c.dropout)
        self.decoder = Decoder(c.n_layers, c.d_model, c.n_heads, c.ff_width, c.dropout, c.attention_dropout,
                               c.activation, c.norm_position, cross_attention=False, eps=c.eps)
        self.output = Linear(c.d_model, c.vocab_size, bias=False)
        init_gpt_(self, c.n_layers)
        if c.tie_output:
            self.output.weight = self.tok_embed.weight

    def new_cache(self, capacity: int = 0) -> DecoderCache:
        """An empty key/value cache; capacity = the positions generation will reach, when known."""
        return DecoderCache(self.config.n_layers, min(capacity, self.config.max_len))

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None, positions: Tensor | None = None,
                cache: DecoderCache | None = None, keep: Tensor | None = None, need_weights: bool = False,
                return_hidden: bool = False) -> LMOutput:
        """Next-token logits for ids (B, T).

        attention_mask (B, S) bool (or 1/0), True at real tokens of everything seen so far (cached + new): batched
        prompts are padded on the left and their padding must not be attended to. positions (B, T): the
        position of each new token (left-padded rows start counting at their first real token); default
        cache length .. cache length + T - 1. With a cache, ids are only the new tokens.
        keep (B, T) bool: project to the vocabulary only there (training skips what no loss reads).
        """
        b, t = ids.shape
        check_ids(ids, self.config.vocab_size)
        check_boolean(keep, "keep")
        attention_mask = token_mask(attention_mask)
        offset = cache.length if cache is not None else 0
        if positions is None:
            if offset + t > self.config.max_len:
                raise ValueError(f"{offset + t} positions exceed the context window of {self.config.max_len}")
            pos = self.pos_embed(t, offset)  # (T, D), shared by every row
        else:
            check_ids(positions, self.config.max_len, "positions")
            pos = self.pos_embed.weight[positions]  # (B, T, D)
        x = self.dropout(self.tok_embed(ids) + pos)
        if attention_mask is None and offset == 0:
            # One whole unpadded sequence: the kernels apply causality themselves, no mask is built.
            mask, is_causal = None, t > 1
        else:
            causal = causal_mask(t, offset + t, device=ids.device) if t > 1 else None
            keys = attention_mask[:, None, None, :] if attention_mask is not None else None  # (B, 1, 1, S)
            mask, is_causal = combine(causal, keys), False
        hidden, self_w, _ = self.decoder(x, self_mask=mask, cache=cache, need_weights=need_weights,
                                         is_causal=is_causal)
        selected = hidden[keep] if keep is not None else hidden
        return LMOutput(self.output(selected), hidden if return_hidden else None,
                        self_w if need_weights else None)

    def generate(self, prompts: list[list[int]] | Tensor, max_new_tokens: int, **options) -> list[list[int]]:
        """The new token ids (at most max_new_tokens) after each prompt: tformer.generation.sampling.generate
        with this model, and the same options (do_sample, temperature, top_k, top_p, eos_id, ignore_eos, seed,
        stop_ids, repetition_penalty, no_repeat_ngram_size, use_cache).

        prompts: token ids, a list of lists (one per prompt, lengths may differ) or a (B, T) tensor of B prompts
        with T real tokens each (no padding: give prompts of different lengths as lists). Unlike transformers'
        generate, which returns prompt + continuation as one padded tensor, this returns the continuation
        alone, one list per prompt, without the end-of-text token. Text in, text out: generate_text."""
        # Imported here: generation builds on the models package (tformer.models.validation), not the reverse.
        from tformer.generation.sampling import generate

        return generate(self, prompts, max_new_tokens, **options)

    def num_parameters(self, exclude_positions: bool = False) -> int:
        """Distinct parameters (the tied output matrix counted once); GPT-2's 124M counts positions too."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.pos_embed.weight.numel() if exclude_positions else n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6N + 12 L D T (Kaplan et al. 2020)."""
        from tformer.training.throughput import gpt_flops_per_token

        c = self.config
        lookups = self.pos_embed.weight.numel()  # an untied token embedding is a lookup as well, no matmul
        if not c.tie_output:
            lookups += self.tok_embed.weight.numel()
        return gpt_flops_per_token(self.num_parameters(), c.n_layers, c.d_model, seq_len or c.max_len,
                                   n_embedding_params=lookups)
