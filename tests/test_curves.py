"""The trainer's history (trainer_state.json) and `tformer curves`: what was logged and validated, across a resume,
drawn; a run without history or with a damaged one is one line."""

from __future__ import annotations

import json

import pytest

from conftest import assert_one_line_error, run_cli
from tformer.viz.curves import not_drawn, plot_training_curves

PNG = b"\x89PNG\r\n\x1a\n"


def test_history_is_kept_across_a_resume_and_drawn(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("a cat sat on a mat. " * 60)
    model = tmp_path / "model"
    options = ["--preset", "gpt-micro", "--train-text", text, "--out", model, "--block-size", "16", "--batch-size", "4",
               "train.log_every=2", "train.eval_every=4", "train.eval_batches=1"]
    code, _, err = run_cli(capsys, "train", *options, "--max-steps", "8")
    assert code == 0, err
    first = json.loads((model / "trainer_state.json").read_text())["trainer"]["history"]
    code, _, err = run_cli(capsys, "train", "--out", model, "--resume", "--max-steps", "12")
    assert code == 0, err
    history = json.loads((model / "trainer_state.json").read_text())["trainer"]["history"]
    assert history[: len(first)] == first  # the resumed run goes on from the saved history
    logged = [e["step"] for e in history if "loss" in e]
    assert logged == [2, 4, 6, 8, 10, 12]
    assert all(e["loss"] > 0 and e["lr"] > 0 and e["tokens_per_s"] > 0 for e in history if "loss" in e)
    validated = [e["step"] for e in history if "valid" in e]
    assert validated == [4, 8, 12] and all("loss" in e["valid"] for e in history if "valid" in e)
    out = tmp_path / "curves.png"
    code, _, err = run_cli(capsys, "curves", "--model", model, "--output", out)
    assert code == 0, err
    assert out.read_bytes()[:8] == PNG and "6 log points and 3 validations, steps 2 to 12" in err
    # damaged or missing history: one line, nothing written
    state = json.loads((model / "trainer_state.json").read_text())
    state["trainer"]["history"][1] = {"step": 4, "loss": 1e308}  # finite, but beyond what axes can scale
    (model / "trainer_state.json").write_text(json.dumps(state))
    code, _, err = run_cli(capsys, "curves", "--model", model, "--output", tmp_path / "again.png")
    assert_one_line_error(code, err, "trainer_state.json: trainer.history[1]")
    for bad in ({"step": "two"}, {"step": 2, "loss": float("nan")}, {"step": 2, "valid": {"f1": 10**400}}):
        state["trainer"]["history"][1] = bad
        (model / "trainer_state.json").write_text(json.dumps(state))
        code, _, err = run_cli(capsys, "curves", "--model", model, "--output", tmp_path / "again.png")
        assert_one_line_error(code, err, "trainer.history[1] is not a step's finite numbers")
    state["trainer"]["history"][1] = {"step": 2, "loss": "x" * 200}
    (model / "trainer_state.json").write_text(json.dumps(state))
    code, _, err = run_cli(capsys, "curves", "--model", model, "--output", tmp_path / "again.png")
    assert_one_line_error(code, err, "xxx...)")  # a long entry is cut where it says so
    del state["trainer"]["history"]
    (model / "trainer_state.json").write_text(json.dumps(state))
    code, _, err = run_cli(capsys, "curves", "--model", model, "--output", tmp_path / "again.png")
    assert_one_line_error(code, err, "no training history")
    (model / "trainer_state.json").write_text("[]")
    code, _, err = run_cli(capsys, "curves", "--model", model, "--output", tmp_path / "again.png")
    assert_one_line_error(code, err, "trainer_state.json: not a JSON object")
    assert not (tmp_path / "again.png").exists()
    code, _, err = run_cli(capsys, "curves", "--model", "", "--output", tmp_path / "again.png")
    assert_one_line_error(code, err, "--model is empty")  # not the current folder


def test_a_single_point_is_drawn(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    markers = []
    original = plt.Axes.plot

    def record(ax, *args, **kwargs):
        markers.append(kwargs.get("marker"))
        return original(ax, *args, **kwargs)

    plt.Axes.plot = record
    try:
        plot_training_curves([{"step": 5, "loss": 2.0, "lr": 1e-3}], tmp_path / "one.png")
    finally:
        plt.Axes.plot = original
    assert markers == ["o", "o"]  # the loss and the rate, each a dot (a line through one point draws nothing)


def test_curves_of_a_fine_tuning_run_show_its_metrics(tmp_path):
    history = [{"step": 1, "loss": 0.7, "lr": 1e-4, "tokens_per_s": 10.0}, {"step": 2, "loss": 0.5, "lr": 2e-4},
               {"step": 2, "valid": {"loss": 0.6, "accuracy": 0.7, "f1": 0.65}},
               {"step": 4, "loss": 0.3, "lr": 1e-4}, {"step": 4, "valid": {"loss": 0.4, "accuracy": 0.8, "f1": 0.8}}]
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    out = plot_training_curves(history, tmp_path / "c.svg", "sst-2")
    assert out.read_text().count("validation ") >= 3  # the loss legend, accuracy and f1 panels
    assert plt.get_fignums() == before  # the figure is closed
    many = [{"step": 1, "valid": {"loss": 1.0, **{f"m{i}": 0.5 for i in range(6)}, "ppl": 2.7}}]
    assert not_drawn(many) == ["m4", "m5"] and not_drawn(history) == []  # named by `tformer curves`


def test_a_pretraining_run_draws_the_sum_of_its_validation_losses(tmp_path, monkeypatch):
    """BERT's training loss is MLM + NSP; beside only the parts, it looked like a generalisation gap."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    lines = {}
    original = plt.Axes.plot

    def record(ax, *args, **kwargs):
        lines[kwargs.get("label")] = args
        return original(ax, *args, **kwargs)

    monkeypatch.setattr(plt.Axes, "plot", record)
    history = [{"step": 10, "loss": 7.6, "lr": 1e-3},
               {"step": 10, "valid": {"mlm_loss": 6.9, "nsp_loss": 0.7, "mlm_accuracy": 0.1}}]
    plot_training_curves(history, tmp_path / "c.png")
    steps, total = lines["validation mlm_loss + nsp_loss"]
    assert list(steps) == [10] and list(total) == [pytest.approx(7.6)]
    plot_training_curves([history[0], {"step": 10, "valid": {"loss": 2.0, "accuracy": 0.5}}], tmp_path / "f.png")
    assert not any(label and "+" in label for label in lines if label != "validation mlm_loss + nsp_loss")


def test_a_short_run_says_it_logged_no_training_loss(tmp_path, capsys):
    """A run shorter than train.log_every keeps only its validation: `tformer curves` said "0 log points and 1
    validations"; it says that no training loss was logged, why (the run's steps against its log_every), and what
    is drawn."""
    from tformer.viz.curves import describe_history

    text = tmp_path / "text.txt"
    text.write_text("a cat sat on a mat. " * 60)
    model = tmp_path / "model"
    code, _, err = run_cli(capsys, "train", "--preset", "gpt-micro", "--train-text", text, "--out", model,
                           "--block-size", "16", "--batch-size", "4", "--max-steps", "3", "train.eval_batches=1")
    assert code == 0, err
    code, _, err = run_cli(capsys, "curves", "--model", model, "--output", tmp_path / "c.png")
    assert code == 0 and (tmp_path / "c.png").read_bytes()[:8] == PNG
    assert err.strip() == (f"no training loss logged (the run took 3 steps, fewer than train.log_every=50); "
                           f"1 validation at step 3 -> {tmp_path / 'c.png'}")
    # Without its run options (a hand-made history), and the other cases, in words that count right
    assert describe_history([{"step": 1, "valid": {"loss": 1.0}}]) == \
        "no training loss logged (the run took 1 step); 1 validation at step 1"
    assert describe_history([{"step": 2, "loss": 1.0}]) == "1 log point of the training loss, at step 2; no validation"
    assert describe_history([{"step": 2, "loss": 1.0}, {"step": 4, "loss": 0.5}, {"step": 4, "valid": {}}]) == \
        "2 log points and 1 validation, steps 2 to 4"


def test_a_regression_run_draws_its_validation_mse_as_its_loss(tmp_path, monkeypatch):
    """Regression fine-tuning validates with mse, pearson and spearman, no "loss": its loss panel held the training
    loss alone, or nothing at all in a run too short to log one. Its training loss is the mean squared error, so the
    validation mse is drawn beside it; and a run with nothing for the loss panel (tagging and QA report no loss)
    leaves that panel out rather than drawing it empty."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = []  # (title, labels of its lines)
    original_plot, original_title = plt.Axes.plot, plt.Axes.set_title
    lines = {}

    def plot(ax, *args, **kwargs):
        lines.setdefault(id(ax), []).append(kwargs.get("label"))
        return original_plot(ax, *args, **kwargs)

    def set_title(ax, title, *args, **kwargs):
        panels.append((title, lines.get(id(ax), [])))
        return original_title(ax, title, *args, **kwargs)

    monkeypatch.setattr(plt.Axes, "plot", plot)
    monkeypatch.setattr(plt.Axes, "set_title", set_title)
    valid = [{"step": 4, "valid": {"mse": 0.9, "pearson": 0.3, "spearman": 0.2}},
             {"step": 8, "valid": {"mse": 0.5, "pearson": 0.7, "spearman": 0.6}}]
    plot_training_curves([{"step": 4, "loss": 1.2, "lr": 1e-4}, valid[0], {"step": 8, "loss": 0.6, "lr": 5e-5},
                          valid[1]], tmp_path / "reg.png")
    assert panels == [("loss", ["training loss", "validation mse"]), ("validation pearson", [None]),
                      ("validation spearman", [None]), ("learning rate", [None])]
    panels.clear()
    lines.clear()
    plot_training_curves(valid, tmp_path / "short.png")  # no training loss logged
    assert panels == [("loss", ["validation mse"]), ("validation pearson", [None]), ("validation spearman", [None])]
    panels.clear()
    lines.clear()
    plot_training_curves([{"step": 3, "valid": {"f1": 0.4, "exact_match": 0.2}}], tmp_path / "qa.png")
    assert [title for title, _ in panels] == ["validation f1", "validation exact_match"]  # no empty loss panel
    assert all(drawn for _, drawn in panels)
    panels.clear()
    plot_training_curves([{"step": 3, "valid": {}}], tmp_path / "none.png")  # nothing at all: one empty panel
    assert [title for title, _ in panels] == ["loss"] and (tmp_path / "none.png").read_bytes()[:8] == PNG
    assert not_drawn([{"step": 1, "valid": {"mse": 1.0, **{f"m{i}": 0.5 for i in range(5)}}}]) == ["m4"]
