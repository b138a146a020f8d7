"""Using a pretrained encoder: contextual and sentence embeddings, [MASK] filling, semantic search.

Sentence embeddings pool the token states of one layer (or a mix of layers, feature-extraction style):
    cls     the [CLS] state                        (BERT's classification input)
    pooler  tanh(W h[CLS] + b)                     (what NSP was trained on)
    mean    the mean over real tokens, [CLS]/[SEP] included   (sentence-transformers; all-MiniLM-L6-v2)
Sentences are encoded in batches of similar length (sorted, then restored to input order), so little
compute goes to padding, and a batch with no padding runs attention without a mask.

A sentence-transformers directory (modules.json, 1_Pooling/config.json, sentence_bert_config.json) says
how its embeddings were trained: its pooling, its normalisation and its maximum length become the defaults.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from tformer.encoder_tokenization import EncoderTokenizer
from tformer.errors import TformerError
from tformer.models.bert import BertForPreTraining, BertModel
from tformer.models.heads import EncoderForTask
from tformer.models.validation import check_texts
from tformer.tokenization import piece_text

Pooling = Literal["cls", "mean", "max", "pooler"]
Combine = Literal["concat", "sum", "mean"]
MASK_PLACEHOLDER = "[MASK]"


@dataclass
class EncoderDefaults:
    """How a checkpoint's sentence embeddings are meant to be made."""

    pooling: Pooling | None = "cls"  # None: the folder asks for a pooling tformer lacks (`unsupported` says which)
    normalize: bool = False
    max_length: int | None = None
    unsupported: str = ""


def encoder_defaults(path: str | Path, model: BertModel | BertForPreTraining,
                     pooling: Pooling | None = None) -> EncoderDefaults:
    """sentence-transformers settings when the directory has them; [CLS] otherwise. `pooling`, when the caller
    has chosen one, is kept (the folder's own is then not read)."""
    path = Path(path)
    out = EncoderDefaults(max_length=model.config.max_tokens)
    pooling_file = path / "1_Pooling" / "config.json"
    try:
        if pooling is not None:
            out.pooling = pooling
        elif pooling_file.is_file():
            try:
                out.pooling = _sentence_transformers_pooling(json.loads(pooling_file.read_text()), pooling_file)
            except TformerError as exc:  # an error only for what needs a pooled vector (not --tokens, fill-mask)
                out.pooling, out.unsupported = None, str(exc)
        modules = path / "modules.json"
        if modules.is_file():
            out.normalize = any(str(m.get("type", "")).endswith("Normalize") for m in json.loads(modules.read_text()))
        st = path / "sentence_bert_config.json"
        if st.is_file():
            out.max_length = min(int(json.loads(st.read_text()).get("max_seq_length", out.max_length)),
                                 model.config.max_tokens)
    except (ValueError, TypeError, AttributeError) as exc:
        raise TformerError(f"{path}: unreadable sentence-transformers settings ({exc})") from None
    return out


# sentence-transformers' pooling modes (1_Pooling/config.json) that tformer computes, by their flag.
_ST_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max"}


def _sentence_transformers_pooling(cfg: dict, where: Path) -> Pooling:
    """The one pooling a sentence-transformers folder asks for; a mode tformer lacks (or several at once,
    concatenated) is refused, not replaced by another: its vectors would not be the model's."""
    chosen = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode_") and v)
    if not chosen:
        return "cls"
    if len(chosen) > 1 or chosen[0] not in _ST_POOLING:
        raise TformerError(f"{where}: pooling {', '.join(m.removeprefix('pooling_mode_') for m in chosen)} is not "
                           f"one tformer computes ({', '.join(_ST_POOLING.values())}); choose one with --pooling")
    return _ST_POOLING[chosen[0]]


def _encoder(model: BertModel | BertForPreTraining | EncoderForTask) -> BertModel:
    """The encoder of a pretrained model with its pretraining heads, or of a fine-tuned one with its task head."""
    return model.bert if isinstance(model, (BertForPreTraining, EncoderForTask)) else model


def _batches(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most batch_size sentences and max_tokens padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches, current = [], []
    for i in order:
        # Sorted longest first: the batch's first sentence sets its padded length.
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) >= batch_size or width * (len(current) + 1) > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _pad(rows: list[list[int]], types: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor, Tensor | None]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    type_ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for k, (r, t) in enumerate(zip(rows, types)):
        ids[k, : len(r)] = torch.tensor(r)
        type_ids[k, : len(t)] = torch.tensor(t)
        mask[k, : len(r)] = True
    return ids, type_ids, (None if bool(mask.all()) else mask)


def pool(hidden: Tensor, mask: Tensor | None, pooling: Pooling, pooled: Tensor | None = None) -> Tensor:
    """(B, T, D) token states -> (B, D) sentence vectors."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "pooler":
        if pooled is None:
            raise TformerError("the pooler reads the last layer only, of a model that has one: use pooling cls or "
                               "mean for other layers or a model without a pooler")
        return pooled
    if pooling == "mean":
        if mask is None:
            return hidden.mean(1)
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    if pooling == "max":  # each dimension's largest value over the real tokens (none: zeros, as mean gives)
        if mask is None:
            return hidden.amax(1)
        return hidden.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1).masked_fill(~mask.any(1, keepdim=True), 0.0)
    raise ValueError(f"unknown pooling {pooling!r}")


@torch.inference_mode()
def embed(model: BertModel | BertForPreTraining, tokenizer: EncoderTokenizer, sentences: Sequence[str],
          pooling: Pooling = "mean", layers: Sequence[int] = (-1,), combine: Combine = "concat",
          normalize: bool = False, batch_size: int = 64, max_length: int | None = None, truncation: str = "warn",
          pairs: Sequence[str] | None = None, tokens: bool = False, sort_by_length: bool = True,
          names: Sequence[str] | None = None) -> Tensor | list[Tensor]:
    """Sentence vectors (N, D) (D x len(layers) when concatenated), in input order.

    layers: which hidden states to read, 0 = the embeddings, 1..N = the layers, -1 = the last; several are
    concatenated, summed or averaged (combine). tokens=True returns each sentence's token vectors (T_i, D)
    instead of pooling them (contextual embeddings). Inputs longer than max_length (default: the model's
    positions) are truncated with one warning, or rejected (truncation="error"; `names` says where each
    sentence came from, for that error). sort_by_length batches
    sentences of similar length together (far less padding); the output is in input order either way.
    """
    sentences = check_texts(sentences)
    pairs = check_texts(pairs, "pairs") if pairs is not None else None
    encoder = _encoder(model)
    n_states = encoder.config.n_layers + 1
    for layer in layers:
        if not -n_states <= layer < n_states:
            raise TformerError(f"layer {layer} does not exist: the model has embeddings (0) and layers 1..{n_states - 1}")
    if combine not in ("concat", "sum", "mean"):
        raise TformerError(f"combine must be concat, sum or mean, not {combine!r}")
    if batch_size < 1:
        raise TformerError(f"batch size must be at least 1, not {batch_size}")
    limit = min(max_length or encoder.config.max_tokens, encoder.config.max_tokens)
    encoded = tokenizer.encode_batch(list(sentences), list(pairs) if pairs is not None else None,
                                     max_length=limit, truncation=truncation, names=names)
    device = next(encoder.parameters()).device
    results: list[Tensor | None] = [None] * len(encoded)
    only_last = [layer % n_states for layer in layers] == [n_states - 1]  # -1 or N alike: the last layer alone
    lengths = [len(e.ids) for e in encoded]
    if sort_by_length:
        batches = _batches(lengths, batch_size, max_tokens=batch_size * 128)
    else:  # input order (to compare with code that batches that way)
        batches = [list(range(i, min(i + batch_size, len(lengths)))) for i in range(0, len(lengths), batch_size)]
    for batch in batches:
        ids, type_ids, mask = _pad([encoded[i].ids for i in batch], [encoded[i].type_ids for i in batch],
                                   tokenizer.pad_id)
        ids, type_ids = ids.to(device), type_ids.to(device)
        mask = mask.to(device) if mask is not None else None
        out = encoder(ids, type_ids, mask, output_hidden_states=not only_last)
        states = [out.hidden] if only_last else [out.hidden_states[layer] for layer in layers]
        if combine == "concat" or len(states) == 1:
            hidden = torch.cat(states, dim=-1)
        else:
            hidden = torch.stack(states).sum(0) / (len(states) if combine == "mean" else 1)
        if tokens:
            for k, i in enumerate(batch):
                results[i] = hidden[k, : len(encoded[i].ids)].float().cpu()
            continue
        vectors = pool(hidden, mask, pooling, out.pooled if only_last else None).float()
        if normalize:
            vectors = F.normalize(vectors, dim=-1)
        for k, i in enumerate(batch):
            results[i] = vectors[k].cpu()
    if tokens:
        return results  # type: ignore[return-value]
    if not results:
        return torch.zeros(0, encoder.config.d_model * (len(layers) if combine == "concat" else 1))
    return torch.stack(results)  # type: ignore[arg-type]


@torch.inference_mode()
def fill_mask(model: BertModel | BertForPreTraining, tokenizer: EncoderTokenizer, text: str,
              top_k: int = 5) -> list[list[tuple[str, float]]]:
    """The top_k (token, probability) for every [MASK] in text (written [MASK] whatever the model's own
    mask token is)."""
    if not isinstance(model, BertForPreTraining):
        raise TformerError("this checkpoint has no masked-LM head (a bare encoder, or one fine-tuned for a task), "
                           "so it cannot fill masks")
    mask_token = tokenizer.id_to_token(tokenizer.mask_id)
    if MASK_PLACEHOLDER not in text and mask_token not in text:
        raise TformerError(f"the text has no {MASK_PLACEHOLDER} to fill")
    encoded = tokenizer.encode_batch([text.replace(MASK_PLACEHOLDER, mask_token)], max_length=model.config.max_tokens,
                                     truncation="error", names=["the text"])[0]
    ids = torch.tensor([encoded.ids], device=next(model.parameters()).device)
    positions = ids == tokenizer.mask_id
    if not bool(positions.any()):
        raise TformerError(f"the tokenizer did not keep {MASK_PLACEHOLDER} as one token")
    logits = model(ids, torch.tensor([encoded.type_ids], device=ids.device), mlm_positions=positions).mlm_logits
    probs = torch.softmax(logits.float(), dim=-1)
    special = [i for i in tokenizer.special_ids if i < probs.size(-1)]
    probs[:, special] = 0.0  # [PAD], [CLS], [MASK] ... are no word to fill in: never listed
    top = probs.topk(min(top_k, probs.size(-1) - len(special)), dim=-1)
    return [[(piece_text(tokenizer, i), float(p)) for p, i in zip(ps.tolist(), ix.tolist())]
            for ps, ix in zip(top.values, top.indices)]


def similar(model, tokenizer: EncoderTokenizer, query: str, sentences: Sequence[str], top_k: int = 10,
            names: Sequence[str] | None = None, **embed_options) -> list[tuple[float, int, str]]:
    """Sentences ranked by cosine similarity to the query: (cosine, index, sentence), best first. names: where
    each sentence came from, for errors (default "sentence K")."""
    if not sentences:
        raise TformerError("there are no sentences to rank")
    names = ["the query", *(names or [f"sentence {k + 1}" for k in range(len(sentences))])]
    vectors = embed(model, tokenizer, [query, *sentences], names=names, **{**embed_options, "normalize": True})
    scores = vectors[1:] @ vectors[0]
    top = scores.topk(min(top_k, len(sentences)))
    return [(float(s), int(i), sentences[int(i)]) for s, i in zip(top.values, top.indices)]


__all__ = ["embed", "fill_mask", "similar", "pool", "encoder_defaults", "EncoderDefaults"]
