"""Tiny Shakespeare, character level: train a small GPT, report validation loss, wall time and tokens/s.

    python benchmarks/shakespeare.py                      # CPU configuration (configs/shakespeare-char.toml)
    python benchmarks/shakespeare.py --config configs/shakespeare-gpu.toml --out runs/shakespeare-gpu

The last 10% of input.txt is the validation set; its loss is the mean over every held-out character
(consecutive blocks of block_size), in nats. Same as:
    tformer train --config configs/shakespeare-char.toml --out runs/shakespeare-char \
        data.train_text=../shared/data/tinyshakespeare/input.txt
Skips (exit 0) when ../shared/data/tinyshakespeare is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"))
    p.add_argument("--config", default=str(ROOT / "configs" / "shakespeare-char.toml"))
    p.add_argument("--out", default=str(ROOT / "runs" / "shakespeare-char"))
    p.add_argument("--sample", type=int, default=300, help="characters to generate after training")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    args = p.parse_args()
    if not Path(args.data).is_file():
        print(f"skipped: Tiny Shakespeare not found at {args.data}")
        return 0

    from tformer.config import load_config
    from tformer.tasks.language_modeling import build_lm_task, lm_run_defaults
    from tformer.training.loop import train

    run = load_config(args.config, [f"data.train_text={args.data}"] + args.overrides, base=lm_run_defaults())
    task = build_lm_task(run)
    history: list[float] = []  # every validation's loss, eval_every steps apart (the last at the end)
    validate = task.validate

    def recorded_validate(model):
        metrics = validate(model)
        history.append(round(metrics["loss"], 4))
        return metrics

    task.validate = recorded_validate
    start = time.perf_counter()
    state = train(task, run.train, args.out)
    wall = time.perf_counter() - start
    result = {
        "command": "python benchmarks/shakespeare.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch "
                   f"{torch.__version__}, "
                   f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}",
        "date": time.strftime("%Y-%m-%d"),
        "parameters": task.model.num_parameters(),
        "steps": state.step,
        "valid_loss": round(state.last_valid["loss"], 4),
        "valid_losses": history,
        "eval_every": run.train.eval_every,
        "train_seconds": round(state.elapsed_s, 1),
        "wall_seconds": round(wall, 1),
        "tokens_per_s": round(state.tokens / max(state.elapsed_s, 1e-9)),
    }
    if args.sample:
        from tformer.generation.sampling import generate_text

        task.model.eval()
        result["sample"] = generate_text(task.model, task.tokenizer, ["\n"], args.sample, do_sample=True,
                                         temperature=0.8, top_k=40, seed=1)[0]
    print(json.dumps(result, indent=2))
    (Path(args.out) / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
