"""Bidirectional encoders: BERT (Devlin et al. 2019), RoBERTa (Liu et al. 2019), ALBERT (Lan et al. 2020).

The Transformer's encoder, pretrained to fill in masked tokens:
    h_0 = LayerNorm(E_tok[x] + E_seg[s] + E_pos[t])      token + segment (token type) + learned position
    h_l = EncoderLayer(h_{l-1}), l = 1..N                 post-LN self-attention + GELU FFN (tformer.nn.layers)
    pooled = tanh(W_p h_N[CLS] + b_p)                     the pooler, input of the sentence-level head
Pretraining heads: masked LM, P(x_t | h_N[t]) = softmax(LN(GELU(W h + b)) E_tok^T + b_V), the output matrix
tied to the token embedding; and a 2-way classifier on `pooled` for next-sentence prediction (BERT) or
sentence-order prediction (ALBERT).

The family differs in options, not in code:
    RoBERTa   no NSP (sentence_objective="none"), dynamic masking (a data choice), byte-level BPE, and
              positions that start after the padding id (position_offset = pad_id + 1 = 2)
    ALBERT    factorized embeddings: tokens embedded in E < H dimensions, then projected to H
              (embedding_size=E); one layer's parameters shared by all N layers (share_layers); SOP

Shapes: B batch, T tokens, D = H = d_model, E embedding width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tformer.errors import TformerError
from tformer.nn.dropout import Dropout
from tformer.nn.activations import ACTIVATIONS
from tformer.nn.init import init_bert_
from tformer.nn.layers import Encoder
from tformer.models.validation import check_config, check_ids, check_token_id
from tformer.nn.linear import Linear
from tformer.nn.masks import check_boolean, token_mask, unpad_if_worthwhile
from tformer.nn.positional import LearnedPositionalEmbedding

SentenceObjective = Literal["nsp", "sop", "none"]


@dataclass(frozen=True)
class BertConfig:
    """Sizes and options of a BERT-family encoder; defaults are BERT-base (110M)."""

    vocab_size: int = 30522
    max_len: int = 512  # learned positions (max_position_embeddings)
    d_model: int = 768  # H
    n_heads: int = 12  # h (A in the BERT paper)
    n_layers: int = 12  # N (L in the BERT paper)
    d_ff: int = 3072  # 4H
    type_vocab_size: int = 2  # segments A and B; 0: no segment embedding
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: Literal["gelu", "gelu_tanh", "relu"] = "gelu"  # FFN and MLM head (ALBERT: gelu_tanh)
    eps: float = 1e-12  # LayerNorm epsilon (BERT's; RoBERTa's checkpoints use 1e-5)
    pad_id: int = 0
    position_offset: int = 0  # RoBERTa: pad_id + 1, the first position id of a real token
    embedding_size: int = 0  # ALBERT's E; 0: E = H (no factorization)
    share_layers: bool = False  # ALBERT: one layer's parameters for all N
    sentence_objective: SentenceObjective = "nsp"  # the pretraining head on the pooled [CLS]
    pooler: bool = True
    family: Literal["bert", "roberta", "albert"] = "bert"  # which Hugging Face format it exports to

    def __post_init__(self):
        check_config(self, positive=("vocab_size", "max_len", "d_model", "n_heads", "n_layers", "d_ff", "eps"))
        for name in ("type_vocab_size", "embedding_size", "position_offset"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, not {getattr(self, name)}")
        check_token_id(self, "pad_id", self.vocab_size)
        if self.position_offset >= self.max_len:
            raise ValueError(f"position_offset={self.position_offset} leaves none of the max_len={self.max_len} "
                             "positions for tokens")
        if self.sentence_objective != "none" and not self.pooler:
            raise ValueError(f"sentence_objective={self.sentence_objective!r} needs the pooler")

    @property
    def d_embed(self) -> int:
        """E: the width tokens are embedded in (H unless factorized)."""
        return self.embedding_size or self.d_model

    @property
    def d_k(self) -> int:
        return self.d_model // self.n_heads

    @property
    def max_tokens(self) -> int:
        """The longest input, special tokens included (RoBERTa's offset uses up positions)."""
        return self.max_len - self.position_offset

    def to_dict(self) -> dict:
        return {"model_type": "encoder", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "BertConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class EncoderOutput:
    hidden: Tensor  # (B, T, D) the last layer's states
    pooled: Tensor | None = None  # (B, D) tanh(W h[CLS] + b), when the model has a pooler
    hidden_states: list[Tensor] | None = None  # N + 1 tensors (B, T, D): embeddings, then every layer
    attentions: list[Tensor] | None = None  # per layer (B, H, T, T)


class BertEmbeddings(nn.Module):
    """LayerNorm(token + segment + position) with dropout, then E -> H when factorized (ALBERT)."""

    def __init__(self, c: BertConfig):
        super().__init__()
        e = c.d_embed
        self.offset, self.pad_id = c.position_offset, c.pad_id
        self.tok_embed = nn.Embedding(c.vocab_size, e)
        self.type_embed = nn.Embedding(c.type_vocab_size, e) if c.type_vocab_size else None
        self.pos_embed = LearnedPositionalEmbedding(e, c.max_len)
        self.norm = nn.LayerNorm(e, eps=c.eps)
        self.dropout = Dropout(c.dropout)
        # ALBERT always maps E -> H, even when E = H (as its reference implementation does, so its checkpoints fit).
        self.project = Linear(e, c.d_model) if e != c.d_model or c.family == "albert" else None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # tformer's ALBERT had no E -> H map when E = H until 2026-12; the identity is the same function, so such
        # checkpoints load (and resume) as they were.
        weight = prefix + "project.weight"
        if self.project is not None and weight not in state_dict and prefix + "tok_embed.weight" in state_dict \
                and self.project.in_features == self.project.out_features:
            state_dict[weight] = torch.eye(self.project.out_features)
            state_dict[prefix + "project.bias"] = torch.zeros(self.project.out_features)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, ids: Tensor, type_ids: Tensor | None = None, attention_mask: Tensor | None = None) -> Tensor:
        t = ids.size(1)
        if self.offset:
            # RoBERTa numbers real tokens from offset on, skipping padding; padding sits at offset - 1. Without a
            # mask, padding is told by its id, as RoBERTa does.
            if attention_mask is None:
                attention_mask = ids != self.pad_id
            counted = attention_mask.long().cumsum(1)
            positions = torch.where(attention_mask, counted - 1 + self.offset, self.offset - 1)
            pos = self.pos_embed.weight[positions]  # (B, T, E)
        else:
            pos = self.pos_embed(t, self.offset)  # (T, E), shared by every row
        x = self.tok_embed(ids) + pos
        if self.type_embed is not None:
            # No segment ids: everything is segment A (row 0), without a lookup.
            x = x + (self.type_embed(type_ids) if type_ids is not None else self.type_embed.weight[0])
        x = self.dropout(self.norm(x))
        return self.project(x) if self.project is not None else x


class Pooler(nn.Module):
    """tanh(W h[CLS] + b): the sentence representation NSP/SOP and BERT's classifiers read."""

    def __init__(self, d_model: int):
        super().__init__()
        self.dense = Linear(d_model, d_model)

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class BertModel(nn.Module):
    """The encoder: embeddings, N post-LN layers, pooler. No pretraining heads (see BertForPreTraining)."""

    def __init__(self, config: BertConfig, init: bool = True):
        super().__init__()
        self.config = c = config
        self.embeddings = BertEmbeddings(c)
        self.encoder = Encoder(c.n_layers, c.d_model, c.n_heads, c.d_ff, c.dropout, c.attention_dropout,
                               c.activation, "post", c.eps, share_layers=c.share_layers)
        self.pooler = Pooler(c.d_model) if c.pooler else None
        self.unpad = True  # run padded batches on their real tokens only (False: the plain padded path)
        if init:
            init_bert_(self, pad_id=c.pad_id)

    def forward(self, ids: Tensor, type_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                need_weights: bool = False, output_hidden_states: bool = False) -> EncoderOutput:
        """ids (B, T); type_ids (B, T) segment ids (None: all 0); attention_mask (B, T) bool, True at real
        tokens (None: no padding; 1/0 integers read the same). Padding keys are masked out of every query's
        attention. The states at padding positions mean nothing (0 when the batch ran unpadded, else what the
        padding queries computed): pool with the mask, as `tasks.encoding.embed` does."""
        c = self.config
        if ids.size(1) > c.max_tokens:
            raise ValueError(f"{ids.size(1)} tokens exceed the model's {c.max_tokens} positions")
        if ids.size(1) == 0:
            raise TformerError("an empty sequence: the encoder needs at least one token per row")
        check_ids(ids, c.vocab_size)
        if type_ids is not None:
            if not c.type_vocab_size:
                raise TformerError("type_ids given, but the model has no segment embeddings (type_vocab_size 0)")
            check_ids(type_ids, c.type_vocab_size, "type_ids")
        attention_mask = token_mask(attention_mask)
        x = self.embeddings(ids, type_ids, attention_mask)
        mask = attention_mask[:, None, None, :] if attention_mask is not None else None  # (B, 1, 1, T)
        states: list[Tensor] | None = [] if output_hidden_states else None
        unpadded = None
        if attention_mask is not None and self.unpad:
            # Padding is dropped from everything but the attention scores: same numbers, less work.
            unpadded = unpad_if_worthwhile(attention_mask)
            if unpadded is not None:
                x = unpadded.unpad(x)
        hidden, weights = self.encoder(x, mask, need_weights, hidden_states=states, unpadded=unpadded)
        if unpadded is not None:
            hidden = unpadded.pad(hidden)
            states = [unpadded.pad(s) for s in states] if states is not None else None
        pooled = self.pooler(hidden) if self.pooler is not None else None
        return EncoderOutput(hidden, pooled, states, weights if need_weights else None)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class MaskedLMHead(nn.Module):
    """Scores every vocabulary token at the given states: LN(act(W h + b)) E_tok^T + b_V.

    ALBERT's head maps H -> E before the tied E-wide output matrix."""

    def __init__(self, c: BertConfig, embedding: nn.Embedding):
        super().__init__()
        self.dense = Linear(c.d_model, c.d_embed)
        self.activation = ACTIVATIONS[c.activation]
        self.norm = nn.LayerNorm(c.d_embed, eps=c.eps)
        self.embedding = [embedding]  # the tied matrix, held outside the module tree so it is stored once
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))

    def forward(self, hidden: Tensor) -> Tensor:
        h = self.norm(self.activation(self.dense(hidden)))
        return F.linear(h, self.embedding[0].weight, self.bias)


@dataclass
class PreTrainingOutput:
    mlm_logits: Tensor  # (M, V) at the M selected positions, or (B, T, V) when none were selected
    sentence_logits: Tensor | None  # (B, 2) NSP / SOP, when the model has that head
    encoder: EncoderOutput


class BertForPreTraining(nn.Module):
    """Encoder + masked-LM head (+ NSP or SOP head on the pooled [CLS] state)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = c = config
        self.bert = BertModel(c, init=False)
        self.mlm_head = MaskedLMHead(c, self.bert.embeddings.tok_embed)
        self.sentence_head = Linear(c.d_model, 2) if c.sentence_objective != "none" else None
        init_bert_(self, pad_id=c.pad_id)

    def forward(self, ids: Tensor, type_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                mlm_positions: Tensor | None = None, need_weights: bool = False) -> PreTrainingOutput:
        """mlm_positions (B, T) bool: score the vocabulary only there. Pretraining masks 15% of the tokens,
        and the V-way output matrix costs as much as the whole encoder of a small model, so scoring every
        position would double the work for logits no loss reads."""
        check_boolean(mlm_positions, "mlm_positions")
        out = self.bert(ids, type_ids, attention_mask, need_weights)
        selected = out.hidden[mlm_positions] if mlm_positions is not None else out.hidden
        sentence = self.sentence_head(out.pooled) if self.sentence_head is not None else None
        return PreTrainingOutput(self.mlm_head(selected), sentence, out)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
