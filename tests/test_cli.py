"""The command line: a working round trip, and bad input that ends in one line, exit code 2, no traceback."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_one_line_error, copy_pairs, run_cli
from tformer.cli import main

TINY = ["--preset", "transformer-micro", "--max-steps", "3", "--max-tokens", "128", "data.tokenizer=char",
        "train.log_every=1000"]


def write_corpus(folder: Path, n: int = 30, gz: bool = False) -> tuple[Path, Path]:
    pairs = copy_pairs(n, seed=7)
    suffix = ".gz" if gz else ""
    src, tgt = folder / f"train.src{suffix}", folder / f"train.tgt{suffix}"
    for path, side in ((src, 0), (tgt, 1)):
        data = "".join(p[side] + "\n" for p in pairs).encode()
        path.write_bytes(gzip.compress(data) if gz else data)
    return src, tgt


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    src, tgt = write_corpus(folder, gz=True)
    code = main(["train", "--out", str(folder / "model"), "--train-src", str(src), "--train-tgt", str(tgt),
                 "--valid-src", str(src), "--valid-tgt", str(tgt), *TINY])
    assert code == 0
    return folder, src, tgt


def test_train_translate_evaluate_round_trip(trained, capsys, tmp_path):
    folder, src, tgt = trained
    model = folder / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json", "trainer_state.json"} <= {p.name for p in model.iterdir()}
    inp = tmp_path / "in.txt"
    inp.write_text("ab cd\nba\n")
    code, out, err = run_cli(capsys, "translate", "--model", model, "--input", inp, "--beam", 2)
    assert code == 0 and len(out.splitlines()) == 2
    code, out, err = run_cli(capsys, "evaluate", "--model", model, "--src", src, "--ref", tgt, "--beam", 1)
    assert code == 0 and "BLEU" in out and "chrF" in out and "sentences/s" in out


def test_resume_continues_the_saved_run(trained, capsys, tmp_path):
    folder, src, tgt = trained
    # A save killed between its two renames left the last copy aside: readers are told where it is ...
    (folder / "model").rename(folder / ".model.old")
    inp = tmp_path / "in.txt"
    inp.write_text("ab\n")
    code, _, err = run_cli(capsys, "translate", "--model", folder / "model", "--input", inp)
    assert_one_line_error(code, err, str(folder / ".model.old"))
    # ... and resuming puts it back. The saved run remembers its data files and options: only what changes
    # is given again.
    code, out, err = run_cli(capsys, "train", "--out", folder / "model", "--resume", "--max-steps", 5)
    assert code == 0, err
    assert '"steps": 5' in out
    assert not (folder / ".model.old").exists()


def test_list_models(capsys):
    code, out, _ = run_cli(capsys, "list-models")
    assert code == 0 and "transformer-base" in out and "transformer-big" in out


def test_missing_training_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "m", "--train-src", tmp_path / "nope.en",
                           "--train-tgt", tmp_path / "nope.de")
    assert_one_line_error(code, err, "nope.en", "not found")


def test_different_line_counts(capsys, tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\nthree\n")
    (tmp_path / "b.txt").write_text("eins\nzwei\n")
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "m", "--train-src", tmp_path / "a.txt",
                           "--train-tgt", tmp_path / "b.txt")
    assert_one_line_error(code, err, "a.txt", "b.txt", "3", "2")


def test_validation_needs_both_sides(capsys, tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    (tmp_path / "b.txt").write_text("eins\nzwei\n")
    both = ["train", "--out", tmp_path / "m", "--train-src", tmp_path / "a.txt", "--train-tgt", tmp_path / "b.txt"]
    code, _, err = run_cli(capsys, *both, "--valid-src", tmp_path / "a.txt")
    assert_one_line_error(code, err, "data.valid_src is set but data.valid_tgt is not", "--valid-tgt")
    code, _, err = run_cli(capsys, *both, "--valid-tgt", tmp_path / "b.txt")
    assert_one_line_error(code, err, "data.valid_tgt is set but data.valid_src is not", "--valid-src")
    assert not (tmp_path / "m").exists()


def test_data_options_of_the_other_family_are_refused(capsys, tmp_path):
    """--train-text with the default translation preset (a forgotten --preset) named as such, not answered by
    'training needs data.train_src'; a translation file given to a GPT run is not silently ignored."""
    (tmp_path / "t.txt").write_text("some text to learn from\n" * 20)
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "m", "--train-text", tmp_path / "t.txt")
    assert_one_line_error(code, err, "--train-text", "transformer-small", "--preset")
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "m", "--preset", "gpt-micro", "--train-text",
                           tmp_path / "t.txt", "--valid-src", tmp_path / "t.txt", "--max-steps", "1")
    assert_one_line_error(code, err, "--valid-src", "gpt-micro")
    assert not (tmp_path / "m").exists()


def test_empty_file(capsys, tmp_path):
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.txt").write_text("x\n")
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "m", "--train-src", tmp_path / "a.txt",
                           "--train-tgt", tmp_path / "b.txt")
    assert_one_line_error(code, err, "a.txt", "empty")


def test_undecodable_bytes_name_the_line(capsys, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    (tmp_path / "b.txt").write_text("x\ny\nz\n")
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "m", "--train-src", tmp_path / "a.txt",
                           "--train-tgt", tmp_path / "b.txt")
    assert_one_line_error(code, err, "a.txt:3", "UTF-8")


def test_bad_option_values(capsys, tmp_path):
    src, tgt = write_corpus(tmp_path)
    base = ["train", "--out", tmp_path / "m", "--train-src", src, "--train-tgt", tgt]
    code, _, err = run_cli(capsys, *base, "train.max_steps=abc")
    assert_one_line_error(code, err, "train.max_steps", "abc")
    code, _, err = run_cli(capsys, *base, "train.no_such_option=1")
    assert_one_line_error(code, err, "train.no_such_option")
    code, _, err = run_cli(capsys, *base, "--preset", "transformer-huge")
    assert_one_line_error(code, err, "transformer-huge")
    code, _, err = run_cli(capsys, *base, "model.d_model=30", "model.n_heads=4")
    assert_one_line_error(code, err, "d_model=30")
    code, _, err = run_cli(capsys, *base, "--resume")
    assert_one_line_error(code, err, "--resume")
    code, _, err = run_cli(capsys, *base, "--device", "tpu9")
    assert_one_line_error(code, err, "tpu9")
    if not __import__("torch").cuda.is_available():
        code, _, err = run_cli(capsys, *base, "--device", "cuda")
        assert_one_line_error(code, err, "cuda")


def test_bad_config_file(capsys, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text("[train]\nmax_steps = \n")
    code, _, err = run_cli(capsys, "train", "--config", cfg, "--out", tmp_path / "m")
    assert_one_line_error(code, err, "run.toml", "TOML")
    cfg.write_text("[optimizer]\nlr = 1\n")
    code, _, err = run_cli(capsys, "train", "--config", cfg, "--out", tmp_path / "m")
    assert_one_line_error(code, err, "[optimizer]")


def test_translate_and_evaluate_errors(trained, capsys, tmp_path):
    folder, src, tgt = trained
    code, _, err = run_cli(capsys, "translate", "--model", tmp_path / "missing", "--input", src)
    assert_one_line_error(code, err, "missing")
    code, _, err = run_cli(capsys, "translate", "--model", folder / "model", "--input", src, "--beam", 0)
    assert_one_line_error(code, err, "--beam")
    code, _, err = run_cli(capsys, "translate", "--model", folder / "model", "--input", tmp_path / "none.txt")
    assert_one_line_error(code, err, "none.txt")
    short = tmp_path / "ref.txt"
    short.write_text("only one line\n")
    code, _, err = run_cli(capsys, "evaluate", "--model", folder / "model", "--src", src, "--ref", short)
    assert_one_line_error(code, err, "ref.txt")
    code, _, err = run_cli(capsys, "evaluate", "--model", folder / "model", "--src", src, "--ref", src, "data.max_len=9")
    assert_one_line_error(code, err, "data.max_len=9", "--data")  # section.key=value is for fine-tuned models
    code, _, err = run_cli(capsys, "evaluate", "--model", folder / "model", "--src", "-", "--ref", src)
    assert_one_line_error(code, err, "--src -", "not stdin")
    code, _, err = run_cli(capsys, "translate", "--model", folder / "model", "--input", src, "--beam", 100000)
    assert_one_line_error(code, err, "beam size 100000 (--beam)", "target vocabulary")
    plain = tmp_path / "plain.txt"
    plain.write_text("abc\n")
    code, _, err = run_cli(capsys, "translate", "--model", folder / "model", "--input", plain, "--output", plain)
    assert_one_line_error(code, err, "--output", "also an input")
    assert plain.read_text() == "abc\n"
    for output, named in ((tmp_path / "no" / "out.txt", "does not exist"), (tmp_path, "is a folder")):
        code, _, err = run_cli(capsys, "translate", "--model", folder / "model", "--input", plain, "--output", output)
        assert_one_line_error(code, err, "--output", named)
    code, _, err = run_cli(capsys, "evaluate", "--model", folder / "model", "--data", plain, "--beam", 2)
    assert_one_line_error(code, err, "--beam", "translation")  # before: silently ignored
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    code, _, err = run_cli(capsys, "translate", "--model", broken, "--input", src)
    assert_one_line_error(code, err, "config.json")


def test_failed_run_leaves_saved_model_untouched(trained, capsys, tmp_path):
    folder, src, tgt = trained
    weights = (folder / "model" / "model.safetensors").read_bytes()
    (tmp_path / "b.txt").write_text("x\n")
    code, _, err = run_cli(capsys, "train", "--out", folder / "model", "--train-src", src,
                           "--train-tgt", tmp_path / "b.txt")
    assert code == 2
    assert (folder / "model" / "model.safetensors").read_bytes() == weights


def test_real_process_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tformer.cli", "translate", "--model", str(tmp_path / "absent")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "absent" in proc.stderr


def test_train_command_runs_unchanged_under_torchrun(tmp_path):
    """The same `tformer train` command, launched by torchrun on 2 CPU processes (gloo)."""
    src, tgt = write_corpus(tmp_path, n=40)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tformer.cli", "train", "--out", str(tmp_path / "m"), "--train-src", str(src), "--train-tgt", str(tgt),
           "--device", "cpu", "train.accum_steps=2", *TINY]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count('"steps": 3') == 1  # rank 0 alone reports
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert "x 2 process(es)" in proc.stderr


def test_translation_says_when_it_cuts_a_long_sentence(trained, capsys, tmp_path):
    folder, src, tgt = trained
    long_line = tmp_path / "long.txt"
    long_line.write_text("abc " * 300 + "\nab\n")  # a character model of 1,024 positions: 1,200 here
    code, out, err = run_cli(capsys, "translate", "--model", folder / "model", "--input", long_line, "--beam", 1)
    assert code == 0 and len(out.splitlines()) == 2
    assert "1 of 2 sentence(s) were longer" in err and err.count("\n") == 1


def test_every_help_page_shows_the_defaults(capsys):
    for command in ("demo", "train", "translate", "evaluate", "generate", "score", "embed", "fill-mask", "similar",
                    "finetune", "predict", "attention", "curves", "list-models"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for shown in ("--beam BEAM beam size (1: greedy) (default: 4)", "(0: all) (default: 0)",
                  "--max-new-tokens MAX_NEW_TOKENS default: 200", "--text-column TEXT_COLUMN the text's column or "
                  "JSON field (default: sentence)"):
        assert shown in out, shown


def test_help_says_what_each_shortcut_flag_sets(capsys):
    """--max-tokens is a batch's tokens in train and one input's length in finetune: each help page says which
    (the flags were listed bare), and every train shortcut names the option it sets."""
    from tformer.cli import _SHORTCUTS

    pages = {}
    for command in ("train", "finetune"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        pages[command] = " ".join(capsys.readouterr().out.split())
    assert "--max-tokens MAX_TOKENS translation: padded tokens per micro-batch" in pages["train"]
    assert "--max-tokens MAX_TOKENS tokens per input" in pages["finetune"]
    assert "(data.max_tokens; default: 128" in pages["finetune"]
    for key in _SHORTCUTS.values():
        assert f"({key})" in pages["train"], key


def test_train_takes_lr_and_its_help_says_what_it_means_per_schedule(tmp_path, capsys):
    """finetune had --lr, train only train.lr=. Under inverse_sqrt train.lr is a factor on the paper's schedule,
    under the others the peak rate: the help says both."""
    import json

    from tformer.training.schedules import inverse_sqrt_lr

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    page = " ".join(capsys.readouterr().out.split())
    assert ("--lr LR learning rate: under inverse_sqrt (translation's default schedule) a factor on the paper's "
            "d_model^-0.5 * min(step^-0.5, step * warmup^-1.5) (default 1); under cosine") in page
    assert "the peak rate (train.lr)" in page
    src, tgt = write_corpus(tmp_path)
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "m", "--train-src", src, "--train-tgt", tgt, *TINY,
                           "--lr", "0.25", "train.log_every=1", "train.warmup_steps=2")
    assert code == 0, err
    saved = json.loads((tmp_path / "m" / "trainer_state.json").read_text())
    assert saved["train_config"]["lr"] == 0.25
    d_model = json.loads((tmp_path / "m" / "config.json").read_text())["d_model"]
    rates = [entry["lr"] for entry in saved["trainer"]["history"] if "lr" in entry]
    assert rates == pytest.approx([inverse_sqrt_lr(step, d_model, 2, 0.25) for step in (1, 2, 3)])
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "bad", "--train-src", src, "--train-tgt", tgt, *TINY,
                           "--lr", "0")
    assert_one_line_error(code, err, "train.lr: 0.0 is out of range")
