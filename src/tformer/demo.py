"""`tformer demo`: the whole Transformer story in a few CPU minutes, on data made here.

The task turns dates written by people, in twenty formats and six languages ("Mittwoch, 3. März 2021",
"the 3rd of March, 2021", "3/21/2021", ...), into ISO 8601 ("2021-03-03"). Day, month and year come in
different orders in different formats, so each output character must be copied or translated from a
different place in the input: the encoder-decoder attention has to learn the alignment, and the heatmap
written at the end shows it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tformer.config import RunConfig
from tformer.data.dates import make_date_splits
from tformer.errors import TformerError
from tformer.metrics import bleu, exact_match
from tformer.tasks.translation import TranslationTask, translate_lines
from tformer.training.loop import train
from tformer.viz.attention import plot_attention, plot_attention_grid
from tformer.viz.maps import translation_maps


@dataclass
class DemoResult:
    exact_match: float
    bleu: float
    train_seconds: float
    steps: int
    parameters: int
    model_dir: Path
    heatmap: Path
    examples: list[tuple[str, str, str]]


def demo_config(steps: int, minutes: float, seed: int) -> RunConfig:
    run = RunConfig(model={"preset": "transformer-tiny", "dropout": 0.0})
    run.data.tokenizer = "char"
    run.data.max_len = 64
    t = run.train
    # A fixed number of steps makes the demo's result the same on every machine; the learning rate warms up
    # and then decays to zero over them (the last, small steps are what take it from ~90% to ~99%).
    t.max_steps, t.max_minutes, t.max_tokens = steps, minutes, 2048
    t.schedule, t.lr, t.warmup_steps = "cosine", 3e-3, 150
    t.label_smoothing = 0.0  # one right answer per date: smoothing only slows the last few percent
    t.seed, t.log_every, t.eval_max_sentences = seed, 100, 200
    return run


# What the demo writes in its folder: the model directory and two pictures.
DEMO_MODEL, DEMO_PICTURES = "model", ("attention.png", "attention-all-heads.png")
# The run options that differ from one demo to the next (--steps, --minutes, --seed).
_VARYING = {"max_steps", "max_minutes", "seed"}


def is_demo_model(path: str | Path) -> bool:
    """Whether `path` holds a model an earlier demo saved: its saved run options are the demo's (apart from steps,
    minutes and seed; options a newer or older tformer lacks are not compared). `tformer train` always names data
    files, which the demo, making its dates in memory, never does."""
    from tformer.training import checkpoint

    try:
        saved = checkpoint.read_json(Path(path) / checkpoint.CONFIG)
    except (TformerError, OSError):
        return False
    run = saved.get("tformer_run") if isinstance(saved, dict) else None
    if not isinstance(run, dict) or saved.get("model_type") != "transformer":
        return False
    ours = demo_config(1, 0.0, 1).to_dict()
    if run.get("model") != ours["model"]:
        return False
    for section in ("data", "train"):
        theirs = run.get(section)
        if not isinstance(theirs, dict):
            return False
        if any(theirs[k] != v for k, v in ours[section].items() if k in theirs and k not in _VARYING):
            return False
    return True


def run_demo(out_dir: str | Path = "tformer-demo", steps: int = 800, minutes: float = 0.0, n_train: int = 40000,
             n_test: int = 1000, seed: int = 1, quiet: bool = False) -> DemoResult:
    out_dir = Path(out_dir)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train_pairs, valid_pairs, test_pairs = make_date_splits(n_train, 200, n_test, seed)
    run = demo_config(steps, minutes, seed)
    task = TranslationTask(run, train_pairs, valid_pairs)
    model = task.model
    say = (lambda *a: None) if quiet else print
    say(f"tformer demo: {n_train} training dates, {model.num_parameters():,} parameters, "
        f"training {steps} steps on {torch.get_num_threads()} threads")
    start = time.perf_counter()
    state = train(task, run.train, out_dir / DEMO_MODEL, quiet=quiet)
    seconds = time.perf_counter() - start

    model.eval()
    sources = [s for s, _ in test_pairs]
    refs = [t for _, t in test_pairs]
    hyps = translate_lines(model, task.src_tok, task.tgt_tok, sources, beam_size=1)
    em, score = exact_match(hyps, refs), bleu(hyps, refs)
    heatmap = write_alignment(model, task, sources[0], out_dir / DEMO_PICTURES[0])
    examples = list(zip(sources, hyps, refs))
    say(f"trained {state.step} steps in {seconds:.0f} s")
    for src, hyp, ref in examples[:8]:
        say(f"  {src:<38} -> {hyp}  {'ok' if hyp == ref else 'expected ' + ref}")
    say(f"held-out exact match: {100 * em:.1f}% of {len(refs)}   BLEU: {score:.1f}")
    say(f"model: {out_dir / DEMO_MODEL}   attention heatmap: {heatmap}")
    return DemoResult(em, score, seconds, state.step, model.num_parameters(), out_dir / DEMO_MODEL, heatmap, examples)


def write_alignment(model, task: TranslationTask, source: str, path: Path) -> Path:
    """Heatmap of the last decoder layer's encoder-decoder attention (mean over heads) for one example,
    plus a grid of every layer and head next to it."""
    maps = translation_maps(model, task.src_tok, task.tgt_tok, source)
    plot_attention_grid(maps.weights, maps.columns, maps.rows, path.with_name(path.stem + "-all-heads.png"),
                        f"encoder-decoder attention, every layer and head: {source!r}")
    return plot_attention(maps.weights[-1].mean(0), maps.columns, maps.rows, path,
                          f"{source!r} -> {maps.output!r}\nlast layer, mean over heads")
