"""Units of training: the label-smoothed loss, the learning-rate schedules, the run configuration."""

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tformer.config import RunConfig, config_from_dict, load_config
from tformer.errors import TformerError
from tformer.training.losses import cross_entropy, label_smoothed_cross_entropy
from tformer.training.schedules import inverse_sqrt_lr, warmup_cosine_lr

# --------------------------------------------------------------------------------------------------
# Label-smoothed cross-entropy


def _data(n=6, v=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g), torch.randint(1, v, (n,), generator=g)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_by_hand(eps):
    logits, target = _data()
    loss, nll, count = label_smoothed_cross_entropy(logits, target, epsilon=eps)
    expected_loss, expected_nll = 0.0, 0.0
    for i in range(logits.size(0)):
        p = torch.softmax(logits[i].double(), -1)
        nll_i = -math.log(p[target[i]].item())
        uniform_i = (-torch.log(p)).mean().item()
        expected_loss += (1 - eps) * nll_i + eps * uniform_i
        expected_nll += nll_i
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
    assert nll.item() == pytest.approx(expected_nll, rel=1e-5)
    assert int(count) == logits.size(0)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.25])
def test_label_smoothing_equals_torch(eps):
    logits, target = _data(n=10, v=11, seed=1)
    loss, _, _ = label_smoothed_cross_entropy(logits, target, epsilon=eps)
    ref = F.cross_entropy(logits, target, label_smoothing=eps, reduction="sum")
    assert torch.allclose(loss, ref, atol=1e-5)


def test_epsilon_zero_is_plain_nll():
    logits, target = _data(seed=2)
    loss, nll, _ = label_smoothed_cross_entropy(logits, target, epsilon=0.0)
    assert torch.allclose(loss, nll, atol=1e-6)
    assert torch.allclose(loss, F.nll_loss(torch.log_softmax(logits, -1), target, reduction="sum"), atol=1e-5)


def test_smoothing_penalises_overconfidence():
    # A confident correct prediction costs more with smoothing than without.
    logits = torch.tensor([[20.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([0])
    plain, _, _ = label_smoothed_cross_entropy(logits, target, epsilon=0.0)
    smooth, _, _ = label_smoothed_cross_entropy(logits, target, epsilon=0.1)
    assert smooth > plain + 1.0


def test_padding_is_ignored():
    logits, target = _data(n=8, seed=3)
    target[[1, 4, 7]] = 0
    loss, nll, count = label_smoothed_cross_entropy(logits, target, epsilon=0.1, ignore_index=0)
    keep = target != 0
    loss_ref, nll_ref, _ = label_smoothed_cross_entropy(logits[keep], target[keep], epsilon=0.1)
    assert int(count) == 5
    assert torch.allclose(loss, loss_ref, atol=1e-6)
    assert torch.allclose(nll, nll_ref, atol=1e-6)
    torch_ref = F.cross_entropy(logits, target, ignore_index=0, label_smoothing=0.1, reduction="sum")
    assert torch.allclose(loss, torch_ref, atol=1e-5)
    # Changing logits at padded positions changes nothing.
    logits2 = logits.clone()
    logits2[~keep] = torch.randn(3, 7) * 100
    assert torch.allclose(label_smoothed_cross_entropy(logits2, target, 0.1, ignore_index=0)[0], loss)


def test_no_padding_present_with_ignore_index():
    logits, target = _data(seed=4)
    a = label_smoothed_cross_entropy(logits, target, 0.1, ignore_index=0)
    b = label_smoothed_cross_entropy(logits, target, 0.1)
    assert torch.allclose(a[0], b[0]) and int(a[2]) == int(b[2]) == 6


def test_loss_accepts_3d_and_gradients_flow():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 5, generator=g, requires_grad=True)
    target = torch.tensor([[1, 2, 0], [3, 4, 4]])
    loss, nll, count = label_smoothed_cross_entropy(logits, target, 0.1, ignore_index=0)
    assert int(count) == 5
    assert not nll.requires_grad
    loss.backward()
    assert torch.equal(logits.grad[0, 2], torch.zeros(5))
    assert logits.grad[0, 0].abs().sum() > 0
    # The gradient of each counted row sums to zero (softmax minus a distribution).
    assert torch.allclose(logits.grad.sum(-1), torch.zeros(2, 3), atol=1e-6)


def test_cross_entropy_mean():
    logits, target = _data(seed=6)
    target[0] = -100
    assert torch.allclose(cross_entropy(logits, target), F.cross_entropy(logits, target), atol=1e-6)
    target[0] = 0
    ce = cross_entropy(logits.view(2, 3, 7), target.view(2, 3), ignore_index=0)
    assert torch.allclose(ce, F.cross_entropy(logits[1:], target[1:]), atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Learning-rate schedules


@pytest.mark.parametrize("d_model,warmup", [(512, 4000), (256, 100), (32, 10)])
def test_inverse_sqrt_values(d_model, warmup):
    def formula(step):
        return d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)

    assert inverse_sqrt_lr(1, d_model, warmup) == pytest.approx(d_model**-0.5 * warmup**-1.5, rel=1e-12)
    assert inverse_sqrt_lr(warmup, d_model, warmup) == pytest.approx(d_model**-0.5 * warmup**-0.5, rel=1e-12)
    assert inverse_sqrt_lr(4 * warmup, d_model, warmup) == pytest.approx(d_model**-0.5 * (4 * warmup) ** -0.5,
                                                                        rel=1e-12)
    # After warmup the rate halves when the step quadruples.
    assert inverse_sqrt_lr(4 * warmup, d_model, warmup) == pytest.approx(
        inverse_sqrt_lr(warmup, d_model, warmup) / 2, rel=1e-12)
    for step in (1, 2, warmup // 2, warmup - 1, warmup, warmup + 1, 3 * warmup, 100 * warmup):
        assert inverse_sqrt_lr(step, d_model, warmup) == pytest.approx(formula(step), rel=1e-12)
    assert inverse_sqrt_lr(10, d_model, warmup, factor=2.0) == pytest.approx(2 * formula(10), rel=1e-12)


def test_inverse_sqrt_paper_numbers():
    # d_model 512, 4000 warmup steps: peak about 7.0e-4.
    assert inverse_sqrt_lr(4000, 512, 4000) == pytest.approx(6.9877e-4, rel=1e-4)


def test_inverse_sqrt_peaks_at_warmup():
    warmup = 50
    rates = [inverse_sqrt_lr(s, 64, warmup) for s in range(1, 400)]
    assert max(range(len(rates)), key=rates.__getitem__) + 1 == warmup
    assert all(a < b for a, b in zip(rates[: warmup - 1], rates[1:warmup]))  # rising linearly
    assert all(a > b for a, b in zip(rates[warmup - 1:], rates[warmup:]))  # then falling


def test_inverse_sqrt_step_zero_is_safe():
    assert inverse_sqrt_lr(0, 512, 4000) == inverse_sqrt_lr(1, 512, 4000)


def test_warmup_cosine():
    """Steps count from 1, as the trainer passes them and as the linear and constant schedules read them: the
    rate rises by peak / warmup a step and reaches the peak at step `warmup` (it was one step early)."""
    assert warmup_cosine_lr(1, 1.0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine_lr(9, 1.0, 10, 100) == pytest.approx(0.9)
    assert warmup_cosine_lr(10, 1.0, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine_lr(55, 1.0, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine_lr(100, 1.0, 10, 100, floor=0.1) == pytest.approx(0.1)
    assert warmup_cosine_lr(500, 1.0, 10, 100) == pytest.approx(0.0)


# --------------------------------------------------------------------------------------------------
# Run configuration


def _write(tmp_path, text, name="run.toml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults():
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    assert cfg.train.warmup_steps == 4000 and cfg.train.adam_beta2 == 0.98
    assert cfg.model == {"preset": "transformer-small"}


def test_load_config_from_toml(tmp_path):
    p = _write(tmp_path, """
[model]
preset = "transformer-micro"
d_model = 64

[data]
tokenizer = "char"
vocab_size = 500
joint_vocab = false

[train]
lr = 2
warmup_steps = 100
schedule = "cosine"
""")
    cfg = load_config(p)
    assert cfg.model == {"preset": "transformer-micro", "d_model": 64}
    assert cfg.data.tokenizer == "char" and cfg.data.vocab_size == 500 and cfg.data.joint_vocab is False
    assert cfg.train.lr == 2.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.warmup_steps == 100 and cfg.train.schedule == "cosine"
    assert cfg.train.max_tokens == 4096  # untouched default


def test_overrides_are_coerced_and_later_wins(tmp_path):
    p = _write(tmp_path, "[train]\nwarmup_steps = 100\nlr = 0.5\n")
    cfg = load_config(p, ["train.warmup_steps=50", "train.lr=3e-4", "data.joint_vocab=false",
                          "train.amp=True", "model.d_model=64", "model.preset=transformer-tiny",
                          "train.seed=7", "train.seed=9", "--data.vocab_size=123"])
    assert cfg.train.warmup_steps == 50 and isinstance(cfg.train.warmup_steps, int)
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.data.joint_vocab is False
    assert cfg.train.amp is True
    assert cfg.model["d_model"] == 64 and isinstance(cfg.model["d_model"], int)
    assert cfg.model["preset"] == "transformer-tiny"
    assert cfg.train.seed == 9
    assert cfg.data.vocab_size == 123


def test_several_config_files_in_order_and_file_lists(tmp_path):
    first = _write(tmp_path, "[train]\nwarmup_steps = 100\nlr = 0.5\n")
    second = tmp_path / "second.toml"
    second.write_text('[train]\nlr = 0.25\n[data]\ntrain_text = ["a.txt", "b.txt.gz"]\n')
    cfg = load_config([first, second])
    assert cfg.train.warmup_steps == 100 and cfg.train.lr == 0.25  # the later file wins, the earlier one stays
    assert cfg.data.train_text == "a.txt,b.txt.gz"  # a TOML list of files is the comma-separated string
    # a list where one path is meant, or a list with a non-string, is named rather than read as a path
    for text, option in (('train_src = ["a.txt"]', "data.train_src"), ('train_text = ["a.txt", 3]', "data.train_text"),
                         ("tokenizer_file = true", "data.tokenizer_file")):
        second.write_text(f"[data]\n{text}\n")
        with pytest.raises(TformerError, match=f"second.toml: {option}: expected a string"):
            load_config([first, second])


def test_resume_takes_the_optimiser_options_of_this_run():
    # torch's load_state_dict brings back the saved groups' options; a resumed run keeps only the moments
    from tformer.training.loop import _load_optimizer_state, _rng_state

    w = torch.nn.Parameter(torch.ones(3))
    saved_opt = torch.optim.AdamW([w], lr=0.1, betas=(0.9, 0.99), weight_decay=0.1)
    w.grad = torch.full((3,), 2.0)
    saved_opt.step()
    saved = {"optimizer": saved_opt.state_dict(), "rng": _rng_state()}
    opt = torch.optim.AdamW([w], lr=0.1, betas=(0.5, 0.99), weight_decay=0.0)
    _load_optimizer_state(opt, saved, Path("optimizer.pt"))
    group = opt.param_groups[0]
    assert group["betas"] == (0.5, 0.99) and group["weight_decay"] == 0.0
    assert torch.equal(opt.state[w]["exp_avg"], saved_opt.state[w]["exp_avg"])  # the moments are the saved ones
    assert float(opt.state[w]["step"]) == 1


def test_unknown_section(tmp_path):
    p = _write(tmp_path, "[optim]\nlr = 1\n")
    with pytest.raises(TformerError, match=r"optim") as e:
        load_config(p)
    assert "run.toml" in str(e.value)


def test_unknown_key_in_file(tmp_path):
    p = _write(tmp_path, "[train]\nwarmup = 100\n")
    with pytest.raises(TformerError, match=r"train\.warmup\b"):
        load_config(p)


def test_unknown_key_on_command_line():
    with pytest.raises(TformerError, match=r"data\.vocab\b"):
        load_config(None, ["data.vocab=100"])


def test_wrong_type_for_int():
    with pytest.raises(TformerError, match=r"train\.max_steps") as e:
        load_config(None, ["train.max_steps=abc"])
    assert "abc" in str(e.value)


def test_wrong_type_in_file(tmp_path):
    p = _write(tmp_path, '[train]\nwarmup_steps = "abc"\n')
    with pytest.raises(TformerError, match=r"train\.warmup_steps"):
        load_config(p)
    p = _write(tmp_path, "[train]\nwarmup_steps = 1.5\n")
    with pytest.raises(TformerError, match=r"train\.warmup_steps"):
        load_config(p)
    p = _write(tmp_path, "[train]\nlr = true\n")
    with pytest.raises(TformerError, match=r"train\.lr"):
        load_config(p)


def test_bad_bool():
    with pytest.raises(TformerError, match=r"train\.amp"):
        load_config(None, ["train.amp=maybe"])


def test_bad_literal():
    with pytest.raises(TformerError, match=r"train\.schedule") as e:
        load_config(None, ["train.schedule=triangular"])
    assert "inverse_sqrt" in str(e.value)


def test_bad_literal_in_file(tmp_path):
    p = _write(tmp_path, '[data]\ntokenizer = "sentencepiece"\n')
    with pytest.raises(TformerError, match=r"data\.tokenizer"):
        load_config(p)


@pytest.mark.parametrize("item", ["train.lr", "lr=1", "optim.lr=1"])
def test_malformed_override(item):
    with pytest.raises(TformerError, match="section.key=value"):
        load_config(None, [item])


def test_missing_and_invalid_file(tmp_path):
    with pytest.raises(TformerError, match="absent.toml"):
        load_config(tmp_path / "absent.toml")
    p = _write(tmp_path, "[train\nlr = \n", name="broken.toml")
    with pytest.raises(TformerError, match="broken.toml"):
        load_config(p)


def test_config_round_trip(tmp_path):
    cfg = load_config(None, ["train.lr=0.25", "data.tokenizer=char", "model.d_model=32"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg


def test_short_seq_prob_is_a_probability_and_a_run_saved_before_it_keeps_its_pairs():
    assert load_config(None, ["data.short_seq_prob=1"]).data.short_seq_prob == 1.0  # every pair short: allowed
    assert load_config(None, ["data.short_seq_prob=0"]).data.short_seq_prob == 0.0
    for bad in ("1.5", "-0.1", "nan"):
        with pytest.raises(TformerError, match=r"data.short_seq_prob: .* is out of range \(allowed: \[0, 1\]\)"):
            load_config(None, [f"data.short_seq_prob={bad}"])
    with pytest.raises(TformerError, match=r"data.valid_fraction: 1.0 is out of range \(allowed: \[0, 1\)\)"):
        load_config(None, ["data.valid_fraction=1"])  # (other ranges keep their open top)
    # A run saved before the option existed resumes with the pairs it had (none short), not the new default
    saved = RunConfig().to_dict()
    del saved["data"]["short_seq_prob"]
    assert config_from_dict(saved).data.short_seq_prob == 0.0
    assert RunConfig().data.short_seq_prob == 0.1 and config_from_dict(RunConfig().to_dict()).data.short_seq_prob == 0.1


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_hand_written_backward_matches_autograd(eps):
    """The loss has its own backward; it must equal autograd through F.cross_entropy(label_smoothing)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(11, 7, generator=g, dtype=torch.float64)
    target = torch.randint(0, 7, (11,), generator=g)
    target[3] = 0  # a padding position
    a = logits.clone().requires_grad_(True)
    loss, _, _ = label_smoothed_cross_entropy(a, target, eps, ignore_index=0)
    (2.5 * loss).backward()
    b = logits.clone().requires_grad_(True)
    ref = F.cross_entropy(b, target, label_smoothing=eps, ignore_index=0, reduction="sum")
    (2.5 * ref).backward()
    torch.testing.assert_close(a.grad.float(), b.grad.float(), atol=1e-5, rtol=1e-5)


def test_learning_rate_schedules_through_the_trainer():
    from tformer.config import TrainConfig
    from tformer.training.loop import learning_rate

    cfg = TrainConfig(schedule="constant", lr=0.01, warmup_steps=10)
    assert learning_rate(cfg, 5, 512) == pytest.approx(0.005)
    assert learning_rate(cfg, 50, 512) == pytest.approx(0.01)
    cfg = TrainConfig(schedule="cosine", lr=0.01, warmup_steps=10, max_steps=110)
    assert learning_rate(cfg, 110, 512) == pytest.approx(0.0, abs=1e-9)
    assert learning_rate(cfg, 60, 512) == pytest.approx(0.005)
    cfg = TrainConfig(schedule="inverse_sqrt", lr=1.0, warmup_steps=4000)
    assert learning_rate(cfg, 4000, 512) == pytest.approx(512**-0.5 * 4000**-0.5)


def test_allocator_tuning_is_idempotent():
    import sys

    from tformer.runtime import keep_freed_memory_for_reuse

    first = keep_freed_memory_for_reuse()
    assert keep_freed_memory_for_reuse() == first
    if sys.platform.startswith("linux"):
        assert first is True


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads_and_names_a_known_preset(path):
    from tformer.registry import list_models

    run = load_config(path, [])
    assert run.model["preset"] in list_models()


@pytest.mark.parametrize("vocab", [7, 512, 513])
def test_unsmoothed_small_vocab_path_matches_the_custom_function(vocab):
    # epsilon 0 over at most PLAIN_MAX_VOCAB symbols takes torch's cross-entropy; the numbers must not move.
    from tformer.training.losses import PLAIN_MAX_VOCAB, _SmoothedCrossEntropy

    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(40, vocab, generator=g, requires_grad=True)
    target = torch.randint(0, vocab, (40,), generator=g)
    loss, nll, count = label_smoothed_cross_entropy(logits, target, epsilon=0.0)
    plain_path = type(loss.grad_fn).__name__ != "_SmoothedCrossEntropyBackward"
    assert plain_path == (vocab <= PLAIN_MAX_VOCAB)
    (grad,) = torch.autograd.grad(loss, logits)
    ref_loss, ref_nll = _SmoothedCrossEntropy.apply(logits, target, 0.0)
    (ref_grad,) = torch.autograd.grad(ref_loss, logits)
    assert torch.allclose(loss, ref_loss, rtol=1e-6) and torch.allclose(nll, ref_nll, rtol=1e-6)
    assert torch.allclose(grad, ref_grad, atol=1e-6)
    assert int(count) == 40 and not nll.requires_grad


def test_a_task_given_a_preset_of_another_family_names_it():
    from tformer.data.dates import make_date_pairs
    from tformer.tasks.language_modeling import LanguageModelingTask
    from tformer.tasks.masked_lm import MaskedLMTask
    from tformer.tasks.translation import TranslationTask

    cases = [("gpt-micro", "char", lambda run: TranslationTask(run, make_date_pairs(20, seed=0)), "translation"),
             ("bert-micro", "char", lambda run: LanguageModelingTask(run, ["a cat sat. " * 40]), "language modelling"),
             ("transformer-micro", "wordpiece", lambda run: MaskedLMTask(run, [["a cat sat.", "a dog ran."]] * 20),
              "masked-LM pretraining")]
    for preset, tokenizer, build, task in cases:
        run = RunConfig(model={"preset": preset})
        run.data.tokenizer, run.data.vocab_size = tokenizer, 100
        with pytest.raises(TformerError, match=f"model.preset='{preset}' is a .* model: {task} takes a "):
            build(run)


class _ScriptedTask:
    """A one-weight model on 4 batches an epoch whose validations give a scripted accuracy."""

    selection_metric = ("accuracy", "max")

    def __init__(self, scores):
        self.model = torch.nn.Linear(1, 1)
        self.model.config = type("Config", (), {"d_model": 1})()
        self.scores = list(scores)

    def train_batches(self, epoch, seed):
        return [torch.ones(2, 1)] * 4

    def collate(self, batch, device):
        return {"x": batch.to(device)}

    def count_tokens(self, batch):
        return 2

    def loss(self, model, batch):
        return model(batch["x"]).pow(2).sum(), {}

    def validate(self, model):
        return {"accuracy": self.scores.pop(0)}

    def save(self, path, model, trainer_state, optimizer_state):
        path.mkdir(parents=True, exist_ok=True)
        (path / "trainer_state.json").write_text(json.dumps(trainer_state))


class _SavingScriptedTask(_ScriptedTask):
    """The scripted task with real checkpoints (weights, optimizer, trainer state), so that a run can resume."""

    def save(self, path, model, trainer_state, optimizer_state):
        from tformer.training import checkpoint

        checkpoint.save_model(path, model, {"model_type": "scripted"}, None, None, trainer_state, optimizer_state)


def test_early_stopping_resumes_against_the_same_best_and_refuses_periodic_saves(tmp_path):
    """A resumed run forgot the best score: its first validation became the "best" and replaced the real best
    checkpoint. And train.save_every replaced the best checkpoint with later weights between validations."""
    from tformer.training.loop import train

    cfg = RunConfig().train
    cfg.max_steps, cfg.eval_every, cfg.early_stopping, cfg.warmup_steps, cfg.lr = 20, 2, 2, 1, 0.01
    whole = train(_SavingScriptedTask([0.5, 0.9, 0.7, 0.6]), cfg, tmp_path / "whole", quiet=True)
    assert whole.step == 8 and whole.last_valid == {"accuracy": 0.9}
    cfg.max_steps = 6  # stopped after the validation of step 6; the checkpoint on disk is step 4's
    train(_SavingScriptedTask([0.5, 0.9, 0.7]), cfg, tmp_path / "cut", quiet=True)
    cfg.max_steps = 20
    resumed = train(_SavingScriptedTask([0.7, 0.6, 0.95]), cfg, tmp_path / "cut", resume=True, quiet=True)
    assert resumed.step == whole.step and resumed.last_valid == {"accuracy": 0.9}
    for run in ("whole", "cut"):
        assert json.loads((tmp_path / run / "trainer_state.json").read_text())["trainer"]["step"] == 4
    # Continued without early stopping, the record of the old best goes: it no longer describes the saved model.
    plain = RunConfig().train
    plain.max_steps, plain.eval_every, plain.warmup_steps, plain.lr = 10, 2, 1, 0.01
    later = train(_SavingScriptedTask([0.3] * 5), plain, tmp_path / "cut", resume=True, quiet=True)
    assert later.step == 10 and later.early_stopping is None
    assert json.loads((tmp_path / "cut" / "trainer_state.json").read_text())["trainer"]["early_stopping"] is None
    cfg.save_every = 3
    with pytest.raises(TformerError, match="train.early_stopping keeps the best validated checkpoint"):
        train(_SavingScriptedTask([0.5]), cfg, tmp_path / "periodic", quiet=True)


def test_the_summary_of_an_early_stopped_run_is_its_best_checkpoint_and_epochs_count_whole_ones(tmp_path):
    from tformer.training.loop import train

    cfg = RunConfig().train
    cfg.max_epochs, cfg.eval_every, cfg.early_stopping, cfg.warmup_steps, cfg.lr = 3, 2, 2, 1, 0.01
    state = train(_ScriptedTask([0.5, 0.9, 0.7, 0.6, 0.8]), cfg, tmp_path / "a", quiet=True)
    assert state.step == 8 and state.last_valid == {"accuracy": 0.9}  # stopped at 8; step 4 is on disk
    assert json.loads((tmp_path / "a" / "trainer_state.json").read_text())["trainer"]["step"] == 4
    state = train(_ScriptedTask([0.9, 0.5, 0.6, 0.8]), cfg, tmp_path / "c", quiet=True)
    assert state.step == 6 and state.epoch == 1  # stopped inside the second epoch: one whole epoch
    cfg.early_stopping, cfg.eval_every, cfg.max_epochs, cfg.max_steps = 0, 0, 0, 8  # the limit on an epoch's end
    state = train(_ScriptedTask([0.5]), cfg, tmp_path / "b", quiet=True)
    assert state.step == 8 and state.epoch == 2 and state.batch_index == 0



def test_early_stopping_is_refused_where_the_task_names_no_score_to_watch(tmp_path):
    """A task without a selection metric (a user's own): train.early_stopping would never stop anything, and only
    move the saves to the validations."""
    from tformer.training.loop import train

    class Unwatched(_ScriptedTask):
        selection_metric = None

    cfg = RunConfig().train
    cfg.max_steps, cfg.eval_every, cfg.early_stopping, cfg.save_every, cfg.warmup_steps = 10, 1, 1, 0, 1
    with pytest.raises(TformerError, match=r"train\.early_stopping=1: this task names no validation score"):
        train(Unwatched([0.5] * 10), cfg, tmp_path / "a", quiet=True)
    assert not (tmp_path / "a").exists()
    state = train(_ScriptedTask([0.5] * 10), cfg, tmp_path / "b", quiet=True)  # a score to watch: it stops
    assert state.step == 2


def test_early_stopping_without_a_validation_score_is_an_error_not_a_save_at_every_validation(tmp_path):
    from tformer.training.loop import train

    class NoValidationData(_ScriptedTask):
        def validate(self, model):
            return {}

    cfg = RunConfig().train
    cfg.max_steps, cfg.eval_every, cfg.early_stopping, cfg.save_every, cfg.warmup_steps = 10, 2, 1, 0, 1
    with pytest.raises(TformerError, match=r"train\.early_stopping=1: the validation gave no .* validation data"):
        train(NoValidationData([0.5] * 10), cfg, tmp_path / "a", quiet=True)

def test_an_early_stopping_run_that_validates_each_epoch_validates_its_last_step_once(tmp_path):
    from tformer.training.loop import train

    cfg = RunConfig().train
    cfg.max_epochs, cfg.eval_every, cfg.early_stopping, cfg.warmup_steps, cfg.lr = 2, 0, 3, 1, 0.01
    task = _ScriptedTask([0.5, 0.6, 0.7])
    state = train(task, cfg, tmp_path / "a", quiet=True)
    assert state.step == 8 and [e["step"] for e in state.history if "valid" in e] == [4, 8]
    assert task.scores == [0.7]  # two validations, one per epoch: the end did not validate step 8 again


def test_options_set_from_python_meet_the_checks_of_a_file(tmp_path):
    """The README sets run options by attribute: a typo in a choice, a value out of range or a number given as
    text is named before training, as it is from a TOML file (it trained with a constant rate before)."""
    from conftest import copy_pairs, tiny_run
    from tformer.tasks.translation import TranslationTask
    from tformer.training.loop import train

    run = tiny_run(max_steps=1)
    task = TranslationTask(run, copy_pairs(20))
    for field, value, needle in (("schedule", "cosin", "train.schedule: 'cosin' is not one of"),
                                 ("lr", -1.0, "train.lr: -1.0 is out of range"),
                                 ("max_steps", "many", "train.max_steps: expected an integer")):
        bad = tiny_run(max_steps=1).train
        setattr(bad, field, value)
        with pytest.raises(TformerError, match=needle):
            train(task, bad, tmp_path / "m", quiet=True)
        assert not (tmp_path / "m").exists()
    run.train.max_steps = "1"  # what a file would accept is taken, converted
    train(task, run.train, tmp_path / "m", quiet=True)
    assert run.train.max_steps == 1
    run.data.valid_fraction = 2.0
    with pytest.raises(TformerError, match="data.valid_fraction: 2.0 is out of range"):
        TranslationTask(run, copy_pairs(20))


def test_a_decaying_schedule_runs_to_the_end_of_an_epoch_limited_run(tmp_path):
    """cosine over max_steps=0 fell to min_lr right after warmup; limited by epochs, it decays over their steps;
    limited only by time, it has no end and is refused."""
    from conftest import copy_pairs, tiny_run
    from tformer.tasks.translation import TranslationTask
    from tformer.training import distributed
    from tformer.training.loop import learning_rate, schedule_config, train

    run = tiny_run(max_steps=0, max_epochs=2, schedule="cosine", lr=1e-3, min_lr=1e-4, warmup_steps=2)
    task = TranslationTask(run, copy_pairs(60))
    rates = schedule_config(run.train, task, distributed.DistInfo())
    per_epoch = len(task.train_batches(0, run.train.seed))
    assert rates.max_steps == 2 * per_epoch > 4 and run.train.max_steps == 0
    middle = learning_rate(rates, rates.max_steps // 2 + 1, 64)
    assert 1e-4 < middle < 1e-3 and learning_rate(rates, rates.max_steps, 64) == pytest.approx(1e-4)
    state = train(task, run.train, tmp_path / "m", quiet=True)
    assert state.step == rates.max_steps
    timed = tiny_run(max_steps=0, max_minutes=1.0, schedule="cosine")
    with pytest.raises(TformerError, match="train.schedule=cosine decays until train.max_steps"):
        train(TranslationTask(timed, copy_pairs(60)), timed.train, tmp_path / "t", quiet=True)


def test_warmup_ratio_is_a_share_of_the_run_and_warmup_steps_overrides_it():
    """transformers' warmup_ratio: warmup_steps 0 and a ratio warm up over that share of the run's steps (counted from
    epochs when the run is limited by them); warmup_steps above 0 wins; a run with no step count is refused."""
    from conftest import copy_pairs, tiny_run
    from tformer.tasks.translation import TranslationTask
    from tformer.training import distributed
    from tformer.training.loop import learning_rate, schedule_config

    info = distributed.DistInfo()
    run = tiny_run(max_steps=200, schedule="linear", lr=1e-3, warmup_steps=0, warmup_ratio=0.1)
    task = TranslationTask(run, copy_pairs(60))
    rates = schedule_config(run.train, task, info)
    assert rates.warmup_steps == 20 and run.train.warmup_steps == 0
    assert learning_rate(rates, 10, 64) == pytest.approx(5e-4) and learning_rate(rates, 20, 64) == pytest.approx(1e-3)
    assert schedule_config(replace(run.train, warmup_steps=7), task, info).warmup_steps == 7
    no_warmup = schedule_config(replace(run.train, warmup_ratio=0.0), task, info)
    assert no_warmup.warmup_steps == 0 and learning_rate(no_warmup, 1, 64) == pytest.approx(1e-3 * 199 / 200)
    by_epochs = schedule_config(replace(run.train, max_steps=0, max_epochs=5, warmup_ratio=0.5, schedule="constant"),
                                task, info)
    assert by_epochs.warmup_steps == int(0.5 * 5 * len(task.train_batches(0, run.train.seed))) > 0
    timed = replace(run.train, max_steps=0, max_minutes=1.0, schedule="constant")
    with pytest.raises(TformerError, match=r"train.warmup_ratio=0.1 is a share of train.max_steps"):
        schedule_config(timed, task, info)
    assert schedule_config(replace(timed, warmup_ratio=0.0), task, info).warmup_steps == 0


def test_the_paper_schedule_without_warmup_decays_from_the_first_step():
    """inverse_sqrt with warmup_steps=0 divided by zero (0 ** -1.5); its limit is d^-0.5 step^-0.5."""
    assert inverse_sqrt_lr(1, 64, 0) == pytest.approx(64**-0.5)
    assert inverse_sqrt_lr(16, 64, 0, factor=2.0) == pytest.approx(2 * 64**-0.5 / 4)


def test_model_options_name_the_file_that_set_them(tmp_path):
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    first.write_text('[model]\npreset = "gpt-micro"\nd_model = 64\n')
    second.write_text('[model]\nd_modle = 64\n')
    with pytest.raises(TformerError, match=r"b\.toml: unknown option model\.d_modle for preset 'gpt-micro' "
                                           r"\(known: .*d_model"):
        load_config([first, second])
    second.write_text('[model]\nn_heads = "four"\n')
    with pytest.raises(TformerError, match=r"b\.toml: model\.n_heads: expected an integer, got 'four'"):
        load_config([first, second])
    with pytest.raises(TformerError, match=r"command line: model\.dropout: expected a number, got 'high'"):
        load_config(first, ["model.dropout=high"])
    assert load_config([first], ["model.n_layers=3"]).model == {"preset": "gpt-micro", "d_model": 64, "n_layers": 3}


@pytest.mark.parametrize("saved_world,world", [(1, 2), (2, 1), (2, 3), (4, 3), (3, 4), (8, 1)])
def test_a_resumed_position_under_another_world_size_skips_no_batch_and_repeats_fewer_than_a_round(saved_world,
                                                                                                  world):
    """The saved processes used batch_index x saved_world batches of the epoch: the new shares start at the last
    round of `world` batches at or before that point."""
    from tformer.training.loop import resharded_position

    for used_each in range(12):
        used = used_each * saved_world
        start = resharded_position(used_each, saved_world, world) * world  # the first batch the new shares take
        assert start <= used < start + world, (used_each, start)
    assert resharded_position(5, 3, 3) == 5


def test_processes_a_saved_run_did_not_have_draw_their_own_random_numbers(tmp_path):
    """Resumed on more processes than saved, every process took rank 0's random state: all drew rank 0's dropout
    masks from then on."""
    from conftest import copy_pairs, tiny_run
    from tformer.tasks.translation import TranslationTask
    from tformer.training import checkpoint, distributed
    from tformer.training.loop import _load_optimizer_state, saved_world_size, train
    from tformer.training.optim import make_adam

    run = tiny_run(max_steps=1)
    task = TranslationTask(run, copy_pairs(30))
    train(task, run.train, tmp_path / "m", quiet=True)
    meta, saved = checkpoint.load_trainer_state(tmp_path / "m")
    assert saved_world_size(meta["trainer"], saved, tmp_path) == 1
    optimizer = make_adam(task.model, (0.9, 0.98), 1e-9, 0.0)
    drawn = []
    for rank in range(3):
        _load_optimizer_state(optimizer, saved, tmp_path, distributed.DistInfo(rank=rank, world_size=3), seed=1)
        drawn.append(torch.rand(4))
    assert not torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[1], drawn[2])
    torch.set_rng_state(saved["rng"]["torch"])
    assert torch.equal(drawn[0], torch.rand(4))  # rank 0 goes on from its own saved state
    # A checkpoint from before trainer.world_size was saved: its random states tell how many processes saved it.
    assert saved_world_size({}, {"rng_ranks": [None, None]}, tmp_path) == 2
    with pytest.raises(TformerError, match=r"trainer_state.json: trainer.world_size is 0, not a number"):
        saved_world_size({"world_size": 0}, saved, tmp_path / "trainer_state.json")
