"""The `tformer` command: parses options and calls the library, nothing more.

Mistakes a user can make (a missing file, a bad option value) end in one line on stderr and exit code 2;
nothing already saved is touched.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable

from tformer.config import PATH_OPTIONS
from tformer.errors import TformerError

# Shortcut flags for the most used options, mapped onto section.key.
_SHORTCUTS = {
    "train_src": "data.train_src", "train_tgt": "data.train_tgt", "valid_src": "data.valid_src",
    "valid_tgt": "data.valid_tgt", "preset": "model.preset", "vocab_size": "data.vocab_size",
    "max_steps": "train.max_steps", "max_epochs": "train.max_epochs", "max_minutes": "train.max_minutes",
    "max_tokens": "train.max_tokens", "lr": "train.lr", "seed": "train.seed", "device": "train.device",
    "train_text": "data.train_text", "valid_text": "data.valid_text", "block_size": "data.block_size",
    "batch_size": "train.batch_size", "tokenizer": "data.tokenizer", "tokenizer_file": "data.tokenizer_file",
}

# What each shortcut means, for train --help (the same name means other things in other commands: --max-tokens
# is a batch's tokens here, an input's length in finetune).
_SHORTCUT_HELP = {
    "train_src": "translation: the training sources, one sentence a line (plain or .gz)",
    "train_tgt": "translation: their translations, line-aligned with --train-src",
    "valid_src": "translation: validation sources", "valid_tgt": "translation: validation references",
    "preset": "model preset, whose family picks the task (tformer list-models)",
    "vocab_size": "tokenizer vocabulary to learn", "max_steps": "stop after this many optimiser steps",
    "max_epochs": "stop after this many passes over the training data", "max_minutes": "stop after this long",
    "max_tokens": "translation: padded tokens per micro-batch and process",
    # train.lr is a factor under the paper's schedule and a rate under the others: the flag says which.
    "lr": "learning rate: under inverse_sqrt (translation's default schedule) a factor on the paper's "
          "d_model^-0.5 * min(step^-0.5, step * warmup^-1.5) (default 1); under cosine (GPT's and the "
          "encoders' default), linear, constant or slanted_triangular the peak rate",
    "seed": "random seed",
    "device": "auto, cpu or cuda",
    "train_text": "GPT or encoder: the training text, files separated by commas",
    "valid_text": "GPT or encoder: held-out text (default: the end of --train-text)",
    "block_size": "GPT or encoder: tokens per training sequence",
    "batch_size": "GPT or encoder: sequences per micro-batch and process",
    "tokenizer": "bpe, char, byte_bpe or wordpiece",
    "tokenizer_file": "GPT: a GPT-2 tokenizer.json, or a folder with it or vocab.json + merges.txt",
}


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in the one-line form of every other tformer error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _newlines(value: str) -> str:
    """A text option as meant: the two characters \\n written on a command line are a newline (--prompt, --stop,
    --choice alike)."""
    return value.replace("\\n", "\n")


def _text(value: str) -> str:
    """A text argument: bytes that are not UTF-8 reach Python as lone surrogates; say so instead of failing later."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{value.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8") from None
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tformer", description="Attention and Transformers from first principles.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("demo", help="train a small Transformer on a generated date-translation task (~3 min)")
    d.add_argument("--out", default="tformer-demo", help="output folder (model directory and heatmap)")
    d.add_argument("--steps", type=int, default=800, help="training steps (2-3 minutes on 2 CPU cores)")
    d.add_argument("--minutes", type=float, default=0.0, help="also stop after this many minutes (0: no limit)")
    d.add_argument("--seed", type=int, default=1)

    t = sub.add_parser("train", help="train a translation Transformer, a GPT language model or a BERT-family encoder",
                       description="Options: --config FILE (TOML with [model] [data] [train]), shortcut flags, "
                                   "and any section.key=value (for example train.warmup_steps=4000 model.d_model=256). "
                                   "The preset's family picks the task: transformer-* trains translation on "
                                   "--train-src/--train-tgt, gpt* trains a language model on --train-text, bert*/roberta*/albert* "
                                   "pretrain an encoder (masked LM + NSP/SOP) on --train-text.")
    t.add_argument("--config", action="append",
                   help="TOML run configuration (repeatable: a later file's values win)")
    t.add_argument("--out", required=True, help="model directory to write (and to resume from)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out, with its saved options unless given again")
    t.add_argument("--overwrite", action="store_true", help="replace the model already saved in --out")
    for name, key in _SHORTCUTS.items():
        t.add_argument("--" + name.replace("_", "-"), dest=name, help=f"{_SHORTCUT_HELP[name]} ({key})")
    t.set_defaults(overrides=[])  # section.key=value items, collected wherever they appear (see main)

    tr = sub.add_parser("translate", help="translate sentences from a file or stdin")
    tr.add_argument("--model", required=True, help="model directory")
    tr.add_argument("--input", default="-", help="text file, one sentence per line ('-': stdin)")
    tr.add_argument("--output", default="-", help="where translations go ('-': stdout)")
    tr.add_argument("--beam", type=int, default=4, help="beam size (1: greedy)")
    tr.add_argument("--length-penalty", type=float, default=1.0)
    tr.add_argument("--max-tokens", type=int, default=4000, help="source tokens per batch")
    tr.add_argument("--device", default="auto")

    e = sub.add_parser("evaluate", help="score a model: translation (--src/--ref) or a fine-tuned model (--data)",
                       description="With --data, data.key=value or train.key=value options replace the ones the "
                                   "model was fine-tuned with (for example data.max_context=false data.doc_stride=64 "
                                   "for question answering).")
    e.add_argument("--model", required=True)
    e.add_argument("--src", help="source sentences")
    e.add_argument("--ref", help="reference translations, line-aligned with --src")
    e.add_argument("--data", help="fine-tuned models: a labelled file in the training format")
    e.add_argument("--beam", type=int, help="translation: beam size (default 4)")
    e.add_argument("--max-tokens", type=int, default=4000)
    e.add_argument("--device", default="auto")
    e.add_argument("--output", help="also write the translations here")
    e.set_defaults(overrides=[])

    g = sub.add_parser("generate", help="continue a prompt with a GPT language model (greedy or sampling)")
    g.add_argument("--model", required=True, help="model directory (tformer GPT, or a Hugging Face GPT-2 folder)")
    g.add_argument("--prompt", action="append", type=_text, help="prompt text (repeat for a batch); \\n means a newline")
    g.add_argument("--input", help="a file of prompts, one per line ('-': stdin)")
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--greedy", action="store_true", help="always the most likely token (no sampling)")
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: the most likely tokens up to p")
    g.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="above 1, tokens already in the text (prompt included) get less likely (1: off)")
    g.add_argument("--no-repeat-ngram-size", type=int, default=0,
                   help="never repeat an n-gram of this many tokens (0: off)")
    g.add_argument("--stop", action="append", default=[], type=_text,
                   help="stop at this string (repeatable); \\n means a newline")
    g.add_argument("--ignore-eos", action="store_true",
                   help="go on past the end-of-text token (left out of the text) up to --max-new-tokens")
    g.add_argument("--num-samples", type=int, default=1, help="continuations per prompt")
    g.add_argument("--seed", type=int,
                   help="makes sampling reproducible (the same prompts, --num-samples and options give the same text; "
                        "the prompts of a batch share one random stream)")
    g.add_argument("--device", default="auto")

    sc = sub.add_parser("score", help="log-likelihood and perplexity of text, or pick the likeliest of choices")
    sc.add_argument("--model", required=True)
    sc.add_argument("--input", help="text file to score as a whole ('-': stdin)")
    sc.add_argument("--per-line", action="store_true", help="score each line of --input on its own")
    sc.add_argument("--prompt", type=_text, help="multiple choice: the question or context; \\n means a newline")
    sc.add_argument("--choice", action="append", default=[], type=_text,
                    help="multiple choice: a candidate continuation (repeat for each); \\n means a newline")
    sc.add_argument("--normalize", choices=["mean", "sum"], default="mean",
                    help="rank choices by mean or summed token log-probability")
    sc.add_argument("--device", default="auto")

    em = sub.add_parser("embed", help="sentence (or token) vectors from a BERT-family encoder, as .npy or JSONL")
    em.add_argument("--model", required=True, help="model directory (tformer encoder, or a Hugging Face BERT / "
                                                   "RoBERTa / ALBERT / sentence-transformers folder)")
    em.add_argument("--input", help="a file of sentences, one per line ('-': stdin)")
    em.add_argument("--sentence", action="append", type=_text, help="a sentence (repeatable)")
    em.add_argument("--output", default="-", help="FILE.npy, FILE.jsonl, or '-' for JSONL on stdout")
    em.add_argument("--pooling", choices=["cls", "mean", "max", "pooler"],
                    help="how token states become one vector (default: the checkpoint's own, else cls)")
    em.add_argument("--layer", type=int, action="append",
                    help="hidden state to read: 0 embeddings, 1..N layers, -1 last (repeatable: several layers)")
    em.add_argument("--combine", choices=["concat", "sum", "mean"], default="concat",
                    help="how several --layer are joined")
    em.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                    help="unit-length vectors (default: the checkpoint's own setting)")
    em.add_argument("--tokens", action="store_true", help="JSONL of every token's vector instead of one per sentence")
    em.add_argument("--batch-size", type=int, default=64)
    em.add_argument("--max-length", type=int, help="tokens per input, special tokens included")
    em.add_argument("--truncation", choices=["warn", "error"], default="warn",
                    help="longer inputs: truncate with a warning, or stop with an error")
    em.add_argument("--device", default="auto")

    fm = sub.add_parser("fill-mask", help="the likeliest tokens for each [MASK] in a text")
    fm.add_argument("--model", required=True)
    fm.add_argument("text", type=_text, help='for example "The capital of France is [MASK]."')
    fm.add_argument("--top-k", type=int, default=5)
    fm.add_argument("--device", default="auto")

    si = sub.add_parser("similar", help="rank the sentences of a file by cosine similarity to a query")
    si.add_argument("--model", required=True)
    si.add_argument("--query", required=True, type=_text)
    si.add_argument("--input", required=True, help="a file of sentences, one per line ('-': stdin)")
    si.add_argument("--top-k", type=int, default=10)
    si.add_argument("--pooling", choices=["cls", "mean", "max", "pooler"])
    si.add_argument("--batch-size", type=int, default=64)
    si.add_argument("--max-length", type=int)
    si.add_argument("--truncation", choices=["warn", "error"], default="warn")
    si.add_argument("--device", default="auto")

    ft = sub.add_parser("finetune", help="fine-tune a pretrained encoder (classification, regression, tagging, QA) "
                                         "or GPT (classification, GPT-1 head)",
                        description="Any section.key=value option also works (for example train.lr=1e-4 "
                                    "train.layer_decay=0.38 train.schedule=slanted_triangular; for a GPT model "
                                    "model.lm_weight=0.5, the weight of the auxiliary language-modelling loss).")
    ft.add_argument("--model", required=True, help="pretrained directory: a BERT-family encoder (tformer or Hugging "
                                                   "Face format) or a GPT language model (tformer or GPT-2)")
    ft.add_argument("--train", help="TSV/CSV/JSONL (classification), CoNLL (tagging), SQuAD JSON (qa); with --resume, "
                                    "the run's own unless given")
    ft.add_argument("--valid", help="validation file, same format")
    ft.add_argument("--task", choices=["classification", "regression", "tagging", "qa"],
                    help="default: classification, or the run's own (--resume) or the fine-tuned --model's")
    ft.add_argument("--out", required=True, help="directory for the fine-tuned model")
    ft.add_argument("--config", action="append",
                    help="TOML run configuration (repeatable: a later file's values win)")
    ft.add_argument("--resume", action="store_true")
    ft.add_argument("--overwrite", action="store_true", help="replace the model already saved in --out")
    ft.add_argument("--text-column", help="the text's column or JSON field (default: sentence)")
    ft.add_argument("--pair-column", help="a second text's column, for sentence pairs (default: none)")
    ft.add_argument("--label-column", help="the label's column or JSON field (default: label)")
    ft.add_argument("--strategy", choices=["full", "feature_extraction"])
    ft.add_argument("--freeze-layers", type=int, help="freeze the embeddings and the lowest N layers")
    # --max-tokens is a length per input here, not train's tokens per batch: say so in the help.
    ft.add_argument("--epochs", type=int, help="passes over --train (train.max_epochs; default: 3)")
    ft.add_argument("--lr", type=float, help="peak learning rate (train.lr; default: 5e-05)")
    ft.add_argument("--batch-size", type=int, help="inputs per batch (train.batch_size; default: 32)")
    ft.add_argument("--max-tokens", type=int, help="tokens per input, special tokens included; longer ones are "
                                                   "cut, and so is a value above the model's positions (with a "
                                                   "warning) (data.max_tokens; default: 128, qa: 384)")
    ft.add_argument("--seed", type=int, help="train.seed")
    ft.add_argument("--device", help="train.device (default: auto)")
    ft.set_defaults(overrides=[])

    pr = sub.add_parser("predict", help="labels (or answers) of a fine-tuned model for a file",
                        description="data.key=value or train.key=value options replace the ones the model was "
                                    "fine-tuned with (columns, windows, batch size).")
    pr.add_argument("--model", required=True, help="fine-tuned model directory")
    pr.add_argument("--input", required=True, help="a file in the training format (labels not needed)")
    pr.add_argument("--output", default="-", help="JSONL of predictions ('-': stdout)")
    pr.add_argument("--device", default="auto")
    pr.set_defaults(overrides=[])  # data.key=value / train.key=value, as for evaluate --data

    at = sub.add_parser("attention", help="attention maps of a model for one input, every layer and head, as a "
                                          "picture",
                        description="Draws the attention weights of a GPT (causal self-attention), a BERT-family "
                                    "encoder, fine-tuned or not (self-attention over [CLS] text [SEP]), or a "
                                    "translation Transformer (encoder-decoder attention over its own translation, "
                                    "or the encoder's or decoder's self-attention). Row t of a map is where token t "
                                    "looks; each row sums to 1.")
    at.add_argument("--model", required=True, help="model directory (tformer's or Hugging Face's GPT-2/BERT format)")
    at.add_argument("--text", required=True, type=_text, help="the input; a translation model's source sentence")
    at.add_argument("--target", type=_text, help="translation: the target to show (default: the model's translation)")
    at.add_argument("--pair", type=_text, help="encoders: a second text, for sentence-pair models")
    at.add_argument("--kind", choices=["self", "cross", "encoder", "decoder"],
                    help="which attention: translation models cross (default), encoder or decoder; others self")
    at.add_argument("--layer", type=int, help="one layer, drawn large (1: the lowest, -1: the top); default: a grid "
                                              "of every layer and head")
    at.add_argument("--head", type=int, help="with --layer: one head (default: the mean over the heads)")
    at.add_argument("--output", required=True, help="the picture: a .png, .svg or .pdf file")
    at.add_argument("--device", default="auto")

    cu = sub.add_parser("curves", help="training curves of a saved run: loss, validation metrics, learning rate")
    cu.add_argument("--model", required=True, help="a model directory that tformer train or finetune wrote")
    cu.add_argument("--output", required=True, help="the picture: a .png, .svg or .pdf file")

    sub.add_parser("list-models", help="the named model presets")
    for command in sub.choices.values():  # every option's default in its --help line
        for action in command._actions:
            shown = not any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS)) \
                and action.default != []  # 0 is shown: `not in (None, False)` would take it for False
            if action.option_strings and shown and "%(default)" not in (action.help or ""):
                action.help = f"{action.help} (default: %(default)s)" if action.help else "default: %(default)s"
    return p


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise TformerError(f"--{name} must be at least 1, not {value}")
    return value


def _device(name: str):
    from tformer.training.distributed import pick_device

    return pick_device(name)


def cmd_demo(args) -> None:
    from tformer.demo import run_demo

    if args.steps < 1:
        raise TformerError(f"--steps must be at least 1, not {args.steps}")
    if args.minutes < 0:
        raise TformerError(f"--minutes must not be negative, not {args.minutes}")
    out = Path(args.out)
    _check_demo_out(out)  # before minutes of training, not at the first save
    run_demo(out, args.steps, args.minutes, seed=args.seed)


def _check_demo_out(out: Path) -> None:
    """demo --out: a new folder, or one whose model/ and pictures an earlier demo wrote (running the demo again
    replaces them, as the README's two commands expect); never a model directory, nor a folder whose model/ or
    attention pictures are someone else's (they would be replaced). Other files in it are left alone."""
    from tformer.demo import DEMO_MODEL, DEMO_PICTURES, is_demo_model
    from tformer.training import checkpoint

    model_dir = out / DEMO_MODEL
    _check_place(out, model_dir)
    if not out.is_dir():
        return
    held = sorted(p.name for p in out.iterdir() if p.name in checkpoint.MODEL_FILES)
    if held:
        raise TformerError(f"--out {out} is a model directory (it holds {held[0]}); the demo writes its model into "
                           f"{model_dir} and pictures beside it: choose a new folder")
    checkpoint.restore_interrupted_save(model_dir)  # a save stopped midway: the copy it set aside is judged
    ours = is_demo_model(model_dir)
    if not ours and (model_dir / checkpoint.CONFIG).is_file():
        raise TformerError(f"--out {out}: {model_dir} holds a model the demo did not make, which the demo would "
                           "replace; choose another --out")
    _check_out(model_dir, resume=False, overwrite=ours)  # a file, a link, a folder of other things
    for picture in DEMO_PICTURES if not ours else ():
        if (out / picture).exists() or (out / picture).is_symlink():
            raise TformerError(f"--out {out}: {out / picture} is not from an earlier demo (no demo model beside it), "
                               "and the demo would replace it; choose another --out")


def _check_place(out: Path, model_dir: Path) -> None:
    """--out is a folder or not there yet, under folders, and the model directory `model_dir` can be saved in it."""
    for folder in out.parents:
        if folder.exists() and not folder.is_dir():
            raise TformerError(f"--out {out}: {folder} is a file, not a folder")
    if out.exists() and not out.is_dir():
        raise TformerError(f"--out {out} is a file, not a model directory; choose another --out")
    from tformer.training.checkpoint import check_writable

    try:
        check_writable(model_dir)
    except TformerError as exc:
        raise TformerError(f"--out {exc}") from None


def _check_out(out: Path, resume: bool, overwrite: bool, pretrained: str | None = None) -> None:
    """--out must be a new folder, or a model being resumed or knowingly replaced: never the current folder, a
    file, or a folder of other things (a mistyped path would mix the model's files into it). Files of the user's
    in a model directory are kept by every save (checkpoint.save_dir)."""
    if out.name in ("", ".", ".."):
        raise TformerError(f"--out {str(out)!r}: name a folder for the model (for example runs/NAME)")
    try:
        str(out).encode("utf-8")
    except UnicodeEncodeError:
        raise TformerError(f"--out {str(out).encode('utf-8', 'surrogateescape')!r}: not valid UTF-8") from None
    if resume and overwrite:
        raise TformerError("--resume continues the saved run and --overwrite replaces it: give one of them")
    if out.is_symlink():
        raise TformerError(f"--out {out} is a symbolic link; give the folder it points to")
    if pretrained is not None and out.is_dir() and out.resolve() == Path(pretrained).resolve():
        raise TformerError(f"--out {out} is the --model being fine-tuned; write the fine-tuned model elsewhere")
    _check_place(out, out)
    from tformer.training.run_lock import LOCK_FILE

    # The lock file of a run (held now, or left by one killed) is no file of the user's: the folder is empty.
    if not out.is_dir() or not any(p.name != LOCK_FILE for p in out.iterdir()):
        return
    if not (out / "config.json").is_file():
        if resume:
            return  # _saved_run says that no run is saved there
        raise TformerError(f"--out {out} is a folder with other files in it, not a model; choose a new folder "
                           "for the model")
    if not (resume or overwrite):
        raise TformerError(f"--out {out} already holds a model: add --resume to continue its run, or --overwrite "
                           "to replace it")


def _saved_run(out: Path):
    """--resume: the options the run in `out` was started with (the command line's still win over them)."""
    from tformer.training.checkpoint import restore_interrupted_save

    restore_interrupted_save(out)
    if not (out / "trainer_state.json").is_file():
        raise TformerError(f"--resume: {out} holds no saved run (no trainer_state.json)")
    return _run_options(out)


def _run_options(directory: Path | str):
    """The run options saved in a model directory's config.json."""
    from tformer.config import config_from_dict
    from tformer.training.checkpoint import CONFIG, read_config

    return config_from_dict(read_config(directory).get("tformer_run", {}), f"{Path(directory) / CONFIG}: tformer_run")


def _preset_value(run, key: str) -> str:
    """How a message names the value a model option had from its preset (the run did not set it)."""
    from tformer.registry import get_config

    preset = run.model.get("preset", "transformer-small")
    try:
        return f"the {preset} preset's {getattr(get_config(preset), key.partition('.')[2])!r}"
    except (TformerError, AttributeError):
        return "the preset's"


def _check_resumed(base, run, fields: tuple[str, ...]) -> None:
    """--resume continues a run as it was started: the model, and what `fields` name ("model" for every model
    option, or "data.task", ...), must not change; an option that would is an error, never silently ignored."""
    def values(cfg, name):
        section, _, key = name.partition(".")
        part = getattr(cfg, section)
        return ({f"{section}.{k}": v for k, v in part.items()} if not key else
                {name: part.get(key) if isinstance(part, dict) else getattr(part, key)})

    def same(key, a, b) -> bool:
        if key in PATH_OPTIONS and isinstance(a, str) and isinstance(b, str):  # ./a.tsv is a.tsv
            from tformer.data.text import split_paths

            return [os.path.abspath(x) for x in split_paths(a)] == [os.path.abspath(x) for x in split_paths(b)]
        return a == b

    for name in fields:
        before, after = values(base, name), values(run, name)
        for key in sorted(set(before) | set(after)):
            if not same(key, before.get(key), after.get(key)):
                was = repr(before.get(key)) if before.get(key) is not None else _preset_value(base, key)
                raise TformerError(f"--resume: {key} cannot change from {was} to {after.get(key)!r}; a resumed run "
                                   "continues as it started (start a new run to change it)")


def _check_data_found(run, out: Path) -> None:
    """On --resume the data files are the saved run's, relative to the folder that run started in: name the
    one not found from here, and say how to point at it, before a bare 'file not found'."""
    from tformer.data.text import split_paths

    # The tokenizer is the saved run's own: where its file was does not matter any more.
    for field in (k.removeprefix("data.") for k in PATH_OPTIONS if k != "data.tokenizer_file"):
        for path in split_paths(getattr(run.data, field, "") or ""):
            if not Path(path).exists():
                raise TformerError(f"--resume: data.{field} {path!r} (from {out / 'config.json'} unless given "
                                   f"again) is not found from {Path.cwd()}; run from the folder the training "
                                   f"started in, or give data.{field}=PATH")


def cmd_train(args) -> None:
    from tformer.config import load_config
    from tformer.registry import family
    from tformer.tasks.language_modeling import build_lm_task, lm_run_defaults
    from tformer.tasks.masked_lm import build_mlm_task, mlm_run_defaults
    from tformer.tasks.translation import build_task

    overrides = [f"{_SHORTCUTS[k]}={v}" for k in _SHORTCUTS if (v := getattr(args, k)) is not None]
    overrides += list(args.overrides)
    out = Path(args.out)
    _check_out(out, args.resume, args.overwrite)
    with _run_lock(out):
        base = _saved_run(out) if args.resume else None
        run = load_config(args.config, overrides, base=base)
        if base is not None:  # the tokenizer is the saved one: options that would make another cannot change
            _check_resumed(base, run, ("model", "data.tokenizer", "data.vocab_size", "data.tokenizer_file",
                                       "data.joint_vocab"))
            _check_data_found(run, out)
        kind = family(run.model.get("preset", "transformer-small"))
        if kind in ("gpt", "encoder") and base is None:
            # Language models start from their own defaults (cosine schedule, AdamW, ...), then the file and
            # the command line; read them again over that base.
            preset = run.model.get("preset", "transformer-small")
            run = load_config(args.config, overrides,
                              base=lm_run_defaults() if kind == "gpt" else mlm_run_defaults(preset))
        _check_family_data(run, kind)
        builder = {"gpt": build_lm_task, "encoder": build_mlm_task}.get(kind, build_task)
        _train_and_report(builder, run, out, args.resume)


def _run_lock(out: Path):
    """--out for this run alone (training.run_lock), from before its first look at a saved run: a second run on it
    stops at once, not after reading its data. Under torchrun only rank 0 locks: the process that writes there."""
    import contextlib

    from tformer.training import distributed, run_lock

    return run_lock.hold(out) if distributed.launched().is_main else contextlib.nullcontext()


def _check_family_data(run, kind: str) -> None:
    """The preset picks the task, and each task reads its own data options: a file given to the other family's
    option (--train-text with the default translation preset, a forgotten --preset) would be ignored, and the
    error that followed would ask for files the user never meant to give."""
    text_task = kind in ("gpt", "encoder")
    ignored = ("train_src", "train_tgt", "valid_src", "valid_tgt") if text_task else ("train_text", "valid_text")
    for key in ignored:
        if getattr(run.data, key):
            preset = run.model.get("preset", "transformer-small")
            raise TformerError(f"--{key.replace('_', '-')} (data.{key}) is not read by preset {preset}: "
                               "transformer-* presets train translation on --train-src/--train-tgt; gpt*, bert*, "
                               "roberta* and albert* train on --train-text (--preset picks one)")


def _train_and_report(builder, run, out: Path, resume: bool) -> None:
    """Build the task (on every process), train it, print one JSON summary line from the main process."""
    from tformer.training import checkpoint, distributed
    from tformer.training.loop import train

    if resume and run.train.max_steps:  # a run already there would train nothing yet rewrite its saved options
        saved = checkpoint.read_json(out / checkpoint.TRAINER_STATE)
        trainer = saved.get("trainer") if isinstance(saved, dict) else None
        step = trainer.get("step") if isinstance(trainer, dict) else None  # damaged: train()'s checks name it
        if isinstance(step, int) and step >= run.train.max_steps:
            raise TformerError(f"--resume: the run in {out} is at step {step} already; set train.max_steps "
                               "(--max-steps) above it to train on")

    info = distributed.setup(run.train.device)
    finished = False
    try:
        task = builder(run, out if resume else None)
        t = run.train
        if not (t.max_steps or t.max_epochs or t.max_minutes or t.save_every):
            # Without a limit a run goes on until it is stopped (as fairseq's): only useful with checkpoints.
            raise TformerError("training would never end and never save: set train.max_steps, train.max_epochs "
                               "or train.max_minutes above 0 (or train.save_every, to train until stopped)")
        state = train(task, run.train, out, resume=resume, info=info)
        if info.is_main:
            summary = {"steps": state.step, "epochs": state.epoch, "seconds": round(state.elapsed_s, 1),
                       "valid": state.last_valid, "model": str(out)}
            if state.early_stopping:  # the model saved is the best validation's, not the last step's
                summary["best_step"] = state.early_stopping["best_step"]
            print(json.dumps(summary))
        finished = True
    finally:
        distributed.teardown(info, finished)


def _output_file(path: str, inputs: tuple[str | None, ...] = (), model: str | None = None) -> Path:
    """--output as a file that can be written: not a folder, not one of the inputs, not inside the model
    directory, in a folder that exists."""
    if not path:
        raise TformerError("--output is empty; name a file")
    if path.endswith(("/", os.sep)):
        raise TformerError(f"--output {path} names a folder; name a file")
    target = Path(path)
    if any(i not in (None, "-") and Path(i).exists() and target.exists() and target.samefile(i) for i in inputs):
        raise TformerError(f"--output {path} is also an input file; write the output elsewhere")
    if model is not None and Path(model).resolve() in target.resolve().parents:
        raise TformerError(f"--output {path} is inside the --model directory; write the output elsewhere")
    if target.is_dir():
        raise TformerError(f"--output {path} is a folder; name a file")
    if target.parent.exists() and not target.parent.is_dir():
        raise TformerError(f"--output {path}: {target.parent} is a file, not a folder")
    if not target.parent.is_dir():
        raise TformerError(f"--output {path}: folder {target.parent} does not exist")
    if target.is_symlink() and not target.resolve().parent.is_dir():
        raise TformerError(f"--output {path} links to {target.resolve()}, whose folder does not exist")
    return target


def _temporary_file(suffix: str) -> Path:
    handle, name = tempfile.mkstemp(suffix=suffix)
    os.close(handle)
    return Path(name)


def _write_output(path: str, text: str | Callable[[Path], None], inputs: tuple[str | None, ...] = (),
                  suffix: str = "", model: str | None = None) -> None:
    """--output: '-' is stdout; a regular file is written beside itself and renamed in (through a symbolic link
    to it, the file it points to), so a failure keeps the old one; a device or a pipe (/dev/null, a FIFO) is
    written into as it is, never replaced. text: the text, or a function that writes a file at the path given."""
    if path == "-":
        sys.stdout.write(text)
        return
    target = _output_file(path, inputs, model)
    stream = _standard_stream(target)
    if stream is not None:  # /dev/stdout of a redirected run: the file the shell opened, not one to replace
        _write_to_stream(stream, text, suffix)
        return
    # Follows links: /dev/null is a device, /dev/fd/3 may lead to a pipe or to a file the shell opened.
    special = (target.exists() and not target.is_file()) or str(target).startswith(("/dev/", "/proc/"))
    final = target.resolve()
    # A writer function may need to seek (PNG, .npy): into a device or a pipe it writes a temporary file first.
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}{suffix}") if not special else \
        target if not callable(text) else _temporary_file(suffix)
    try:
        if callable(text):
            text(tmp)
            if special:  # appended: a file behind /dev/fd/N was opened (and emptied, if at all) by the shell
                with open(tmp, "rb") as source, open(target, "ab") as sink:
                    shutil.copyfileobj(source, sink)
        else:
            with open(tmp, "a" if special else "w", encoding="utf-8") as fh:
                fh.write(text)
        if not special:
            os.replace(tmp, final)
    except BaseException as exc:  # an error, or Ctrl-C: no temporary file is left behind
        if tmp != target:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise TformerError(f"--output {path}: {exc.strerror or exc}") from None
        raise
    else:
        if special and tmp != target:
            tmp.unlink(missing_ok=True)


def _standard_stream(target: Path):
    """sys.stdout or sys.stderr when `target` is the very file (or terminal, or pipe) they write to."""
    try:
        where = target.stat()
    except OSError:
        return None
    for stream in (sys.stdout, sys.stderr):
        try:
            mine = os.fstat(stream.fileno())
        except (OSError, AttributeError, ValueError):  # replaced by a test's capture, or closed
            continue
        if (mine.st_dev, mine.st_ino) == (where.st_dev, where.st_ino):
            return stream
    return None


def _write_to_stream(stream, text: str | Callable[[Path], None], suffix: str) -> None:
    stream.flush()
    if not callable(text):
        stream.write(text)
        stream.flush()
        return
    tmp = _temporary_file(suffix)  # a picture or an array: written whole, then copied in
    try:
        text(tmp)
        with open(tmp, "rb") as source:
            shutil.copyfileobj(source, stream.buffer)
        stream.buffer.flush()
    finally:
        tmp.unlink(missing_ok=True)


def cmd_translate(args) -> None:
    from tformer.data.parallel import read_text_input
    from tformer.tasks.translation import load_translator, translate_lines

    _positive("beam", args.beam)
    _positive("max-tokens", args.max_tokens)
    if not (math.isfinite(args.length_penalty) and args.length_penalty >= 0):
        raise TformerError(f"--length-penalty must be a number >= 0, not {args.length_penalty}")
    model, src_tok, tgt_tok = load_translator(args.model, _device(args.device))
    lines = read_text_input(args.input)
    hyps = translate_lines(model, src_tok, tgt_tok, lines, args.beam, args.max_tokens, args.length_penalty)
    _write_output(args.output, "".join(h + "\n" for h in hyps), (args.input,), model=args.model)


def _finetuned(args):
    """(model, tokenizer, its saved run options) of a fine-tuned directory."""
    from tformer.config import load_config
    from tformer.tasks.finetune import load_finetuned

    model, tokenizer = load_finetuned(args.model, _device(args.device))
    run = _run_options(args.model)
    fixed = [o for o in args.overrides if o.lstrip("-").startswith("model.")]
    if fixed:  # the model is what the directory holds; only how data is read and batched may change
        raise TformerError(f"option {fixed[0]!r}: a saved model's shape cannot change here (data.* and train.* can)")
    saved_task = run.data.task
    options = load_config(None, args.overrides, base=run)
    if options.data.task != saved_task:  # its head answers the task it was trained for, and no other
        raise TformerError(f"data.task cannot change from {saved_task!r} to {options.data.task!r}: {args.model} was "
                           f"fine-tuned for {saved_task}")
    return model, tokenizer, options


def cmd_evaluate_finetuned(args) -> None:
    from tformer.tasks.finetune import read_task_file, task_for_model

    model, tokenizer, run = _finetuned(args)
    data = read_task_file(run, args.data)
    run.data.valid_file = args.data  # errors name this file
    task = task_for_model(run, model, tokenizer, [], data)
    scores = task.evaluate(model, data, task.valid_set)
    print(json.dumps({k: round(v, 4) for k, v in scores.items()}))


def cmd_predict(args) -> None:
    from tformer.tasks.finetune import read_task_file, task_for_model

    model, tokenizer, run = _finetuned(args)
    data = read_task_file(run, args.input, labelled=False)
    task = task_for_model(run, model, tokenizer, [], None)
    task.input_file = args.input  # errors in the input's rows name it
    records = task.predict(model, data)
    _write_output(args.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), (args.input,),
                  model=args.model)


def cmd_finetune(args) -> None:
    from tformer.config import load_config
    from tformer.tasks.finetune import build_finetune_task, finetune_run_defaults

    flags = {"task": "data.task", "train": "data.train_file", "valid": "data.valid_file",
             "text_column": "data.text_column", "pair_column": "data.pair_column", "label_column": "data.label_column",
             "max_tokens": "data.max_tokens", "strategy": "train.strategy", "freeze_layers": "train.freeze_layers",
             "epochs": "train.max_epochs", "lr": "train.lr", "batch_size": "train.batch_size", "seed": "train.seed",
             "device": "train.device"}
    overrides = [f"{key}={v}" for name, key in flags.items() if (v := getattr(args, name)) is not None]
    overrides += list(args.overrides)
    out = Path(args.out)
    if args.train is None and not args.resume:
        raise TformerError("--train is needed (the training file), unless --resume continues a run with its own")
    _check_out(out, args.resume, args.overwrite, pretrained=args.model)
    with _run_lock(out):
        task = args.task or (None if args.resume else _finetuned_task(args.model))
        base = _saved_run(out) if args.resume else finetune_run_defaults(task or "classification")
        run = load_config(args.config, overrides, base=base)
        if args.resume:
            pretrained = base.model.get("pretrained", str(args.model))
            if Path(pretrained).resolve() != Path(args.model).resolve():
                raise TformerError(f"--resume: the run in {out} fine-tunes {pretrained}, not --model {args.model}")
            # The strategy, frozen layers and per-layer rates shape the optimiser's groups, which resume continues.
            _check_resumed(base, run, ("model", "data.task", "data.train_file", "train.strategy",
                                       "train.freeze_layers", "train.layer_decay", "train.encoder_lr_scale"))
            _check_data_found(run, out)
            if args.epochs is not None and not any(o.startswith("train.max_steps=") for o in overrides):
                run.train.max_steps = 0  # the steps of --epochs are counted again (see build_finetune_task)
        else:
            run.model["pretrained"] = str(args.model)
        _train_and_report(build_finetune_task, run, out, args.resume)


def _finetuned_task(model: str) -> str | None:
    """The task of a fine-tuned --model, which trains on head included; None for a pretrained one. Without it
    the default, classification, refused a tagging or qa model given without --task."""
    from tformer.tasks.finetune import FINETUNED_MODEL_TYPES, finetuned_head
    from tformer.training.checkpoint import CONFIG, read_config

    data = read_config(model)
    if data.get("model_type") not in FINETUNED_MODEL_TYPES:
        return None
    return finetuned_head(data, Path(model) / CONFIG).task


def cmd_evaluate(args) -> None:
    from tformer.tasks.translation import evaluate_files

    if args.data:
        given = [f"--{name}" for name in ("src", "ref", "beam", "output") if getattr(args, name) is not None]
        if given:
            raise TformerError(f"{given[0]} applies to translation (--src/--ref), not to a fine-tuned model (--data)")
        return cmd_evaluate_finetuned(args)
    if args.overrides:
        raise TformerError(f"option {args.overrides[0]!r}: section.key=value options apply to fine-tuned models "
                           "(--data), not to translation")
    if not (args.src and args.ref):
        raise TformerError("give --src and --ref (translation) or --data (a fine-tuned model)")
    if "-" in (args.src, args.ref):
        raise TformerError(f"--{'src' if args.src == '-' else 'ref'} -: evaluate reads two aligned files, not "
                           "stdin; give a file")

    args.beam = 4 if args.beam is None else _positive("beam", args.beam)
    _positive("max-tokens", args.max_tokens)
    result = evaluate_files(args.model, args.src, args.ref, args.beam, _device(args.device), args.max_tokens)
    hyps = result.pop("hypotheses")
    if args.output:
        _write_output(args.output, "".join(h + "\n" for h in hyps), (args.src, args.ref), model=args.model)
    print(f"BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  {result['sentences']} sentences in "
          f"{result['seconds']:.1f} s ({result['sentences_per_s']:.1f} sentences/s, beam {args.beam})")


def _prompts(args) -> list[str]:
    from tformer.data.parallel import read_text_input

    prompts = [_newlines(p) for p in (args.prompt or [])]
    if args.input:
        lines = read_text_input(args.input)
        if not lines:
            raise TformerError(f"{_source(args.input)}: no prompts in it (it is empty)")
        prompts += lines
    if not prompts:
        raise TformerError("give --prompt TEXT or --input FILE")
    return prompts


def _source(path: str | None) -> str:
    """How messages name an input: its path, or <stdin>."""
    return "<stdin>" if path in (None, "-") else path


def cmd_generate(args) -> None:
    from tformer.generation.sampling import check_generation_fits, generate_text
    from tformer.tasks.language_modeling import load_lm

    _positive("num-samples", args.num_samples)
    if args.max_new_tokens < 0:
        raise TformerError(f"--max-new-tokens must not be negative, not {args.max_new_tokens}")
    if args.temperature < 0:
        raise TformerError(f"--temperature must not be negative, not {args.temperature}")
    if not 0.0 < args.top_p <= 1.0:
        raise TformerError(f"--top-p must be in (0, 1], not {args.top_p}")
    if not math.isfinite(args.temperature):
        raise TformerError(f"--temperature must be a finite number, not {args.temperature}")
    if args.top_k < 0:
        raise TformerError(f"--top-k must not be negative (0: all tokens), not {args.top_k}")
    if "" in args.stop:
        raise TformerError("--stop: an empty stop string would stop before the first token")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise TformerError(f"--seed must be in [0, 2^63), not {args.seed}")
    if not (math.isfinite(args.repetition_penalty) and args.repetition_penalty > 0):
        raise TformerError(f"--repetition-penalty must be a positive number (1: off), not {args.repetition_penalty}")
    if args.no_repeat_ngram_size < 0:
        raise TformerError(f"--no-repeat-ngram-size must not be negative (0: off), not {args.no_repeat_ngram_size}")
    prompts = _prompts(args)
    model, tokenizer = load_lm(args.model, _device(args.device))
    n_flags, window, longest = len(args.prompt or []), model.config.max_len, 0
    for i, p in enumerate(prompts):
        where = f"--prompt {i + 1}" if i < n_flags else f"{_source(args.input)}:{i - n_flags + 1}"
        if not p and tokenizer.eos_id is None:
            raise TformerError(f"{where}: the prompt is empty, and the model has no end-of-text token to start from")
        tokenizer.check_chars(p, where)
        n = len(tokenizer.encode(p))
        longest = max(longest, n)
        if n > window:  # named here, 1-based, as the user gave it; generate's own check counts list positions
            raise TformerError(f"{where}: the prompt has {n} tokens, more than the model's context window of "
                               f"{window}; shorten it (keep its last {window} tokens)")
    check_generation_fits(model, len(prompts) * args.num_samples, longest, args.max_new_tokens)  # before the batch
    batch = [p for p in prompts for _ in range(args.num_samples)]
    options = dict(stop=[_newlines(s) for s in args.stop], do_sample=not args.greedy,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                   repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
                   ignore_eos=args.ignore_eos)
    if len(batch) == 1:  # one text: shown as it grows (the same characters as printing it at the end)
        sys.stdout.write(batch[0])
        sys.stdout.flush()
        try:
            generate_text(model, tokenizer, batch, args.max_new_tokens, streamer=_write_now, **options)
        except BrokenPipeError:
            raise
        except BaseException:
            _write_now("\n")  # the text so far stays; the message goes on a line of its own
            raise
    else:
        outs = generate_text(model, tokenizer, batch, args.max_new_tokens, **options)
        for i, (p, o) in enumerate(zip(batch, outs)):
            if i:
                sys.stdout.write("\n----\n")
            sys.stdout.write(p + o)
    sys.stdout.write("\n")


def _write_now(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def cmd_score(args) -> None:
    from tformer.data.parallel import read_text_input, read_whole_input
    from tformer.generation.scoring import choose, score_texts
    from tformer.tasks.language_modeling import load_lm

    if bool(args.choice) == bool(args.input):
        raise TformerError("give either --input FILE (scoring) or --prompt with two or more --choice (choosing)")
    if args.input and args.prompt is not None:
        raise TformerError("--prompt goes with --choice (multiple choice); --input scores a text on its own")
    model, tokenizer = load_lm(args.model, _device(args.device))
    if args.choice:
        if len(args.choice) < 2 or args.prompt is None:
            raise TformerError("multiple choice needs --prompt and at least two --choice")
        prompt, choices = _newlines(args.prompt), [_newlines(c) for c in args.choice]
        tokenizer.check_chars(prompt, "--prompt")
        for i, c in enumerate(choices):  # named as given, 1-based: the library only knows its list
            tokenizer.check_chars(c, f"--choice {i + 1}")
            if not tokenizer.encode(c):
                raise TformerError(f"--choice {i + 1}: {c!r} has no tokens to score")
        result = choose(model, tokenizer, prompt, choices, args.normalize)
        for i, (choice, score) in enumerate(zip(args.choice, result["scores"])):
            mark = "*" if i == result["index"] else " "
            print(f"{mark} {score:9.4f}  {choice}")
        return
    source = _source(args.input)
    if args.per_line:
        lines = read_text_input(args.input)
        if not lines:
            raise TformerError(f"{source}: nothing to score (it is empty)")
        for i, line in enumerate(lines):
            if not line:
                raise TformerError(f"{source}:{i + 1}: an empty line; --per-line scores each line, and "
                                   "this one has no tokens")
        names = [f"{source}:{i + 1}" for i in range(len(lines))]
        for line, r in zip(lines, score_texts(model, tokenizer, lines, names=names)):
            print(f"{r['log_likelihood']:10.3f}  {r['tokens']:5d} tokens  ppl {r['perplexity']:9.3f}  {line}")
        return
    text = read_whole_input(args.input)  # the same characters from a file and from stdin
    if not text:
        raise TformerError(f"{source}: nothing to score (it is empty)")
    for i, line in enumerate(text.split("\n")):  # a character the model lacks, named by its line
        tokenizer.check_chars(line, f"{source}:{i + 1}")
    r = score_texts(model, tokenizer, [text], names=[source])[0]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))


def _load_encoder(args):
    from tformer.tasks.encoding import encoder_defaults
    from tformer.tasks.masked_lm import load_encoder
    from tformer.training.checkpoint import read_config

    if read_config(args.model).get("model_type") == "encoder_for_task":  # fine-tuned: its encoder, without the head
        from tformer.tasks.finetune import load_finetuned

        model, tokenizer = load_finetuned(args.model, _device(args.device))
        model = model.bert
    else:
        model, tokenizer = load_encoder(args.model, _device(args.device))
    asked = getattr(args, "max_length", None)
    if asked is not None and asked > model.config.max_tokens:  # it would be cut to them without a word
        raise TformerError(f"--max-length {asked} is more than the model's {model.config.max_tokens} positions")
    return model, tokenizer, encoder_defaults(args.model, model, getattr(args, "pooling", None))


def _embed_options(args, defaults) -> dict:
    _positive("batch-size", args.batch_size)
    if args.max_length is not None:
        _positive("max-length", args.max_length)
    pooling = args.pooling or defaults.pooling
    if pooling is None:
        if not getattr(args, "tokens", False):  # one vector a sentence, in a way the folder names and tformer lacks
            raise TformerError(defaults.unsupported)
        pooling = "cls"  # token vectors: no pooling happens
    return dict(pooling=pooling, batch_size=args.batch_size, max_length=args.max_length or defaults.max_length,
                truncation=args.truncation)


def _warnings_as_lines():
    """Library warnings (truncation) as one plain line on stderr, not Python's two-line format."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"tformer: warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def cmd_embed(args) -> None:
    import numpy as np

    from tformer.data.parallel import read_text_input
    from tformer.tasks.encoding import embed

    sentences = list(args.sentence or [])
    names = [f"--sentence {k + 1}" for k in range(len(sentences))]
    if args.input:
        lines = read_text_input(args.input)
        if not lines:
            raise TformerError(f"{_source(args.input)}: no sentences in it (it is empty)")
        sentences += lines
        names += [f"{_source(args.input)}:{k + 1}" for k in range(len(lines))]
    if not sentences:
        raise TformerError("give --sentence TEXT or --input FILE")
    out = args.output
    if out != "-" and not out.endswith((".npy", ".jsonl")):
        raise TformerError(f"--output {out}: name a .npy or .jsonl file, or '-' for JSONL on stdout")
    if args.tokens and out.endswith(".npy"):
        raise TformerError("--tokens writes JSONL (sentences have different lengths); use a .jsonl --output")
    if args.tokens and args.pooling:
        raise TformerError(f"--pooling {args.pooling} makes one vector per sentence; --tokens gives every token's")
    model, tokenizer, defaults = _load_encoder(args)
    options = _embed_options(args, defaults)
    normalize = defaults.normalize if args.normalize is None else args.normalize
    vectors = embed(model, tokenizer, sentences, layers=args.layer or [-1], combine=args.combine,
                    normalize=normalize and not args.tokens, tokens=args.tokens, names=names, **options)
    if out.endswith(".npy"):
        _write_output(out, lambda tmp: np.save(tmp, vectors.numpy()), (args.input,), suffix=".npy", model=args.model)
        print(f"{len(sentences)} vectors of {vectors.shape[1]} dimensions -> {out}", file=sys.stderr)
        return
    lines = []
    if args.tokens:  # the tokens the vectors belong to; embed has already said which inputs were cut
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            token_ids = [e.ids for e in tokenizer.encode_batch(sentences, max_length=options["max_length"])]
    for k, (sentence, v) in enumerate(zip(sentences, vectors)):
        record = {"text": sentence}
        if args.tokens:
            record["tokens"] = [tokenizer.id_to_token(i) for i in token_ids[k]]
            record["vectors"] = [[round(x, 6) for x in row] for row in v.tolist()]
        else:
            record["vector"] = [round(x, 6) for x in v.tolist()]
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    _write_output(out, "".join(lines), (args.input,), model=args.model)


def cmd_fill_mask(args) -> None:
    from tformer.tasks.encoding import fill_mask

    _positive("top-k", args.top_k)
    model, tokenizer, _ = _load_encoder(args)
    for k, candidates in enumerate(fill_mask(model, tokenizer, args.text, args.top_k)):
        if k:
            print()
        for token, p in candidates:
            # A byte-level piece keeps its space (" garden"): quoted then, so a bare space is not a blank line; so
            # is a control character ("\x14", a byte of the byte-level alphabet), which would print as nothing.
            plain = token and token == token.strip() and token.isprintable()
            print(f"{p:7.4f}  {token if plain else repr(token)}")


def cmd_similar(args) -> None:
    from tformer.data.parallel import read_text_input
    from tformer.tasks.encoding import similar

    _positive("top-k", args.top_k)
    lines = read_text_input(args.input)
    kept = [k for k, line in enumerate(lines) if line.strip()]  # a blank line is no candidate; numbers stay
    if lines and not kept:
        raise TformerError(f"{_source(args.input)}: only blank lines, no sentences to rank")
    model, tokenizer, defaults = _load_encoder(args)
    names = [f"{_source(args.input)}:{k + 1}" for k in kept]
    for score, index, sentence in similar(model, tokenizer, args.query, [lines[k] for k in kept], args.top_k,
                                          names=names, **_embed_options(args, defaults)):
        print(f"{score:7.4f}  {kept[index] + 1:6d}  {sentence}")


_MAP_TOKENS = {"grid": 40, "one": 150}  # the most tokens a map shows: in a grid of every layer and head, alone


def cmd_attention(args) -> None:
    from tformer.viz.attention import plot_attention, plot_attention_grid
    from tformer.viz.maps import AXES, attention_maps

    suffix = _picture_suffix(args.output)
    if args.head is not None and args.layer is None:
        raise TformerError("--head needs --layer: one head of one layer")
    maps = attention_maps(args.model, args.text, target=args.target, pair=args.pair, kind=args.kind,
                          device=_device(args.device))
    n_layers, n_heads = maps.weights.shape[:2]
    n_tokens = max(len(maps.rows), len(maps.columns))
    limit = _MAP_TOKENS["grid" if args.layer is None else "one"]
    if n_tokens > limit:  # beyond it the labels overlap, and the picture takes minutes and gigabytes
        hint = f"; --layer N draws one layer, up to {_MAP_TOKENS['one']}" if args.layer is None else ""
        raise TformerError(f"{n_tokens} tokens are more than a readable map holds ({limit}"
                           f"{' in a grid of every layer and head' if args.layer is None else ''}): give a shorter "
                           f"text{hint}")

    def short(text: str) -> str:
        return repr(text if len(text) <= 60 else text[:57] + "...")

    title = (f"{maps.kind} attention: {short(args.text)}" + (f" + {short(args.pair)}" if args.pair else "")
             + (f" -> {short(maps.output)}" if maps.output else ""))
    if args.layer is None:
        what = f"{n_layers} layer{'s' * (n_layers != 1)} x {n_heads} head{'s' * (n_heads != 1)}"

        def draw(file: Path) -> None:
            plot_attention_grid(maps.weights, maps.columns, maps.rows, file, title)
    else:
        if not (1 <= args.layer <= n_layers or -n_layers <= args.layer <= -1):
            raise TformerError(f"--layer {args.layer}: the model has layers 1 to {n_layers} (or -1 to -{n_layers})")
        if args.head is not None and not 1 <= args.head <= n_heads:
            raise TformerError(f"--head {args.head}: the model has heads 1 to {n_heads}")
        layer = args.layer - 1 if args.layer > 0 else n_layers + args.layer
        weights = maps.weights[layer].mean(0) if args.head is None else maps.weights[layer, args.head - 1]
        what = f"layer {layer + 1}, " + ("the mean over heads" if args.head is None else f"head {args.head}")
        xlabel, ylabel = AXES[maps.kind]

        def draw(file: Path) -> None:
            plot_attention(weights, maps.columns, maps.rows, file, f"{title}\n{what}", xlabel, ylabel)
    _write_output(args.output, draw, suffix=suffix, model=args.model)
    print(f"{maps.kind} attention, {what}, {len(maps.rows)} x {len(maps.columns)} tokens -> {args.output}",
          file=sys.stderr)


def cmd_curves(args) -> None:
    from tformer.viz.curves import describe_history, not_drawn, plot_training_curves, read_history

    suffix = _picture_suffix(args.output)
    history = read_history(args.model)
    _write_output(args.output, lambda file: plot_training_curves(history, file, f"training of {args.model}"),
                  suffix=suffix, model=args.model)
    try:  # a short run logs no training loss: its log_every says why
        log_every = _run_options(args.model).train.log_every
    except TformerError:
        log_every = None
    left_out = not_drawn(history)
    print(f"{describe_history(history, log_every)} -> {args.output}"
          + (f" (not drawn: {', '.join(left_out)})" if left_out else ""), file=sys.stderr)


def _picture_suffix(output: str) -> str:
    suffix = Path(output).suffix.lower()
    if suffix not in (".png", ".svg", ".pdf"):
        raise TformerError(f"--output {output}: name a .png, .svg or .pdf file")
    return suffix


def cmd_list_models(args) -> None:
    from tformer.registry import describe, list_models

    for name in list_models():
        print(f"{name:<20} {describe(name)}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `section.key=value` (or --section.key=value) may stand anywhere on a train, finetune, evaluate or predict line.
        bad = [e for e in extra if args.command not in ("train", "finetune", "evaluate", "predict") or "=" not in e
               or "." not in e.split("=")[0]]
        if bad:
            parser.exit(2, f"tformer {args.command}: error: unrecognized arguments: {' '.join(bad)} "
                           f"(see tformer {args.command} --help)\n")
        args.overrides = extra
    handler = {"demo": cmd_demo, "train": cmd_train, "translate": cmd_translate, "evaluate": cmd_evaluate,
               "generate": cmd_generate, "score": cmd_score, "embed": cmd_embed, "fill-mask": cmd_fill_mask,
               "similar": cmd_similar, "finetune": cmd_finetune, "predict": cmd_predict,
               "attention": cmd_attention, "curves": cmd_curves, "list-models": cmd_list_models}[args.command]
    _warnings_as_lines()
    previous_sigterm = _sigterm_as_interrupt()
    try:
        if getattr(args, "model", None) == "":  # Path("") is the current folder: not what was meant
            raise TformerError("--model is empty; name a model directory")
        if getattr(args, "output", None) not in (None, "-"):  # before the work, not after it
            _output_file(args.output, tuple(getattr(args, k, None) for k in ("input", "src", "ref", "data")),
                         getattr(args, "model", None))
        handler(args)
    except TformerError as exc:
        print(f"tformer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, _Terminated)
        # Under torchrun every process gets the signal and would print the same line: the first process says it.
        if os.environ.get("RANK", "0") == "0":
            print(f"tformer {args.command}: {'terminated' if terminated else 'interrupted'}{_what_was_kept(args)}",
                  file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # a case no check above foresaw: still one line, and the way to see more
        if os.environ.get("TFORMER_DEBUG"):
            raise
        message = " ".join(str(exc).split())[:300]
        print(f"tformer {args.command}: error: {type(exc).__name__}: {message} (TFORMER_DEBUG=1 shows where)",
              file=sys.stderr)
        return 1
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, `kill`): ended as Ctrl-C is, with its message and nothing half-written."""


def _sigterm_as_interrupt():
    """Make SIGTERM raise _Terminated; the handler it replaces (to put back), or None where signals cannot be
    set (a thread other than the main one)."""
    def terminate(signum, frame):
        raise _Terminated()

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, terminate)


def _what_was_kept(args) -> str:
    """After a stopped train or finetune: which checkpoint its --out keeps, or that nothing was saved."""
    out = getattr(args, "out", None)
    if args.command not in ("train", "finetune") or not out:
        return ""
    from tformer.training import checkpoint

    try:
        checkpoint.restore_interrupted_save(out)
        saved = json.loads((Path(out) / checkpoint.TRAINER_STATE).read_text(encoding="utf-8"))
        step = saved["trainer"]["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return (f"; nothing was saved in {out} (train.save_every=N saves a checkpoint every N steps, for --resume "
                "to continue from)")
    return f"; {out} keeps the checkpoint of step {step} (--resume continues from it)"


if __name__ == "__main__":
    sys.exit(main())
