"""Whether values fit their dataclass fields' annotations, and the checks every model config runs when it is
made (and again after dataclasses.replace): a wrong value from a config file, a command line or a saved
config.json is an error naming the field, raised before any layer is built, instead of one from inside it.
The same for what a model is called with: token ids in range, texts where texts are meant."""

from __future__ import annotations

import types
import typing
from dataclasses import fields
from typing import Any, Literal

import torch

from tformer.errors import TformerError


def value_fits(value: Any, tp: Any) -> bool:
    """Whether a (JSON or TOML) value is one of type `tp`, a field's annotation; kinds not checked here fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(value_fits(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(value_fits(v, args[0]) for v in value)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp in (int, str, bool, type(None)):
        return type(value) is tp
    return True


def describe_type(tp: Any) -> str:
    """A field's annotation in words, for errors ("an integer", "one of 'pre', 'post'")."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(map(describe_type, args))
    if origin is list:
        return f"a list of {describe_type(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return {float: "a number", int: "an integer", str: "a string", bool: "true or false",
            type(None): "null"}.get(tp, str(tp))


def check_config(config: Any, positive: tuple[str, ...], rates: tuple[str, ...] = ("dropout", "attention_dropout"),
                 ) -> None:
    """Every field holds a value of its annotated type, the `positive` fields are > 0, the `rates` are
    probabilities in [0, 1), and d_model splits evenly into n_heads heads. Raises ValueError."""
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        value = getattr(config, f.name)
        if not value_fits(value, hints[f.name]):
            raise ValueError(f"{f.name} must be {describe_type(hints[f.name])}, not {value!r}")
    for name in positive:  # before the division below, which n_heads = 0 would break
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} must be positive, not {getattr(config, name)}")
    for name in rates:
        if not 0.0 <= getattr(config, name) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), not {getattr(config, name)}")
    if config.d_model % config.n_heads:
        raise ValueError(f"d_model={config.d_model} is not divisible by n_heads={config.n_heads}")


def check_token_id(config: Any, name: str, vocab_size: int, vocabulary: str = "vocab_size") -> None:
    """A special token id of a config (pad_id, eos_id, ...) names a row of its embedding."""
    value = getattr(config, name)
    if not 0 <= value < vocab_size:
        raise ValueError(f"{name} must be a token id below {vocabulary}={vocab_size}, not {value}")


_INDEX_DTYPES = (torch.int64, torch.int32)  # what an embedding takes; a uint8 index tensor would even select as a mask


def check_ids(ids: torch.Tensor, size: int, what: str = "token ids", ndim: int | None = None) -> None:
    """ids index an embedding of `size` rows (token, segment or position ids): anything else is an error naming
    the value, not an IndexError from inside the embedding. Ranges are checked on a CPU only: on a GPU the
    question would wait for the device at every step (there, torch's own device-side check stops the run).
    ndim: the number of dimensions the ids must have (2: (batch, length))."""
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TformerError(f"{what} must be integers, got {ids.dtype}")
    if ids.dtype not in _INDEX_DTYPES:
        raise TformerError(f"{what} must be int64 (or int32) integers, got {ids.dtype}: convert them with .long()")
    if ndim is not None:
        check_ndim(ids, ndim, what)
    if ids.device.type == "cpu" and ids.numel():
        low, high = (v.item() for v in torch.aminmax(ids))
        if low < 0 or high >= size:
            raise TformerError(f"{what}: {low if low < 0 else high} is outside 0..{size - 1} (the model has {size})")


def check_ndim(ids: torch.Tensor, ndim: int, what: str = "token ids") -> None:
    """ids have `ndim` dimensions (2: (batch, length)); a 1-D row would otherwise be read as a batch of
    one-token rows, or fail deep inside the model."""
    if ids.dim() != ndim:
        shape = "(batch, length)" if ndim == 2 else f"{ndim}-dimensional"
        raise TformerError(f"{what} must be {shape}, not of shape {tuple(ids.shape)}")


def check_texts(texts: Any, what: str = "sentences") -> list[str]:
    """A list of strings as a list; one string, where a list of them is meant, is an error (iterated, it would be
    one input per character), and so is anything else that is not text."""
    if isinstance(texts, str):
        raise TformerError(f"{what} must be a list of strings, not one string (one input: [text])")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TformerError(f"{what}[{i}] is {type(text).__name__}, not a string")
    return texts
