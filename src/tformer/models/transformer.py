"""The encoder-decoder Transformer of Vaswani et al. 2017, "Attention Is All You Need".

Implements sections 3.1 (encoder and decoder stacks), 3.2 (multi-head attention, through tformer.nn),
3.3 (position-wise FFN), 3.4 (embeddings scaled by sqrt(d_model), output projection optionally tied to the
target embedding, optionally one embedding shared by source and target over a joint vocabulary) and 3.5
(positional encoding), with the paper's post-LN residual blocks. Departures are options with the paper's
choice as the default: pre-LN (`norm_position="pre"`), learned positions (`positional="learned"`),
GELU (`activation="gelu"`), attention dropout.

Shapes: B batch, S source length, T target length, D d_model, V vocabulary size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Literal

from torch import Tensor, nn

from tformer.errors import TformerError
from tformer.nn.cache import DecoderCache
from tformer.nn.dropout import Dropout
from tformer.nn.init import init_transformer_
from tformer.nn.layers import Decoder, Encoder
from tformer.models.validation import check_config, check_ids, check_ndim, check_token_id
from tformer.nn.linear import Linear
from tformer.nn.masks import causal_mask, check_boolean, unpad_if_worthwhile
from tformer.nn.positional import make_positional


@dataclass(frozen=True)
class TransformerConfig:
    """Sizes and options of an encoder-decoder Transformer; defaults are the paper's base model."""

    src_vocab_size: int = 37000
    tgt_vocab_size: int = 37000
    d_model: int = 512
    n_heads: int = 8  # h
    d_ff: int = 2048
    n_encoder_layers: int = 6  # N
    n_decoder_layers: int = 6
    dropout: float = 0.1  # P_drop: residual and embedding dropout
    attention_dropout: float = 0.0
    activation: Literal["relu", "gelu"] = "relu"
    norm_position: Literal["post", "pre"] = "post"
    positional: Literal["sinusoidal", "learned"] = "sinusoidal"
    max_len: int = 1024
    share_embeddings: bool = False  # one embedding for source and target (joint vocabulary)
    tie_output: bool = True  # output projection = target embedding matrix (section 3.4)
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self):
        check_config(self, positive=("d_model", "n_heads", "d_ff", "src_vocab_size", "tgt_vocab_size", "max_len",
                                     "n_encoder_layers", "n_decoder_layers"))
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError("share_embeddings needs one joint vocabulary (src_vocab_size == tgt_vocab_size)")
        smaller = min(("src_vocab_size", self.src_vocab_size), ("tgt_vocab_size", self.tgt_vocab_size),
                      key=lambda named: named[1])
        check_token_id(self, "pad_id", smaller[1], smaller[0])  # padding in both vocabularies
        for name in ("bos_id", "eos_id"):  # target tokens
            check_token_id(self, name, self.tgt_vocab_size, "tgt_vocab_size")

    @property
    def d_k(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return {"model_type": "transformer", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "TransformerConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class TokenEmbedding(nn.Module):
    """Token embedding * sqrt(d_model) + positional encoding, then dropout (section 3.4 and 3.5)."""

    def __init__(self, embedding: nn.Embedding, positional: nn.Module, dropout: float):
        super().__init__()
        self.embedding = embedding
        self.positional = positional
        self.scale = math.sqrt(embedding.embedding_dim)
        self.dropout = Dropout(dropout)

    def forward(self, ids: Tensor, offset: int = 0) -> Tensor:
        x = self.embedding(ids) * self.scale  # (B, T, D)
        return self.dropout(x + self.positional(ids.size(1), offset))


@dataclass
class Seq2SeqOutput:
    logits: Tensor  # (B, T, V)
    encoder_attentions: list[Tensor] | None = None  # per layer (B, H, S, S)
    decoder_attentions: list[Tensor] | None = None  # per layer (B, H, T, T)
    cross_attentions: list[Tensor] | None = None  # per layer (B, H, T, S)


class Transformer(nn.Module):
    """Encoder-decoder Transformer. `encode` once, then `decode` (with a cache for step-by-step decoding)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = c = config
        src_emb = nn.Embedding(c.src_vocab_size, c.d_model, padding_idx=c.pad_id)
        tgt_emb = src_emb if c.share_embeddings else nn.Embedding(c.tgt_vocab_size, c.d_model, padding_idx=c.pad_id)
        self.src_embed = TokenEmbedding(src_emb, make_positional(c.positional, c.d_model, c.max_len), c.dropout)
        self.tgt_embed = TokenEmbedding(tgt_emb, make_positional(c.positional, c.d_model, c.max_len), c.dropout)
        layer_args = dict(d_model=c.d_model, n_heads=c.n_heads, d_ff=c.d_ff, dropout=c.dropout,
                          attention_dropout=c.attention_dropout, activation=c.activation,
                          norm_position=c.norm_position)
        self.encoder = Encoder(c.n_encoder_layers, **layer_args)
        self.decoder = Decoder(c.n_decoder_layers, **layer_args)
        self.output = Linear(c.d_model, c.tgt_vocab_size, bias=False)
        init_transformer_(self, c.d_model, c.pad_id)
        if c.tie_output:
            self.output.weight = tgt_emb.weight
        self.unpad = True  # run the encoder on the real source tokens only (False: the plain padded path)

    # -- the two halves -------------------------------------------------------------------------------

    def encode(self, src: Tensor, need_weights: bool = False):
        """src (B, S) ids -> memory (B, S, D), source mask (B, 1, 1, S) [, per-layer self-attention weights].

        When a batch has enough padding the encoder runs on its real tokens only, and memory is 0 at padding."""
        check_ids(src, self.config.src_vocab_size, "source ids", ndim=2)
        real = src != self.config.pad_id
        src_mask = real[:, None, None, :]  # (B, 1, 1, S)
        x = self.src_embed(src)
        # Padding is dropped from everything but the attention scores (same numbers, less work); the
        # memory comes back padded with zeros there, which cross-attention never reads.
        unpadded = unpad_if_worthwhile(real) if self.unpad else None
        if unpadded is not None:
            x = unpadded.unpad(x)
        memory, weights = self.encoder(x, src_mask, need_weights, unpadded=unpadded)
        if unpadded is not None:
            memory = unpadded.pad(memory)
        return (memory, src_mask, weights) if need_weights else (memory, src_mask)

    def decode_hidden(self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor, cache: DecoderCache | None = None,
                      need_weights: bool = False):
        """Decoder states (B, T, D) for target inputs (B, T) given the encoder memory.

        Without a cache tgt_in is the whole prefix and a causal mask hides the future; with a cache tgt_in is
        only the new token(s) and the cached keys/values supply the past.
        Returns (hidden, self-attention weights, cross-attention weights).
        """
        check_ids(tgt_in, self.config.tgt_vocab_size, "target ids", ndim=2)
        offset = cache.length if cache is not None else 0
        t = tgt_in.size(1)
        # Targets are padded on the right, so the causal mask alone already hides every padding key from
        # every real query; what padding queries compute is never scored.
        self_mask = causal_mask(t, offset + t, device=tgt_in.device) if t > 1 else None
        x = self.tgt_embed(tgt_in, offset)
        return self.decoder(x, memory, self_mask, src_mask, cache, need_weights)

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor, cache: DecoderCache | None = None) -> Tensor:
        """Next-token logits (B, T, V)."""
        hidden, _, _ = self.decode_hidden(tgt_in, memory, src_mask, cache)
        return self.output(hidden)

    def new_cache(self) -> DecoderCache:
        return DecoderCache(len(self.decoder.layers))

    def forward(self, src: Tensor, tgt_in: Tensor, keep: Tensor | None = None,
                need_weights: bool = False) -> Seq2SeqOutput:
        """Teacher forcing: src (B, S), tgt_in (B, T) = <s> + target[:-1] -> logits (B, T, V).

        keep (B, T) bool: project to the vocabulary only where True and return logits (N, V) for those N
        positions. Training passes the non-padding positions, so no work goes into logits nobody scores.
        """
        check_ndim(src, 2, "source ids")  # before the rows are compared
        check_ndim(tgt_in, 2, "target ids")
        if src.size(0) != tgt_in.size(0):
            raise TformerError(f"{src.size(0)} source rows for {tgt_in.size(0)} target rows: one target per source")
        check_boolean(keep, "keep")
        if need_weights:
            memory, src_mask, enc_w = self.encode(src, need_weights=True)
        else:
            (memory, src_mask), enc_w = self.encode(src), None
        hidden, dec_w, cross_w = self.decode_hidden(tgt_in, memory, src_mask, need_weights=need_weights)
        if keep is not None:
            hidden = hidden[keep]  # (N, D)
        return Seq2SeqOutput(self.output(hidden), enc_w, dec_w if need_weights else None,
                             cross_w if need_weights else None)

    def num_parameters(self) -> int:
        """Distinct parameters, frozen ones included (tied and shared matrices counted once)."""
        return sum(p.numel() for p in self.parameters())
