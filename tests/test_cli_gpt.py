"""The language-model commands: train, resume, generate, score, choose; bad input is one line and exit 2."""

from __future__ import annotations

import json

import pytest

from conftest import assert_one_line_error, run_cli
from tformer.cli import main

TEXT = "the cat sat on the mat. " * 200


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm")
    text = folder / "text.txt"
    text.write_text(TEXT)
    code = main(["train", "--preset", "gpt-micro", "--train-text", str(text), "--out", str(folder / "model"),
                 "--block-size", "24", "--batch-size", "8", "--max-steps", "120", "train.lr=5e-3",
                 "train.warmup_steps=10", "train.log_every=1000", "model.d_model=48", "model.n_heads=2"])
    assert code == 0
    return folder


def test_train_writes_a_model_directory_with_the_lm_defaults(lm, capsys):
    model = lm / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "trainer_state.json", "optimizer.pt"):
        assert (model / name).is_file(), name
    config = json.loads((model / "config.json").read_text())
    assert config["model_type"] == "gpt" and config["max_len"] == 24
    run = config["tformer_run"]["train"]
    assert run["schedule"] == "cosine" and run["weight_decay"] == 0.1 and run["label_smoothing"] == 0.0


def test_greedy_generation_continues_the_pattern(lm, capsys):
    code, out, err = run_cli(capsys, "generate", "--model", lm / "model", "--prompt", "the cat sat on the",
                             "--greedy", "--max-new-tokens", "9")
    assert code == 0, err
    assert out == "the cat sat on the mat. the\n"


def test_sampling_is_reproducible_and_stop_strings_cut(lm, capsys):
    args = ["generate", "--model", lm / "model", "--prompt", "the", "--prompt", "cat", "--max-new-tokens", "30",
            "--seed", "3", "--temperature", "1.0", "--top-k", "5"]
    first, second = run_cli(capsys, *args)[1], run_cli(capsys, *args)[1]
    assert first == second and first.count("\n----\n") == 1
    code, out, _ = run_cli(capsys, "generate", "--model", lm / "model", "--prompt", "the cat", "--greedy",
                           "--stop", ".", "--max-new-tokens", "40")
    assert code == 0 and out == "the cat sat on the mat\n"


def test_one_text_is_streamed_as_it_grows(lm, capsys, monkeypatch):
    import sys

    writes = []
    real_write = sys.stdout.write
    monkeypatch.setattr(sys.stdout, "write", lambda text: writes.append(text) or real_write(text))
    code, out, err = run_cli(capsys, "generate", "--model", lm / "model", "--prompt", "the cat sat on the",
                             "--greedy", "--max-new-tokens", "9")
    assert code == 0, err
    assert out == "the cat sat on the mat. the\n"  # the same text as printed at once
    assert len(writes) >= 6  # the prompt, then the continuation piece by piece


def test_repetition_options_reach_generation(lm, capsys):
    code, plain, err = run_cli(capsys, "generate", "--model", lm / "model", "--prompt", "the cat sat on the",
                               "--greedy", "--max-new-tokens", "30")
    assert code == 0 and "the cat sat" in plain[5:]  # the model repeats its one sentence
    code, out, err = run_cli(capsys, "generate", "--model", lm / "model", "--prompt", "the cat sat on the",
                             "--greedy", "--max-new-tokens", "30", "--no-repeat-ngram-size", "4")
    text = out.rstrip("\n")
    grams = [text[i : i + 4] for i in range(len(text) - 3)]
    assert code == 0 and len(grams) == len(set(grams)) and len(text) == len("the cat sat on the") + 30
    # This model is so sure of its one sentence that no penalty above 1 changes a greedy choice; one far below
    # 1 does (seen tokens favoured), and shows that the option reaches generation.
    args = ["generate", "--model", lm / "model", "--prompt", "the", "--greedy", "--max-new-tokens", "12"]
    code, plain, err = run_cli(capsys, *args)
    code, penalized, err = run_cli(capsys, *args, "--repetition-penalty", "0.05")  # below 1: repeats favoured
    assert code == 0 and penalized != plain and penalized.startswith("the")
    for option, value in (("--repetition-penalty", "0"), ("--repetition-penalty", "nan"),
                          ("--no-repeat-ngram-size", "-2")):
        code, _, err = run_cli(capsys, "generate", "--model", lm / "model", "--prompt", "the", option, value)
        assert_one_line_error(code, err, option, value)


def test_ignore_eos_goes_on_past_the_models_end_of_text_token(lm, capsys, tmp_path):
    import shutil

    from tformer.tokenization import Tokenizer

    model = tmp_path / "model"
    shutil.copytree(lm / "model", model)
    config = json.loads((model / "config.json").read_text())
    config["eos_id"] = Tokenizer.load(model / "tokenizer.json", required=()).encode(".")[0]  # "." ends a text
    (model / "config.json").write_text(json.dumps(config))
    args = ["generate", "--model", model, "--prompt", "the cat sat on the", "--greedy", "--max-new-tokens", "9"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and out == "the cat sat on the mat\n", err
    code, out, err = run_cli(capsys, *args, "--ignore-eos")
    assert code == 0 and out == "the cat sat on the mat. the\n", err  # "." is no special token: it is text


def test_score_and_choose(lm, capsys, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("the cat sat on the mat. the cat sat on the mat.")
    code, out, _ = run_cli(capsys, "score", "--model", lm / "model", "--input", f)
    r = json.loads(out)
    assert code == 0 and r["tokens"] > 40 and r["perplexity"] < 2.0
    code, out, _ = run_cli(capsys, "score", "--model", lm / "model", "--prompt", "the cat sat on the",
                           "--choice", " mat", "--choice", " cat")
    assert code == 0 and out.splitlines()[0].startswith("*") and out.splitlines()[0].endswith(" mat")


def test_resume_continues_to_the_new_limit(lm, capsys):
    code, out, err = run_cli(capsys, "train", "--out", lm / "model", "--resume", "--max-steps", "125")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["steps"] == 125


def test_bad_input_is_one_line(lm, capsys, tmp_path):
    code, _, err = run_cli(capsys, "generate", "--model", lm / "model", "--prompt", "zebra")
    assert_one_line_error(code, err, "'b'", "'z'", "character vocabulary")
    code, _, err = run_cli(capsys, "generate", "--model", lm / "model")
    assert_one_line_error(code, err, "--prompt")
    code, _, err = run_cli(capsys, "generate", "--model", lm / "model", "--prompt", "cat", "--top-p", "0")
    assert_one_line_error(code, err, "--top-p")
    code, _, err = run_cli(capsys, "generate", "--model", lm / "model", "--prompt", "the", "--prompt", "the" * 10)
    assert_one_line_error(code, err, "--prompt 2:", "context window")  # named 1-based, as given
    long_lines = tmp_path / "prompts.txt"
    long_lines.write_text("the cat\n" + "the" * 10 + "\n")
    code, _, err = run_cli(capsys, "generate", "--model", lm / "model", "--input", long_lines)
    assert_one_line_error(code, err, "prompts.txt:2:", "context window")
    code, _, err = run_cli(capsys, "generate", "--model", lm / "model", "--prompt", "the", "--num-samples", 10**12)
    assert_one_line_error(code, err, str(10**12), "sequence", "GiB")  # a typo, refused before the batch is built
    code, _, err = run_cli(capsys, "score", "--model", lm / "model", "--prompt", "x", "--choice", "a")
    assert_one_line_error(code, err, "two")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, _, err = run_cli(capsys, "train", "--preset", "gpt-micro", "--train-text", empty, "--out", tmp_path / "m")
    assert_one_line_error(code, err, "empty.txt", "empty")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xc3\x28\n")
    code, _, err = run_cli(capsys, "train", "--preset", "gpt-micro", "--train-text", bad, "--out", tmp_path / "m")
    assert_one_line_error(code, err, "bad.txt:2", "UTF-8")
    code, _, err = run_cli(capsys, "generate", "--model", tmp_path / "nowhere", "--prompt", "x")
    assert_one_line_error(code, err, "nowhere")
    assert not (tmp_path / "m").exists()


def test_several_config_files_and_a_list_of_texts(capsys, tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "b.txt").write_text("a dog ran in the fog. " * 100)
    model = tmp_path / "model.toml"
    model.write_text('[model]\npreset = "gpt-micro"\nd_model = 32\nn_heads = 2\n[train]\nmax_steps = 3\n')
    data = tmp_path / "data.toml"
    data.write_text(f'[data]\ntrain_text = ["{tmp_path / "a.txt"}", "{tmp_path / "b.txt"}"]\nblock_size = 16\n'
                    '[train]\nmax_steps = 2\n')
    code, out, err = run_cli(capsys, "train", "--config", model, "--config", data, "--out", tmp_path / "m")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["steps"] == 2  # the later file wins
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    vocab = json.loads((tmp_path / "m" / "tokenizer.json").read_text())["model"]["vocab"]
    assert saved["d_model"] == 32 and "g" in vocab  # the first file set the model, "g" is only in b.txt


def test_extreme_sampling_values_do_not_break_generation(lm, capsys):
    base = ["generate", "--model", lm / "model", "--prompt", "the cat", "--max-new-tokens", "12"]
    greedy = run_cli(capsys, *base, "--greedy")[1]
    code, out, err = run_cli(capsys, *base, "--temperature", "1e-40", "--seed", "1")
    assert code == 0 and out == greedy, err  # a vanishing temperature is greedy decoding, not NaN
    code, out, err = run_cli(capsys, *base, "--repetition-penalty", "1e-300", "--seed", "1")
    assert code == 0 and out.startswith("the cat"), err  # +inf logits: certain tokens, not a torch error
    code, _, err = run_cli(capsys, *base, "--greedy", "--temperature", "-5")
    assert_one_line_error(code, err, "--temperature", "-5")


class _Stdin:
    def __init__(self, data: bytes):
        import io

        self.buffer = io.BytesIO(data)


def test_score_reads_stdin_as_a_file_and_names_what_is_wrong(lm, capsys, tmp_path, monkeypatch):
    import sys

    text = "the cat sat. the mat."
    f = tmp_path / "s.txt"
    f.write_text(text)
    from_file = run_cli(capsys, "score", "--model", lm / "model", "--input", f)[1]
    monkeypatch.setattr(sys, "stdin", _Stdin(text.encode()))
    code, from_stdin, err = run_cli(capsys, "score", "--model", lm / "model", "--input", "-")
    assert code == 0 and from_stdin == from_file and json.loads(from_file)["tokens"] == len(text) - 1, err
    # stdin keeps every character, a final newline too (this model has none: an error, as from a file)
    f.write_text(text + "\n")
    monkeypatch.setattr(sys, "stdin", _Stdin((text + "\n").encode()))
    for source in (f, "-"):
        code, _, err = run_cli(capsys, "score", "--model", lm / "model", "--input", source)
        assert_one_line_error(code, err, "'\\n'")

    lines = tmp_path / "lines.txt"
    lines.write_text("the cat\nt\nthe mat\n")
    code, _, err = run_cli(capsys, "score", "--model", lm / "model", "--input", lines, "--per-line")
    assert_one_line_error(code, err, "lines.txt:2:", "nothing to score")  # one character: nothing to predict
    model = ["score", "--model", lm / "model", "--prompt", "the cat sat on the"]
    code, _, err = run_cli(capsys, *model, "--choice", " mat", "--choice", " zoo")
    assert_one_line_error(code, err, "--choice 2:", "'z'")
    code, _, err = run_cli(capsys, *model, "--choice", " mat", "--choice", "")
    assert_one_line_error(code, err, "--choice 2:", "no tokens")
    code, _, err = run_cli(capsys, *model, "--choice", "a\\nb", "--choice", " mat")
    assert_one_line_error(code, err, "--choice 1:", "'\\n'")  # \n is a newline here too, as in --prompt
    code, out, _ = run_cli(capsys, *model, "--choice", " mat", "--choice", " mat")
    assert code == 0 and [line[0] for line in out.splitlines()] == ["*", " "]  # ties go to the first, once
    code, _, err = run_cli(capsys, "score", "--model", lm / "model", "--input", f, "--prompt", "the")
    assert_one_line_error(code, err, "--prompt", "--choice")


def test_training_names_the_file_the_tokenizer_and_the_vocabulary_problems(lm, capsys, tmp_path):
    import shutil

    train = tmp_path / "a.txt"
    train.write_text(TEXT.replace(". ", ".\n"))
    valid = tmp_path / "v.txt"
    valid.write_text("the cat\nthe möt\n")
    short = ["--preset", "gpt-micro", "--block-size", "16", "--max-steps", "2", "--train-text", train]
    code, _, err = run_cli(capsys, "train", *short, "--valid-text", valid, "--out", tmp_path / "m1")
    assert_one_line_error(code, err, "v.txt:2:", "'ö'")
    code, _, err = run_cli(capsys, "train", *short, "--out", tmp_path / "m2", "data.tokenizer=wordpiece")
    assert_one_line_error(code, err, "wordpiece", "char or byte_bpe")
    toml = tmp_path / "c.toml"
    toml.write_text("[data]\ntrain_text = 5\n")
    code, _, err = run_cli(capsys, "train", "--preset", "gpt-micro", "--config", toml, "--out", tmp_path / "m3")
    assert_one_line_error(code, err, "train_text", "expected a string")
    assert not any((tmp_path / m).exists() for m in ("m1", "m2", "m3"))

    # Another model's tokenizer, with more tokens than this model has rows, is refused when loading.
    mixed = tmp_path / "mixed"
    shutil.copytree(lm / "model", mixed)
    from tformer.tokenization import train_lm_tokenizer

    train_lm_tokenizer([TEXT + "xyzXYZ0123456789"], "char").save(mixed / "tokenizer.json")
    code, _, err = run_cli(capsys, "generate", "--model", mixed, "--prompt", "the")
    assert_one_line_error(code, err, "tokenizer.json has", "vocab_size=", "config.json")


def test_resume_from_another_folder_names_the_saved_relative_path(capsys, tmp_path, monkeypatch):
    (tmp_path / "start").mkdir()
    (tmp_path / "start" / "a.txt").write_text(TEXT)
    monkeypatch.chdir(tmp_path / "start")
    code, _, err = run_cli(capsys, "train", "--preset", "gpt-micro", "--block-size", "16", "--max-steps", "2",
                           "--train-text", "a.txt", "--out", tmp_path / "m")
    assert code == 0, err
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "m", "--resume", "--max-steps", "4")
    assert_one_line_error(code, err, "--resume", "data.train_text 'a.txt'", "config.json", "data.train_text=PATH")
    code, out, err = run_cli(capsys, "train", "--out", tmp_path / "m", "--resume", "--max-steps", "4",
                             "--train-text", tmp_path / "start" / "a.txt")
    assert code == 0 and json.loads(out.splitlines()[-1])["steps"] == 4, err


def test_tokenizer_file_has_a_shortcut_flag(tmp_path, capsys):
    """--tokenizer-file FOLDER trains on a GPT-2 tokenizer, as data.tokenizer_file= does."""
    from tformer.tokenization import train_lm_tokenizer

    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    folder = tmp_path / "tok"
    folder.mkdir()
    bpe = train_lm_tokenizer([TEXT], "byte_bpe", 300)
    bpe.backend.model.save(str(folder))  # vocab.json + merges.txt
    code, out, err = run_cli(capsys, "train", "--preset", "gpt-micro", "--train-text", text, "--out",
                             tmp_path / "m", "--tokenizer-file", folder, "--max-steps", "2", "--block-size", "16",
                             "train.warmup_steps=1", "model.d_model=32", "model.n_heads=2")
    assert code == 0, err
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["tformer_run"]["data"]["tokenizer_file"] == str(folder) and config["vocab_size"] == bpe.vocab_size
