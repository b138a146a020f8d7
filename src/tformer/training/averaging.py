"""Checkpoint averaging: the final model is the mean of the weights at the last N checkpoints.

Vaswani et al. (2017, section 6.1) report their base models as the mean of five checkpoints taken ten
minutes apart at the end of training, not the last one: late in training the weights wander around a
minimum with the noise of each batch, and their mean tends to sit closer to it.

Each checkpoint's weights are also written to <out>/averaging/step-<step>.safetensors (atomically; only the
last N are kept), and so are the last weights before they are averaged: a run that is resumed, after a crash
or to train longer, goes on from the weights it had and averages the same ones as a run never stopped.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from tformer.errors import TformerError
from tformer.training import checkpoint

SNAPSHOT_DIR = checkpoint.AVERAGING  # inside the model directory; each new checkpoint takes it over
_NAME = re.compile(r"step-(\d+)\.safetensors")


def _file_name(step: int) -> str:
    return f"step-{step:08d}.safetensors"


class CheckpointAverager:
    """Keeps the weights of the last `count` checkpoints of a run on disk and averages them at the end."""

    def __init__(self, out_dir: str | Path, count: int):
        if count < 2:
            raise ValueError(f"averaging needs at least 2 checkpoints, not {count}")
        self.folder = Path(out_dir) / SNAPSHOT_DIR
        self.count = count

    @staticmethod
    def discard(out_dir: str | Path) -> None:
        """Removes the snapshots of an earlier run in out_dir (a new run, not resumed, starts there)."""
        shutil.rmtree(Path(out_dir) / SNAPSHOT_DIR, ignore_errors=True)

    @staticmethod
    def restore_last(out_dir: str | Path, model: nn.Module, step: int) -> None:
        """Loads the weights a finished run had at its last `step`, saved before they were averaged."""
        file = Path(out_dir) / SNAPSHOT_DIR / _file_name(step)
        if not file.is_file():
            raise TformerError(f"{out_dir}: holds an average of checkpoints, and {file} with the weights to go on "
                               f"from is missing")
        with torch.no_grad():
            checkpoint.load_state(model, checkpoint.read_weights(file), file)

    def snapshots(self) -> list[tuple[int, Path]]:
        """(step, file) of the kept snapshots, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), f) for f in self.folder.iterdir() if (m := _NAME.fullmatch(f.name))]
        return sorted(found)

    def continue_from(self, step: int, save_every: int) -> None:
        """Before a run goes on from `step`: drops the snapshots from beyond it (an earlier checkpoint is
        resumed; the run will write its own), and the one at `step` itself unless `step` is one of the run's
        checkpoints (a multiple of save_every), as the weights at the end of a shorter run are; and what a run
        killed while writing a snapshot left half-written."""
        for s, f in self.snapshots():
            if s > step or (s == step and step % save_every):
                f.unlink()
        for f in self.folder.glob(".step-*.tmp") if self.folder.is_dir() else []:
            f.unlink(missing_ok=True)

    def snapshot(self, model: nn.Module, step: int) -> None:
        """Writes the model's weights at `step` and drops all but the last `count` snapshots. A write that fails
        (a full disk) leaves nothing of itself behind: the half-written file goes, and the folder if it made it."""
        made = not self.folder.is_dir()
        final = self.folder / _file_name(step)
        tmp = final.with_name(f".{final.name}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            checkpoint.write_weights(model, tmp)
            with open(tmp, "rb") as fh:  # on disk before the rename makes it visible
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException as exc:  # Ctrl-C included: the run stops, its folder as it was
            tmp.unlink(missing_ok=True)
            if made:
                with contextlib.suppress(OSError):
                    self.folder.rmdir()  # only when empty
            reason = checkpoint._storage_problem(self.folder, exc)
            if reason is None:
                raise
            raise TformerError(f"{final}: cannot save the weights kept for checkpoint averaging ({reason}); the "
                               f"last checkpoint in {self.folder.parent} is kept") from None
        for _, f in self.snapshots()[:-self.count]:
            f.unlink()

    def average_into(self, model: nn.Module) -> list[int]:
        """Loads the mean of the kept snapshots into `model`; returns their steps. Integer tensors (counters,
        position ids) are taken from the newest snapshot."""
        kept = self.snapshots()
        if not kept:
            return []
        total: dict[str, torch.Tensor] = {}
        for _, f in kept:
            for name, tensor in checkpoint.read_weights(f).items():
                if not tensor.is_floating_point():
                    total[name] = tensor
                elif name in total:
                    total[name] += tensor.double()
                else:
                    total[name] = tensor.double()
        dtypes = {name: t.dtype for name, t in model.state_dict().items()}
        mean = {name: t.div(len(kept)).to(dtypes.get(name, torch.float32)) if t.is_floating_point() else t
                for name, t in total.items()}
        with torch.no_grad():
            checkpoint.load_state(model, mean, self.folder)
        return [s for s, _ in kept]
