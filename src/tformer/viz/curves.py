"""Training curves of a saved run: the training loss and the validation metrics against the step, and the
learning-rate schedule (warmup, then decay), from the history the trainer keeps in trainer_state.json."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt  # noqa: E402

from tformer.errors import TformerError  # noqa: E402
from tformer.training import checkpoint  # noqa: E402
from tformer.viz.text import plain_text  # noqa: E402

MAX_METRIC_PANELS = 4  # validation metrics other than losses, one panel each
# Validation metrics that are a run's training loss measured on the validation data, drawn beside it on the loss
# panel: any "...loss", and "mse", which only regression fine-tuning reports and whose training loss is the mean
# squared error per example (tformer.tasks.finetune), the same quantity on the same scale.
LOSS_METRICS = ("mse",)


def read_history(model_dir: str | Path) -> list[dict]:
    """The trainer's history of a model directory: {"step", "loss", "lr", ...} and {"step", "valid": {...}} entries."""
    file = Path(model_dir) / checkpoint.TRAINER_STATE
    checkpoint.read_config(model_dir)  # its message: not found, a file, not a model, a save stopped midway
    if not file.is_file():
        raise TformerError(f"{model_dir}: no {checkpoint.TRAINER_STATE} (a model saved by another library, or without "
                           "its training run)")
    data = checkpoint.read_json(file)
    if not isinstance(data, dict):
        raise TformerError(f"{file}: not a JSON object (a damaged trainer state)")
    trainer = data.get("trainer")
    history = trainer.get("history") if isinstance(trainer, dict) else None
    if history is not None and not isinstance(history, list):
        raise TformerError(f"{file}: trainer.history is not a list")
    if not history:
        raise TformerError(f"{file}: no training history in it: the run logged nothing (fewer steps than "
                           "train.log_every, no validation), or was saved before tformer kept one")
    for i, entry in enumerate(history):
        valid = entry.get("valid", {}) if isinstance(entry, dict) else None
        if not (isinstance(entry, dict) and type(entry.get("step")) is int and isinstance(valid, dict)
                and all(_is_number(v) for k, v in entry.items() if k != "valid")
                and all(_is_number(v) for v in valid.values())):
            shown = repr(entry)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."  # cut where it shows it was cut
            raise TformerError(f"{file}: trainer.history[{i}] is not a step's finite numbers ({shown})")
    return history


def _is_number(value) -> bool:
    """A finite number of a size a loss, a rate or a metric can have (no NaN or infinity; 1e308 breaks the axes)."""
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(float(value)) < 1e100
    except OverflowError:  # an integer beyond any float
        return False


def _metric_panels(history: list[dict]) -> tuple[list[str], list[str]]:
    """(validation losses, drawn on the loss panel; the other metrics that get a panel each)."""
    names = list(dict.fromkeys(k for e in history if "valid" in e for k in e["valid"]))
    losses = [k for k in names if k.endswith("loss") or k in LOSS_METRICS]
    return losses, [k for k in names if k not in losses and k != "ppl"]  # ppl is exp(loss)


def describe_history(history: list[dict], log_every: int | None = None) -> str:
    """What a picture of `history` shows, in words: its logged training losses and validations, and the steps.
    A short run logs no training loss (it logs every train.log_every steps): said so, with the run's step count
    and its log_every when known, rather than "0 log points"."""
    logged = [e["step"] for e in history if "loss" in e]
    validated = [e["step"] for e in history if "valid" in e]

    def count(n: int, what: str) -> str:
        return f"{n} {what}{'s' * (n != 1)}"

    def steps(values: list[int]) -> str:
        return f"at step {values[0]}" if min(values) == max(values) else f"steps {min(values)} to {max(values)}"

    if logged and validated:
        return (f"{count(len(logged), 'log point')} and {count(len(validated), 'validation')}, "
                f"{steps(logged + validated)}")
    if logged:
        return f"{count(len(logged), 'log point')} of the training loss, {steps(logged)}; no validation"
    last = max(e["step"] for e in history)
    why = f", fewer than train.log_every={log_every}" if log_every and last < log_every else ""
    said = f"{count(len(validated), 'validation')} {steps(validated)}" if validated else "no validation either"
    return f"no training loss logged (the run took {count(last, 'step')}{why}); {said}"


def not_drawn(history: list[dict]) -> list[str]:
    """The validation metrics beyond the panels a picture has room for."""
    return _metric_panels(history)[1][MAX_METRIC_PANELS:]


@plain_text
def plot_training_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Panels: loss (training, and validation losses), each other validation metric, the learning rate. A run
    with nothing for the loss panel (no training loss logged, no validation loss) has none, rather than an
    empty one, unless it would be the only panel."""
    train = [e for e in history if "loss" in e]
    valid = [e for e in history if "valid" in e]
    losses, others = _metric_panels(history)
    others = others[:MAX_METRIC_PANELS]
    has_lr = any("lr" in e for e in train)
    loss_panel = bool(train or losses or not (others or has_lr))
    n_panels = loss_panel + len(others) + has_lr
    fig, axes = plt.subplots(1, n_panels, figsize=(4.2 * n_panels, 3.4), squeeze=False)
    axes = list(axes[0])
    if loss_panel:
        _draw_losses(axes.pop(0), train, valid, losses)
    for name in others:
        ax = axes.pop(0)
        points = [(e["step"], e["valid"][name]) for e in valid if name in e["valid"]]
        ax.plot(*zip(*points), marker="o", markersize=3, color="tab:green")
        ax.set_xlabel("step")
        ax.set_title(f"validation {name}", fontsize=10)
    if has_lr:
        ax = axes.pop(0)
        rates = [(e["step"], e["lr"]) for e in train if "lr" in e]
        ax.plot(*zip(*rates), color="tab:red", marker="o" if len(rates) <= 50 else None, markersize=2)
        ax.set_xlabel("step")
        ax.set_title("learning rate", fontsize=10)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _draw_losses(ax, train: list[dict], valid: list[dict], losses: list[str]) -> None:
    """The loss panel: the training loss, and the validation losses against it."""
    if train:
        ax.plot([e["step"] for e in train], [e["loss"] for e in train], label="training loss", linewidth=1.2,
                marker="o" if len(train) <= 50 else None, markersize=2)  # a single point shows too
    for name in losses:
        points = [(e["step"], e["valid"][name]) for e in valid if name in e["valid"]]
        ax.plot(*zip(*points), marker="o", markersize=3, label=f"validation {name}")
    parts = [name for name in losses if name.endswith("loss")]
    if len(parts) > 1 and "loss" not in parts:
        # The training loss of a multi-objective run (BERT: MLM + NSP) is the sum of its parts: so is this line, the
        # one to read against it.
        points = [(e["step"], sum(e["valid"][n] for n in parts)) for e in valid if all(n in e["valid"] for n in parts)]
        if points:
            ax.plot(*zip(*points), marker="s", markersize=3, color="black", label=f"validation {' + '.join(parts)}")
    ax.set_xlabel("step")
    ax.set_title("loss", fontsize=10)
    if train or losses:
        ax.legend(fontsize=8)
