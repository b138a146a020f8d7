"""Run configuration: dataclass defaults <- TOML file <- `section.key=value` overrides.

Every value is checked against its field's type and every unknown key is an error naming the key, so a
typo never silently falls back to a default. The resolved config is saved with each checkpoint.
"""

from __future__ import annotations

import copy
import math
import sys
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from tformer.errors import TformerError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class DataConfig:
    """Where a task's text comes from and how it becomes tokens.

    Translation reads train_src/train_tgt (+ valid_*); language modelling reads train_text (+ valid_text).
    """

    train_src: str = ""
    train_tgt: str = ""
    valid_src: str = ""
    valid_tgt: str = ""
    # bpe (translation: whitespace-aware BPE; language models: byte-level BPE), char, byte_bpe
    # masked-LM pretraining: wordpiece (BERT) or bpe (RoBERTa's byte-level BPE)
    tokenizer: Literal["bpe", "char", "byte_bpe", "wordpiece"] = "bpe"
    vocab_size: int = 8000
    joint_vocab: bool = True  # one BPE over source + target text, shared embeddings
    max_len: int = 256  # training pairs with a side longer than this (in tokens) are skipped
    # Language modelling
    train_text: str = ""  # one or more text files (.gz too), separated by commas
    valid_text: str = ""  # held-out text; empty: the last valid_fraction of train_text
    valid_fraction: float = 0.1
    block_size: int = 64  # tokens of context per training example (the model's window unless set)
    tokenizer_file: str = ""  # a GPT-2 tokenizer.json, or a folder with it or vocab.json + merges.txt
    # Masked-LM pretraining (BERT family); block_size is then the longest sequence, special tokens included
    mlm_probability: float = 0.15  # the share of tokens picked for prediction (80% [MASK], 10% random, 10% kept)
    masking: Literal["token", "whole_word", "span"] = "token"  # span: SpanBERT's geometric span lengths
    static_masking: bool = False  # True: each example keeps one mask for every epoch (BERT); False: new each epoch
    # NSP/SOP: the share of pairs built to a length drawn uniformly from [2, the longest] instead of filling it, so
    # that pretraining also sees inputs as short as fine-tuning's (BERT's and transformers' 0.1)
    short_seq_prob: float = 0.1
    # Fine-tuning a pretrained encoder (tformer finetune)
    task: Literal["classification", "regression", "tagging", "qa"] = "classification"
    train_file: str = ""  # TSV/CSV (with a header) or JSONL; CoNLL columns for tagging; SQuAD JSON for qa
    valid_file: str = ""
    text_column: str = "sentence"
    pair_column: str = ""  # the second sentence of sentence-pair tasks
    label_column: str = "label"
    # per input, special tokens included (longer inputs are truncated with a warning); at most the model's positions:
    # a larger value is cut to them, with a warning unless it is the task's default (128, qa 384)
    max_tokens: int = 128
    # qa: tokens shared by consecutive windows of a long context (scaled down in proportion when the model
    # has fewer positions than max_tokens)
    doc_stride: int = 128
    max_answer_length: int = 30  # qa: the longest answer span considered, in tokens
    max_context: bool = True  # qa: an answer starts only in the window where its first token is most central (BERT)


@dataclass
class TrainConfig:
    """The optimisation: steps, batches, schedule, checkpoints. Defaults follow the paper (section 5.3)."""

    max_steps: int = 0  # 0: no limit by steps
    max_epochs: int = 0  # 0: no limit by epochs
    max_minutes: float = 0.0  # 0: no limit by wall time
    max_tokens: int = 4096  # padded tokens per micro-batch and process (translation)
    batch_size: int = 12  # sequences of block_size tokens per micro-batch and process (language modelling)
    # Micro-batches per optimiser step. An epoch's last len % accum_steps micro-batches (of each process's share)
    # make no step and are left out of that epoch; the epochs shuffle anew, so other ones are left out each time.
    accum_steps: int = 1
    # slanted_triangular: ULMFiT's short linear rise (cut_frac of the steps) then long linear decay
    schedule: Literal["inverse_sqrt", "cosine", "constant", "linear", "slanted_triangular"] = "inverse_sqrt"
    lr: float = 1.0  # inverse_sqrt: multiplies d_model^-0.5 * min(...); cosine/constant: the peak rate
    warmup_steps: int = 4000
    # When warmup_steps is 0: warm up over this share of the run's steps (max_steps, or max_epochs counted in
    # steps), as transformers' warmup_ratio; fine-tuning's default is BERT's 0.1.
    warmup_ratio: float = 0.0
    min_lr: float = 0.0  # cosine: the rate it decays to
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-9
    weight_decay: float = 0.0
    clip_norm: float = 1.0  # 0: no clipping
    label_smoothing: float = 0.1
    seed: int = 1
    log_every: int = 50
    eval_every: int = 0  # steps between validations; 0: at the end only
    save_every: int = 0  # steps between checkpoints; 0: at the end only
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    eval_max_sentences: int = 500  # validation BLEU on at most this many sentences
    eval_batches: int = 0  # language modelling: validation batches (0: the whole validation text)
    eval_beam_size: int = 1
    # Transfer learning (fine-tuning a pretrained encoder)
    strategy: Literal["full", "feature_extraction"] = "full"  # feature_extraction: frozen encoder, new head only
    freeze_layers: int = 0  # freeze the embeddings and the lowest N encoder layers
    encoder_lr_scale: float = 1.0  # learning rate of pretrained weights relative to the new head's
    layer_decay: float = 1.0  # discriminative rates: each lower layer gets this times the one above (ULMFiT 1/2.6)
    gradual_unfreezing: bool = False  # epoch e trains the head and the top e + 1 layers (ULMFiT)
    early_stopping: int = 0  # stop after this many validations without improvement (0: off); keeps the best
    # The final model is the mean of the weights at the last N checkpoints (save_every steps apart, the end
    # included), as the paper's base models (N=5); 0: off, the last weights.
    average_checkpoints: int = 0
    # --resume on another number of processes (torchrun's world size) than the run was saved by: refused unless
    # true, as the run then no longer goes on as it started (see training.loop._check_new_world_size).
    allow_world_size_change: bool = False
    cut_frac: float = 0.1  # slanted triangular: share of steps spent rising
    stlr_ratio: float = 32.0  # slanted triangular: peak / lowest learning rate


@dataclass
class RunConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "transformer-small"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)


# The values each numeric option may take: (lowest, highest, whether the lowest itself is allowed; the highest
# is not, unless _CLOSED_ABOVE names the option); None: no bound. A value outside (NaN and infinities included) is
# an error naming the option, before anything runs.
_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "data.vocab_size": (1, None, True), "data.max_len": (1, None, True), "data.valid_fraction": (0, 1, True),
    "data.block_size": (1, None, True), "data.mlm_probability": (0, 1, False), "data.max_tokens": (1, None, True),
    "data.short_seq_prob": (0, 1, True),
    "data.doc_stride": (0, None, True), "data.max_answer_length": (1, None, True),
    "train.max_steps": (0, None, True), "train.max_epochs": (0, None, True), "train.max_minutes": (0, None, True),
    "train.max_tokens": (1, None, True), "train.batch_size": (1, None, True), "train.accum_steps": (1, None, True),
    "train.lr": (0, None, False), "train.warmup_steps": (0, None, True),
    "train.warmup_ratio": (0, 1, True), "train.min_lr": (0, None, True),
    "train.adam_beta1": (0, 1, True), "train.adam_beta2": (0, 1, True), "train.adam_eps": (0, None, False),
    "train.weight_decay": (0, None, True), "train.clip_norm": (0, None, True), "train.label_smoothing": (0, 1, True),
    "train.seed": (0, 2**63, True), "train.log_every": (1, None, True), "train.eval_every": (0, None, True),
    "train.save_every": (0, None, True), "train.eval_max_sentences": (1, None, True),
    "train.eval_batches": (0, None, True), "train.eval_beam_size": (1, None, True),
    "train.freeze_layers": (0, None, True), "train.encoder_lr_scale": (0, None, True),
    "train.layer_decay": (0, None, False), "train.early_stopping": (0, None, True),
    "train.average_checkpoints": (0, None, True), "train.cut_frac": (0, 1, False), "train.stlr_ratio": (1, None, True),
}


# Options whose highest value is allowed too (a probability of 1: always).
_CLOSED_ABOVE = {"data.short_seq_prob"}


# Saved runs are read with the ranges they were checked against when saved: a fine-tuned model saved before the
# learning rate had to be above 0 still predicts and evaluates (resuming its run meets today's check in train()).
_SAVED_RANGES: dict[str, tuple[float | None, float | None, bool]] = {"train.lr": (0, None, True)}


def _check_range(name: str, value: float, where: str, saved: bool = False) -> None:
    low, high, low_allowed = _SAVED_RANGES.get(name, _RANGES[name]) if saved else _RANGES[name]
    inside = math.isfinite(value) and (low is None or value > low or (low_allowed and value == low))
    high_allowed = name in _CLOSED_ABOVE
    inside = inside and (high is None or value < high or (high_allowed and value == high))
    if not inside:
        lower = "" if low is None else ("[" if low_allowed else "(") + f"{low}, "
        upper = "inf)" if high is None else f"{high}" + ("]" if high_allowed else ")")
        raise TformerError(f"{where}: {value!r} is out of range (allowed: {lower}{upper})")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Value (from TOML or a command-line string) -> the field's type, or a TformerError naming `where`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise TformerError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise TformerError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise TformerError(f"{where}: expected a number, got {value!r}")
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise TformerError(f"{where}: expected {'an integer' if tp is int else 'a number'}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise TformerError(f"{where}: expected an integer, got {value!r}")
        return out
    if tp is str:
        if where.endswith(_FILE_LISTS) and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return ",".join(value)  # a TOML list of files: the same as the comma-separated string
        if isinstance(value, (list, dict, bool)) or (where.endswith(PATH_OPTIONS) and not isinstance(value, str)):
            raise TformerError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


# Options that take several files, comma-separated (or, in a TOML file, as a list of strings).
_FILE_LISTS = ("data.train_text", "data.valid_text")
# Options that name a file: a number there is a slip (train_text = 5), not the file "5".
PATH_OPTIONS = _FILE_LISTS + tuple(f"data.{k}" for k in ("train_src", "train_tgt", "valid_src", "valid_tgt",
                                                     "tokenizer_file", "train_file", "valid_file"))


def parse_scalar(text: str) -> Any:
    """A command-line value for an untyped field (model options): TOML's reading of it, else the string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply(section_obj: Any, section: str, key: str, value: Any, source: str, saved: bool = False) -> None:
    hints = typing.get_type_hints(type(section_obj))
    if key not in hints:
        names = ", ".join(f.name for f in fields(section_obj))
        raise TformerError(f"{source}: unknown option {section}.{key} (known: {names})")
    value = _coerce(value, hints[key], f"{source}: {section}.{key}")
    if f"{section}.{key}" in _RANGES:
        _check_range(f"{section}.{key}", value, f"{source}: {section}.{key}", saved)
    setattr(section_obj, key, value)


def check_section(section_obj: DataConfig | TrainConfig, source: str = "config") -> None:
    """Every option of a data or train section checked as a file's would be (type, choices, range), each
    converted in place where a file's would be ("30" -> 30): values set from Python meet the same checks as
    those read from a TOML file or a command line, so that schedule = "cosin" is an error and not a constant
    rate."""
    section = "data" if isinstance(section_obj, DataConfig) else "train"
    for f in fields(section_obj):
        _apply(section_obj, section, f.name, getattr(section_obj, f.name), source)


def refuse_decided_options(options: dict[str, Any], decided: dict[str, Any], reason: str) -> None:
    """Model options a task sets itself (from its tokenizers): one also given with another value is an error
    naming it, rather than a value silently replaced."""
    for key, value in decided.items():
        if key in options and options[key] != value:
            raise TformerError(f"model.{key}={options[key]}: {reason} ({value} here); leave it out")


def load_config(path: str | Path | list[str | Path] | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: RunConfig | None = None) -> RunConfig:
    """Defaults (or `base`, a saved run's config, left as it is), then the TOML file(s) in order (a later file's
    values win), then `section.key=value` overrides."""
    cfg = copy.deepcopy(base) if base is not None else RunConfig()
    origins: dict[str, str] = {}  # model option -> the file (or the command line) that set it last
    for path in [] if path is None else path if isinstance(path, list) else [path]:
        path = Path(path)
        if path.is_dir():
            raise TformerError(f"{path}: is a directory, expected a TOML config file")
        if not path.is_file():
            raise TformerError(f"{path}: config file not found")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise TformerError(f"{path}: invalid TOML ({exc})") from None
        except UnicodeDecodeError:
            raise TformerError(f"{path}: not valid UTF-8") from None
        for section, values in data.items():
            if section not in ("model", "data", "train") or not isinstance(values, dict):
                raise TformerError(f"{path}: unknown section [{section}] (known: model, data, train)")
            for key, value in values.items():
                if section == "model":
                    cfg.model[key] = value
                    origins[key] = str(path)
                else:
                    _apply(getattr(cfg, section), section, key, value, str(path))
    for item in overrides:
        key, sep, value = item.lstrip("-").partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in ("model", "data", "train"):
            raise TformerError(f"option {item!r}: expected section.key=value with section model, data or train")
        if section == "model":
            cfg.model[name] = parse_scalar(value)
            origins[name] = "command line"
        else:
            _apply(getattr(cfg, section), section, name, value, "command line")
    _check_model_options(cfg.model, origins)
    return cfg


def _check_model_options(model: dict[str, Any], origins: dict[str, str]) -> None:
    """Each model option that a file or the command line set is one the preset's config has, of its type: an
    error names where it was set. (Checks between options, such as d_model against n_heads, run when the model
    is built.) Without a preset here, the task's default one checks them later."""
    from tformer.models.validation import describe_type, value_fits
    from tformer.registry import get_config, list_models

    preset = model.get("preset")
    if not isinstance(preset, str) or preset not in list_models():
        return  # named when the model is built
    hints = typing.get_type_hints(type(get_config(preset)))
    for key, where in origins.items():
        if key == "preset":
            continue
        if key not in hints:
            raise TformerError(f"{where}: unknown option model.{key} for preset {preset!r} "
                               f"(known: {', '.join(sorted(hints))})")
        if not value_fits(model[key], hints[key]):
            raise TformerError(f"{where}: model.{key}: expected {describe_type(hints[key])}, got {model[key]!r}")


# The values that options added since runs were first saved had in effect before they existed.
_BEFORE_ADDED: dict[str, dict[str, Any]] = {"data": {"short_seq_prob": 0.0}}


def config_from_dict(data: Any, source: str = "saved config") -> RunConfig:
    """Rebuild a saved RunConfig (as written by to_dict); errors name `source` (the file it was read from)."""
    sections = [data.get(name, {}) for name in ("model", "data", "train")] if isinstance(data, dict) else [data]
    if not all(isinstance(s, dict) for s in sections):
        raise TformerError(f"{source}: expected a JSON object with model, data and train objects")
    cfg = RunConfig(model=dict(data.get("model", {})))
    for section in ("data", "train"):
        saved = data.get(section, {})
        for key, value in saved.items():
            _apply(getattr(cfg, section), section, key, value, source, saved=True)
        if saved:
            # A run saved before an option existed goes on as it was, not with the option's new default (--resume
            # would otherwise rebuild the epoch it stopped in with other examples).
            for key, value in _BEFORE_ADDED.get(section, {}).items():
                if key not in saved:
                    setattr(getattr(cfg, section), key, value)
    return cfg
