"""What the command line refuses before it can do harm or print a traceback: an --out that holds other things,
options out of range, options a resumed run would ignore, bytes that are not UTF-8, outputs over inputs, and
argparse's own errors, all as one line."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_cli
from tformer.cli import main
from tformer.errors import TformerError

TEXT = "the cat sat on the mat. " * 100


def tiny_lm_args(text, out) -> list:
    return ["train", "--preset", "gpt-micro", "--train-text", text, "--out", out, "--block-size", "16",
            "--batch-size", "4", "--max-steps", "2", "--tokenizer", "char", "train.log_every=1000"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("safety")
    (folder / "text.txt").write_text(TEXT)
    assert main([str(a) for a in tiny_lm_args(folder / "text.txt", folder / "model")]) == 0
    return folder


def digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_out_must_not_replace_what_it_does_not_own(lm, capsys, tmp_path):
    text = lm / "text.txt"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("precious\n")
    code, _, err = run_cli(capsys, *tiny_lm_args(text, a_file))
    assert_one_line_error(code, err, "notes.txt", "is a file")
    assert a_file.read_text() == "precious\n" and not (tmp_path / ".notes.txt.old").exists()
    code, _, err = run_cli(capsys, *tiny_lm_args(text, a_file / "sub"))
    assert_one_line_error(code, err, "notes.txt is a file")

    data_dir = tmp_path / "data"  # a folder of the user's things: saving would replace it whole
    data_dir.mkdir()
    (data_dir / "text.txt").write_text(TEXT)
    code, _, err = run_cli(capsys, *tiny_lm_args(data_dir / "text.txt", data_dir))
    assert_one_line_error(code, err, "other files")
    assert sorted(p.name for p in data_dir.iterdir()) == ["text.txt"]

    code, _, err = run_cli(capsys, *tiny_lm_args(text, "."))
    assert_one_line_error(code, err, "--out '.'")

    before = digest(lm / "model")  # a saved model: only --resume or --overwrite may touch it
    code, _, err = run_cli(capsys, *tiny_lm_args(text, lm / "model"))
    assert_one_line_error(code, err, "already holds a model", "--resume", "--overwrite")
    assert digest(lm / "model") == before
    copy = tmp_path / "copy"
    assert run_cli(capsys, *tiny_lm_args(text, copy))[0] == 0
    code, _, err = run_cli(capsys, *tiny_lm_args(text, copy), "--overwrite", "--max-steps", "3")
    assert code == 0, err
    assert json.loads((copy / "trainer_state.json").read_text())["trainer"]["step"] == 3


def test_saved_files_follow_the_umask(lm):
    mode = (lm / "model").stat().st_mode & 0o777
    assert mode & 0o055 == 0o055 & ~_umask(), oct(mode)  # not mkdtemp's 0700
    assert (lm / "model" / "model.safetensors").stat().st_mode & 0o044 == 0o044 & ~_umask()


def _umask() -> int:
    import os

    current = os.umask(0)
    os.umask(current)
    return current


def test_resume_refuses_what_it_would_ignore_or_undo(lm, capsys, tmp_path):
    before = digest(lm / "model")
    for options, named in ((["model.d_model=64"], "model.d_model cannot change from the gpt-micro preset's 32 to 64"),
                           (["--tokenizer", "byte_bpe"], "data.tokenizer cannot change"),
                           (["--max-steps", "2"], "at step 2 already"),  # before: trained nothing, rewrote the run
                           (["--overwrite"], "give one of them")):
        code, _, err = run_cli(capsys, "train", "--out", lm / "model", "--resume", *options)
        assert_one_line_error(code, err, named)
    assert digest(lm / "model") == before


def test_out_and_output_never_replace_what_is_not_theirs(lm, capsys, tmp_path):
    import os
    import shutil

    text = lm / "text.txt"
    mixed = tmp_path / "mixed"
    shutil.copytree(lm / "model", mixed)
    (mixed / "notes.txt").write_text("mine\n")
    (mixed / "pictures").mkdir()
    (mixed / "pictures" / "curves.png").write_bytes(b"png")
    for flag, steps in (("--resume", "3"), ("--overwrite", "2")):  # a save replaces the model's files, no others
        code, _, err = run_cli(capsys, *tiny_lm_args(text, mixed), flag, "--max-steps", steps)
        assert code == 0, err
        assert (mixed / "notes.txt").read_text() == "mine\n"
        assert (mixed / "pictures" / "curves.png").read_bytes() == b"png"
    assert json.loads((mixed / "trainer_state.json").read_text())["trainer"]["step"] == 2
    os.symlink(lm / "model", tmp_path / "link")
    code, _, err = run_cli(capsys, *tiny_lm_args(text, tmp_path / "link"), "--overwrite")
    assert_one_line_error(code, err, "symbolic link")

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat\n")
    code, _, err = run_cli(capsys, "predict", "--model", lm / "model", "--input", prompts,
                           "--output", lm / "model" / "config.json")
    assert_one_line_error(code, err, "inside the --model directory")
    # a device or a pipe is written into, never replaced by a file (as root, /dev/null itself would go)
    os.mkfifo(tmp_path / "fifo")
    reader = os.open(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    from tformer.cli import _write_output

    _write_output(str(tmp_path / "fifo"), "through the pipe\n")
    assert os.read(reader, 100) == b"through the pipe\n" and not (tmp_path / "fifo").is_file()
    os.close(reader)
    real = tmp_path / "real.txt"
    real.write_text("old\n")
    os.symlink(real, tmp_path / "alias.txt")
    _write_output(str(tmp_path / "alias.txt"), "new\n")  # through a link: the file it points to is written
    assert real.read_text() == "new\n" and (tmp_path / "alias.txt").is_symlink()

    # a writer that needs to seek (a PNG, an .npy) reaches a pipe through a temporary file, removed afterwards
    reader = os.open(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    _write_output(str(tmp_path / "fifo"), lambda file: Path(file).write_bytes(b"\x89PNG..."), suffix=".png")
    assert os.read(reader, 100) == b"\x89PNG..."
    os.close(reader)
    # Ctrl-C in the middle of a write leaves the old file and no temporary one
    def interrupted(file):
        Path(file).write_text("half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _write_output(str(real), interrupted)
    assert real.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == []
    # paths that cannot be the file: a trailing slash, a file as the folder, a link into a missing folder, empty
    os.symlink(tmp_path / "missing" / "x.txt", tmp_path / "dangling.txt")
    for path, needle in ((f"{tmp_path / 'new.txt'}/", "names a folder"), (f"{real}/x.txt", "is a file, not a folder"),
                         (str(tmp_path / "dangling.txt"), "whose folder does not exist"), ("", "--output is empty")):
        with pytest.raises(TformerError, match=needle):
            _write_output(path, "text\n")
    assert not (tmp_path / "new.txt").exists() and not (tmp_path / "missing").exists()


def test_output_to_dev_stdout_writes_into_the_redirected_file(tmp_path):
    """--output /dev/stdout with stdout redirected to a file: written into that file, after what is there (the
    shell's >> as much as its >), never renamed over it."""
    import subprocess
    import sys

    script = ("import sys; from pathlib import Path; from tformer.cli import _write_output; print('before', flush=True); "
              "_write_output('/dev/stdout', 'middle\\n'); "
              "_write_output('/dev/stdout', lambda f: Path(f).write_bytes(b'PNG\\n'), suffix='.png'); print('after')")
    log = tmp_path / "log.txt"
    log.write_text("earlier\n")
    with open(log, "a") as out:
        subprocess.run([sys.executable, "-c", script], stdout=out, check=True)
    assert log.read_text() == "earlier\nbefore\nmiddle\nPNG\nafter\n"


@pytest.mark.parametrize("option, named", [
    ("train.lr=-1", "train.lr"), ("train.lr=0", "train.lr: 0.0 is out of range (allowed: (0, inf))"),
    ("train.adam_beta1=1.5", "train.adam_beta1"), ("train.accum_steps=0", "accum_steps"),
    ("train.max_minutes=inf", "max_minutes"), ("train.label_smoothing=2", "label_smoothing"),
    ("train.warmup_steps=-1", "warmup_steps"), ("train.seed=99999999999999999999", "train.seed"),
    ("model.n_heads=0", "n_heads"), ("model.n_heads=two", "n_heads"), ("model.n_layers=1.5", "n_layers"),
    ("model.norm_position=bogus", "norm_position"), ("model.d_ff=-1", "d_ff"), ("model.tie_output=maybe", "tie_output"),
    ("data.short_seq_prob=1.5", "data.short_seq_prob: 1.5 is out of range (allowed: [0, 1])"),
])
def test_out_of_range_options_are_one_line(lm, capsys, tmp_path, option, named):
    code, _, err = run_cli(capsys, *tiny_lm_args(lm / "text.txt", tmp_path / "m"), option)
    assert_one_line_error(code, err, named)
    assert not (tmp_path / "m").exists()


def test_bytes_that_are_not_utf8(lm, capsys, monkeypatch):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"the cat\nab\xffcd\n"), encoding="utf-8",
                                                       errors="surrogateescape"))
    code, _, err = run_cli(capsys, "generate", "--model", lm / "model", "--input", "-")
    assert_one_line_error(code, err, "<stdin>:2", "UTF-8")
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--model", str(lm / "model"), "--prompt", b"ab\xffcd".decode("utf-8", "surrogateescape")])
    _, err = capsys.readouterr()
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and "--prompt" in err and "UTF-8" in err


def test_argparse_errors_are_one_line(capsys):
    for argv in (["generate", "--model", "m", "--max-new-tokens", "abc"], ["train"], ["no-such-command"], [],
                 ["generate", "--model", "m", "--prompt", "a", "--bogus"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        _, err = capsys.readouterr()
        assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("tformer generate: error: unrecognized arguments: --bogus")  # the command's own name


def test_generation_and_scoring_options(lm, capsys, tmp_path):
    model = lm / "model"
    for args, named in ((["--top-k", "-5"], "--top-k"), (["--stop", ""], "--stop"),
                        (["--temperature", "inf"], "--temperature"), (["--seed", str(2**64)], "--seed")):
        code, _, err = run_cli(capsys, "generate", "--model", model, "--prompt", "the", *args)
        assert_one_line_error(code, err, named)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat\n\nthe mat\n")
    code, _, err = run_cli(capsys, "generate", "--model", model, "--input", prompts)
    assert_one_line_error(code, err, "prompts.txt:2", "empty")  # 1-based, with the file
    code, _, err = run_cli(capsys, "score", "--model", model, "--input", prompts, "--per-line")
    assert_one_line_error(code, err, "prompts.txt:2", "empty line")
    upper = tmp_path / "upper.txt"
    upper.write_text("the cat\nThe mat\n")
    code, _, err = run_cli(capsys, "score", "--model", model, "--input", upper)
    assert_one_line_error(code, err, "upper.txt:2", "'T'")


def test_unexpected_errors_are_one_line_too(capsys, monkeypatch):
    import tformer.cli

    def broken(args):
        raise RuntimeError("something\nnobody foresaw")

    monkeypatch.setattr(tformer.cli, "cmd_list_models", broken)
    assert main(["list-models"]) == 1
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and "RuntimeError: something nobody foresaw" in err and "TFORMER_DEBUG" in err
    monkeypatch.setenv("TFORMER_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["list-models"])


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stopped_run_says_what_its_folder_keeps(lm, capsys, tmp_path, monkeypatch, how):
    """Ctrl-C, or SIGTERM from a scheduler: one line saying which checkpoint --resume would continue from, or that
    none was saved; the handler for SIGTERM is put back afterwards."""
    import os
    import signal

    import tformer.training.loop as loop

    def stopped(*args, **kwargs):
        if how == "ctrl-c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop, "train", stopped)
    before = signal.getsignal(signal.SIGTERM)
    code, _, err = run_cli(capsys, *tiny_lm_args(lm / "text.txt", tmp_path / "new"))
    word, status = ("interrupted", 130) if how == "ctrl-c" else ("terminated", 143)
    assert code == status and err.strip().splitlines() == [
        f"tformer train: {word}; nothing was saved in {tmp_path / 'new'} (train.save_every=N saves a checkpoint "
        "every N steps, for --resume to continue from)"]
    kept = shutil.copytree(lm / "model", tmp_path / "kept")
    code, _, err = run_cli(capsys, "train", "--out", kept, "--resume", "--max-steps", "9")
    assert code == status and err.strip() == (f"tformer train: {word}; {kept} keeps the checkpoint of step 2 "
                                              "(--resume continues from it)")
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_place_that_cannot_be_written_is_named_before_training(lm, capsys, monkeypatch):
    import tformer.training.loop as loop

    monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("trained before checking --out"))
    code, _, err = run_cli(capsys, *tiny_lm_args(lm / "text.txt", "/proc/tformer-model"))
    assert_one_line_error(code, err, "--out /proc/tformer-model: cannot save there")


def test_a_full_disk_is_named_and_the_last_checkpoint_kept(lm, tmp_path, monkeypatch):
    """torch.save on a full disk fails with "enforce fail at inline_container.cc": say what it means."""
    from collections import namedtuple

    from tformer.training import checkpoint

    model = shutil.copytree(lm / "model", tmp_path / "model")
    before = digest(model)

    def full(tmp):
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 123 vs 456")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    with pytest.raises(TformerError, match=r"model: cannot save \(the disk is full: 1 MB free in .*\); the previous "
                                           r"copy is kept"):
        checkpoint.save_dir(model, full)
    assert digest(model) == before and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="enforce fail"):  # with room on the disk it is not the disk: as it was
        checkpoint.save_dir(model, full)


def test_demo_and_evaluate_refuse_bad_places_and_sizes_before_working(tmp_path, capsys):
    """demo --out naming a file failed only after minutes of training; evaluate --max-tokens 0 was accepted."""
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    for out in (blocker, blocker / "demo"):
        code, _, err = run_cli(capsys, "demo", "--out", out, "--steps", "1")
        assert_one_line_error(code, err, f"--out {out}", "is a file")
    assert blocker.read_text() == "mine"
    src = tmp_path / "a.txt"
    src.write_text("x\n")
    for bad in ("0", "-3"):
        code, _, err = run_cli(capsys, "evaluate", "--model", tmp_path, "--src", src, "--ref", src, "--max-tokens", bad)
        assert_one_line_error(code, err, f"--max-tokens must be at least 1, not {bad}")


def test_demo_out_never_replaces_a_model_it_did_not_make(lm, tmp_path, capsys, monkeypatch):
    """demo --out DIR wrote DIR/model and DIR/attention*.png over whatever was there: a trained model at DIR/model
    was replaced, and a model directory given as DIR got the demo's files mixed in. An earlier demo's folder is
    still run again, as the README's two commands expect."""
    import tformer.demo
    from tformer.demo import demo_config, is_demo_model

    ran = []
    monkeypatch.setattr(tformer.demo, "run_demo", lambda out, *a, **k: ran.append(Path(out)))
    theirs = tmp_path / "theirs"
    shutil.copytree(lm / "model", theirs / "model")  # a GPT that `tformer train` saved
    before = digest(theirs / "model")
    code, _, err = run_cli(capsys, "demo", "--out", theirs, "--steps", "1")
    assert_one_line_error(code, err, f"--out {theirs}", "holds a model the demo did not make")
    code, _, err = run_cli(capsys, "demo", "--out", theirs / "model", "--steps", "1")
    assert_one_line_error(code, err, "is a model directory (it holds config.json)")
    assert digest(theirs / "model") == before and sorted(p.name for p in theirs.iterdir()) == ["model"]

    pictures = tmp_path / "pictures"  # a picture of the user's under the demo's name
    pictures.mkdir()
    (pictures / "attention.png").write_text("mine")
    code, _, err = run_cli(capsys, "demo", "--out", pictures, "--steps", "1")
    assert_one_line_error(code, err, "attention.png is not from an earlier demo")
    other = tmp_path / "other"  # a model/ folder of other things
    (other / "model").mkdir(parents=True)
    (other / "model" / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "demo", "--out", other, "--steps", "1")
    assert_one_line_error(code, err, "other files in it")
    assert ran == []

    earlier = tmp_path / "earlier"  # an earlier demo's folder, of another --steps and --seed
    (earlier / "model").mkdir(parents=True)
    (earlier / "model" / "config.json").write_text(json.dumps(
        {"model_type": "transformer", "tformer_run": demo_config(40, 0.0, 7).to_dict()}))
    (earlier / "attention.png").write_text("an earlier demo's")
    (earlier / "notes.txt").write_text("kept")
    assert is_demo_model(earlier / "model") and not is_demo_model(theirs / "model")
    for out in (earlier, tmp_path / "new"):
        assert run_cli(capsys, "demo", "--out", out, "--steps", "1")[0] == 0
    assert ran == [earlier, tmp_path / "new"]


def test_ctrl_c_in_any_command_is_one_line_and_status_130(capsys, monkeypatch):
    """A KeyboardInterrupt in any command (here one that lists models) ends in one line and exit status 130, no
    traceback; under torchrun (RANK set) only the first process says it, since every process gets the signal."""
    import tformer.cli

    def stopped(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(tformer.cli, "cmd_list_models", stopped)
    code, out, err = run_cli(capsys, "list-models")
    assert code == 130 and out == "" and err == "tformer list-models: interrupted\n"
    monkeypatch.setenv("RANK", "1")
    code, out, err = run_cli(capsys, "list-models")
    assert code == 130 and out == err == ""
    monkeypatch.setenv("RANK", "0")
    assert run_cli(capsys, "list-models")[2] == "tformer list-models: interrupted\n"


@pytest.mark.parametrize("where", ["writing", "swapping"])
def test_a_checkpoint_save_interrupted_keeps_the_previous_copy(lm, tmp_path, monkeypatch, where):
    """Ctrl-C while a checkpoint is written, or between the renames that swap it in: the previous copy is whole at
    its place, and no temporary copy is left."""
    from tformer.training import checkpoint

    model = shutil.copytree(lm / "model", tmp_path / "model")
    before = digest(model)

    def write(tmp):
        (tmp / "config.json").write_text("{}")
        if where == "writing":
            raise KeyboardInterrupt

    real_replace = checkpoint.os.replace

    def replace(source, target):
        if where == "swapping" and Path(source).name.startswith(".model.tmp-"):  # the old copy is aside by now
            monkeypatch.setattr(checkpoint.os, "replace", real_replace)
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_dir(model, write)
    assert digest(model) == before and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
