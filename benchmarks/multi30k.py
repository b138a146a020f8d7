"""Multi30k English -> German: train a BPE Transformer for a wall-time budget, score test_2016_flickr.

    python benchmarks/multi30k.py --minutes 60 --out runs/multi30k [section.key=value ...]

Prints detokenized sacreBLEU and chrF (beam and greedy), wall time, training tokens/s and the parameter
count, and writes them as JSON next to the model. It is the same as these two commands:
    tformer train --config configs/multi30k.toml --out runs/multi30k data.train_src=... (see the config)
    tformer evaluate --model runs/multi30k --src .../test_2016_flickr.en.gz --ref .../test_2016_flickr.de.gz
Skips (exit 0) when ../shared/data/multi30k is absent.
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
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "multi30k"))
    p.add_argument("--config", default=str(ROOT / "configs" / "multi30k.toml"))
    p.add_argument("--out", default=str(ROOT / "runs" / "multi30k"))
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--eval-only", action="store_true", help="score an already trained --out")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    data = Path(args.data)
    if not (data / "train.en.gz").is_file():
        print(f"skipped: Multi30k not found at {data}")
        return 0
    from tformer.config import load_config
    from tformer.tasks.translation import build_task, evaluate_files
    from tformer.training.loop import train

    files = {k: str(data / f"{split}.{lang}.gz") for k, split, lang in
             [("train_src", "train", "en"), ("train_tgt", "train", "de"), ("valid_src", "val", "en"),
              ("valid_tgt", "val", "de")]}
    overrides = [f"data.{k}={v}" for k, v in files.items()] + [f"train.max_minutes={args.minutes}"] + args.overrides
    run = load_config(args.config, overrides)
    out = Path(args.out)
    result = {"command": "python benchmarks/multi30k.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                         f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}",
              "date": time.strftime("%Y-%m-%d")}
    if not args.eval_only:
        task = build_task(run, out if args.resume else None)
        result["parameters"] = task.model.num_parameters()
        start = time.perf_counter()
        state = train(task, run.train, out, resume=args.resume)
        result.update(train_wall_s=round(time.perf_counter() - start, 1), steps=state.step, epochs=state.epoch,
                      train_tokens=state.tokens, train_tokens_per_s=round(state.tokens / max(state.elapsed_s, 1e-9)),
                      valid=state.last_valid)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    test_src, test_ref = data / "test_2016_flickr.en.gz", data / "test_2016_flickr.de.gz"
    for beam in sorted({1, args.beam}):
        scores = evaluate_files(out, test_src, test_ref, beam_size=beam, device=device)
        hyps = scores.pop("hypotheses")
        result[f"test_beam{beam}"] = {k: round(v, 2) if isinstance(v, float) else v for k, v in scores.items()}
        (out / f"test_2016_flickr.beam{beam}.de").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    print(json.dumps(result, indent=2))
    (out / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
