"""One run at a time in a model directory: a second train or finetune on a folder a run holds stops at once."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from conftest import assert_one_line_error, copy_pairs, run_cli, tiny_run
from tformer.errors import TformerError
from tformer.tasks.translation import TranslationTask
from tformer.training.loop import train
from tformer.training.run_lock import LOCK_FILE

fcntl = pytest.importorskip("fcntl")  # no lock where the system has no fcntl (Windows)


@contextlib.contextmanager
def another_run_holds(out: Path):
    """The lock of `out` held as another run's would be: its own open file, its process written in it."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_FILE, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write("4242 elsewhere\n")
        fh.flush()
        yield


def is_locked(out: Path) -> bool:
    with open(out / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def lm_args(folder: Path, out: Path, *more) -> list:
    text = folder / "text.txt"
    if not text.exists():
        text.write_text("the cat sat on the mat. " * 100)
    return ["train", "--preset", "gpt-micro", "--train-text", text, "--out", out, "--block-size", "16",
            "--batch-size", "4", "--max-steps", "2", "--tokenizer", "char", "train.log_every=1000", *more]


def test_training_into_a_folder_another_run_holds_stops_before_touching_it(tmp_path):
    run = tiny_run(max_steps=1)
    out = tmp_path / "m"
    with another_run_holds(out):
        with pytest.raises(TformerError, match=rf"{out}: another training run \(process 4242 on elsewhere\) is "
                                               r"writing to this folder"):
            train(TranslationTask(run, copy_pairs(30)), run.train, out, quiet=True)
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # nothing saved, the other run's lock left alone
        assert is_locked(out)


def test_the_lock_is_held_through_every_save_and_gone_at_the_end(tmp_path):
    """Each save swaps the folder for a new copy: the lock file moves into it (a rename, the same file, the same
    lock), so a second run is refused between saves too."""
    run = tiny_run(max_steps=3, save_every=1)
    task = TranslationTask(run, copy_pairs(30))
    out = tmp_path / "m"
    held_after_save = []
    save = task.save

    def saving(*args):
        save(*args)
        held_after_save.append(is_locked(out))

    task.save = saving
    train(task, run.train, out, quiet=True)
    assert held_after_save == [True, True, True]  # steps 1 and 2, and the final save at 3
    assert not (out / LOCK_FILE).exists()
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "optimizer.pt",
                                                     "tokenizer.json", "trainer_state.json"]
    run.train.max_steps = 4
    assert train(task, run.train, out, resume=True, quiet=True).step == 4  # free again


def test_a_second_command_line_run_on_the_same_out_is_one_line_naming_it(tmp_path, capsys):
    out = tmp_path / "model"
    with another_run_holds(out):
        code, _, err = run_cli(capsys, *lm_args(tmp_path, out))
        assert_one_line_error(code, err, f"{out}: another training run (process 4242 on elsewhere)")
    assert run_cli(capsys, *lm_args(tmp_path, out))[0] == 0  # once it has ended
    saved = (out / "trainer_state.json").read_text()
    for again in (["--resume", "--max-steps", "3"], ["--overwrite"]):
        with another_run_holds(out):
            code, _, err = run_cli(capsys, *lm_args(tmp_path, out, *again))
            assert_one_line_error(code, err, f"{out}: another training run")
        assert (out / "trainer_state.json").read_text() == saved
    code, _, err = run_cli(capsys, *lm_args(tmp_path, out, "--resume", "--max-steps", "3"))
    assert code == 0, err
    assert json.loads((out / "trainer_state.json").read_text())["trainer"]["step"] == 3
    assert not (out / LOCK_FILE).exists()


def test_a_lock_file_left_behind_is_no_file_of_the_users(tmp_path, capsys):
    """A run killed outright cannot remove its lock file (the kernel lets go of the lock): the folder is still
    taken for empty, and a run there takes the lock over."""
    out = tmp_path / "model"
    out.mkdir()
    (out / LOCK_FILE).write_text("4242 elsewhere\n")
    code, _, err = run_cli(capsys, *lm_args(tmp_path, out))
    assert code == 0, err
    assert not (out / LOCK_FILE).exists() and (out / "config.json").is_file()


def test_a_run_that_saves_nothing_leaves_no_folder(tmp_path, capsys):
    """The lock makes --out to hold its file; a run stopped before its first save takes both away again."""
    out = tmp_path / "new" / "model"
    code, _, err = run_cli(capsys, *lm_args(tmp_path, out, "--train-text", tmp_path / "missing.txt"))
    assert code == 2 and "missing.txt" in err
    assert not (tmp_path / "new").exists()


def test_only_rank_0_locks_under_torchrun(tmp_path, monkeypatch):
    """Only rank 0 writes the checkpoints: the other ranks, on the same folder, must not be refused by its lock."""
    from tformer.cli import _run_lock

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with _run_lock(tmp_path / "m"):
        assert is_locked(tmp_path / "m")
        monkeypatch.setenv("RANK", "1")
        with _run_lock(tmp_path / "m"):  # rank 1 beside it
            pass
    assert not (tmp_path / "m").exists()
