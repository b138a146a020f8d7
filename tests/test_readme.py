"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["scores"].tolist() == [15.0, 60.0, 15.0, 35.0]
    assert [round(v) for v in namespace["context"].tolist()] == [5, 0, 1]
    assert (tmp_path / "runs" / "dates" / "model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert printed.startswith("[") and len(eval(printed)) == 1  # one translation, whatever its quality


def test_readme_prompting_example_runs(tmp_path, monkeypatch, capsys):
    """The GPT prompting snippet, with a tiny freshly trained model standing in for runs/gpt2."""
    from tformer.tasks.language_modeling import LanguageModelingTask, lm_run_defaults
    from tformer.training.loop import train

    block = re.search(r"```\n(from tformer.generation.prompts.*?)```", README.read_text(), flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    text = "Translate English to French.\n\nInput: cat\nOutput: chat\n\nthe story ends.\nTL;DR: it ends.\n" * 30
    run = lm_run_defaults()
    run.model = {"preset": "gpt-micro"}
    run.data.tokenizer, run.data.vocab_size, run.data.block_size = "byte_bpe", 300, 32
    run.train.max_steps, run.train.eval_every = 30, 0
    task = LanguageModelingTask(run, [text])
    train(task, run.train, tmp_path / "runs" / "gpt2", quiet=True)
    (tmp_path / "article.txt").write_text("the story ends.")
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and printed[0].startswith("[") and printed[1] in (" chat", " chien")
