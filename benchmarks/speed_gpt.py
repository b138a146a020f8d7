"""GPT speed: tformer against Hugging Face GPT2LMHeadModel, in one run, on the same batches and weights.

Part 1, training throughput (tokens/s of forward + backward + AdamW step, fp32), for the two Tiny
Shakespeare configurations of the GPT issue:
    cpu-small   4 layers, 4 heads, d_model 128, block 64,  batch 12, dropout 0.0
    gpu-mini    6 layers, 6 heads, d_model 384, block 256, batch 64, dropout 0.2 (timed here on the CPU too)
Both models are built with the same shape (pre-LN, GELU tanh, learned positions, tied embeddings, 65-char
vocabulary), tformer's random weights are copied into GPT2LMHeadModel (`tformer.interop.gpt2`), and the
script checks in eval mode that the two give the same logits before timing. Each trains on the identical
list of random Shakespeare blocks, with the same fused AdamW; steps are interleaved in rounds (a few steps
of one, then of the other) so machine drift hits both alike.
    tformer   GPT(...)(x).logits -> label_smoothed_cross_entropy(epsilon=0), as LanguageModelingTask.loss.
    hf        GPT2LMHeadModel(input_ids=x).logits -> F.cross_entropy (its default attention: sdpa).

Part 2, generation: a 6-layer 384-wide model (1024 positions so 16 + 256 tokens fit), a 16-token prompt,
256 new tokens, greedy, batch 1 and batch 8: tformer `generate` against `GPT2LMHeadModel.generate(
use_cache=True, do_sample=False)`; no end-of-text token, so both produce all 256 tokens. The tokens must agree.

    python benchmarks/speed_gpt.py                    # everything
    python benchmarks/speed_gpt.py --skip-generate --steps 10
Prints a table (training: the ratio of total tokens/s, and of median step times) and, as the last line, one
JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tformer.interop.gpt2 import tformer_config_to_gpt2, tformer_state_to_gpt2
from tformer.models.gpt import GPT, GPTConfig
from tformer.nn.linear import tuned_cpu_products
from tformer.runtime import keep_freed_memory_for_reuse
from tformer.training.losses import label_smoothed_cross_entropy
from tformer.training.optim import parameter_groups

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"

CONFIGS = {
    "cpu-small": dict(n_layers=4, n_heads=4, d_model=128, block=64, batch=12, dropout=0.0),
    "gpu-mini": dict(n_layers=6, n_heads=6, d_model=384, block=256, batch=64, dropout=0.2),
}


def corpus_ids() -> tuple[torch.Tensor, int]:
    if DATA.is_file():
        text = DATA.read_text(encoding="utf-8")
        chars = sorted(set(text))
        index = {c: i for i, c in enumerate(chars)}
        return torch.tensor([index[c] for c in text]), len(chars)
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 65, (200_000,), generator=g), 65  # no data: random characters, same shapes


def make_pair(shape: dict, vocab: int, max_len: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=vocab, max_len=max_len, d_model=shape["d_model"], n_heads=shape["n_heads"],
                         n_layers=shape["n_layers"], dropout=shape["dropout"], attention_dropout=shape["dropout"]))
    hf_config = GPT2Config(**{k: v for k, v in tformer_config_to_gpt2(ours.config).items()
                              if k not in ("model_type", "architectures", "transformers_version")})
    theirs = GPT2LMHeadModel(hf_config)
    missing, unexpected = theirs.load_state_dict(tformer_state_to_gpt2(ours.state_dict(), shape["n_layers"]),
                                                 strict=False)
    assert not unexpected and all(k.endswith((".attn.bias", ".attn.masked_bias", "lm_head.weight"))
                                  for k in missing), (missing, unexpected)
    theirs.tie_weights()
    ours.eval(), theirs.eval()
    with torch.no_grad():
        x = torch.randint(0, vocab, (2, 16))
        diff = (ours(x).logits - theirs(input_ids=x).logits).abs().max().item()
    assert diff < 1e-4, f"models disagree before timing: max |logit difference| {diff}"
    return ours, theirs, getattr(theirs.config, "_attn_implementation", "?")


def adamw(model):
    return torch.optim.AdamW(parameter_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.99), eps=1e-8, fused=True)


def train_speed(name: str, shape: dict, ids: torch.Tensor, vocab: int, steps: int, rounds: int) -> dict:
    ours, theirs, attn = make_pair(shape, vocab, shape["block"])
    g = torch.Generator().manual_seed(1)
    T, B = shape["block"], shape["batch"]
    starts = torch.randint(0, len(ids) - T - 1, (steps * rounds + 2, B), generator=g)
    batches = [(ids[s[:, None] + torch.arange(T)], ids[s[:, None] + torch.arange(1, T + 1)]) for s in starts]

    def step_ours(opt, x, y):
        loss, _, n = label_smoothed_cross_entropy(ours(x).logits, y, 0.0)
        (loss / y.numel()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def step_hf(opt, x, y):
        logits = theirs(input_ids=x).logits
        F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    runners = {"tformer": (step_ours, adamw(ours.train())), "hf": (step_hf, adamw(theirs.train()))}
    step_seconds: dict[str, list[float]] = {k: [] for k in runners}
    for k, (fn, opt) in runners.items():  # warm-up: first-call allocations and kernel selection
        fn(opt, *batches[0])
        fn(opt, *batches[1])
    for r in range(rounds):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for k in order:
            fn, opt = runners[k]
            for i in range(steps):
                start = time.perf_counter()
                fn(opt, *batches[2 + r * steps + i])
                step_seconds[k].append(time.perf_counter() - start)
    tokens = steps * rounds * B * T
    out = {"config": name, **shape, "hf_attention": attn,
           "tformer_tok_s": tokens / sum(step_seconds["tformer"]), "hf_tok_s": tokens / sum(step_seconds["hf"])}
    out["ratio"] = out["tformer_tok_s"] / out["hf_tok_s"]
    # The median step of each is less moved by the host's bursts than the totals (the same batches in both).
    out["median_step_ratio"] = statistics.median(step_seconds["hf"]) / statistics.median(step_seconds["tformer"])
    return out


def generation_speed(vocab: int, batch: int, new_tokens: int, repeats: int) -> dict:
    from tformer.generation.sampling import generate

    shape = dict(n_layers=6, n_heads=6, d_model=384, dropout=0.0)
    ours, theirs, attn = make_pair(shape, vocab, 1024)
    g = torch.Generator().manual_seed(2)
    prompts = torch.randint(0, vocab, (batch, 16), generator=g)
    seconds = {"tformer": [], "hf": []}
    outputs = {}

    def run_ours():
        return torch.tensor(generate(ours, prompts.tolist(), new_tokens))

    def run_hf():
        out = theirs.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=0,
                              eos_token_id=None)
        return out[:, prompts.size(1):]

    with torch.inference_mode():
        for k, fn in (("tformer", run_ours), ("hf", run_hf)):
            fn()  # warm-up
        for r in range(repeats):
            for k, fn in ((("tformer", run_ours), ("hf", run_hf)) if r % 2 == 0 else
                          (("hf", run_hf), ("tformer", run_ours))):
                start = time.perf_counter()
                outputs[k] = fn()
                seconds[k].append(time.perf_counter() - start)
    same = torch.equal(outputs["tformer"], outputs["hf"])
    tokens = batch * new_tokens
    best = {k: min(v) for k, v in seconds.items()}
    return {"batch": batch, "new_tokens": new_tokens, "prompt_tokens": 16, "hf_attention": attn,
            "tformer_tok_s": tokens / best["tformer"], "hf_tok_s": tokens / best["hf"],
            "ratio": best["hf"] / best["tformer"], "same_tokens": same}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round and model (cpu-small)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--mini-steps", type=int, default=2, help="timed steps per round for gpu-mini (slow on a CPU)")
    p.add_argument("--configs", default="cpu-small,gpu-mini")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-generate", action="store_true")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    keep_freed_memory_for_reuse()
    ids, vocab = corpus_ids()
    result = {"command": "python benchmarks/speed_gpt.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
                         f"torch {torch.__version__}", "date": time.strftime("%Y-%m-%d"),
              "tformer_cpu_matmul": "onednn" if tuned_cpu_products() else "blas",
              "train": [], "generate": []}
    import transformers

    result["transformers"] = transformers.__version__
    if not args.skip_train:
        for name in args.configs.split(","):
            steps = args.steps if name == "cpu-small" else args.mini_steps
            r = train_speed(name, CONFIGS[name], ids, vocab, steps, args.rounds)
            result["train"].append(r)
            print(f"train {name:<10} tformer {r['tformer_tok_s']:>9,.0f} tok/s   hf {r['hf_tok_s']:>9,.0f} tok/s"
                  f"   ratio {r['ratio']:.2f} (median step {r['median_step_ratio']:.2f})", flush=True)
    if not args.skip_generate:
        for batch in (1, 8):
            r = generation_speed(vocab, batch, args.new_tokens, args.repeats)
            result["generate"].append(r)
            print(f"generate batch {batch}   tformer {r['tformer_tok_s']:>8,.0f} tok/s   hf {r['hf_tok_s']:>8,.0f} "
                  f"tok/s   ratio {r['ratio']:.2f}   same tokens: {r['same_tokens']}", flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
