"""The attention maps of a saved model for one input: every layer's and head's weights, and the tokens they
relate, ready to be drawn by `viz.attention` (or read as numbers).

    language model (tformer GPT, GPT-2)       causal self-attention over the text
    encoder (tformer's BERT family, BERT,     self-attention over [CLS] text [SEP] (and a second text, for
      RoBERTa, ALBERT; fine-tuned too)          sentence-pair models)
    translation Transformer                   encoder-decoder attention ("cross", the default), or the
                                                encoder's or the decoder's self-attention, over the model's
                                                own greedy translation unless a target is given

Row t of a map is query t's attention distribution over the keys (it sums to 1). For a translation, row t
is the decoder position that produces target token t (the last produces </s>), and the decoder's columns
are the tokens it has been fed: <s> and the target so far.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tformer.errors import TformerError
from tformer.tokenization import piece_text
from tformer.training import checkpoint

# The maps each family of model has, the default first.
KINDS = {"language model": ("self",), "encoder": ("self",), "translation": ("cross", "encoder", "decoder")}
# What a map's columns (keys) and rows (queries) are, by kind.
AXES = {"self": ("tokens attended to", "attending tokens"),
        "cross": ("source tokens", "target tokens produced"),
        "encoder": ("source tokens attended to", "source tokens"),
        "decoder": ("target tokens fed (<s> first)", "target tokens produced")}


@dataclass
class AttentionMaps:
    """weights (L, H, T, S): layer, head, query, key; rows and columns: the T query and S key tokens."""

    weights: np.ndarray
    rows: list[str]
    columns: list[str]
    kind: str  # "self", "cross", "encoder" or "decoder"
    family: str  # a key of KINDS
    output: str = ""  # translation: the target the maps were computed on


def readable(token: str) -> str:
    """A token as a tick label: spaces, newlines and the tokenizers' word-start marks made visible."""
    for mark, shown in (("▁", "␣"), ("Ġ", "␣"), (" ", "␣"), ("Ċ", "↵"), ("\n", "↵"), ("\t", "⇥")):
        token = token.replace(mark, shown)
    return token


def token_labels(tokenizer, ids) -> list[str]:
    """Tick labels of token ids: byte-level pieces as their text (tokenization.piece_text), made `readable`."""
    return [readable(piece_text(tokenizer, i)) for i in ids]


def _article(family: str) -> str:
    return f"an {family}" if family[0] in "aeiou" else f"a {family}"


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _stack(per_layer) -> np.ndarray:
    """Per-layer (1, H, T, S) weights -> (L, H, T, S) float32."""
    return torch.stack(per_layer)[:, 0].float().cpu().numpy()


@torch.no_grad()
def language_model_maps(model, tokenizer, text: str, pair: str | None = None, classifier: bool = False
                        ) -> AttentionMaps:
    """A GPT's causal self-attention over `text`; classifier: as a GPT-1 fine-tuned classifier reads it (and
    `pair`), framed by its start, delimiter and extract tokens."""
    from tformer.tasks.finetune_gpt import gpt1_input, gpt1_special_tokens

    if pair is not None and not classifier:
        raise TformerError("a text pair is for encoders and fine-tuned classifiers, not a language model")
    for part, what in ((text, "the text"), (pair, "the text pair")):
        if part is not None:
            tokenizer.check_chars(part, what)
    ids = tokenizer.encode(text)
    if classifier:
        ids = gpt1_input(gpt1_special_tokens(tokenizer), ids, None if pair is None else tokenizer.encode(pair))
    _check_length(len(ids), model.config.max_len, "the text" if pair is None else "the text pair")
    out = model(torch.tensor([ids], device=_device(model)), need_weights=True)
    tokens = token_labels(tokenizer, ids)
    return AttentionMaps(_stack(out.attentions), tokens, tokens, "self", "language model")


@torch.no_grad()
def encoder_maps(model, tokenizer, text: str, pair: str | None = None) -> AttentionMaps:
    """A BERT-family encoder's self-attention over `text` (and `pair`), special tokens included. `model` is a
    BertModel or holds one as `.bert` (pretraining heads, a fine-tuned task head)."""
    bert = getattr(model, "bert", model)
    for part, what in ((text, "the text"), (pair, "the text pair")):
        if part is not None and not tokenizer.tokens(part):
            raise TformerError(f"{what} is empty")
    encoded = tokenizer.encode_batch([text], None if pair is None else [pair])[0]
    _check_length(len(encoded.ids), bert.config.max_tokens,
                  "the text (with its special tokens)" if pair is None else "the text pair (with its special tokens)")
    device = _device(bert)
    out = bert(torch.tensor([encoded.ids], device=device), torch.tensor([encoded.type_ids], device=device),
               need_weights=True)
    tokens = token_labels(tokenizer, encoded.ids)
    return AttentionMaps(_stack(out.attentions), tokens, tokens, "self", "encoder")


@torch.no_grad()
def translation_maps(model, src_tok, tgt_tok, source: str, target: str | None = None,
                     kind: str = "cross") -> AttentionMaps:
    """An encoder-decoder Transformer's attention for `source` and `target` (None: its greedy translation)."""
    from tformer.generation.search import greedy_decode, never_generated

    c, device = model.config, _device(model)
    src_tok.check_chars(source, "the source")
    src_ids = src_tok.encode(source)
    _check_length(len(src_ids), c.max_len, "the source")
    src = torch.tensor([src_ids], device=device)
    own = target is None and kind != "encoder"  # the encoder's maps do not depend on a target
    if target is None:
        tgt_ids = greedy_decode(model, src)[0] if own else []
        target = tgt_tok.decode(tgt_ids)
    else:
        tgt_tok.check_chars(target, "the target")
        tgt_ids = tgt_tok.encode(target)
        _check_length(len(tgt_ids) + 1, c.max_len, "the target (with <s>)")
    out = model(src, torch.tensor([[c.bos_id, *tgt_ids]], device=device), need_weights=True)
    src_tokens = token_labels(src_tok, src_ids)
    # The last row produces what follows the target: </s> for a given target; for the model's own translation,
    # its next token, which is </s> unless decoding stopped at its length limit first.
    if own:  # greedy's choice there: <pad> and <s> are never produced
        final = out.logits[0, -1].clone()
        final[never_generated(c)] = float("-inf")
        last = int(final.argmax())
    else:
        last = c.eos_id
    if last != c.eos_id:
        target += " ..."
    produced = token_labels(tgt_tok, tgt_ids) + ["</s>" if last == c.eos_id else token_labels(tgt_tok, [last])[0]]
    fed = ["<s>"] + produced[:-1]
    per_layer, rows, columns = {"cross": (out.cross_attentions, produced, src_tokens),
                                "encoder": (out.encoder_attentions, src_tokens, src_tokens),
                                "decoder": (out.decoder_attentions, produced, fed)}[kind]
    return AttentionMaps(_stack(per_layer), rows, columns, kind, "translation", target)


def _check_length(n: int, limit: int, what: str) -> None:
    if n == 0:
        raise TformerError(f"{what} is empty")
    if n > limit:
        raise TformerError(f"{what} has {n} tokens, more than the model's {limit} positions")


def model_family(path: str | Path, config: dict | None = None) -> str:
    """Which of KINDS' families the model directory `path` holds (a TformerError for any other model);
    config: its config.json, when already read."""
    from tformer.tasks.finetune import GPT_MODEL_TYPES
    from tformer.tasks.masked_lm import ENCODER_MODEL_TYPES

    kind = (config if config is not None else checkpoint.read_config(path)).get("model_type")
    kind = kind if isinstance(kind, str) else repr(kind)
    families = {**dict.fromkeys(GPT_MODEL_TYPES, "language model"), **dict.fromkeys(ENCODER_MODEL_TYPES, "encoder"),
                "gpt_for_classification": "language model", "encoder_for_task": "encoder", "transformer": "translation"}
    if kind not in families:
        raise TformerError(f"{path}: model_type {kind!r} has no attention maps here (a GPT, a BERT-family encoder, "
                           "a fine-tuned one, or a translation Transformer)")
    return families[kind]


def attention_maps(path: str | Path, text: str, *, target: str | None = None, pair: str | None = None,
                   kind: str | None = None, device: str | torch.device = "cpu") -> AttentionMaps:
    """The maps of the model saved in `path` for `text` (the source, for a translation model).

    kind: one of KINDS[family] (None: the first); target: a translation's target (None: the model's own);
    pair: an encoder's second text."""
    from tformer.tasks.finetune import FINETUNED_MODEL_TYPES

    config = checkpoint.read_config(path)
    family = model_family(path, config)
    kind = kind or KINDS[family][0]
    if kind not in KINDS[family]:
        raise TformerError(f"{path} is {_article(family)}: its attention is {' or '.join(map(repr, KINDS[family]))}, "
                           f"not {kind!r}" + (" (a translation model's kinds)" if family != "translation" else ""))
    if target is not None and family != "translation":
        raise TformerError(f"a target is for translation models; {path} is {_article(family)}")
    finetuned = config.get("model_type") in FINETUNED_MODEL_TYPES
    if pair is not None and family != "encoder" and not finetuned:
        raise TformerError(f"a text pair is for encoders and fine-tuned classifiers; {path} is {_article(family)}")
    if finetuned:
        from tformer.tasks.finetune import load_finetuned

        model, tokenizer = load_finetuned(path, device)
    if family == "translation":
        from tformer.tasks.translation import load_translator

        model, src_tok, tgt_tok = load_translator(path, device)
        return translation_maps(model, src_tok, tgt_tok, text, target, kind)
    if family == "language model":
        if not finetuned:
            from tformer.tasks.language_modeling import load_lm

            model, tokenizer = load_lm(path, device)
        return language_model_maps(getattr(model, "gpt", model), tokenizer, text, pair, classifier=finetuned)
    if not finetuned:
        from tformer.tasks.masked_lm import load_encoder

        model, tokenizer = load_encoder(path, device)
    return encoder_maps(model, tokenizer, text, pair)
