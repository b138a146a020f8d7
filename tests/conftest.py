"""Shared fixtures: tiny parallel corpora made in the test, and a tiny translation task."""

from __future__ import annotations

import random

import pytest
import torch

from tformer.config import RunConfig


def copy_pairs(n: int, seed: int = 0, vocab: str = "abcdefgh", max_words: int = 5) -> list[tuple[str, str]]:
    """A toy 'translation': the target is a copy of the source (learnable in seconds by a tiny model)."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        words = ["".join(rng.choice(vocab) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, max_words))]
        pairs.append((" ".join(words), " ".join(words)))
    return pairs


def tiny_run(**train) -> RunConfig:
    run = RunConfig(model={"preset": "transformer-micro", "dropout": 0.1})
    run.data.tokenizer = "char"
    run.data.max_len = 64
    run.train.max_tokens = 256
    run.train.warmup_steps = 20
    run.train.log_every = 1000
    run.train.eval_max_sentences = 16
    for k, v in train.items():
        setattr(run.train, k, v)
    return run


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """tformer's command line in this process: (exit code, stdout, stderr)."""
    from tformer.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """Bad input: exit code 2 and one line on stderr, naming each of `needles`, no traceback."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# Tiny models run fastest on one thread; several threads on a busy 2-core machine mostly wait on each other.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture
def unpadded_batches(monkeypatch) -> list:
    """The (B, T) shape of every batch packed into real tokens (tformer.nn.masks.Unpadded) during the test."""
    import tformer.nn.masks as masks_module

    built: list = []

    class Spy(masks_module.Unpadded):
        def __init__(self, mask):
            built.append(tuple(mask.shape))
            super().__init__(mask)

    monkeypatch.setattr(masks_module, "Unpadded", Spy)
    return built


@pytest.fixture
def step_gradients(monkeypatch) -> list:
    """The gradients each optimiser step of train() takes, in order (one list of tensors a step): the trainer's
    AdamW is replaced by SGD recording them, so that two runs' steps can be compared gradient for gradient."""
    from tformer.training import loop

    grads: list[list[torch.Tensor]] = []

    class Recorder(torch.optim.SGD):
        def step(self, closure=None):
            grads.append([p.grad.clone() for group in self.param_groups for p in group["params"]
                          if p.grad is not None])
            return super().step(closure)

    monkeypatch.setattr(loop, "make_adam", lambda model, *args, **kwargs: Recorder(model.parameters(), lr=0.1))
    return grads
