"""Named model presets: create_model(name, **overrides), list_models(pattern).

A preset is a config with a name; families register theirs here so the command line, tests and benchmarks
can enumerate and build every one of them.
"""

from __future__ import annotations

import fnmatch
from dataclasses import replace
from typing import Any, Callable

from torch import nn

from tformer.errors import TformerError
from tformer.models.bert import BertConfig, BertForPreTraining
from tformer.models.gpt import GPT, GPTConfig
from tformer.models.transformer import Transformer, TransformerConfig

# name -> (config, builder)
_PRESETS: dict[str, tuple[Any, Callable[[Any], nn.Module], str]] = {}


def register(name: str, config: Any, builder: Callable[[Any], nn.Module], description: str = "") -> None:
    if name in _PRESETS:
        raise ValueError(f"preset {name!r} is already registered")
    _PRESETS[name] = (config, builder, description)


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _PRESETS if fnmatch.fnmatch(n, pattern))


def _known(name: str) -> None:
    if name not in _PRESETS:
        raise TformerError(f"unknown model preset {name!r}; choose from: {', '.join(list_models())}")


def describe(name: str) -> str:
    _known(name)
    return _PRESETS[name][2]


def get_config(name: str, **overrides) -> Any:
    _known(name)
    config = _PRESETS[name][0]
    unknown = set(overrides) - set(config.__dataclass_fields__)
    if unknown:
        raise TformerError(f"unknown option(s) for preset {name!r}: {', '.join(sorted(unknown))}")
    return replace(config, **overrides)


def create_model(name: str, **overrides) -> nn.Module:
    config = get_config(name, **overrides)
    return _PRESETS[name][1](config)


# -- the encoder-decoder Transformer -----------------------------------------------------------------
register("transformer-base", TransformerConfig(), Transformer,
         "Vaswani et al. 2017 base: N=6, d_model=512, h=8, d_ff=2048, dropout 0.1 (the paper's 65M: "
         "63M with share_embeddings=true at a 37k joint vocab, 82M unshared)")
register("transformer-big", TransformerConfig(d_model=1024, n_heads=16, d_ff=4096, dropout=0.3), Transformer,
         "Vaswani et al. 2017 big: N=6, d_model=1024, h=16, d_ff=4096, dropout 0.3")
register("transformer-small", TransformerConfig(d_model=256, n_heads=4, d_ff=1024, n_encoder_layers=3,
                                                n_decoder_layers=3, dropout=0.1), Transformer,
         "CPU-sized: N=3, d_model=256, h=4, d_ff=1024 (Multi30k on a laptop)")
register("transformer-tiny", TransformerConfig(d_model=128, n_heads=4, d_ff=512, n_encoder_layers=2,
                                               n_decoder_layers=2, dropout=0.1), Transformer,
         "CPU-sized: N=2, d_model=128, h=4, d_ff=512 (the demo)")
register("transformer-micro", TransformerConfig(d_model=32, n_heads=2, d_ff=64, n_encoder_layers=1,
                                                n_decoder_layers=1, dropout=0.0), Transformer,
         "test-sized: N=1, d_model=32, h=2, d_ff=64")

# -- decoder-only language models (GPT) --------------------------------------------------------------
register("gpt2", GPTConfig(), GPT, "Radford et al. 2019 GPT-2 small: 12 layers, 12 heads, d_model 768, 1024 positions (124M)")
register("gpt2-medium", GPTConfig(d_model=1024, n_heads=16, n_layers=24), GPT,
         "GPT-2 medium: 24 layers, 16 heads, d_model 1024 (355M)")
register("gpt1", GPTConfig(vocab_size=40478, max_len=512, norm_position="post", activation="gelu"), GPT,
         "Radford et al. 2018 GPT: 12 post-LN layers, 12 heads, d_model 768, 512 positions (117M)")
register("gpt-mini", GPTConfig(d_model=384, n_heads=6, n_layers=6, max_len=256, dropout=0.2, attention_dropout=0.2),
         GPT, "GPU-sized: 6 layers, 6 heads, d_model 384, 256 positions, dropout 0.2 (Shakespeare on a GPU)")
register("gpt-char", GPTConfig(d_model=128, n_heads=4, n_layers=4, max_len=64, dropout=0.0, attention_dropout=0.0),
         GPT, "CPU-sized: 4 layers, 4 heads, d_model 128, 64 positions (character-level Shakespeare on a laptop)")
register("gpt-micro", GPTConfig(vocab_size=64, d_model=32, n_heads=2, n_layers=1, max_len=32, dropout=0.0,
                                attention_dropout=0.0), GPT, "test-sized: 1 layer, 2 heads, d_model 32")

# -- bidirectional encoders (BERT, RoBERTa, ALBERT), built with their pretraining heads ---------------
register("bert-base", BertConfig(), BertForPreTraining,
         "Devlin et al. 2019 BERT-base: 12 layers, 768, 12 heads, d_ff 3072, MLM + NSP (110M)")
register("bert-large", BertConfig(d_model=1024, n_heads=16, n_layers=24, d_ff=4096), BertForPreTraining,
         "BERT-large: 24 layers, 1024, 16 heads, d_ff 4096, MLM + NSP (340M)")
register("bert-minilm", BertConfig(d_model=384, n_heads=12, n_layers=6, d_ff=1536), BertForPreTraining,
         "the all-MiniLM-L6-v2 shape: 6 layers, 384, 12 heads, d_ff 1536 (22.7M with a 30,522 vocabulary)")
register("bert-small", BertConfig(d_model=256, n_heads=4, n_layers=4, d_ff=1024, max_len=128), BertForPreTraining,
         "CPU-sized: 4 layers, 256, 4 heads, d_ff 1024, 128 positions, MLM + NSP")
register("bert-micro", BertConfig(vocab_size=64, d_model=32, n_heads=2, n_layers=1, d_ff=64, max_len=64,
                                  dropout=0.0, attention_dropout=0.0), BertForPreTraining,
         "test-sized: 1 layer, 32, 2 heads")
register("roberta-base", BertConfig(vocab_size=50265, max_len=514, type_vocab_size=1, eps=1e-5, pad_id=1,
                                    position_offset=2, sentence_objective="none", family="roberta"),
         BertForPreTraining, "Liu et al. 2019 RoBERTa-base: BERT-base without NSP, byte-level BPE, positions from 2")
register("roberta-small", BertConfig(d_model=256, n_heads=4, n_layers=4, d_ff=1024, max_len=130, type_vocab_size=1,
                                     eps=1e-5, pad_id=1, position_offset=2, sentence_objective="none",
                                     family="roberta"), BertForPreTraining,
         "CPU-sized RoBERTa: 4 layers, 256, 4 heads, MLM only")
register("albert-base", BertConfig(vocab_size=30000, embedding_size=128, activation="gelu_tanh", dropout=0.0,
                                   attention_dropout=0.0, share_layers=True, sentence_objective="sop",
                                   family="albert"), BertForPreTraining,
         "Lan et al. 2020 ALBERT-base: E=128, H=768, 12 shared layers, MLM + SOP (12M)")
register("albert-small", BertConfig(embedding_size=64, d_model=256, n_heads=4, n_layers=4, d_ff=1024, max_len=128,
                                    activation="gelu_tanh", dropout=0.0, attention_dropout=0.0, share_layers=True,
                                    sentence_objective="sop", family="albert"), BertForPreTraining,
         "CPU-sized ALBERT: E=64, H=256, 4 shared layers, MLM + SOP")


def family(name: str) -> str:
    """The model family of a preset: "transformer", "gpt" or "encoder" (it decides which task trains it)."""
    config = get_config(name)
    return config.to_dict()["model_type"]


_FAMILY_PRESETS = {"transformer": "transformer-*", "gpt": "gpt*", "encoder": "bert*, roberta* or albert*"}


def require_family(preset: str, expected: str, task: str) -> None:
    """A TformerError naming the preset when it is not of the family that `task` trains."""
    found = family(preset)
    if found != expected:
        raise TformerError(f"model.preset={preset!r} is a {_FAMILY_PRESETS[found]} model: {task} takes a "
                           f"{_FAMILY_PRESETS[expected]} preset (tformer list-models)")
