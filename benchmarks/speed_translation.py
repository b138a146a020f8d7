"""Translation speed: tformer against Hugging Face MarianMTModel and torch.nn.Transformer, in one run.

Part 1, training throughput (target tokens/s, forward + backward + Adam step, fp32, CPU). Three models of one
shape (d_model 256, 3+3 layers, 4 heads, d_ff 1024, joint vocabulary, ReLU, post-LN, sinusoidal positions,
shared src/tgt embeddings tied to the output, dropout 0.1 on embeddings and residuals, no attention or
activation dropout) train on the identical list of batches, interleaved round-robin so that machine drift
hits all of them alike:

  tformer           tformer.models.transformer.Transformer; loss as TranslationTask.loss computes it
                    (logits only at non-padding positions, label_smoothed_cross_entropy, / tokens).
  marian            transformers.MarianMTModel from a MarianConfig of the same shape (random weights,
                    no download), its default attention implementation, use_cache=False (as HF itself
                    does when it computes a loss); F.cross_entropy(label_smoothing=0.1, ignore_index=pad).
  nn.Transformer    torch.nn.Transformer(batch_first=True) without the final encoder/decoder LayerNorms
                    (post-LN layers only, like the others) and with its attention and activation dropout set
                    to 0 (nn.Transformer applies `dropout` there too; the others do not); embedding * sqrt(d)
                    + sinusoidal table, dropout, output Linear tied to the embedding; same loss as marian.

All three start from the same weights (tformer's, copied), and the script checks in eval mode that all three
give the same logits on a batch before timing.

Part 2, beam search (beam 4): tformer `translate_ids(beam_size=4)` against `MarianMTModel.generate(num_beams=4,
use_cache=True)` with the same weights (copied from tformer into Marian by `copy_tformer_to_marian`, checked to
give the same logits within 1e-4). Greedy decoding of the same batches is timed too, as a parity check.
How the two beam searches are made to agree:
  * early_stopping=True on the HF side: a sentence is done once it has `num_beams` finished hypotheses, which is
    tformer's rule (HF's default, early_stopping=False, keeps going while a live beam could still win).
  * length normalisation: both divide the summed log-probability by length**length_penalty where the length
    counts the generated tokens including </s> (HF: cur_len + 1 - prompt_len), so length_penalty=1.0 means
    the same on both sides.
  * the length cap: tformer's beam_search lets hypotheses grow to max_len tokens and then allows only </s>,
    keeping its real log-probability. HF gets max_length = max_len + 2 (the decoder start token, max_len tokens
    and </s>) and a small logits processor that does the same thing at that last step; HF's own
    forced_eos_token_id would give </s> log-probability 0 instead, which ranks the capped hypotheses
    differently.
  * <pad> and <s>: tformer's searches never produce them; HF gets suppress_tokens=[pad, bos], which masks them
    after the log-softmax, as tformer does.
  * with random weights (no --model) </s> is almost never chosen (p ~ 1/vocab), so both sides run every
    hypothesis to the cap (--max-len, default 20 tokens) and generate the same number of tokens. With
    --model DIR the outputs have their natural lengths and the cap is the source length * 2 + 10 per batch
    (as tformer's translate_lines does), the same for both.
  Remaining differences are numerical: ~1e-6 differences in log-probabilities can swap two nearly tied
  candidates, after which the beams diverge. The work differs too: tformer drops finished sentences from the
  batch, HF keeps computing every sentence of the batch until all of them are done.

Run from the repository root:
    python benchmarks/speed_translation.py --steps 20 --sentences 500
Prints a table and, as the last line, one JSON object with every number.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tformer.data.batching import collate_translation, pad, token_batches
from tformer.generation.search import strip_after_eos as strip
from tformer.generation.search import never_generated, translate_ids
from tformer.models.transformer import Transformer, TransformerConfig
from tformer.nn.linear import tuned_cpu_products
from tformer.nn.positional import sinusoidal_table
from tformer.runtime import keep_freed_memory_for_reuse
from tformer.interop.marian import copy_tformer_to_marian, make_marian
from tformer.training.losses import label_smoothed_cross_entropy

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "multi30k"
PAD, BOS, EOS = 0, 1, 2

SHAPE = dict(d_model=256, n_heads=4, d_ff=1024, n_encoder_layers=3, n_decoder_layers=3, dropout=0.1,
             attention_dropout=0.0, activation="relu", norm_position="post", positional="sinusoidal",
             share_embeddings=True, tie_output=True, pad_id=PAD, bos_id=BOS, eos_id=EOS)


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------------
# Data


def read_gz_lines(path: Path, limit: int | None = None) -> list[str]:
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            out.append(line.rstrip("\n"))
            if limit is not None and len(out) >= limit:
                break
    return out


def synthetic_pairs(n: int, vocab: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Random ids with Multi30k-like lengths: English ~12-14 tokens, German ~14-16, plus noise."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        ls = max(3, int(rng.gauss(13, 4)))
        lt = max(3, int(rng.gauss(15, 4)))
        pairs.append(([rng.randrange(4, vocab) for _ in range(ls)], [rng.randrange(4, vocab) for _ in range(lt)]))
    return pairs


def load_training_data(data: Path | None, vocab_size: int, n_batches: int, max_tokens: int):
    """(tokenizer or None, vocabulary size, list of collated batches, description)."""
    if data is not None and (data / "train.en.gz").is_file() and (data / "train.de.gz").is_file():
        from tformer.tokenization import train_tokenizer

        en, de = read_gz_lines(data / "train.en.gz"), read_gz_lines(data / "train.de.gz")
        t0 = time.perf_counter()
        tok = train_tokenizer(en + de, vocab_size)
        log(f"trained a BPE tokenizer on {len(en)} en + {len(de)} de sentences: vocab {tok.vocab_size} "
            f"({time.perf_counter() - t0:.1f}s)")
        src, tgt = tok.encode_batch(en), tok.encode_batch(de)
        examples = [(s, t) for s, t in zip(src, tgt) if 0 < len(s) <= 256 and len(t) < 256]
        desc = f"multi30k train (en->de), BPE {tok.vocab_size}"
        vocab = tok.vocab_size
    else:
        tok, vocab = None, vocab_size
        examples = synthetic_pairs(20000, vocab)
        desc = "synthetic random ids, Multi30k-like lengths"
    lengths = [max(len(s), len(t) + 1) for s, t in examples]
    order = token_batches(lengths, max_tokens, shuffle=True, seed=0, epoch=0)[:n_batches]
    batches = [collate_translation([examples[i] for i in b], PAD, BOS, EOS) for b in order]
    return tok, vocab, batches, desc


# ------------------------------------------------------------------------------------------------------
# The peers


class TorchTransformerMT(nn.Module):
    """torch.nn.Transformer with embeddings, sinusoidal positions and a tied output layer."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.pad_id, self.d = c.pad_id, c.d_model
        self.embed = nn.Embedding(c.src_vocab_size, c.d_model, padding_idx=c.pad_id)
        self.register_buffer("pe", sinusoidal_table(c.max_len, c.d_model), persistent=False)
        self.drop = nn.Dropout(c.dropout)
        kw = dict(d_model=c.d_model, nhead=c.n_heads, dim_feedforward=c.d_ff, dropout=c.dropout,
                  activation=c.activation, batch_first=True, norm_first=False)
        encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**kw), c.n_encoder_layers, norm=None,
                                        enable_nested_tensor=False)
        decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**kw), c.n_decoder_layers, norm=None)
        self.transformer = nn.Transformer(custom_encoder=encoder, custom_decoder=decoder, batch_first=True,
                                          d_model=c.d_model, nhead=c.n_heads)
        # Same dropout pattern as tformer and Marian: embeddings and residuals only.
        for layer in list(encoder.layers) + list(decoder.layers):
            layer.dropout.p = 0.0  # activation dropout inside the FFN
            layer.self_attn.dropout = 0.0
            if hasattr(layer, "multihead_attn"):
                layer.multihead_attn.dropout = 0.0
        self.output = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        self.output.weight = self.embed.weight

    def embed_tokens(self, ids: Tensor) -> Tensor:
        return self.drop(self.embed(ids) * math.sqrt(self.d) + self.pe[: ids.size(1)])

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        t = tgt_in.size(1)
        causal = torch.ones(t, t, dtype=torch.bool, device=src.device).triu(1)  # True = masked
        src_pad, tgt_pad = src == self.pad_id, tgt_in == self.pad_id
        h = self.transformer(self.embed_tokens(src), self.embed_tokens(tgt_in), tgt_mask=causal,
                             src_key_padding_mask=src_pad, tgt_key_padding_mask=tgt_pad,
                             memory_key_padding_mask=src_pad, tgt_is_causal=True)
        return self.output(h)


@torch.no_grad()
def copy_tformer_to_torch(src: Transformer, dst: TorchTransformerMT) -> None:
    def lin(a, b):
        b.weight.copy_(a.weight)
        b.bias.copy_(a.bias)

    def attn(a, b):
        b.in_proj_weight.copy_(a.in_proj.weight)
        b.in_proj_bias.copy_(a.in_proj.bias)
        lin(a.out_proj, b.out_proj)

    dst.embed.weight.copy_(src.src_embed.embedding.weight)
    for a, b in zip(src.encoder.layers, dst.transformer.encoder.layers):
        attn(a.self_attn, b.self_attn)
        lin(a.attn_block.norm, b.norm1)
        lin(a.ff.w1, b.linear1)
        lin(a.ff.w2, b.linear2)
        lin(a.ff_block.norm, b.norm2)
    for a, b in zip(src.decoder.layers, dst.transformer.decoder.layers):
        attn(a.self_attn, b.self_attn)
        lin(a.self_block.norm, b.norm1)
        attn(a.cross_attn, b.multihead_attn)
        lin(a.cross_block.norm, b.norm2)
        lin(a.ff.w1, b.linear1)
        lin(a.ff.w2, b.linear2)
        lin(a.ff_block.norm, b.norm3)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------------------------
# Losses: one function per model, (summed or mean) as each would be written in practice


def tformer_loss(model: Transformer, b: dict[str, Tensor]) -> tuple[Tensor, int]:
    keep = b["tgt_out"] != PAD
    logits = model(b["src"], b["tgt_in"], keep=keep).logits
    loss, _, n = label_smoothed_cross_entropy(logits, b["tgt_out"][keep], 0.1)
    n = int(n)
    return loss / n, n


def marian_logits(model, b: dict[str, Tensor]) -> Tensor:
    return model(input_ids=b["src"], attention_mask=(b["src"] != PAD).long(), decoder_input_ids=b["tgt_in"],
                 decoder_attention_mask=(b["tgt_in"] != PAD).long(), use_cache=False).logits


def peer_loss(logits: Tensor, tgt_out: Tensor) -> tuple[Tensor, int]:
    n = int((tgt_out != PAD).sum())
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt_out.reshape(-1), ignore_index=PAD,
                           label_smoothing=0.1, reduction="sum")
    return loss / n, n


def marian_loss(model, b):
    return peer_loss(marian_logits(model, b), b["tgt_out"])


def torch_loss(model, b):
    return peer_loss(model(b["src"], b["tgt_in"]), b["tgt_out"])


# ------------------------------------------------------------------------------------------------------
# Part 1: training throughput


def train_benchmark(args, vocab: int, batches: list[dict[str, Tensor]]) -> dict:
    config = TransformerConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, **SHAPE)
    torch.manual_seed(0)
    tf = Transformer(config)
    models = {"tformer": (tf, tformer_loss)}
    attn_impl = None
    try:
        marian = make_marian(config)
        copy_tformer_to_marian(tf, marian)
        attn_impl = marian.config._attn_implementation
        models["marian"] = (marian, marian_loss)
    except ImportError as exc:
        log(f"transformers not importable ({exc}): Marian skipped")
    tt = TorchTransformerMT(config)
    copy_tformer_to_torch(tf, tt)
    models["nn.Transformer"] = (tt, torch_loss)

    # Same weights -> same logits (eval mode, no dropout) at the non-padding positions.
    b0 = batches[0]
    keep = b0["tgt_out"] != PAD
    parity = {}
    with torch.no_grad():
        for m, _ in models.values():
            m.eval()
        ref = tf(b0["src"], b0["tgt_in"]).logits[keep]
        if "marian" in models:
            parity["marian"] = float((marian_logits(models["marian"][0], b0)[keep] - ref).abs().max())
        parity["nn.Transformer"] = float((tt(b0["src"], b0["tgt_in"])[keep] - ref).abs().max())
    log("training parity (same weights, eval mode), max |logit difference| vs tformer: "
        + ", ".join(f"{k} {v:.2e}" for k, v in parity.items()))

    state = {}
    for name, (m, loss_fn) in models.items():
        m.train()
        state[name] = dict(opt=torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-4),
                           times=[], tokens=0, step_tokens=[], losses=[])

    def step(name: str, b: dict[str, Tensor]) -> tuple[float, int, float]:
        m, loss_fn = models[name]
        opt = state[name]["opt"]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, n = loss_fn(m, b)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0, n, float(loss.detach())

    warm = args.warmup
    for name in models:
        for b in batches[:warm]:
            step(name, b)
    timed = batches[warm : warm + args.steps]
    chunk = args.chunk
    for start in range(0, len(timed), chunk):
        for name in models:
            for b in timed[start : start + chunk]:
                dt, n, loss = step(name, b)
                s = state[name]
                s["times"].append(dt)
                s["tokens"] += n
                s["step_tokens"].append(n)
                s["losses"].append(loss)
        log(f"  trained steps {warm + start}..{warm + min(start + chunk, len(timed)) - 1} of every model")

    results = {}
    for name, (m, _) in models.items():
        s = state[name]
        total = sum(s["times"])
        results[name] = {
            "tokens_per_s": s["tokens"] / total,
            "seconds": total,
            "steps": len(s["times"]),
            "target_tokens": s["tokens"],
            "median_step_ms": 1000 * statistics.median(s["times"]),
            # robust to a busy machine: the median over steps of that step's tokens / seconds
            "median_step_tokens_per_s": statistics.median(n / t for n, t in zip(s["step_tokens"], s["times"])),
            "parameters": trainable_parameters(m),
            "mean_loss": statistics.fmean(s["losses"]),
        }
    ratios = {f"tformer/{k}": results["tformer"]["tokens_per_s"] / v["tokens_per_s"]
              for k, v in results.items() if k != "tformer"}
    median_ratios = {f"tformer/{k}": results["tformer"]["median_step_tokens_per_s"] / v["median_step_tokens_per_s"]
                     for k, v in results.items() if k != "tformer"}
    return {"models": results, "ratios": ratios, "median_step_ratios": median_ratios,
            "parity_max_abs_diff": parity, "marian_attn_implementation": attn_impl,
            "batches": len(timed), "warmup_steps": warm,
            "padded_src_tokens": sum(b["src"].numel() for b in timed),
            "padded_tgt_tokens": sum(b["tgt_in"].numel() for b in timed)}


# ------------------------------------------------------------------------------------------------------
# Part 2: beam search with the same weights


class CapEosProcessor:
    """HF logits processor: at the step that would make the hypothesis longer than max_len tokens, allow only
    </s> and keep its log-probability, as tformer's beam_search does."""

    def __init__(self, max_len: int, eos_id: int):
        self.max_len, self.eos_id = max_len, eos_id

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if input_ids.size(1) == self.max_len + 1:  # decoder start + max_len tokens so far
            eos = scores[:, self.eos_id].clone()
            scores = torch.full_like(scores, float("-inf"))
            scores[:, self.eos_id] = eos
        return scores


def generate_benchmark(args, tok, data: Path | None) -> dict:
    from transformers import GenerationConfig, LogitsProcessorList

    # The model and the sentences.
    if args.model:
        from tformer.tasks.translation import load_translator

        model, src_tok, _ = load_translator(args.model)
        model_desc = f"model directory {args.model}"
    else:
        src_tok = tok
        vocab = tok.vocab_size if tok is not None else args.vocab
        torch.manual_seed(1)
        model = Transformer(TransformerConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, **SHAPE)).eval()
        model_desc = "random weights (benchmark shape)"
    c = model.config
    test = (data / f"test_2016_flickr.{args.src_lang}.gz") if data is not None else None
    if test is not None and test.is_file() and src_tok is not None:
        lines = read_gz_lines(test, args.sentences)
        src_ids = [s[: c.max_len] or [c.eos_id] for s in src_tok.encode_batch(lines)]
        sent_desc = f"first {len(lines)} of {test.name}"
    else:
        src_ids = [s for s, _ in synthetic_pairs(args.sentences, c.src_vocab_size, seed=7)]
        sent_desc = f"{len(src_ids)} synthetic sentences"
    order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]))
    batches = [pad([src_ids[i] for i in order[s : s + args.gen_batch]], c.pad_id)
               for s in range(0, len(order), args.gen_batch)]

    def cap(src: Tensor) -> int:
        if args.max_len:
            return args.max_len
        if args.model:
            return min(c.max_len - 1, src.size(1) * 2 + 10)
        return 20

    try:
        marian = make_marian(c).eval()
    except ValueError as exc:
        log(f"generation: this model cannot be expressed as a MarianMTModel ({exc}); HF comparison skipped")
        return {"skipped": str(exc)}
    copy_tformer_to_marian(model, marian)
    # Parity on one batch of teacher-forced targets (random continuation ids after <s>).
    g = torch.Generator().manual_seed(3)
    src = batches[len(batches) // 2]
    tgt_in = torch.randint(4, c.tgt_vocab_size, (src.size(0), 12), generator=g)
    tgt_in[:, 0] = c.bos_id
    with torch.no_grad():
        a = model(src, tgt_in).logits
        bm = marian(input_ids=src, attention_mask=(src != c.pad_id).long(), decoder_input_ids=tgt_in,
                    use_cache=False).logits
    parity = float((a - bm).abs().max())
    log(f"generation parity (same weights, {src.size(0)} sentences x 12 target positions): "
        f"max |logit difference| {parity:.2e} ({'OK' if parity < 1e-4 else 'FAILED: > 1e-4'})")
    if parity >= 1e-4:
        raise SystemExit("weight copy failed: tformer and Marian disagree; not timing")

    def hf_config(beams: int, max_len: int) -> GenerationConfig:
        beam_options = dict(early_stopping=True, length_penalty=1.0) if beams > 1 else {}
        return GenerationConfig(num_beams=beams, do_sample=False, max_length=max_len + 2 if beams > 1 else max_len + 1,
                                min_length=0, num_return_sequences=1, use_cache=True,
                                decoder_start_token_id=c.bos_id, eos_token_id=c.eos_id, pad_token_id=c.pad_id,
                                bos_token_id=c.bos_id, forced_eos_token_id=None, no_repeat_ngram_size=0,
                                repetition_penalty=1.0, suppress_tokens=never_generated(c), **beam_options)

    def run_tformer(src: Tensor, beams: int) -> list[list[int]]:
        out = translate_ids(model, src, beam_size=beams, max_len=cap(src))
        return [strip(o, c.eos_id, c.pad_id) for o in out]

    def run_hf(src: Tensor, beams: int) -> list[list[int]]:
        procs = LogitsProcessorList([CapEosProcessor(cap(src), c.eos_id)] if beams > 1 else [])
        with torch.inference_mode():
            seq = marian.generate(input_ids=src, attention_mask=(src != c.pad_id).long(),
                                  generation_config=hf_config(beams, cap(src)), logits_processor=procs)
        return [strip(row[1:], c.eos_id, c.pad_id) for row in seq.tolist()]

    # Warm up both on the smallest batch.
    for fn in (run_tformer, run_hf):
        fn(batches[0][:8], args.beam)
        fn(batches[0][:8], 1)

    results = {}
    for beams in (args.beam, 1):
        times = {"tformer": 0.0, "marian": 0.0}
        outs = {"tformer": [], "marian": []}
        for i, src in enumerate(batches):
            runners = [("tformer", run_tformer), ("marian", run_hf)]
            if i % 2:  # alternate who goes first
                runners.reverse()
            for name, fn in runners:
                t0 = time.perf_counter()
                outs[name].extend(fn(src, beams))
                times[name] += time.perf_counter() - t0
        n = len(outs["tformer"])
        same = sum(a == b for a, b in zip(outs["tformer"], outs["marian"]))
        key = f"beam{beams}" if beams > 1 else "greedy"
        results[key] = {
            name: {"sentences_per_s": n / times[name], "seconds": times[name],
                   "output_tokens": sum(len(o) for o in outs[name])}
            for name in times
        }
        results[key]["identical_outputs"] = same
        results[key]["sentences"] = n
        results[key]["ratio_tformer/marian"] = times["marian"] / times["tformer"]
        log(f"  decoded {n} sentences with beam {beams}: identical outputs {same}/{n}")
    return {"model": model_desc, "sentences_desc": sent_desc, "parity_max_abs_diff": parity,
            "batch_sentences": args.gen_batch,
            "max_len": args.max_len or ("src_len*2+10" if args.model else 20),
            "marian_attn_implementation": marian.config._attn_implementation, **results}


# ------------------------------------------------------------------------------------------------------
# Profiling (optional): the top operators of a few training steps of each model


def profile_training(vocab: int, batches: list[dict[str, Tensor]], steps: int = 3) -> None:
    from torch.profiler import ProfilerActivity, profile

    config = TransformerConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, **SHAPE)
    torch.manual_seed(0)
    tf = Transformer(config)
    runs = [("tformer", tf, tformer_loss)]
    try:
        runs.append(("marian", make_marian(config), marian_loss))
    except ImportError:
        pass
    runs.append(("nn.Transformer", TorchTransformerMT(config), torch_loss))
    for name, m, loss_fn in runs:
        m.train()
        opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-4)
        for b in batches[:2]:
            opt.zero_grad(set_to_none=True)
            loss_fn(m, b)[0].backward()
            opt.step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for b in batches[2 : 2 + steps]:
                opt.zero_grad(set_to_none=True)
                loss_fn(m, b)[0].backward()
                opt.step()
        log(f"\n== profile: {name}, {steps} training steps ==")
        log(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


# ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed training steps per model (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps per model first (default 3)")
    p.add_argument("--chunk", type=int, default=5, help="round-robin: steps per model per turn (default 5)")
    p.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per training batch (default 4096)")
    p.add_argument("--vocab", type=int, default=8000, help="joint vocabulary (default 8000)")
    p.add_argument("--data", type=Path, default=None, help=f"Multi30k folder (default {DEFAULT_DATA} if present)")
    p.add_argument("--model", type=Path, default=None, help="trained tformer translation model directory")
    p.add_argument("--src-lang", default="en", help="source side of the test file to translate (default en)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--skip-train", action="store_true", help="skip the training benchmark")
    p.add_argument("--skip-generate", action="store_true", help="skip the beam search benchmark")
    p.add_argument("--sentences", type=int, default=500, help="sentences to translate (default 500)")
    p.add_argument("--gen-batch", type=int, default=64, help="sentences per generation batch (default 64)")
    p.add_argument("--beam", type=int, default=4, help="beam size (default 4)")
    p.add_argument("--max-len", type=int, default=None,
                   help="output length cap (default: 20 with random weights, source length * 2 + 10 with --model)")
    p.add_argument("--profile", action="store_true", help="also print torch.profiler tables of 3 training steps")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    # As tformer's trainer does on a CPU; it is process-wide, so the peers in this process gain from it alike.
    keep_freed_memory_for_reuse()
    data = args.data if args.data is not None else (DEFAULT_DATA if DEFAULT_DATA.is_dir() else None)
    if args.data is not None and not args.data.is_dir():
        log(f"--data {args.data}: not a directory; using synthetic data")
        data = None
    if args.model is not None and not (args.model / "config.json").is_file():
        log(f"--model {args.model}: not a tformer model directory")
        return 2

    try:
        import transformers

        hf_version = transformers.__version__
    except ImportError:
        hf_version = None
    env = {"torch": torch.__version__, "transformers": hf_version, "threads": torch.get_num_threads(),
           "python": platform.python_version(), "cpu_count": os.cpu_count(),
           "tformer_cpu_matmul": "onednn" if tuned_cpu_products() else "blas"}
    log(f"torch {env['torch']}, transformers {hf_version}, {env['threads']} threads, {env['cpu_count']} CPUs; "
        f"tformer's large CPU products: {env['tformer_cpu_matmul']} (tformer.nn.linear.tuned_cpu_products)")

    n_batches = args.warmup + args.steps
    if args.skip_train and (args.skip_generate or args.model is not None):
        tok, vocab, batches, data_desc = None, args.vocab, [], "not needed"
    else:
        tok, vocab, batches, data_desc = load_training_data(data, args.vocab, n_batches, args.max_tokens)
        if len(batches) < n_batches:
            log(f"only {len(batches)} batches available; timing {len(batches) - args.warmup} steps")
            args.steps = len(batches) - args.warmup
        log(f"data: {data_desc}; {len(batches)} batches of <= {args.max_tokens} padded tokens")

    out: dict = {"env": env, "data": data_desc, "shape": {**SHAPE, "vocab": vocab}}
    if not args.skip_train:
        log(f"\n[1] training: {args.warmup} warm-up + {args.steps} timed steps per model, "
            f"round-robin in chunks of {args.chunk}")
        out["train"] = tr = train_benchmark(args, vocab, batches)
        log("")
        log(f"{'model':<16}{'params':>12}{'tgt tok/s':>12}{'median-step tok/s':>19}{'median ms':>11}"
            f"{'mean loss':>11}")
        for name, r in tr["models"].items():
            log(f"{name:<16}{r['parameters']:>12,}{r['tokens_per_s']:>12,.0f}{r['median_step_tokens_per_s']:>19,.0f}"
                f"{r['median_step_ms']:>11.1f}{r['mean_loss']:>11.3f}")
        for k, v in tr["ratios"].items():
            log(f"  {k}: {v:.2f}x (total tokens / total time), {tr['median_step_ratios'][k]:.2f}x (median step)")
        log(f"  Marian attention implementation: {tr['marian_attn_implementation']}")
        if args.profile:
            profile_training(vocab, batches)

    if not args.skip_generate:
        if hf_version is None:
            log("\n[2] generation skipped: transformers is not installed")
        else:
            log(f"\n[2] generation: beam {args.beam} and greedy, batches of {args.gen_batch} sentences")
            out["generate"] = ge = generate_benchmark(args, tok, data)
            if "skipped" not in ge:
                log(f"model: {ge['model']}; sentences: {ge['sentences_desc']}; max_len {ge['max_len']}; "
                    f"Marian attention {ge['marian_attn_implementation']}")
                log(f"{'search':<8}{'model':<10}{'sent/s':>10}{'seconds':>10}{'out tokens':>12}{'identical':>12}")
                for key in (f"beam{args.beam}", "greedy"):
                    r = ge[key]
                    for name in ("tformer", "marian"):
                        ident = f"{r['identical_outputs']}/{r['sentences']}" if name == "tformer" else ""
                        log(f"{key:<8}{name:<10}{r[name]['sentences_per_s']:>10.1f}{r[name]['seconds']:>10.2f}"
                            f"{r[name]['output_tokens']:>12}{ident:>12}")
                    log(f"  {key} tformer/marian speed: {r['ratio_tformer/marian']:.2f}x")
                log(f"  parity max |logit difference|: {ge['parity_max_abs_diff']:.2e}")

    print(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
