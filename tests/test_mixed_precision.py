"""The GPU's mixed-precision training path, run on a CPU: every task trains under bf16 autocast.

On CUDA the trainer runs each forward and loss in bf16 autocast (train.amp), and the backward outside it. Without a GPU that path
would go untested, and a dtype mismatch (an fp32 buffer meeting bf16 activations in a hand-written kernel,
a loss, a mask) would first show up on a lent GPU. CPU autocast casts the same kinds of ops (matmuls to
bf16, reductions and norms kept in fp32), so the trainer is told to use it here: each task must train to a
lower validation loss, keep its parameters in fp32, and save a checkpoint that loads.
"""

from __future__ import annotations

import pytest
import torch

from conftest import copy_pairs, tiny_run
from test_finetune import pretrained, run_for  # noqa: F401  (pretrained is a fixture)
from test_finetune_gpt import gpt_run, pretrained_gpt  # noqa: F401  (pretrained_gpt is a fixture)
from test_language_modeling import lm_run
from test_masked_lm import run_config as mlm_run_config
from tformer.tasks.finetune import build_finetune_task, load_finetuned
from tformer.tasks.language_modeling import LanguageModelingTask, load_lm
from tformer.tasks.masked_lm import MaskedLMTask, load_encoder, read_documents
from tformer.tasks.translation import TranslationTask, load_translator
from tformer.training import loop


@pytest.fixture
def autocast_steps(monkeypatch) -> list[torch.dtype]:
    """Turns train.amp's bf16 autocast on for CPUs; lists the autocast dtype seen by each task.loss call."""
    monkeypatch.setattr(loop, "AMP_DEVICE_TYPES", ("cuda", "cpu"))
    seen: list[torch.dtype] = []
    original = loop.train

    def spying_train(task, cfg, out_dir, **kwargs):
        loss = task.loss

        def recorded(model, batch, **kwargs):  # (masked LM's loss takes example_weight)
            if torch.is_autocast_enabled("cpu"):
                seen.append(torch.get_autocast_dtype("cpu"))
            return loss(model, batch, **kwargs)

        task.loss = recorded
        return original(task, cfg, out_dir, **kwargs)

    monkeypatch.setattr(loop, "train", spying_train)
    return seen


def train_and_check(task, cfg, out_dir, seen, metric="loss"):
    """Trains under autocast; the validation metric falls, parameters stay fp32. Returns the final metrics."""
    before = task.validate(task.model.eval())[metric]
    task.model.train()
    state = loop.train(task, cfg, out_dir, quiet=True)
    assert seen and set(seen) == {torch.bfloat16}, "the trainer did not run under bf16 autocast"
    assert state.last_valid[metric] < before, (before, state.last_valid)
    assert all(p.dtype == torch.float32 for p in task.model.parameters())
    return state.last_valid


def test_translation_trains_under_bf16_autocast(tmp_path, autocast_steps):
    pairs = copy_pairs(200, seed=3, vocab="abcd", max_words=3)
    run = tiny_run(max_steps=60, lr=0.5, warmup_steps=10)
    run.train.eval_every = 60
    train_and_check(TranslationTask(run, pairs, pairs[:40]), run.train, tmp_path / "m", autocast_steps)
    model, src_tok, tgt_tok = load_translator(tmp_path / "m")
    assert next(model.parameters()).dtype == torch.float32


def test_gpt_language_model_trains_under_bf16_autocast(tmp_path, autocast_steps):
    run = lm_run(max_steps=40, eval_every=40, lr=5e-3)
    run.model.update({"dropout": 0.1, "attention_dropout": 0.1})
    task = LanguageModelingTask(run, ["the cat sat on the mat. " * 200])
    train_and_check(task, run.train, tmp_path / "lm", autocast_steps)
    load_lm(tmp_path / "lm")


def test_masked_lm_pretraining_trains_under_bf16_autocast(tmp_path, autocast_steps):
    run = mlm_run_config(tmp_path, **{"train.max_steps": 30, "train.lr": 3e-3, "train.eval_every": 30})
    task = MaskedLMTask(run, read_documents([run.data.train_text]))
    train_and_check(task, run.train, tmp_path / "enc", autocast_steps, metric="mlm_loss")
    load_encoder(tmp_path / "enc")


def test_encoder_finetuning_trains_under_bf16_autocast(tmp_path, pretrained, autocast_steps):  # noqa: F811
    run = run_for(tmp_path, pretrained, **{"train.max_epochs": 2})
    train_and_check(build_finetune_task(run), run.train, tmp_path / "ft", autocast_steps)
    load_finetuned(tmp_path / "ft")


def test_gpt_finetuning_trains_under_bf16_autocast(tmp_path, pretrained_gpt, autocast_steps):  # noqa: F811
    run = gpt_run(tmp_path, pretrained_gpt, **{"train.max_epochs": 2})
    train_and_check(build_finetune_task(run), run.train, tmp_path / "ft", autocast_steps)
    load_finetuned(tmp_path / "ft")


class _AutocastInBackward(torch.autograd.Function):
    """The identity; records whether autocast is on when its gradient is taken."""

    seen: list[bool] = []

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        _AutocastInBackward.seen.append(torch.is_autocast_enabled("cpu"))
        return grad


def test_the_backward_runs_outside_autocast(tmp_path, autocast_steps):
    """PyTorch's AMP recipe: autocast over the forward and the loss only; the backward ops take the dtypes their
    forward ops had. The trainer ran the backward inside autocast too."""
    _AutocastInBackward.seen = []
    pairs = copy_pairs(40, seed=3)
    run = tiny_run(max_steps=2, accum_steps=2)
    task = TranslationTask(run, pairs)
    real_loss = task.loss

    def watched_loss(model, batch):
        loss, stats = real_loss(model, batch)
        return _AutocastInBackward.apply(loss), stats

    task.loss = watched_loss
    state = loop.train(task, run.train, tmp_path / "m", quiet=True)
    assert state.step == 2 and autocast_steps == [torch.bfloat16] * 4  # the forwards ran under autocast
    assert _AutocastInBackward.seen == [False] * 4
