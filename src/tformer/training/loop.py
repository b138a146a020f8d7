"""The training loop. It knows nothing of any task: a task supplies batches, a loss and a validation.

One optimiser step: set the learning rate from the schedule, run `accum_steps` micro-batches forward (under
autocast) and backward (DDP synchronises gradients on the last one only), clip, stop every process if a loss or
the gradients are not finite, step. Around it: logging, periodic validation, atomic checkpoints, and exact resume
(weights, optimiser, step, data position, RNG).
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from tformer.config import TrainConfig, check_section
from tformer.data.batching import shard
from tformer.errors import TformerError
from tformer.runtime import keep_freed_memory_for_reuse
from tformer.training import checkpoint, distributed, run_lock, schedules, throughput
from tformer.training.averaging import CheckpointAverager
from tformer.training.early_stopping import EarlyStopping
from tformer.training.optim import make_adam

# Where train.amp turns on bf16 autocast. Not on CPUs: there it is faster but changes the numbers a user
# gets from fp32. The tests add "cpu" to run the GPU's mixed-precision code path on a machine without one.
AMP_DEVICE_TYPES = ("cuda",)


class Task(Protocol):
    """What the trainer needs from a task."""

    model: nn.Module

    def train_batches(self, epoch: int, seed: int) -> list[Any]:
        """The epoch's batches (for example lists of example indices), in order."""

    def collate(self, batch: Any, device: torch.device) -> dict[str, Tensor]:
        ...

    def count_tokens(self, batch: dict[str, Tensor]) -> int:
        """How many target tokens the batch's loss sums over (the step's loss is divided by the total)."""

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """(summed loss, stats as tensors, for example the NLL and the token count)."""

    # Optional, for a loss with a part taken per example beside the per-token part (masked LM's NSP/SOP):
    # def count_examples(self, batch: dict[str, Tensor]) -> int: ...
    # The trainer then calls loss(model, batch, example_weight=w), w = the step's tokens / the step's examples (all
    # micro-batches, all processes): the per-example sum times w, divided by the step's tokens as all the loss is,
    # is the mean over the step's examples, as one batch of them all would give.

    def validate(self, model: nn.Module) -> dict[str, float]:
        ...

    def save(self, path: Path, model: nn.Module, trainer_state: dict | None, optimizer_state: dict | None) -> None:
        ...

    # Optional: True when train_batches gives epochs different numbers of batches (for a run limited by
    # train.max_epochs, the schedule's length then counts every epoch's, not epoch 0's times the epochs).
    # epoch_sizes_vary: bool

    # Optional: training FLOPs per token, for model FLOPs utilisation (MFU) in the progress line.
    # def flops_per_token(self) -> float: ...


@dataclass
class TrainerState:
    step: int = 0
    epoch: int = 0
    batch_index: int = 0  # micro-batches of this epoch (this rank's share) already consumed
    tokens: int = 0  # the tokens the loss was taken over (count_tokens), on all processes together
    elapsed_s: float = 0.0
    last_valid: dict | None = None
    averaged: bool = False  # the saved weights are a checkpoint average (train.average_checkpoints)
    # Every log line's {"step", "loss", "lr", "tokens_per_s"} and every validation's {"step", "valid": metrics},
    # in order, across resumes: what `tformer curves` draws.
    history: list[dict] = field(default_factory=list)
    # Early stopping's record at this checkpoint ({"best", "best_step", "bad", "updates"}), so that a resumed run
    # judges its next validations against the same best as an uninterrupted one.
    early_stopping: dict | None = None
    # The processes the run trained on (torchrun's world size): batch_index counts one process's share of the
    # epoch, which is another place in the data under another world size (see resharded_position).
    world_size: int = 1


def learning_rate(cfg: TrainConfig, step: int, d_model: int) -> float:
    if cfg.schedule == "inverse_sqrt":
        return schedules.inverse_sqrt_lr(step, d_model, cfg.warmup_steps, cfg.lr)
    if cfg.schedule == "cosine":
        return schedules.warmup_cosine_lr(step, cfg.lr, cfg.warmup_steps, max(cfg.max_steps, 1), cfg.min_lr)
    if cfg.schedule == "linear":  # BERT's fine-tuning schedule: warmup, then linear decay to min_lr
        if step < cfg.warmup_steps:
            return cfg.lr * step / max(cfg.warmup_steps, 1)
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return cfg.lr + (cfg.min_lr - cfg.lr) * progress
    if cfg.schedule == "slanted_triangular":
        return schedules.slanted_triangular_lr(step, max(cfg.max_steps, 1), cfg.lr, cfg.cut_frac, cfg.stlr_ratio)
    return cfg.lr * min(1.0, step / max(cfg.warmup_steps, 1))


DECAYING_SCHEDULES = ("cosine", "linear", "slanted_triangular")  # they need the run's last step


def schedule_config(cfg: TrainConfig, task: Task, info: distributed.DistInfo) -> TrainConfig:
    """The options the learning rate is computed from. A schedule that decays to the end of the run needs that
    end in steps, and so does a warmup given as a share of the run (warmup_ratio). A run limited by epochs alone
    counts them (epochs x optimiser steps per epoch, or each epoch's steps where they differ); a run limited only by
    time, or not at all, has no end to count from and is refused (a decaying rate fell to its lowest right after
    warmup)."""
    ratio_warmup = cfg.warmup_ratio > 0 and cfg.warmup_steps == 0
    if cfg.schedule in ("cosine", "linear") and cfg.min_lr > cfg.lr:
        # (language models default to min_lr=1e-4, nanoGPT's: a lower train.lr alone met it)
        raise TformerError(f"train.min_lr={cfg.min_lr:g} is above train.lr={cfg.lr:g}: the {cfg.schedule} schedule "
                           "would rise to it instead of decaying; set train.min_lr to at most train.lr")
    if not cfg.max_steps and (cfg.schedule in DECAYING_SCHEDULES or ratio_warmup):
        if cfg.max_epochs:
            # A task whose epochs hold different numbers of batches (masked LM's NSP/SOP pairs, drawn anew each
            # epoch) has each epoch counted: counted from epoch 0 alone, the schedule ended before the run did (its
            # last steps all at min_lr) or after it (the run ended above min_lr, its decay unfinished). The cost is
            # building every epoch's batches once more here, about what the run itself spends building them.
            epochs = range(cfg.max_epochs) if getattr(task, "epoch_sizes_vary", False) else range(1)
            steps = []
            for epoch in epochs:
                micro_batches = len(shard(task.train_batches(epoch, cfg.seed), info.rank, info.world_size))
                _check_accumulation(micro_batches, cfg, info)
                steps.append(micro_batches // cfg.accum_steps)
            total = sum(steps) if len(steps) > 1 else cfg.max_epochs * steps[0]
            cfg = replace(cfg, max_steps=total)
        elif cfg.schedule in DECAYING_SCHEDULES:
            raise TformerError(f"train.schedule={cfg.schedule} decays until train.max_steps, and this run sets no "
                               "max_steps or max_epochs: set one of them, or use schedule=constant or inverse_sqrt "
                               "with a time limit")
        else:
            raise TformerError(f"train.warmup_ratio={cfg.warmup_ratio} is a share of train.max_steps, and this run "
                               "sets no max_steps or max_epochs: set one of them, or train.warmup_ratio=0 (and train.warmup_steps "
                               "for a fixed warmup)")
    if ratio_warmup:
        cfg = replace(cfg, warmup_steps=int(cfg.warmup_ratio * cfg.max_steps))
    return cfg


def _check_accumulation(micro_batches: int, cfg: TrainConfig, info: distributed.DistInfo) -> None:
    """An optimiser step takes accum_steps micro-batches; fewer in an epoch and no step ever happens (a run limited
    by steps would loop through empty epochs forever)."""
    if micro_batches < cfg.accum_steps:
        share = f" (this process's share of {info.world_size})" if info.world_size > 1 else ""
        raise TformerError(f"train.accum_steps={cfg.accum_steps} is more than the {micro_batches} micro-batches "
                           f"of an epoch{share}: lower it, make the batches smaller, or give more data")


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(x) for x in state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def saved_world_size(trainer: dict, opt_state: dict, file: Path) -> int:
    """The number of processes a saved run trained on: its trainer state says so; a checkpoint from before it did
    is told by the random states it kept, one per process of a multi-process run."""
    if "world_size" in trainer:
        size = trainer["world_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise TformerError(f"{file}: trainer.world_size is {size!r}, not a number of processes")
        return size
    ranks = opt_state.get("rng_ranks")
    return len(ranks) if isinstance(ranks, list) and ranks else 1


def resharded_position(batch_index: int, saved_world: int, world: int) -> int:
    """Where this process's share of the epoch goes on when a run saved by `saved_world` processes resumes on
    `world`. Process r takes the epoch's batches r, r + world, ... (data.batching.shard), so the saved processes had
    used the first batch_index x saved_world batches between them; the new shares go on from the last whole round
    of `world` batches at or before that point: no batch of the epoch is skipped, fewer than `world` are seen twice."""
    return batch_index * saved_world // world


def _load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict, file: Path,
                          info: distributed.DistInfo | None = None, seed: int = 0) -> None:
    """The optimizer's moments and the random state of a saved run (checkpoint.load_trainer_state's second part).
    Each process of a multi-process run takes its own random state back (they draw different dropout masks).
    Resumed with more processes than were saved, a process the saved run did not have starts from rank 0's state
    reseeded as a new run's process of that rank would be (seed + rank): taking rank 0's as it is, every process
    drew the same dropout masks as rank 0 from then on."""
    # torch's load_state_dict also brings back the saved groups' options (betas, weight decay, eps, fused,
    # ...); a resumed run keeps the moments but takes its options from this run's config, as --resume says.
    options = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(saved["optimizer"])
        for group, own in zip(optimizer.param_groups, options):
            group.update(own)
        ranks = saved.get("rng_ranks")
        rank = info.rank if info is not None else 0
        has_own = isinstance(ranks, list) and rank < len(ranks)
        _set_rng_state(ranks[rank] if has_own else saved["rng"])
        if not has_own and rank > 0:
            torch.manual_seed(seed + rank)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:  # saved by another model, or damaged
        raise TformerError(f"{file}: does not fit this run's optimizer and random state ({exc})") from None


class ProgressLog:
    """A tqdm bar on a terminal, plain lines otherwise (CI logs, files); only rank 0 shows anything."""

    def __init__(self, total: int | None, enabled: bool, initial: int = 0):
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total or None, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, fields: dict[str, str], line: bool) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(fields, refresh=True)
        elif line:
            print(f"step {step} " + " ".join(f"{k} {v}" for k, v in fields.items()), file=sys.stderr, flush=True)

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(task: Task, cfg: TrainConfig, out_dir: str | Path, resume: bool = False,
          info: distributed.DistInfo | None = None, quiet: bool = False) -> TrainerState:
    """Train task.model until max_steps / max_epochs / max_minutes; write the model directory to out_dir."""
    check_section(cfg)
    if cfg.early_stopping and cfg.save_every and getattr(task, "selection_metric", None):
        raise TformerError("train.early_stopping keeps the best validated checkpoint in the model directory, and "
                           "train.save_every would replace it with later weights: set one of them (with early "
                           "stopping a checkpoint is saved at each better validation, train.eval_every steps apart)")
    averager = _checkpoint_averager(cfg, out_dir)
    if cfg.early_stopping and not getattr(task, "selection_metric", None):
        # Without a score to watch nothing would ever stop the run: the option would do nothing but move its saves.
        raise TformerError(f"train.early_stopping={cfg.early_stopping}: this task names no validation score to watch "
                           "(a selection_metric); set train.early_stopping=0")
    info = info or distributed.setup(cfg.device)
    # One run at a time in out_dir; only rank 0 writes there, so only rank 0 locks it.
    with run_lock.hold(out_dir) if info.is_main else contextlib.nullcontext():
        return _train(task, cfg, Path(out_dir), resume, info, quiet, averager)


def _train(task: Task, cfg: TrainConfig, out_dir: Path, resume: bool, info: distributed.DistInfo, quiet: bool,
           averager: CheckpointAverager | None) -> TrainerState:
    """train()'s run, once its options are checked and out_dir is this run's."""
    rates = schedule_config(cfg, task, info)
    if info.device.type == "cpu":
        keep_freed_memory_for_reuse()
    model = task.model.to(info.device)
    d_model = getattr(model.config, "d_model", 512)
    # A task may give its own parameter groups (fine-tuning: discriminative learning rates via lr_scale).
    groups = task.parameter_groups(cfg.weight_decay) if hasattr(task, "parameter_groups") else None
    optimizer = make_adam(model, (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_eps, cfg.weight_decay, groups)
    state = TrainerState(world_size=info.world_size)
    if resume:
        checkpoint.restore_interrupted_save(out_dir)  # a save killed midway left the last copy aside
    if resume and (out_dir / checkpoint.TRAINER_STATE).is_file():
        # All read and checked before anything in out_dir changes: a damaged run stops with its files as they were.
        meta, opt_state = checkpoint.load_trainer_state(out_dir)
        state = checkpoint.from_saved(TrainerState, meta["trainer"], str(out_dir / checkpoint.TRAINER_STATE),
                                      "trainer.")
        if state.step < 0:
            raise TformerError(f"{out_dir / checkpoint.TRAINER_STATE}: trainer.step is {state.step}, not a step count")
        saved_world = saved_world_size(meta["trainer"], opt_state, out_dir / checkpoint.TRAINER_STATE)
        if saved_world != info.world_size:
            saved_accum = (meta.get("train_config") or {}).get("accum_steps", cfg.accum_steps)
            _check_new_world_size(cfg, state, saved_world, saved_accum, info, out_dir)
            state.batch_index = resharded_position(state.batch_index, saved_world, info.world_size)
        state.world_size = info.world_size  # (a checkpoint from before the field lacks it)
        checkpoint.load_weights(out_dir, model)
        _load_optimizer_state(optimizer, opt_state, out_dir / checkpoint.OPTIMIZER, info, cfg.seed)
    elif not resume:
        torch.manual_seed(cfg.seed + info.rank)
    if state.step == 0 and info.is_main:
        CheckpointAverager.discard(out_dir)
    if state.averaged:
        # A finished run saved the average of its checkpoints; training goes on from its last weights.
        CheckpointAverager.restore_last(out_dir, model, state.step)
        state.averaged = False
        distributed.barrier(info)  # every process has read them before the snapshot may go
    if averager is not None and info.is_main:
        averager.continue_from(state.step, cfg.save_every)
    # The model as the steps call it: wrapped in DDP (by _wrap_for_ddp, once the epoch's trainable parameters are set).
    ddp, wrapped_for = model, None
    use_amp = cfg.amp and info.device.type in AMP_DEVICE_TYPES
    autocast = (lambda: torch.autocast(info.device.type, dtype=torch.bfloat16)) if use_amp \
        else contextlib.nullcontext
    log = ProgressLog(cfg.max_steps, info.is_main and not quiet, state.step)
    flops_per_token = peak_flops = None
    if info.is_main and not quiet:
        n_params = sum(p.numel() for p in model.parameters())
        log.write(f"model: {n_params:,} parameters on {info.device} x {info.world_size} process(es)")
        if hasattr(task, "flops_per_token"):
            # MFU: achieved model FLOP/s over what this device's matmuls reach when measured just now.
            flops_per_token = task.flops_per_token()
            peak_flops = throughput.measure_matmul_peak(info.device, seconds=0.3)
            log.write(f"device matmul peak {peak_flops / 1e9:,.0f} GFLOP/s; "
                      f"{flops_per_token / 1e6:,.2f} MFLOP per training token")

    if cfg.warmup_ratio > 0 and cfg.warmup_steps > 0 and info.is_main:
        warnings.warn(f"train.warmup_ratio={cfg.warmup_ratio} is not used: train.warmup_steps={cfg.warmup_steps} is "
                      "set (give train.warmup_steps=0 for the ratio)", stacklevel=3)
    if rates.schedule != "slanted_triangular" and 0 < rates.max_steps <= rates.warmup_steps and info.is_main:
        warnings.warn(f"train.warmup_steps={rates.warmup_steps} is not below the run's {rates.max_steps} steps: "
                      f"the learning rate never reaches its peak (train.lr={cfg.lr})", stacklevel=3)

    def save(snapshot: bool = True) -> None:
        rng_ranks = distributed.gather_objects(_rng_state(), info)  # every rank takes part
        if info.is_main:
            if averager is not None and snapshot:
                # Before the checkpoint: a run stopped in between resumes from the one before, which drops this
                # snapshot; the other way round, it would resume from this step without its snapshot.
                averager.snapshot(model, state.step)
            trainer_meta = {"trainer": asdict(state), "train_config": asdict(cfg)}
            random_state = {"rng": rng_ranks[0], **({"rng_ranks": rng_ranks} if info.enabled else {})}
            task.save(out_dir, model, trainer_meta, {"optimizer": optimizer.state_dict(), **random_state})
        distributed.barrier(info)

    validated = {"step": None}  # the step of the last validation

    def validate() -> None:
        validated["step"] = state.step
        if info.is_main:
            model.eval()
            metrics = task.validate(model)
            model.train()
            state.last_valid = metrics
            if metrics:
                state.history.append({"step": state.step, "valid": metrics})
                log.write(f"valid step {state.step}: " + " ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        # Every rank decides early stopping from the same metrics, so that all stop (and save) together.
        state.last_valid = distributed.object_from_main(state.last_valid, info)

    model.train()
    window_tokens, window_seen, window_loss, window_start = 0, 0, 0.0, time.perf_counter()
    logged_loss: float | None = None  # the loss the progress line shows
    run_start = time.perf_counter() - state.elapsed_s

    # Early stopping (cfg.early_stopping validations without improvement): the checkpoint on disk is the best.
    select = getattr(task, "selection_metric", None)  # (metric name, "max" or "min")
    stopper = EarlyStopping(cfg.early_stopping, select[1]) if cfg.early_stopping and select else None
    best: dict[str, Any] = {"metrics": None}  # the best validation's metrics
    if stopper is not None and state.early_stopping and state.early_stopping["best_step"] == state.step:
        # Resumed from the best checkpoint an early-stopping run saved: go on against the same best.
        for key in ("best", "best_step", "bad", "updates"):
            setattr(stopper, key, state.early_stopping[key])
        best["metrics"] = state.last_valid
    else:  # a record from another stretch of the run (without early stopping since) judges nothing
        state.early_stopping = None

    def improved() -> bool:
        """Record the validation just made; whether it is the best so far (without a metric to watch: always)."""
        value = (state.last_valid or {}).get(select[0]) if select else None
        if stopper is None:
            return True
        if value is None:
            # Nothing to judge by (no validation data): going on would save at every validation and never stop.
            raise TformerError(f"train.early_stopping={cfg.early_stopping}: the validation gave no {select[0]} to "
                               "watch (is there validation data?); set train.early_stopping=0")
        stopper.update(value, state.step)
        state.early_stopping = {"best": stopper.best, "best_step": stopper.best_step, "bad": stopper.bad,
                                "updates": stopper.updates}
        if stopper.is_best:
            best["metrics"] = state.last_valid
        return stopper.is_best

    def finished() -> bool:
        return bool((cfg.max_steps and state.step >= cfg.max_steps)
                    or (cfg.max_minutes and state.elapsed_s >= cfg.max_minutes * 60)
                    or (cfg.max_epochs and state.epoch >= cfg.max_epochs)
                    or (stopper is not None and stopper.should_stop))

    while not finished():
        if hasattr(task, "on_epoch_start"):  # gradual unfreezing
            message = task.on_epoch_start(state.epoch)
            if message and info.is_main and not quiet:
                log.write(message)
        if info.enabled:
            ddp, wrapped_for = _wrap_for_ddp(model, ddp, wrapped_for)
        batches = shard(task.train_batches(state.epoch, cfg.seed), info.rank, info.world_size)
        _check_accumulation(len(batches), cfg, info)
        while state.batch_index + cfg.accum_steps <= len(batches) and not finished():
            group = batches[state.batch_index : state.batch_index + cfg.accum_steps]
            lr = learning_rate(rates, state.step + 1, d_model)
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            micro = [task.collate(b, info.device) for b in group]
            step_tokens = sum(task.count_tokens(m) for m in micro)
            # Throughput counts input tokens where the loss reads only some of them (masked LM's 15%).
            seen_tokens = sum(task.input_tokens(m) for m in micro) if hasattr(task, "input_tokens") else step_tokens
            # The step's loss is the mean over its tokens on every rank, as one process with the whole batch has it.
            # DDP averages the ranks' gradients, so each divides by the mean count per rank, not its own count
            # (which weighted a rank's token by how few its batch held: translation and masked-LM batches differ).
            counts = [float(step_tokens)]
            if hasattr(task, "count_examples"):
                counts.append(float(sum(task.count_examples(m) for m in micro)))
            if info.enabled:
                counts = [c / info.world_size for c in distributed.all_reduce_sum(counts, info)]
            per_rank_tokens = counts[0]
            # A per-example part of the loss (NSP/SOP) is a mean over the step's examples, whichever micro-batch
            # and process each is in: weighting it by its own micro-batch's tokens tilted it towards the micro-
            # batches that happened to hold more of them (see Task.count_examples).
            weight = {"example_weight": counts[0] / max(counts[1], 1.0)} if len(counts) > 1 else {}
            step_loss = 0.0
            for i, m in enumerate(micro):
                last = i == len(micro) - 1
                sync = ddp.no_sync() if info.enabled and not last else contextlib.nullcontext()
                with sync:  # (no_sync governs the backward too: it stays inside)
                    # The forward and the loss under autocast, the backward outside it, as PyTorch's AMP recipe
                    # has it: each backward op runs in the dtype autocast gave its forward op.
                    with autocast():
                        loss_sum, _ = task.loss(ddp, m, **weight)
                    scaled = loss_sum / per_rank_tokens
                    if info.enabled:
                        # A rank whose loss is not finite makes all its gradients NaN (x1.0 otherwise: the same
                        # bits), and DDP's averaging hands the NaN to every rank: all see it in the gradient norm
                        # below and stop at this step together. A rank that stopped alone on its own loss left the
                        # others waiting for it in their next collective. (Telling the ranks otherwise takes a
                        # second collective a step, or the division above put off until the token count could be
                        # all-reduced with the losses, after the backward: then a run on N processes is no longer
                        # bit for bit one process accumulating the same batches.)
                        scaled = scaled * torch.where(torch.isfinite(loss_sum.detach()), 1.0, math.nan)
                    scaled.backward()
                step_loss += float(loss_sum.detach())
            # The ranks hold the same averaged gradients, so the same norm: they decide alike. A non-finite norm
            # with finite losses stops the run too: the step would write NaN into the weights.
            if cfg.clip_norm > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm))
            else:
                grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()
                                                                 if p.grad is not None]))
            own_loss_bad = not info.enabled and not math.isfinite(step_loss)  # alone, the loss itself says
            if own_loss_bad or not math.isfinite(grad_norm):
                # Stop before the update, and without saving: the last checkpoint on disk stays good.
                log.close()
                kept = (f"the last checkpoint in {out_dir} is kept" if (out_dir / checkpoint.CONFIG).is_file()
                        else "nothing was saved")
                if own_loss_bad:
                    what = f"training loss became {step_loss}"
                elif info.enabled:  # the same line on every rank: none knows which rank's loss it was
                    what = (f"training loss or gradients became non-finite on one of the {info.world_size} "
                            f"processes (gradient norm {grad_norm})")
                else:
                    what = f"training gradients became non-finite (norm {grad_norm})"
                raise TformerError(f"{what} at step {state.step + 1}; {kept} (try a lower train.lr or more "
                                   "train.warmup_steps)")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.batch_index += cfg.accum_steps
            state.tokens += round(per_rank_tokens * info.world_size)
            window_tokens += step_tokens
            window_seen += seen_tokens
            window_loss += step_loss
            now = time.perf_counter()
            state.elapsed_s = now - run_start
            if cfg.max_minutes:  # rank 0's clock for every rank: they stop at the same step, none waits alone
                state.elapsed_s = distributed.from_main(state.elapsed_s, info)
            is_log = state.step % max(cfg.log_every, 1) == 0
            if is_log and info.enabled:
                # The logged loss is over every process's tokens, as one process with the whole batch has it
                # (rank 0's own was its share alone). One collective per log line, taken by every rank alike
                # (is_log is the same step on all): rank 0's bar between log lines must not call one alone.
                window_loss, window_tokens, window_seen = distributed.all_reduce_sum(
                    [window_loss, float(window_tokens), float(window_seen)], info)
            if is_log or not info.enabled:
                logged_loss = window_loss / max(window_tokens, 1)
            if is_log or log.bar is not None:
                dt = max(now - window_start, 1e-9)
                # Under DDP the seen tokens are summed over the ranks at a log step; between them, rank 0's times
                # the processes estimates it.
                rate = window_seen * (1 if is_log and info.enabled else info.world_size) / dt
                # (between log lines under DDP the bar shows the last logged loss: rank 0's own is not the run's)
                fields = {"loss": f"{logged_loss:.3f}" if logged_loss is not None else "-", "lr": f"{lr:.2e}",
                          "tok/s": f"{rate:,.0f}"}
                if flops_per_token and peak_flops:
                    # Per process: each rank's tokens against its own device's peak.
                    fields["mfu"] = throughput.format_mfu(flops_per_token * rate / info.world_size / peak_flops)
                log.update(state.step, fields, is_log)
                if is_log:
                    state.history.append({"step": state.step, "loss": logged_loss, "lr": lr, "tokens_per_s": rate})
                    window_tokens, window_seen, window_loss, window_start = 0, 0, 0.0, now
            if finished():
                if state.batch_index + cfg.accum_steps > len(batches):  # it ended on the epoch's last batch
                    state.epoch += 1
                    state.batch_index = 0
                break
            if cfg.eval_every and state.step % cfg.eval_every == 0:
                validate()
                if cfg.early_stopping:
                    if improved():
                        save()
                    continue
            if cfg.save_every and state.step % cfg.save_every == 0:
                save()
        else:
            if state.batch_index + cfg.accum_steps <= len(batches):
                continue  # early stopping ended the run inside the epoch: finished() ends the outer loop too
            state.epoch += 1
            state.batch_index = 0
            if cfg.early_stopping and not cfg.eval_every:  # validate once per epoch
                validate()
                if improved():
                    save()
    log.close()
    if cfg.early_stopping:
        # The best validation's checkpoint is already on disk; the final state replaces it only if better.
        # (not again when the epoch's end has just validated this very step)
        if (stopper is None or not stopper.should_stop) and validated["step"] != state.step:
            validate()
            if improved():
                save()
        if best["metrics"] is not None:
            state.last_valid = best["metrics"]  # what the model on disk, the best checkpoint, scored
        return state
    if averager is not None and info.is_main:
        averager.snapshot(model, state.step)
        steps = averager.average_into(model)
        state.averaged = True
        log.write(f"final model: the mean of the weights at steps {', '.join(map(str, steps))}")
    validate()
    save(snapshot=False)  # the average is not a checkpoint of the run: a later average must not take it in
    return state


def _check_new_world_size(cfg: TrainConfig, state: TrainerState, saved_world: int, saved_accum: Any,
                          info: distributed.DistInfo, out_dir: Path) -> None:
    """A run resumed on another number of processes does not go on as it would have: each optimiser step takes
    world_size x accum_steps micro-batches, so the steps are larger or smaller from there on (and an epoch holds
    another number of them), the processes draw other dropout masks, and the epoch's batches are shared out anew.
    Refused unless train.allow_world_size_change says so; then said in a warning."""
    def procs(n: int) -> str:
        return f"{n} process{'es' if n > 1 else ''}"

    if not cfg.allow_world_size_change:
        same = ("in one process (without torchrun)" if saved_world == 1
                else f"on {saved_world} (torchrun --nproc_per_node {saved_world})")
        raise TformerError(f"{out_dir}: the run was saved by {procs(saved_world)} and is resumed on "
                           f"{info.world_size}; it would not go on as it started (another number of micro-batches "
                           f"per step, the epoch's batches shared out anew): resume it {same}, or set "
                           "train.allow_world_size_change=true")
    if info.is_main:
        warnings.warn(f"{out_dir}: resuming the run saved by {procs(saved_world)} on {info.world_size}: a step "
                      f"takes {info.world_size} x {cfg.accum_steps} micro-batches (processes x accum_steps; it took "
                      f"{saved_world} x {saved_accum}), and epoch {state.epoch} goes on from its batch "
                      f"{resharded_position(state.batch_index, saved_world, info.world_size) * info.world_size} "
                      f"(the saved processes had used {state.batch_index * saved_world}); the weights will not be "
                      "those of a run never stopped", stacklevel=4)


def _wrap_for_ddp(model: nn.Module, ddp: nn.Module, wrapped_for: tuple[bool, ...] | None
                  ) -> tuple[nn.Module, tuple[bool, ...]]:
    """(DDP wrapper, the requires_grad flags it was built for). DDP averages the gradients of the parameters that
    required one when it was built, and waits for each of them in every backward: a parameter frozen since (gradual
    unfreezing) stalls it ("Expected to have finished reduction"), and one unfrozen since would train apart on each
    rank. So a change of the trainable set gets a new wrapper; the old one's gradient hooks go first."""
    trainable = tuple(p.requires_grad for p in model.parameters())
    if trainable == wrapped_for:
        return ddp, wrapped_for
    if isinstance(ddp, DistributedDataParallel):
        ddp._remove_autograd_hooks()
    return DistributedDataParallel(model), trainable


def _checkpoint_averager(cfg: TrainConfig, out_dir: Path | str) -> CheckpointAverager | None:
    n = cfg.average_checkpoints
    if n == 0:
        return None
    if n < 2:
        raise TformerError(f"train.average_checkpoints={n}: expected 0 (off) or at least 2")
    if cfg.save_every <= 0:
        raise TformerError("train.average_checkpoints needs train.save_every > 0 (the steps between the "
                           "checkpoints it averages)")
    if cfg.early_stopping:
        raise TformerError("train.average_checkpoints and train.early_stopping both choose the final model; "
                           "set one of them")
    return CheckpointAverager(out_dir, n)
