"""Hugging Face GPT-2 checkpoints (GPT2LMHeadModel directories) read into and written from tformer's GPT.

A GPT-2 directory holds config.json (model_type "gpt2") and model.safetensors (or an older
pytorch_model.bin). Its modules map one to one onto tformer's pre-LN GPT:

    GPT-2 (transformers)            tformer                                   note
    wte, wpe                        tok_embed, pos_embed                      (V, D), (max_len, D)
    h.{i}.ln_1                      decoder.layers.{i}.self_block.norm
    h.{i}.attn.c_attn               decoder.layers.{i}.self_attn.in_proj      Conv1D (D, 3D) -> Linear (3D, D)
    h.{i}.attn.c_proj               decoder.layers.{i}.self_attn.out_proj     Conv1D (D, D)  -> Linear (D, D)
    h.{i}.ln_2                      decoder.layers.{i}.ff_block.norm
    h.{i}.mlp.c_fc, mlp.c_proj      decoder.layers.{i}.ff.w1, ff.w2           Conv1D (D, F), (F, D) -> transposed
    ln_f                            decoder.final_norm
    lm_head                         output                                    tied to wte unless tie_word_embeddings=false

GPT-2's Conv1D computes x W + b with W stored (in, out), the transpose of nn.Linear's (out, in), so every
Conv1D weight is transposed on the way in and out. c_attn's output columns are [q | k | v], the same order as
the rows of tformer's in_proj. Transformers saves GPT2LMHeadModel keys under "transformer." and GPT2Model
keys without it; old checkpoints also carry the causal-mask buffers attn.bias / attn.masked_bias, which are
not weights and are dropped. A tied lm_head is written once, as wte (what save_pretrained itself does).

Shapes: V vocabulary, D d_model, F feed-forward width.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from tformer.errors import TformerError
from tformer.models.gpt import GPT, GPTConfig
from tformer.training.checkpoint import (CONFIG, TOKENIZER, TOKENIZER_CONFIG, WEIGHTS, from_saved, read_config,
                                         save_dir)

WEIGHTS_INDEX = "model.safetensors.index.json"  # sharded safetensors
TORCH_WEIGHTS = "pytorch_model.bin"
PREFIX = "transformer."

# GPT-2's activation_function -> tformer's activation, and back.
ACTIVATIONS_IN = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
ACTIVATIONS_OUT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}

# Options whose other values give a different function than tformer's GPT computes: attention scores scaled
# by 1/sqrt(d_k) only, and no cross-attention. (reorder_and_upcast_attn is accepted: it only changes how
# half-precision scores are rounded, not what is computed.)
REQUIRED = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False}

# (tformer name, GPT-2 name, stored transposed) for the parameters outside the layers ...
TOP = [
    ("tok_embed.weight", "wte.weight", False),
    ("pos_embed.weight", "wpe.weight", False),
    ("decoder.final_norm.weight", "ln_f.weight", False),
    ("decoder.final_norm.bias", "ln_f.bias", False),
]
# ... and inside layer i (tformer prefix decoder.layers.{i}., GPT-2 prefix h.{i}.).
LAYER = [
    ("self_block.norm.weight", "ln_1.weight", False),
    ("self_block.norm.bias", "ln_1.bias", False),
    ("self_attn.in_proj.weight", "attn.c_attn.weight", True),
    ("self_attn.in_proj.bias", "attn.c_attn.bias", False),
    ("self_attn.out_proj.weight", "attn.c_proj.weight", True),
    ("self_attn.out_proj.bias", "attn.c_proj.bias", False),
    ("ff_block.norm.weight", "ln_2.weight", False),
    ("ff_block.norm.bias", "ln_2.bias", False),
    ("ff.w1.weight", "mlp.c_fc.weight", True),
    ("ff.w1.bias", "mlp.c_fc.bias", False),
    ("ff.w2.weight", "mlp.c_proj.weight", True),
    ("ff.w2.bias", "mlp.c_proj.bias", False),
]
MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")


def _names(n_layers: int) -> list[tuple[str, str, bool]]:
    """Every (tformer name, GPT-2 name without prefix, transposed) of an n_layers model, lm_head aside."""
    names = list(TOP)
    for i in range(n_layers):
        names += [(f"decoder.layers.{i}.{ours}", f"h.{i}.{theirs}", t) for ours, theirs, t in LAYER]
    return names


# -- configuration ----------------------------------------------------------------------------------------

# GPTConfig's fields under the names GPT-2's config.json gives them, for errors about their values.
CONFIG_KEYS = {"max_len": "n_positions", "d_model": "n_embd", "n_heads": "n_head", "n_layers": "n_layer",
               "d_ff": "n_inner", "dropout": "resid_pdrop", "attention_dropout": "attn_pdrop",
               "eps": "layer_norm_epsilon", "tie_output": "tie_word_embeddings", "eos_id": "eos_token_id"}


def gpt2_config_to_tformer(hf: dict) -> GPTConfig:
    """GPTConfig of a GPT-2 config.json; options tformer's GPT does not compute raise TformerError.

    Missing keys take GPT2Config's defaults (GPT-2 small). tformer has one residual/embedding dropout:
    resid_pdrop is used and embd_pdrop (which only matters in training) is assumed equal to it.
    """
    if not isinstance(hf, dict):
        raise TformerError("GPT-2 config is not a JSON object")
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise TformerError(f"model_type is {model_type!r}, not 'gpt2'")
    for option, value in REQUIRED.items():
        if hf.get(option, value) != value:
            raise TformerError(f"GPT-2 option {option}={hf[option]!r} is not supported (only {value!r})")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS_IN:
        raise TformerError(f"GPT-2 option activation_function={activation!r} is not supported "
                           f"(expected one of {sorted(ACTIVATIONS_IN)})")
    eos = hf.get("eos_token_id", 50256)
    if isinstance(eos, list):  # several stop tokens: tformer stops at one, the first
        eos = eos[0] if eos else None
    vocab = hf.get("vocab_size", 50257)
    if isinstance(eos, int) and isinstance(vocab, int) and not 0 <= eos < vocab:
        # GPT2Config's default 50256 survives in configs of smaller vocabularies; transformers only warns.
        warnings.warn(f"GPT-2 config: eos_token_id={eos} is not a token of the {vocab}-token vocabulary; "
                      "not used as the end-of-text token", stacklevel=2)
        eos = None
    values = dict(
        vocab_size=hf.get("vocab_size", 50257),
        max_len=hf.get("n_positions", 1024),
        d_model=hf.get("n_embd", 768),
        n_heads=hf.get("n_head", 12),
        n_layers=hf.get("n_layer", 12),
        d_ff=hf.get("n_inner") or 0,
        dropout=hf.get("resid_pdrop", 0.1),
        attention_dropout=hf.get("attn_pdrop", 0.1),
        activation=ACTIVATIONS_IN[activation],
        norm_position="pre",
        eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_output=hf.get("tie_word_embeddings", True),
        eos_id=eos,
    )
    return from_saved(GPTConfig, values, "GPT-2 config", keys=CONFIG_KEYS)


def tformer_config_to_gpt2(c: GPTConfig) -> dict:
    """A complete GPT-2 config.json (GPT2LMHeadModel) for config c; only pre-LN GPTs have a GPT-2 form."""
    if c.norm_position != "pre":
        raise TformerError(f"only pre-LN GPTs export to GPT-2 (this one has norm_position={c.norm_position!r})")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.max_len,
        "n_embd": c.d_model,
        "n_layer": c.n_layers,
        "n_head": c.n_heads,
        "n_inner": c.d_ff or None,
        "activation_function": ACTIVATIONS_OUT[c.activation],
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.attention_dropout,
        "layer_norm_epsilon": c.eps,
        "initializer_range": 0.02,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "summary_activation": None,
        "summary_proj_to_labels": True,
        "summary_first_dropout": 0.1,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "use_cache": True,
        "bos_token_id": c.eos_id,  # GPT-2 begins and ends documents with the same <|endoftext|>
        "eos_token_id": c.eos_id,
        "pad_token_id": None,
        "tie_word_embeddings": c.tie_output,
    }


# -- weights ----------------------------------------------------------------------------------------------


def gpt2_state_to_tformer(state: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """GPT-2 weights (with or without the "transformer." prefix) -> a complete GPT state dict.

    output.weight is lm_head.weight when the checkpoint has one, otherwise wte (tied). Missing or
    unexpected weights raise TformerError naming one of them.
    """
    theirs: dict[str, Tensor] = {}
    for name, tensor in state.items():
        name = name.removeprefix(PREFIX)
        if not MASK_BUFFER.fullmatch(name):
            theirs[name] = tensor
    lm_head = theirs.pop("lm_head.weight", None)
    out = {}
    for ours, name, transposed in _names(n_layers):
        if name not in theirs:
            raise TformerError(f"GPT-2 weights lack {name} (expected {n_layers} layers)")
        tensor = theirs.pop(name)
        out[ours] = tensor.t().contiguous() if transposed else tensor
    if theirs:
        extra = sorted(theirs)
        raise TformerError(f"unexpected GPT-2 weights {extra[:3]}{' ...' if len(extra) > 3 else ''} "
                           f"(expected {n_layers} layers)")
    out["output.weight"] = lm_head if lm_head is not None else out["tok_embed.weight"]
    return out


def tformer_state_to_gpt2(state: dict[str, Tensor], n_layers: int, tied: bool | None = None) -> dict[str, Tensor]:
    """GPT state dict -> GPT-2 weights named as GPT2LMHeadModel saves them ("transformer." prefix).

    tied (None: output.weight is missing or shares tok_embed's storage): lm_head.weight is left out, as
    transformers stores a tied head; otherwise it is written.
    """
    out = {}
    for ours, name, transposed in _names(n_layers):
        if ours not in state:
            raise TformerError(f"GPT state lacks {ours} (expected {n_layers} layers)")
        tensor = state[ours]
        out[PREFIX + name] = tensor.t().contiguous() if transposed else tensor
    head = state.get("output.weight")
    if tied is None:
        tied = head is None or head.data_ptr() == state["tok_embed.weight"].data_ptr()
    if not tied:
        if head is None:
            raise TformerError("GPT state lacks output.weight (an untied model needs its own output matrix)")
        out["lm_head.weight"] = head
    return out


# -- directories ------------------------------------------------------------------------------------------


def is_gpt2_dir(path: str | Path) -> bool:
    """True when path is a directory whose config.json says model_type "gpt2"."""
    try:
        config = json.loads((Path(path) / CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "gpt2"


def _read_weights(path: Path) -> tuple[dict[str, Tensor], Path]:
    """The tensors of a GPT-2 directory and the file (or index) they came from."""
    if (path / WEIGHTS).is_file():
        files, source = [path / WEIGHTS], path / WEIGHTS
    elif (path / WEIGHTS_INDEX).is_file():
        source = path / WEIGHTS_INDEX
        try:
            shards = sorted(set(json.loads(source.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TformerError(f"{source}: not a safetensors index (no weight_map)") from None
        files = [path / shard for shard in shards]
    elif (path / TORCH_WEIGHTS).is_file():
        source = path / TORCH_WEIGHTS
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise TformerError(f"{source}: cannot read weights ({str(exc).splitlines()[0]})") from None
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise TformerError(f"{source}: not a state dict of tensors")
        return state, source
    else:
        raise TformerError(f"{path}: no {WEIGHTS} or {TORCH_WEIGHTS}")
    state = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except Exception as exc:
            raise TformerError(f"{f}: cannot read weights ({str(exc).splitlines()[0]})") from None
    return state, source


def load_gpt2(path: str | Path, device: str | torch.device = "cpu") -> GPT:
    """tformer GPT (eval mode) from a transformers GPT-2 directory: config.json + weights."""
    path = Path(path)
    hf = read_config(path)
    try:
        config = gpt2_config_to_tformer(hf)
    except TformerError as exc:
        raise TformerError(f"{path / CONFIG}: {exc}") from None
    state, source = _read_weights(path)
    try:
        state = gpt2_state_to_tformer(state, config.n_layers)
    except TformerError as exc:
        raise TformerError(f"{source}: {exc}") from None
    head, embed = state["output.weight"], state["tok_embed.weight"]
    if not config.tie_output and head is embed:
        # transformers would draw a random head here (and warn); wte is the likelier guess, but say so.
        warnings.warn(f"{source}: {CONFIG} unties lm_head from wte but the weights hold no lm_head.weight; "
                      "the output layer starts as a copy of wte", stacklevel=2)
    if config.tie_output and head.shape == embed.shape and not torch.equal(head, embed):
        # As transformers does: a checkpoint that holds its own, different lm_head is loaded untied.
        warnings.warn(f"{source}: lm_head.weight differs from wte.weight though {CONFIG} ties them; "
                      "loaded untied, as transformers does", stacklevel=2)
        config = dataclasses.replace(config, tie_output=False)
    model = GPT(config)
    for name, param in model.state_dict().items():
        if state[name].shape != param.shape:
            raise TformerError(f"{source}: weights do not fit config.json ({name} is {tuple(state[name].shape)}, "
                               f"expected {tuple(param.shape)})")
    model.load_state_dict(state)  # copies into the model's float32 parameters, whatever the stored dtype
    return model.to(device).eval()


def save_gpt2(model: GPT, path: str | Path, tokenizer=None) -> None:
    """Write `model` as a transformers GPT-2 directory (config.json, model.safetensors [, tokenizer.json and
    tokenizer_config.json]).

    tokenizer_config.json tells transformers to read tokenizer.json as it is written: without it, transformers
    takes a GPT-2 folder's tokenizer for GPT-2's own byte-level one, and a character vocabulary loses its spaces.
    The directory is replaced only once the new one is whole (checkpoint.save_dir).
    """
    c = model.config
    config = tformer_config_to_gpt2(c)
    config["dtype"] = str(model.tok_embed.weight.dtype).removeprefix("torch.")
    state = tformer_state_to_gpt2(model.state_dict(), c.n_layers, tied=c.tie_output)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in state.items()}

    def write(tmp: Path) -> None:
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER)
            (tmp / TOKENIZER_CONFIG).write_text(json.dumps(_tokenizer_config(tokenizer, c.max_len), indent=2) + "\n")

    save_dir(path, write)


def _tokenizer_config(tokenizer, max_len: int) -> dict:
    """transformers' tokenizer_config.json for a tformer tokenizer: the fast tokenizer of tokenizer.json, its
    end-of-text token (also GPT-2's bos and unk) and the model's window."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len}
    if tokenizer.eos_id is not None:
        eos = tokenizer.backend.id_to_token(tokenizer.eos_id)
        config.update(eos_token=eos, bos_token=eos, unk_token=eos)
    return config
