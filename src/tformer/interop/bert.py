"""Hugging Face BERT, RoBERTa and ALBERT checkpoints read into and written from tformer's encoder.

A checkpoint directory holds config.json (model_type "bert", "roberta" or "albert"), the weights
(model.safetensors, sharded safetensors, or pytorch_model.bin read with weights_only=True) and a tokenizer
(tokenizer.json, or vocab.txt / vocab.json + merges.txt). The modules map one to one:

    transformers (BERT / RoBERTa)               tformer (BertModel)                  note
    embeddings.word_embeddings                  embeddings.tok_embed
    embeddings.position_embeddings              embeddings.pos_embed
    embeddings.token_type_embeddings            embeddings.type_embed
    embeddings.LayerNorm                        embeddings.norm
    encoder.layer.{i}.attention.self.{query,key,value}  encoder.layers.{i}.self_attn.in_proj   stacked [Q; K; V]
    encoder.layer.{i}.attention.output.dense    encoder.layers.{i}.self_attn.out_proj
    encoder.layer.{i}.attention.output.LayerNorm  encoder.layers.{i}.attn_block.norm
    encoder.layer.{i}.intermediate.dense        encoder.layers.{i}.ff.w1
    encoder.layer.{i}.output.dense              encoder.layers.{i}.ff.w2
    encoder.layer.{i}.output.LayerNorm          encoder.layers.{i}.ff_block.norm
    pooler.dense                                pooler.dense

ALBERT names its one shared layer encoder.albert_layer_groups.0.albert_layers.0 (attention.{query,key,value,
dense,LayerNorm}, ffn, ffn_output, full_layer_layer_norm), its E -> H projection
encoder.embedding_hidden_mapping_in (tformer: embeddings.project) and its pooler `pooler`.

Heads (BertForPreTraining / BertForMaskedLM: cls.predictions.*, cls.seq_relationship; RobertaForMaskedLM:
lm_head.*; AlbertForPreTraining: predictions.*, sop_classifier.classifier) map to tformer's mlm_head.{dense,
norm,bias} and sentence_head. The output matrix is tied to the word embeddings in all three, so its stored
copy (…decoder.weight) is not read, and its bias is stored twice (…bias and …decoder.bias).
Models with heads carry their encoder under "bert.", "roberta." or "albert."; bare models have no prefix.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from tformer.errors import TformerError
from tformer.interop.gpt2 import _read_weights
from tformer.models.bert import BertConfig, BertForPreTraining, BertModel
from tformer.training.checkpoint import (CONFIG, TOKENIZER, TOKENIZER_CONFIG, WEIGHTS, from_saved, read_config,
                                         save_dir)

FAMILIES = ("bert", "roberta", "albert")
ACTIVATIONS_IN = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
ACTIVATIONS_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}

EMBEDDINGS = [
    ("embeddings.tok_embed.weight", "embeddings.word_embeddings.weight"),
    ("embeddings.pos_embed.weight", "embeddings.position_embeddings.weight"),
    ("embeddings.type_embed.weight", "embeddings.token_type_embeddings.weight"),
    ("embeddings.norm.weight", "embeddings.LayerNorm.weight"),
    ("embeddings.norm.bias", "embeddings.LayerNorm.bias"),
]
# (tformer name inside encoder.layers.{i}., BERT name inside encoder.layer.{i}., ALBERT name)
LAYER = [
    ("self_attn.out_proj.weight", "attention.output.dense.weight", "attention.dense.weight"),
    ("self_attn.out_proj.bias", "attention.output.dense.bias", "attention.dense.bias"),
    ("attn_block.norm.weight", "attention.output.LayerNorm.weight", "attention.LayerNorm.weight"),
    ("attn_block.norm.bias", "attention.output.LayerNorm.bias", "attention.LayerNorm.bias"),
    ("ff.w1.weight", "intermediate.dense.weight", "ffn.weight"),
    ("ff.w1.bias", "intermediate.dense.bias", "ffn.bias"),
    ("ff.w2.weight", "output.dense.weight", "ffn_output.weight"),
    ("ff.w2.bias", "output.dense.bias", "ffn_output.bias"),
    ("ff_block.norm.weight", "output.LayerNorm.weight", "full_layer_layer_norm.weight"),
    ("ff_block.norm.bias", "output.LayerNorm.bias", "full_layer_layer_norm.bias"),
]
QKV = ("query", "key", "value")
# Pretraining heads: family -> (tformer name, transformers name)
HEADS = {
    "bert": [("mlm_head.dense.weight", "cls.predictions.transform.dense.weight"),
             ("mlm_head.dense.bias", "cls.predictions.transform.dense.bias"),
             ("mlm_head.norm.weight", "cls.predictions.transform.LayerNorm.weight"),
             ("mlm_head.norm.bias", "cls.predictions.transform.LayerNorm.bias"),
             ("mlm_head.bias", "cls.predictions.bias")],
    "roberta": [("mlm_head.dense.weight", "lm_head.dense.weight"), ("mlm_head.dense.bias", "lm_head.dense.bias"),
                ("mlm_head.norm.weight", "lm_head.layer_norm.weight"),
                ("mlm_head.norm.bias", "lm_head.layer_norm.bias"), ("mlm_head.bias", "lm_head.bias")],
    "albert": [("mlm_head.dense.weight", "predictions.dense.weight"), ("mlm_head.dense.bias", "predictions.dense.bias"),
               ("mlm_head.norm.weight", "predictions.LayerNorm.weight"),
               ("mlm_head.norm.bias", "predictions.LayerNorm.bias"), ("mlm_head.bias", "predictions.bias")],
}
SENTENCE_HEAD = {"bert": "cls.seq_relationship", "albert": "sop_classifier.classifier"}
# Stored copies of tied or derived tensors: never read.
IGNORED_SUFFIXES = ("embeddings.position_ids", "decoder.weight", "decoder.bias")


# -- configuration ----------------------------------------------------------------------------------------


# BertConfig's fields under the names transformers' config.json gives them, for errors about their values.
CONFIG_KEYS = {"max_len": "max_position_embeddings", "d_model": "hidden_size", "n_heads": "num_attention_heads",
               "n_layers": "num_hidden_layers", "d_ff": "intermediate_size", "dropout": "hidden_dropout_prob",
               "attention_dropout": "attention_probs_dropout_prob", "eps": "layer_norm_eps",
               "pad_id": "pad_token_id"}


def hf_config_to_tformer(hf: dict) -> BertConfig:
    """BertConfig of a BERT / RoBERTa / ALBERT config.json; what tformer does not compute raises TformerError.

    Missing keys take transformers' defaults for that family. Whether the pooler and the sentence head
    exist is decided by the weights (`load_hf_encoder`), not here."""
    if not isinstance(hf, dict):
        raise TformerError("config is not a JSON object")
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise TformerError(f"model_type is {family!r}, not one of {', '.join(FAMILIES)}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise TformerError(f"position_embedding_type={hf['position_embedding_type']!r} is not supported (only absolute)")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise TformerError("decoder configurations (is_decoder / add_cross_attention) are not supported")
    default_act = "gelu_new" if family == "albert" else "gelu"
    act = hf.get("hidden_act", default_act)
    if act not in ACTIVATIONS_IN:
        raise TformerError(f"hidden_act={act!r} is not supported (expected one of {sorted(ACTIVATIONS_IN)})")
    pad = hf.get("pad_token_id", 1 if family == "roberta" else 0)
    extra = {}
    if family == "albert":
        if hf.get("num_hidden_groups", 1) != 1 or hf.get("inner_group_num", 1) != 1:
            raise TformerError("ALBERT with num_hidden_groups or inner_group_num other than 1 is not supported")
        extra = dict(embedding_size=hf.get("embedding_size", 128), share_layers=True, sentence_objective="sop")
    elif family == "roberta":
        extra = dict(sentence_objective="none")
    dropout_default = 0.0 if family == "albert" else 0.1
    values = dict(
        vocab_size=hf.get("vocab_size", {"bert": 30522, "roberta": 50265, "albert": 30000}[family]),
        max_len=hf.get("max_position_embeddings", 512),
        d_model=hf.get("hidden_size", 4096 if family == "albert" else 768),
        n_heads=hf.get("num_attention_heads", 64 if family == "albert" else 12),
        n_layers=hf.get("num_hidden_layers", 12),
        d_ff=hf.get("intermediate_size", 16384 if family == "albert" else 3072),
        type_vocab_size=hf.get("type_vocab_size", 2),
        dropout=hf.get("hidden_dropout_prob", dropout_default),
        attention_dropout=hf.get("attention_probs_dropout_prob", dropout_default),
        activation=ACTIVATIONS_IN[act],
        eps=hf.get("layer_norm_eps", 1e-12),
        pad_id=pad if pad is not None else 0,
        family=family,
        **extra,
    )
    config = from_saved(BertConfig, values, f"{family} config", keys=CONFIG_KEYS)
    if family == "roberta":  # positions start after the padding's id, once that is known to be a number
        config = replace(config, position_offset=config.pad_id + 1)
    return config


def tformer_config_to_hf(c: BertConfig, architecture: str) -> dict:
    """A complete config.json in the model's own family's format."""
    if c.family == "albert" and not c.share_layers:
        raise TformerError("an ALBERT export needs share_layers=True")
    if c.family != "albert" and (c.share_layers or c.embedding_size not in (0, c.d_model)):
        raise TformerError(f"family {c.family!r} has no shared layers or factorized embeddings; use family='albert'")
    if c.family == "roberta" and c.position_offset != c.pad_id + 1:
        raise TformerError("a RoBERTa export needs position_offset = pad_id + 1")
    if c.family != "roberta" and c.position_offset:
        raise TformerError(f"family {c.family!r} has no position offset; use family='roberta'")
    config = {
        "architectures": [architecture],
        "model_type": c.family,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_len,
        "hidden_size": c.d_model,
        "num_attention_heads": c.n_heads,
        "num_hidden_layers": c.n_layers,
        "intermediate_size": c.d_ff,
        "type_vocab_size": c.type_vocab_size,
        "hidden_dropout_prob": c.dropout,
        "attention_probs_dropout_prob": c.attention_dropout,
        "hidden_act": ACTIVATIONS_OUT[c.activation],
        "layer_norm_eps": c.eps,
        "pad_token_id": c.pad_id,
        "initializer_range": 0.02,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }
    if c.family == "albert":
        config.update(embedding_size=c.d_embed, num_hidden_groups=1, inner_group_num=1)
    if c.family == "roberta":
        config.update(bos_token_id=0, eos_token_id=2)
    return config


# -- weights ----------------------------------------------------------------------------------------------


def _encoder_names(c: BertConfig) -> list[tuple[str, str]]:
    """(tformer BertModel name, transformers name without the model prefix) for every tensor except Q/K/V."""
    names = [(ours, theirs) for ours, theirs in EMBEDDINGS if c.type_vocab_size or "type_embed" not in ours]
    if c.family == "albert":
        names += [("embeddings.project.weight", "encoder.embedding_hidden_mapping_in.weight"),
                  ("embeddings.project.bias", "encoder.embedding_hidden_mapping_in.bias")]
        layer = "encoder.albert_layer_groups.0.albert_layers.0."
        names += [(f"encoder.layers.0.{ours}", layer + albert) for ours, _, albert in LAYER]
    else:
        for i in range(c.n_layers):
            names += [(f"encoder.layers.{i}.{ours}", f"encoder.layer.{i}.{bert}") for ours, bert, _ in LAYER]
    if c.pooler:
        pooler = "pooler" if c.family == "albert" else "pooler.dense"
        names += [("pooler.dense.weight", f"{pooler}.weight"), ("pooler.dense.bias", f"{pooler}.bias")]
    return names


def _qkv_names(c: BertConfig) -> list[tuple[str, str]]:
    """(tformer in_proj prefix, transformers attention prefix of query/key/value) per distinct layer."""
    if c.family == "albert":
        return [("encoder.layers.0.self_attn.in_proj", "encoder.albert_layer_groups.0.albert_layers.0.attention")]
    return [(f"encoder.layers.{i}.self_attn.in_proj", f"encoder.layer.{i}.attention.self") for i in range(c.n_layers)]


def _split_prefix(state: dict[str, Tensor], family: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(encoder tensors without the model prefix, head tensors) of a transformers state dict."""
    encoder, heads = {}, {}
    prefix = family + "."
    for name, tensor in state.items():
        if name.endswith(IGNORED_SUFFIXES):
            continue
        if name.startswith(prefix):
            encoder[name[len(prefix):]] = tensor
        elif name.startswith(("embeddings.", "encoder.", "pooler")):
            encoder[name] = tensor
        else:
            heads[name] = tensor
    return encoder, heads


def hf_state_to_tformer(state: dict[str, Tensor], c: BertConfig, with_heads: bool) -> dict[str, Tensor]:
    """transformers tensors -> a tformer state dict (BertForPreTraining names when with_heads, else BertModel)."""
    encoder, heads = _split_prefix(state, c.family)
    out: dict[str, Tensor] = {}
    for ours, theirs in _encoder_names(c):
        if theirs not in encoder:
            raise TformerError(f"weights lack {theirs} (expected {c.n_layers} layers)")
        out[ours] = encoder.pop(theirs)
    for ours, theirs in _qkv_names(c):
        for part in ("weight", "bias"):
            names = [f"{theirs}.{role}.{part}" for role in QKV]
            missing = [n for n in names if n not in encoder]
            if missing:
                raise TformerError(f"weights lack {missing[0]}")
            out[f"{ours}.{part}"] = torch.cat([encoder.pop(n) for n in names], dim=0)
    if encoder:
        extra = sorted(encoder)
        raise TformerError(f"unexpected weights {extra[:3]}{' ...' if len(extra) > 3 else ''} "
                           f"(expected {c.n_layers} layers)")
    if not with_heads:
        return out
    out = {f"bert.{k}": v for k, v in out.items()}
    for ours, theirs in HEADS[c.family]:
        out[ours] = heads[theirs]
    if c.sentence_objective != "none":
        name = SENTENCE_HEAD[c.family]
        out["sentence_head.weight"], out["sentence_head.bias"] = heads[f"{name}.weight"], heads[f"{name}.bias"]
    return out


def tformer_state_to_hf(state: dict[str, Tensor], c: BertConfig, with_heads: bool) -> dict[str, Tensor]:
    """tformer state dict -> tensors named as transformers saves that family (tied copies written too)."""
    prefix = "bert." if with_heads else ""
    model_prefix = c.family + "." if with_heads else ""
    out: dict[str, Tensor] = {}
    for ours, theirs in _encoder_names(c):
        out[model_prefix + theirs] = state[prefix + ours]
    for ours, theirs in _qkv_names(c):
        for part in ("weight", "bias"):
            for role, tensor in zip(QKV, state[f"{prefix}{ours}.{part}"].chunk(3, dim=0)):
                out[f"{model_prefix}{theirs}.{role}.{part}"] = tensor
    if with_heads:
        for ours, theirs in HEADS[c.family]:
            out[theirs] = state[ours]
        head = HEADS[c.family][-1][1].removesuffix("bias")  # "cls.predictions." etc.
        out[head + "decoder.weight"] = state["bert.embeddings.tok_embed.weight"]
        out[head + "decoder.bias"] = state["mlm_head.bias"]
        if c.sentence_objective != "none":
            name = SENTENCE_HEAD[c.family]
            out[f"{name}.weight"], out[f"{name}.bias"] = state["sentence_head.weight"], state["sentence_head.bias"]
    return out


# -- directories ------------------------------------------------------------------------------------------


def is_hf_encoder_dir(path: str | Path) -> bool:
    try:
        config = json.loads((Path(path) / CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") in FAMILIES


def load_hf_encoder(path: str | Path, device: str | torch.device = "cpu") -> BertModel | BertForPreTraining:
    """tformer encoder (eval mode) from a transformers BERT / RoBERTa / ALBERT directory.

    Returns BertForPreTraining when the checkpoint has a masked-LM head (BertForMaskedLM,
    BertForPreTraining, ...), else the bare BertModel (sentence-embedding checkpoints such as all-MiniLM)."""
    path = Path(path)
    try:
        config = hf_config_to_tformer(read_config(path))
    except TformerError as exc:
        raise TformerError(f"{path / CONFIG}: {exc}") from None
    state, source = _read_weights(path)
    encoder, heads = _split_prefix(state, config.family)
    with_heads = HEADS[config.family][-1][1] in heads
    has_sentence = f"{SENTENCE_HEAD.get(config.family, '-')}.weight" in heads
    has_pooler = any(k.startswith("pooler") for k in encoder)
    config = replace(config, pooler=has_pooler,
                     sentence_objective=config.sentence_objective if (has_sentence and with_heads) else "none")
    try:
        converted = hf_state_to_tformer(state, config, with_heads)
    except TformerError as exc:
        raise TformerError(f"{source}: {exc}") from None
    model: nn.Module = BertForPreTraining(config) if with_heads else BertModel(config, init=False)
    expected = model.state_dict()
    for name, tensor in converted.items():
        if name not in expected:
            raise TformerError(f"{source}: unexpected tensor {name}")
        if tensor.shape != expected[name].shape:
            raise TformerError(f"{source}: weights do not fit config.json ({name} is {tuple(tensor.shape)}, "
                               f"expected {tuple(expected[name].shape)})")
    missing = set(expected) - set(converted)
    if missing:
        raise TformerError(f"{source}: weights lack {sorted(missing)[0]}")
    model.load_state_dict(converted)
    return model.to(device).eval()


def save_hf_encoder(model: BertModel | BertForPreTraining, path: str | Path, tokenizer=None) -> None:
    """Write `model` as a transformers directory of its family (config.json, model.safetensors[, tokenizer.json])."""
    with_heads = isinstance(model, BertForPreTraining)
    c = model.config
    name = {"bert": "Bert", "roberta": "Roberta", "albert": "Albert"}[c.family]
    if not with_heads:
        architecture = f"{name}Model"
    elif c.sentence_objective == "none":
        architecture = f"{name}ForMaskedLM"
    else:
        architecture = f"{name}ForPreTraining"
    config = tformer_config_to_hf(c, architecture)
    config["dtype"] = "float32"
    state = tformer_state_to_hf(model.state_dict(), c, with_heads)
    state = {k: v.detach().contiguous().cpu().clone() for k, v in state.items()}

    def write(tmp: Path) -> None:
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER)
            (tmp / TOKENIZER_CONFIG).write_text(json.dumps(_tokenizer_config(tokenizer, c.max_tokens), indent=2)
                                                + "\n")

    save_dir(path, write)


def _tokenizer_config(tokenizer, max_tokens: int) -> dict:
    """transformers' tokenizer_config.json for an encoder's tokenizer.json: read as it is (without it, an ALBERT
    folder asks for the SentencePiece tokenizer, which has no file here), with its special tokens named."""
    token = tokenizer.backend.id_to_token
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_tokens,
            "cls_token": token(tokenizer.cls_id), "sep_token": token(tokenizer.sep_id),
            "mask_token": token(tokenizer.mask_id), "pad_token": token(tokenizer.pad_id),
            "unk_token": token(tokenizer.unk_id)}
