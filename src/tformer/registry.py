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


def describe(name: str) -> str:
    return _PRESETS[name][2]


def get_config(name: str, **overrides) -> Any:
    if name not in _PRESETS:
        raise TformerError(f"unknown model preset {name!r}; choose from: {', '.join(list_models())}")
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
         "Vaswani et al. 2017 base: N=6, d_model=512, h=8, d_ff=2048, dropout 0.1 (65M params at 37k shared vocab)")
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


def family(name: str) -> str:
    """The model family of a preset: "transformer" or "gpt" (it decides which task trains it)."""
    config = get_config(name)
    return config.to_dict()["model_type"]
