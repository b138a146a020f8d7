"""Damaged model directories and saved runs: one line naming the file that is wrong, exit code 2, nothing changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error, run_cli
from tformer.cli import main
from tformer.models.bert import BertConfig
from tformer.models.gpt import GPTConfig
from tformer.models.heads import EncoderForTask, GPTForClassification, HeadConfig
from tformer.registry import create_model
from tformer.training import checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A language model's run of two steps: every file a resumed run reads."""
    folder = tmp_path_factory.mktemp("run")
    text = folder / "text.txt"
    text.write_text("a cat sat on a mat. " * 40)
    assert main(["train", "--preset", "gpt-micro", "--train-text", str(text), "--out", str(folder / "model"),
                 "--block-size", "16", "--batch-size", "4", "--max-steps", "2", "train.log_every=1000"]) == 0
    return folder / "model"


def copy_of(model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model, tmp_path / "model"))


def edit_config(model: Path, change) -> None:
    data = json.loads((model / checkpoint.CONFIG).read_text())
    change(data)
    (model / checkpoint.CONFIG).write_text(json.dumps(data))


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (its parent's too: no copy saved beside it) and its bytes."""
    return {str(p.relative_to(folder.parent)): p.read_bytes() if p.is_file() else b"" for p in folder.parent.rglob("*")}


@pytest.mark.parametrize("damage, needles", [
    (lambda m: (m / "config.json").write_bytes(b'{"model_type": "gpt\xff"}'), ["config.json", "UTF-8"]),
    (lambda m: (m / "config.json").write_text("[1, 2, 3]"), ["config.json", "JSON object", "a list"]),
    (lambda m: edit_config(m, lambda d: d.update(n_heads="two")), ["config.json: n_heads", "integer", "'two'"]),
    (lambda m: edit_config(m, lambda d: d.update(activation="swish")), ["config.json: activation", "'swish'"]),
    (lambda m: edit_config(m, lambda d: d.update(vocab_size=d["vocab_size"] + 5)),
     ["model.safetensors: the weights do not fit", "config.json", "tok_embed.weight"]),
    (lambda m: edit_config(m, lambda d: d.pop("d_model")),
     ["the weights do not fit", "config.json has no 'd_model' (its default 768 was used)"]),
], ids=["not-utf8", "a-list", "n_heads-string", "unknown-activation", "vocab-size-edited", "d_model-removed"])
def test_damaged_language_model_directory(run_dir, tmp_path, capsys, damage, needles):
    model = copy_of(run_dir, tmp_path)
    damage(model)
    code, _, err = run_cli(capsys, "generate", "--model", model, "--prompt", "a")
    assert_one_line_error(code, err, str(model), *needles)


def test_finetuning_a_model_of_another_family_names_what_it_takes(tmp_path, capsys):
    model = tmp_path / "translation"
    torch.manual_seed(0)
    net = create_model("transformer-micro", src_vocab_size=20, tgt_vocab_size=20)
    checkpoint.save_model(model, net, net.config.to_dict(), None)
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\na\t1\nb\t0\n")
    code, _, err = run_cli(capsys, "finetune", "--model", model, "--train", data, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "model_type 'transformer' cannot be fine-tuned", "BERT-family", "GPT")


def test_a_file_given_as_the_model(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("a cat\n")
    for command in (["score", "--model", text, "--input", text], ["generate", "--model", text, "--prompt", "a"]):
        code, _, err = run_cli(capsys, *command)
        assert_one_line_error(code, err, "text.txt: is a file, not a model directory")


@pytest.mark.parametrize("damage, needles", [
    (lambda d: d["tformer_run"]["data"].update(max_tokens="lots"), ["config.json: tformer_run: data.max_tokens",
                                                                     "'lots'"]),
    (lambda d: d.update(tformer_run=[]), ["config.json: tformer_run"]),
], ids=["run-option-string", "run-options-a-list"])
def test_damaged_run_options(run_dir, tmp_path, capsys, damage, needles):
    """The run options saved in config.json are read by --resume (and evaluate/predict), which name the file;
    generation does not need them."""
    model = copy_of(run_dir, tmp_path)
    edit_config(model, damage)
    before = contents(model)
    code, _, err = run_cli(capsys, "train", "--out", model, "--resume", "--max-steps", "3")
    assert_one_line_error(code, err, str(model), *needles)
    assert contents(model) == before
    assert run_cli(capsys, "generate", "--model", model, "--prompt", "a", "--max-new-tokens", "2")[0] == 0


@pytest.mark.parametrize("preset, command", [
    ("gpt-micro", ["score", "--prompt", "a", "--choice", "b", "--choice", "c"]),
    ("transformer-micro", ["translate", "--input", "-"]),
    ("bert-micro", ["embed", "--sentence", "a"]),
])
def test_weights_that_no_longer_fit_their_config(tmp_path, capsys, preset, command):
    model = create_model(preset)
    checkpoint.save_model(tmp_path / "m", model, model.config.to_dict())
    edit_config(tmp_path / "m", lambda d: d.update(d_model=64))
    code, _, err = run_cli(capsys, command[0], "--model", tmp_path / "m", *command[1:])
    assert_one_line_error(code, err, f"{tmp_path / 'm' / 'model.safetensors'}: the weights do not fit "
                                     f"{tmp_path / 'm' / 'config.json'} (first: ", ", 32), the config makes (")


def test_gpt2_folder_with_a_value_of_the_wrong_type(run_dir, tmp_path, capsys):
    from tformer.interop.gpt2 import save_gpt2
    from tformer.tasks.language_modeling import load_lm

    save_gpt2(load_lm(run_dir)[0], tmp_path / "hf")
    edit_config(tmp_path / "hf", lambda d: d.update(n_embd="x"))
    code, _, err = run_cli(capsys, "generate", "--model", tmp_path / "hf", "--prompt", "a")
    assert_one_line_error(code, err, str(tmp_path / "hf" / "config.json"), "n_embd", "integer", "'x'")


def _classifier(folder: Path, gpt: bool = False) -> Path:
    """A fine-tuned directory (random weights, no tokenizer: loading stops before it)."""
    if gpt:
        model = GPTForClassification(GPTConfig(vocab_size=20, d_model=16, n_heads=2, n_layers=1, max_len=16), 2)
    else:
        model = EncoderForTask(BertConfig(vocab_size=20, d_model=16, n_heads=2, n_layers=1, d_ff=16, max_len=16),
                               HeadConfig("classification", ["neg", "pos"]))
    checkpoint.save_model(folder, model, model.to_dict())
    return folder


@pytest.mark.parametrize("gpt", [False, True], ids=["encoder", "gpt"])
@pytest.mark.parametrize("damage, needles", [
    (lambda d: d["head"].update(labels=["a", "b", "c"]), ["model.safetensors", "do not fit", "config.json", "head."]),
    (lambda d: d.pop("head"), ["config.json", "no 'head'", "labels"]),
    (lambda d: d.update(head=["neg", "pos"]), ["config.json: head", "JSON object", "a list"]),
    (lambda d: d["head"].update(task="bogus"), ["config.json: head.task", "'bogus'", "'classification'", "'qa'"]),
    (lambda d: d["head"].update(labels="neg,pos"), ["config.json: head.labels", "list of strings"]),
    (lambda d: d["head"].update(labels=["neg"]), ["config.json", "at least 2 labels"]),
], ids=["three-labels", "no-head", "head-a-list", "bogus-task", "labels-a-string", "one-label"])
def test_damaged_fine_tuned_directory(tmp_path, capsys, gpt, damage, needles):
    model = _classifier(tmp_path / "clf", gpt)
    edit_config(model, damage)
    (tmp_path / "in.tsv").write_text("sentence\na\n")
    code, _, err = run_cli(capsys, "predict", "--model", model, "--input", tmp_path / "in.tsv")
    assert_one_line_error(code, err, str(model), *needles)


def test_damaged_network_options_of_a_fine_tuned_directory(tmp_path, capsys):
    model = _classifier(tmp_path / "clf")
    edit_config(model, lambda d: d["encoder"].update(n_layers=None))
    (tmp_path / "in.tsv").write_text("sentence\na\n")
    code, _, err = run_cli(capsys, "predict", "--model", model, "--input", tmp_path / "in.tsv")
    assert_one_line_error(code, err, f"{model / 'config.json'}: encoder.n_layers", "integer", "None")


def test_fine_tuning_on_from_a_directory_without_its_head(tmp_path, capsys):
    model = _classifier(tmp_path / "clf")
    edit_config(model, lambda d: d.pop("head"))
    (tmp_path / "train.tsv").write_text("sentence\tlabel\na\tneg\nb\tpos\n")
    code, _, err = run_cli(capsys, "finetune", "--model", model, "--train", tmp_path / "train.tsv",
                           "--out", tmp_path / "out")
    assert_one_line_error(code, err, str(model / "config.json"), "no 'head'")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage, file, needles", [
    (lambda m: (m / "trainer_state.json").write_text("{not json"), "trainer_state.json", ["invalid JSON"]),
    (lambda m: (m / "trainer_state.json").write_bytes(b"\xff\xfe"), "trainer_state.json", ["UTF-8"]),
    (lambda m: (m / "trainer_state.json").write_text("[1, 2]"), "trainer_state.json", ["JSON object", "trainer"]),
    (lambda m: (m / "trainer_state.json").write_text('{"trainer": {"step": "x"}}'), "trainer_state.json",
     ["trainer.step", "integer", "'x'"]),
    (lambda m: (m / "optimizer.pt").write_bytes((m / "optimizer.pt").read_bytes()[:300]), "optimizer.pt",
     ["cannot read the optimizer state"]),
    (lambda m: (m / "optimizer.pt").unlink(), "optimizer.pt", ["missing"]),
    (lambda m: torch.save({"optimizer": {}, "rng": {}}, m / "optimizer.pt"), "optimizer.pt", ["does not fit"]),
    (lambda m: torch.save([1, 2], m / "optimizer.pt"), "optimizer.pt", ["not a tformer optimizer state"]),
], ids=["state-not-json", "state-not-utf8", "state-a-list", "step-a-string", "optimizer-truncated",
        "optimizer-missing", "optimizer-empty", "optimizer-a-list"])
def test_resuming_a_damaged_run_changes_nothing(run_dir, tmp_path, capsys, damage, file, needles):
    model = copy_of(run_dir, tmp_path)
    damage(model)
    before = contents(model)
    code, _, err = run_cli(capsys, "train", "--out", model, "--resume", "--max-steps", "4")
    assert_one_line_error(code, err, str(model / file), *needles)
    assert contents(model) == before


def test_saving_from_python_keeps_what_else_the_folder_holds(tmp_path):
    """save_model, save_gpt2 and save_hf_encoder replace the model's files and keep everything else: a folder
    given by mistake loses nothing (the command line refuses such a folder before it gets here)."""
    from tformer.interop.bert import save_hf_encoder
    from tformer.interop.gpt2 import save_gpt2

    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("code\n")
    (project / "notes.txt").write_text("mine\n")
    gpt = create_model("gpt-micro")
    checkpoint.save_model(project, gpt, gpt.config.to_dict())
    save_gpt2(gpt, project)
    save_hf_encoder(create_model("bert-micro"), project)
    assert (project / "src" / "main.py").read_text() == "code\n"
    assert (project / "notes.txt").read_text() == "mine\n"
    assert json.loads((project / "config.json").read_text())["model_type"] == "bert"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]  # no copy left beside it
