"""Checkpoint averaging (train.average_checkpoints): the final model is the mean of the last N checkpoints."""

from __future__ import annotations

import pytest
import torch

from conftest import copy_pairs, tiny_run
from tformer.errors import TformerError
from tformer.models.gpt import GPT, GPTConfig
from tformer.tasks.translation import TranslationTask, load_translator
from tformer.training import checkpoint
from tformer.training.averaging import CheckpointAverager
from tformer.training.loop import train


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_averager_keeps_the_last_n_and_loads_their_mean_through_tied_weights(tmp_path):
    model = GPT(GPTConfig(vocab_size=20, max_len=8, d_model=8, n_heads=2, n_layers=1))  # output tied to input
    averager = CheckpointAverager(tmp_path, 3)
    states = []
    for step in (5, 10, 15, 20):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        states.append(_params(model))
        averager.snapshot(model, step)
    assert [s for s, _ in averager.snapshots()] == [10, 15, 20]  # the oldest was dropped
    assert averager.average_into(model) == [10, 15, 20]
    for name, value in model.state_dict().items():
        expected = sum(s[name].double() for s in states[1:]) / 3
        torch.testing.assert_close(value, expected.float(), rtol=0, atol=1e-6)
    assert model.output.weight is model.tok_embed.weight  # still tied
    averager.continue_from(15, save_every=5)  # a checkpoint: kept
    assert [s for s, _ in averager.snapshots()] == [10, 15]
    averager.continue_from(15, save_every=10)  # the end of a run, between checkpoints: dropped
    assert [s for s, _ in averager.snapshots()] == [10]


def _run(**train_options):
    torch.manual_seed(0)  # the model the task builds next starts from the same weights in every run
    run = tiny_run(**{"max_steps": 20, "save_every": 5, "lr": 0.5, "warmup_steps": 5, **train_options})
    run.model["dropout"] = 0.0
    return run


def test_final_model_is_the_mean_of_the_last_checkpoints(tmp_path, monkeypatch):
    pairs = copy_pairs(80, seed=5)
    # A run without averaging, its weights recorded at every checkpoint ...
    plain_run = _run()
    plain = TranslationTask(plain_run, pairs)
    at_save = {}
    original_save = TranslationTask.save

    def recording_save(self, out_dir, model, trainer_meta, extra):
        at_save[trainer_meta["trainer"]["step"]] = _params(model)
        return original_save(self, out_dir, model, trainer_meta, extra)

    monkeypatch.setattr(TranslationTask, "save", recording_save)
    train(plain, plain_run.train, tmp_path / "plain", quiet=True)
    monkeypatch.setattr(TranslationTask, "save", original_save)
    assert sorted(at_save) == [5, 10, 15, 20]
    # ... and the same run averaging the last 3: the weights at steps 10, 15 and 20.
    averaged_run = _run(average_checkpoints=3)
    averaged = TranslationTask(averaged_run, pairs)
    stale = tmp_path / "avg" / "averaging" / "step-00000099.safetensors"  # from an earlier run in that folder
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    train(averaged, averaged_run.train, tmp_path / "avg", quiet=True)
    assert not stale.exists()
    model, _, _ = load_translator(tmp_path / "avg")
    for name, value in model.state_dict().items():
        expected = sum(at_save[s][name].double() for s in (10, 15, 20)) / 3
        torch.testing.assert_close(value, expected.float(), rtol=0, atol=1e-6)
    assert any(not torch.equal(value, at_save[20][name]) for name, value in model.state_dict().items())


def _train_whole_and_first_part(tmp_path, pairs, first_steps: int = 12) -> None:
    """The run to step 20 in whole/, and the same run stopped at `first_steps` in split/."""
    whole_run = _run(average_checkpoints=3)
    train(TranslationTask(whole_run, pairs), whole_run.train, tmp_path / "whole", quiet=True)
    first_run = _run(average_checkpoints=3)
    first_run.train.max_steps = first_steps
    train(TranslationTask(first_run, pairs), first_run.train, tmp_path / "split", quiet=True)


def _resume_split_and_compare(tmp_path, pairs, model_dir) -> None:
    """Resumes split/ to step 20 (the model rebuilt from model_dir, as a new process would) and checks that
    its final model is the whole run's."""
    model, src_tok, tgt_tok = load_translator(model_dir)
    second_run = _run(average_checkpoints=3)
    resumed = TranslationTask(second_run, pairs, src_tok=src_tok, tgt_tok=tgt_tok, model=model.train())
    train(resumed, second_run.train, tmp_path / "split", resume=True, quiet=True)
    steps = sorted(p.name for p in (tmp_path / "split" / "averaging").iterdir())
    assert steps == ["step-00000010.safetensors", "step-00000015.safetensors", "step-00000020.safetensors"]
    a, b = load_translator(tmp_path / "whole")[0].state_dict(), load_translator(tmp_path / "split")[0].state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resumed_run_averages_the_same_weights(tmp_path):
    pairs = copy_pairs(80, seed=6)
    # Stopped at step 12 (between checkpoints), it saves the average of steps 5, 10 and 12; resumed to 20 from
    # its raw step-12 weights, it averages 10, 15 and 20 as the whole run does.
    _train_whole_and_first_part(tmp_path, pairs)
    _resume_split_and_compare(tmp_path, pairs, tmp_path / "split")


def test_a_run_stopped_while_saving_resumes_to_the_same_average(tmp_path, monkeypatch):
    pairs = copy_pairs(80, seed=6)

    class Killed(Exception):
        pass

    original = CheckpointAverager.snapshot

    def killed_at_step_10(self, model, step):
        original(self, model, step)
        if step == 10 and self.folder.parent.name == "split":
            raise Killed()

    monkeypatch.setattr(CheckpointAverager, "snapshot", killed_at_step_10)
    with pytest.raises(Killed):  # the whole run, then the split one, which stops while saving step 10
        _train_whole_and_first_part(tmp_path, pairs, first_steps=20)
    monkeypatch.undo()
    # The snapshot of step 10 is written, its checkpoint is not: the run resumes from step 5 and steps 10, 15
    # and 20 are averaged, as in the run never stopped.
    assert checkpoint.load_trainer_state(tmp_path / "split")[0]["trainer"]["step"] == 5
    _resume_split_and_compare(tmp_path, pairs, tmp_path / "split")


@pytest.mark.parametrize("options,needle", [
    ({"average_checkpoints": 1}, "train.average_checkpoints=1"),
    ({"average_checkpoints": 3, "save_every": 0}, "train.save_every"),
    ({"average_checkpoints": 3, "early_stopping": 2, "eval_every": 5}, "train.early_stopping"),
])
def test_bad_averaging_options_are_named(tmp_path, options, needle):
    run = _run(**options)
    with pytest.raises(TformerError, match=needle.replace(".", r"\.")):
        train(TranslationTask(run, copy_pairs(20)), run.train, tmp_path / "m", quiet=True)


@pytest.mark.parametrize("failing", ["old copy aside", "new copy in", "new copy in, once"])
def test_a_failed_save_leaves_the_snapshots_with_the_old_copy(tmp_path, monkeypatch, failing):
    model = GPT(GPTConfig(vocab_size=20, max_len=8, d_model=8, n_heads=2, n_layers=1))
    checkpoint.save_model(tmp_path / "m", model, model.config.to_dict())
    CheckpointAverager(tmp_path / "m", 2).snapshot(model, 5)
    (tmp_path / "m" / "notes.txt").write_text("mine\n")  # a user's file travels as the snapshots do
    rename = checkpoint.os.replace
    failures = []

    def failing_swap(src, dst):  # the snapshots have moved into the new copy; then one rename fails
        if (src if failing == "old copy aside" else dst) == tmp_path / "m" \
                and not (failing.endswith("once") and failures):
            failures.append((src, dst))
            raise OSError("disk full")
        rename(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", failing_swap)
    with pytest.raises(OSError):
        checkpoint.save_model(tmp_path / "m", model, model.config.to_dict())
    monkeypatch.undo()
    # Where the old copy ends: in place, unless even the rename putting it back failed (then aside, where the
    # next save or resume looks).
    old_copy = tmp_path / (".m.old" if failing == "new copy in" else "m")
    assert (old_copy / "averaging" / "step-00000005.safetensors").is_file()
    assert (old_copy / "model.safetensors").is_file() and (old_copy / "notes.txt").read_text() == "mine\n"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    checkpoint.save_model(tmp_path / "m", model, model.config.to_dict())  # a good save takes them over
    assert (tmp_path / "m" / "averaging" / "step-00000005.safetensors").is_file()
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def _leave_as_a_killed_save_would(path, suffix="k1ll3d"):
    """What a save killed between its two renames leaves: the old copy aside; the snapshots, and any file of the
    user's, in the new copy."""
    aside, new_copy = path.with_name(f".{path.name}.old"), path.with_name(f".{path.name}.tmp-{suffix}")
    path.rename(aside)
    new_copy.mkdir()
    (new_copy / "config.json").write_text("{}")
    (aside / "averaging").rename(new_copy / "averaging")
    if (aside / "notes.txt").exists():
        (aside / "notes.txt").rename(new_copy / "notes.txt")
    return aside


def test_a_save_killed_between_its_renames_is_put_back(tmp_path):
    model = GPT(GPTConfig(vocab_size=20, max_len=8, d_model=8, n_heads=2, n_layers=1))
    checkpoint.save_model(tmp_path / "m", model, model.config.to_dict())
    CheckpointAverager(tmp_path / "m", 2).snapshot(model, 5)
    (tmp_path / "m" / "notes.txt").write_text("mine\n")
    aside = _leave_as_a_killed_save_would(tmp_path / "m")
    with pytest.raises(TformerError, match=r"\.m\.old"):  # a reader is told where the copy is, and nothing moves
        checkpoint.read_config(tmp_path / "m")
    assert aside.is_dir()
    assert checkpoint.restore_interrupted_save(tmp_path / "m")
    assert not checkpoint.restore_interrupted_save(tmp_path / "m")  # done once; nothing more to do
    assert (tmp_path / "m" / "averaging" / "step-00000005.safetensors").is_file()
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine\n"
    assert checkpoint.read_config(tmp_path / "m")["model_type"] == "gpt"
    # The next save does the same by itself before replacing the copy, and clears what killed saves wrote.
    _leave_as_a_killed_save_would(tmp_path / "m", "again")
    checkpoint.save_model(tmp_path / "m", model, model.config.to_dict())
    assert (tmp_path / "m" / "averaging" / "step-00000005.safetensors").is_file()
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_resume_after_a_save_killed_between_its_renames(tmp_path):
    pairs = copy_pairs(80, seed=6)
    _train_whole_and_first_part(tmp_path, pairs)
    aside = _leave_as_a_killed_save_would(tmp_path / "split")
    _resume_split_and_compare(tmp_path, pairs, aside)


def test_a_snapshot_that_fails_to_be_written_leaves_no_temporary_file(tmp_path, monkeypatch):
    """A full disk (or Ctrl-C) while a snapshot was written left .step-N.safetensors.tmp in averaging/ for good."""
    import errno

    from tformer.training import averaging

    model = GPT(GPTConfig(vocab_size=20, max_len=8, d_model=8, n_heads=2, n_layers=1))
    write = checkpoint.write_weights

    def half_written(failure):
        def write_weights(model, file):
            file.write_bytes(b"half a snapshot")
            raise failure
        return write_weights

    (tmp_path / "m").mkdir()  # the run's folder
    averager = CheckpointAverager(tmp_path / "m", 2)
    monkeypatch.setattr(averaging.checkpoint, "write_weights", half_written(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(TformerError, match=r"step-00000005\.safetensors: cannot save the weights kept for checkpoint "
                                           r"averaging \(No space left\); the last checkpoint in .*m is kept"):
        averager.snapshot(model, 5)
    assert list((tmp_path / "m").iterdir()) == []  # not even the averaging folder it made
    monkeypatch.setattr(averaging.checkpoint, "write_weights", write)
    averager.snapshot(model, 5)
    monkeypatch.setattr(averaging.checkpoint, "write_weights", half_written(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        averager.snapshot(model, 10)
    assert sorted(p.name for p in averager.folder.iterdir()) == ["step-00000005.safetensors"]
    # What a run killed outright left half-written goes when the run is resumed.
    (averager.folder / ".step-00000010.safetensors.tmp").write_bytes(b"half a snapshot")
    averager.continue_from(5, save_every=5)
    assert sorted(p.name for p in averager.folder.iterdir()) == ["step-00000005.safetensors"]
