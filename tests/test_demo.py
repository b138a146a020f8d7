"""The demo end to end: a short run in the default suite, the full one (>= 95% exact match) marked slow."""

from __future__ import annotations

import pytest

from tformer.demo import is_demo_model, run_demo


def test_short_demo_writes_model_and_heatmaps(tmp_path):
    result = run_demo(tmp_path, steps=20, n_train=400, n_test=20, quiet=True)
    assert result.steps == 20
    assert (result.model_dir / "model.safetensors").is_file()
    assert result.heatmap.is_file() and result.heatmap.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "attention-all-heads.png").is_file()
    assert 0.0 <= result.exact_match <= 1.0 and len(result.examples) == 20
    assert is_demo_model(result.model_dir)  # what lets `tformer demo --out` run again over its own folder


@pytest.mark.slow
def test_full_demo_reaches_95_percent_exact_match(tmp_path):
    result = run_demo(tmp_path, quiet=True)
    assert result.exact_match >= 0.95, result.exact_match
