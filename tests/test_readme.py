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
