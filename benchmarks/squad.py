"""SQuAD v1.1 dev scores of a fine-tuned QA model, under both rules for overlapping windows (2 CPU cores).

Needs ../shared/data/squad; skips cleanly (exit 0, a message) without it. Training is the command line
(about 50 minutes for two epochs on 2 cores, all-MiniLM-L6-v2, the 44 training articles):

    tformer finetune --model MINILM --task qa --train ../shared/data/squad/train-v1.1-first44.json \\
        --valid ../shared/data/squad/dev-v1.1.json --out runs/squad --epochs 2 --lr 2e-4 --batch-size 32 \\
        data.max_tokens=384 data.doc_stride=128 train.layer_decay=0.8

then this script runs the model once over the dev windows and post-processes the same logits twice:
    all windows    a span is scored in every window that holds it and keeps its best score
    max context    a span may start only in the window where its first token is most central (BERT's rule,
                   `data.max_context=true` for `tformer evaluate`)

    python benchmarks/squad.py --model runs/squad
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from tformer.config import config_from_dict
from tformer.data.squad import best_spans, make_features, read_squad, squad_scores
from tformer.errors import TformerError
from tformer.tasks.finetune import load_finetuned, task_for_model
from tformer.training.checkpoint import read_config

REPO = Path(__file__).resolve().parents[1]
DEV = REPO.parent / "shared" / "data" / "squad" / "dev-v1.1.json"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a directory written by tformer finetune --task qa")
    p.add_argument("--dev", default=str(DEV))
    p.add_argument("--limit", type=int, default=0, help="score only the first N questions (0: all)")
    args = p.parse_args()
    if not Path(args.dev).is_file():
        print(f"skipped: {args.dev} is absent")
        return 0
    try:
        model, tokenizer = load_finetuned(args.model)
        run = config_from_dict(read_config(args.model).get("tformer_run", {}))
        examples = read_squad(args.dev)
    except TformerError as exc:
        print(f"squad.py: error: {exc}", file=sys.stderr)
        return 1
    if args.limit:
        examples = examples[: args.limit]
    task = task_for_model(run, model, tokenizer, [], None)
    features = make_features(tokenizer, examples, max_length=task.max_tokens, stride=run.data.doc_stride,
                             max_question_tokens=task.question_budget(), training=False)
    began = time.perf_counter()
    with torch.inference_mode():
        start, end = task.qa_logits(model, features)
    seconds = time.perf_counter() - began
    result = {"model": args.model, "questions": len(examples), "windows": len(features),
              "forward_seconds": round(seconds, 1)}
    for name, max_context in (("all_windows", False), ("max_context", True)):
        answers = best_spans(start, end, features, examples, max_answer_length=run.data.max_answer_length,
                             max_context=max_context)
        scores = squad_scores(answers, examples)
        result[name] = {k: round(v, 2) for k, v in scores.items()}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
