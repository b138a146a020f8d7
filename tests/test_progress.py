"""Training progress: a bar with loss, learning rate and tokens/s on a terminal, plain lines in logs."""

from __future__ import annotations

import io
import sys

from tformer.training.loop import ProgressLog


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(monkeypatch, stream) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    log = ProgressLog(total=10, enabled=True)
    for step in range(1, 11):
        log.update(step, {"loss": "2.500", "lr": "1.00e-03", "tok/s": "2,000"}, line=step % 5 == 0)
    log.close()
    return stream.getvalue()


def test_bar_on_a_terminal(monkeypatch):
    out = _run(monkeypatch, _Terminal())
    assert "10/10" in out and "loss=2.500" in out and "lr=1.00e-03" in out and "tok/s=2,000" in out


def test_plain_lines_when_not_a_terminal(monkeypatch):
    out = _run(monkeypatch, io.StringIO())
    assert out.splitlines() == ["step 5 loss 2.500 lr 1.00e-03 tok/s 2,000", "step 10 loss 2.500 lr 1.00e-03 tok/s 2,000"]


def test_silent_when_disabled(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    log = ProgressLog(total=3, enabled=False)
    log.update(1, {"loss": "1"}, line=True)
    log.write("hello")
    assert stream.getvalue() == ""
