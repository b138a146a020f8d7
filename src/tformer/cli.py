"""The `tformer` command: parses options and calls the library, nothing more.

Mistakes a user can make (a missing file, a bad option value) end in one line on stderr and exit code 2;
nothing already saved is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tformer.errors import TformerError

# Shortcut flags for the most used options, mapped onto section.key.
_SHORTCUTS = {
    "train_src": "data.train_src", "train_tgt": "data.train_tgt", "valid_src": "data.valid_src",
    "valid_tgt": "data.valid_tgt", "preset": "model.preset", "vocab_size": "data.vocab_size",
    "max_steps": "train.max_steps", "max_epochs": "train.max_epochs", "max_minutes": "train.max_minutes",
    "max_tokens": "train.max_tokens", "seed": "train.seed", "device": "train.device",
    "train_text": "data.train_text", "valid_text": "data.valid_text", "block_size": "data.block_size",
    "batch_size": "train.batch_size", "tokenizer": "data.tokenizer",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tformer", description="Attention and Transformers from first principles.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train a small Transformer on a generated date-translation task (~3 min)")
    d.add_argument("--out", default="tformer-demo", help="output folder (model directory and heatmap)")
    d.add_argument("--steps", type=int, default=1300, help="training steps (about 2 minutes on 2 CPU cores)")
    d.add_argument("--minutes", type=float, default=0.0, help="also stop after this many minutes (0: no limit)")
    d.add_argument("--seed", type=int, default=1)

    t = sub.add_parser("train", help="train a translation Transformer or a GPT language model",
                       description="Options: --config FILE (TOML with [model] [data] [train]), shortcut flags, "
                                   "and any section.key=value (for example train.warmup_steps=4000 model.d_model=256). "
                                   "The preset's family picks the task: transformer-* trains translation on "
                                   "--train-src/--train-tgt, gpt* trains a language model on --train-text.")
    t.add_argument("--config", help="TOML run configuration")
    t.add_argument("--out", required=True, help="model directory to write (and to resume from)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out, with its saved options unless given again")
    for name in _SHORTCUTS:
        t.add_argument("--" + name.replace("_", "-"), dest=name)
    t.set_defaults(overrides=[])  # section.key=value items, collected wherever they appear (see main)

    tr = sub.add_parser("translate", help="translate sentences from a file or stdin")
    tr.add_argument("--model", required=True, help="model directory")
    tr.add_argument("--input", default="-", help="text file, one sentence per line ('-': stdin)")
    tr.add_argument("--output", default="-", help="where translations go ('-': stdout)")
    tr.add_argument("--beam", type=int, default=4, help="beam size (1: greedy)")
    tr.add_argument("--length-penalty", type=float, default=1.0)
    tr.add_argument("--max-tokens", type=int, default=4000, help="source tokens per batch")
    tr.add_argument("--device", default="auto")

    e = sub.add_parser("evaluate", help="sacreBLEU and chrF of a model against reference translations")
    e.add_argument("--model", required=True)
    e.add_argument("--src", required=True, help="source sentences")
    e.add_argument("--ref", required=True, help="reference translations, line-aligned with --src")
    e.add_argument("--beam", type=int, default=4)
    e.add_argument("--max-tokens", type=int, default=4000)
    e.add_argument("--device", default="auto")
    e.add_argument("--output", help="also write the translations here")

    sub.add_parser("list-models", help="the named model presets")
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
    run_demo(args.out, args.steps, args.minutes, seed=args.seed)


def cmd_train(args) -> None:
    from tformer.config import config_from_dict, load_config
    from tformer.registry import family
    from tformer.tasks.language_modeling import build_lm_task, lm_run_defaults
    from tformer.tasks.translation import build_task
    from tformer.training.checkpoint import read_config
    from tformer.training import distributed
    from tformer.training.loop import train

    overrides = [f"{_SHORTCUTS[k]}={v}" for k in _SHORTCUTS if (v := getattr(args, k)) is not None]
    overrides += list(args.overrides)
    out = Path(args.out)
    base = None
    if args.resume:
        if not (out / "trainer_state.json").is_file():
            raise TformerError(f"--resume: {out} holds no saved run (no trainer_state.json)")
        # Continue with the saved run's options; anything given on this command line still wins.
        base = config_from_dict(read_config(out).get("tformer_run", {}))
    run = load_config(args.config, overrides, base=base)
    is_lm = family(run.model.get("preset", "transformer-small")) == "gpt"
    if is_lm and base is None:
        # A language model starts from language-model defaults (cosine schedule, AdamW, ...), then the
        # file and the command line; read them again over that base.
        run = load_config(args.config, overrides, base=lm_run_defaults())
    info = distributed.setup(run.train.device)
    try:
        builder = build_lm_task if is_lm else build_task
        task = builder(run, out if args.resume else None)
        state = train(task, run.train, out, resume=args.resume, info=info)
        if info.is_main:
            print(json.dumps({"steps": state.step, "epochs": state.epoch, "seconds": round(state.elapsed_s, 1),
                              "valid": state.last_valid, "model": str(out)}))
    finally:
        distributed.teardown(info)


def cmd_translate(args) -> None:
    from tformer.data.parallel import read_text_input
    from tformer.tasks.translation import load_translator, translate_lines

    _positive("beam", args.beam)
    _positive("max-tokens", args.max_tokens)
    model, src_tok, tgt_tok = load_translator(args.model, _device(args.device))
    lines = read_text_input(args.input)
    hyps = translate_lines(model, src_tok, tgt_tok, lines, args.beam, args.max_tokens, args.length_penalty)
    text = "".join(h + "\n" for h in hyps)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")


def cmd_evaluate(args) -> None:
    from tformer.tasks.translation import evaluate_files

    _positive("beam", args.beam)
    result = evaluate_files(args.model, args.src, args.ref, args.beam, _device(args.device), args.max_tokens)
    hyps = result.pop("hypotheses")
    if args.output:
        Path(args.output).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    print(f"BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  {result['sentences']} sentences in "
          f"{result['seconds']:.1f} s ({result['sentences_per_s']:.1f} sentences/s, beam {args.beam})")


def cmd_list_models(args) -> None:
    from tformer.registry import describe, list_models

    for name in list_models():
        print(f"{name:<20} {describe(name)}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `section.key=value` (or --section.key=value) may stand anywhere on a train command line.
        bad = [e for e in extra if args.command != "train" or "=" not in e or "." not in e.split("=")[0]]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = extra
    handler = {"demo": cmd_demo, "train": cmd_train, "translate": cmd_translate, "evaluate": cmd_evaluate,
               "list-models": cmd_list_models}[args.command]
    try:
        handler(args)
    except TformerError as exc:
        print(f"tformer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tformer {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
