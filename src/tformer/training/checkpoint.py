"""Model directories: config.json + model.safetensors + tokenizer.json (+ trainer state).

A directory is written next to its destination under a temporary name and then swapped in by renames, so a
crash mid-write never leaves a half-written checkpoint where a good one was. A crash between the two renames
leaves the previous copy aside, at .NAME.old; the next save or resume puts it back (restore_interrupted_save).
Weights load with safetensors, trainer state with torch.load(weights_only=True): nothing executes code from a
file.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tformer.errors import TformerError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
TARGET_TOKENIZER = "tokenizer.target.json"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
# A folder of the run that every new checkpoint of the directory takes over from the one it replaces: the
# weights of earlier checkpoints kept for averaging them (tformer.training.averaging).
AVERAGING = "averaging"


def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict on the CPU with tied weights stored once (safetensors refuses shared storage)."""
    seen: dict[int, str] = {}
    out = {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr()
        if key in seen and tensor.numel() > 0:
            continue
        seen[key] = name
        out[name] = tensor.detach().contiguous().cpu()
    return out


def _aside(path: Path) -> Path:
    """Where save_dir keeps the previous copy while the new one moves in."""
    return path.with_name(f".{path.name}.old")


def _temporary_prefix(path: Path) -> str:
    """The name save_dir writes a new copy under, beside `path`, until it is swapped in."""
    return f".{path.name}.tmp-"


def _temporary_copies(path: Path) -> list[Path]:
    """New copies of `path` that saves began and never swapped in."""
    return list(path.parent.glob(glob.escape(_temporary_prefix(path)) + "*"))


def restore_interrupted_save(path: str | Path) -> bool:
    """Put back what a save stopped between its renames left aside; True when the previous copy came back.

    save_dir moves the old copy to .NAME.old just before the new one takes its place, and the averaging
    snapshots into the new copy before that. A process killed in between leaves no NAME: the old copy is
    whole, so it returns, and the snapshots with it. Safe to call from several processes at once (every rank of a
    resumed run): each step is one rename, and a rename another process already made is skipped."""
    path = Path(path)
    restored = False
    if not path.exists() and _aside(path).is_dir():
        try:
            os.replace(_aside(path), path)
            restored = True
        except FileNotFoundError:  # another process put it back first
            pass
    if path.is_dir() and not (path / AVERAGING).exists():
        for tmp in _temporary_copies(path):
            if (tmp / AVERAGING).is_dir():
                try:
                    os.replace(tmp / AVERAGING, path / AVERAGING)
                except FileNotFoundError:
                    pass
                break
    return restored


def save_dir(path: str | Path, write: Callable[[Path], None]) -> None:
    """Run write(tmp_dir) and put tmp_dir at `path` atomically enough: the old copy survives until the new is whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    restore_interrupted_save(path)  # else the old copy a killed save left aside would be deleted below
    for stale in _temporary_copies(path):  # what killed saves wrote, never swapped in
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), dir=path.parent))
    old = _aside(path)
    try:
        write(tmp)
        for f in tmp.iterdir():  # flush file contents before the rename makes them visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if (path / AVERAGING).is_dir() and not (tmp / AVERAGING).exists():
            os.replace(path / AVERAGING, tmp / AVERAGING)  # a rename: the snapshots are not copied
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        # The old copy goes back to its place if the failed swap left it aside, and the snapshots back into it.
        try:
            restore_interrupted_save(path)
        except OSError:
            pass  # it stays at .NAME.old, where the next save or resume looks
        home = path if path.is_dir() else old
        if (tmp / AVERAGING).is_dir() and home.is_dir() and not (home / AVERAGING).exists():
            os.replace(tmp / AVERAGING, home / AVERAGING)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_weights(model: nn.Module, file: Path) -> None:
    """The model's weights as safetensors (tied tensors once), as transformers' loaders expect them."""
    save_file(unique_state_dict(model), str(file), metadata={"format": "pt"})


def write_model_files(directory: Path, model: nn.Module, config: dict, tokenizer=None, target_tokenizer=None) -> None:
    (directory / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    write_weights(model, directory / WEIGHTS)
    if tokenizer is not None:
        tokenizer.save(directory / TOKENIZER)
    if target_tokenizer is not None:
        target_tokenizer.save(directory / TARGET_TOKENIZER)


def save_model(path: str | Path, model: nn.Module, config: dict, tokenizer=None, target_tokenizer=None,
               trainer_state: dict[str, Any] | None = None, optimizer_state: dict[str, Any] | None = None) -> None:
    """Write a complete model directory at `path` (replacing any earlier one only once the new one is whole)."""

    def write(tmp: Path) -> None:
        write_model_files(tmp, model, config, tokenizer, target_tokenizer)
        if trainer_state is not None:
            (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n")
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / OPTIMIZER)

    save_dir(path, write)


def read_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_dir():
        if _aside(path).is_dir():
            raise TformerError(f"{path}: model directory not found (a save stopped midway left the previous copy at "
                               f"{_aside(path)}; resuming the run or the next save puts it back)")
        raise TformerError(f"{path}: model directory not found")
    cfg = path / CONFIG
    if not cfg.is_file():
        raise TformerError(f"{path}: not a model directory (no {CONFIG})")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as exc:
        raise TformerError(f"{cfg}:{exc.lineno}: invalid JSON ({exc.msg})") from None


def load_weights(path: str | Path, model: nn.Module, strict: bool = True) -> None:
    """Load model.safetensors into `model`; tied weights stored once are restored through the tie."""
    weights = Path(path) / WEIGHTS
    if not weights.is_file():
        raise TformerError(f"{path}: no {WEIGHTS}")
    load_state(model, read_weights(weights), weights, strict)


def read_weights(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except Exception as exc:
        raise TformerError(f"{file}: cannot read weights ({str(exc).splitlines()[0]})") from None


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path, strict: bool = True) -> None:
    """Load a saved state dict (tied tensors stored once) into `model`; `source` names it in errors."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Keys dropped by unique_state_dict are aliases of a saved tensor and are filled through the tie.
    current = model.state_dict()
    saved = {current[k].data_ptr() for k in state if k in current}
    missing = [k for k in missing if current[k].data_ptr() not in saved]
    if strict and (missing or unexpected):
        raise TformerError(f"{source}: weights do not fit the model (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")


def load_trainer_state(path: str | Path) -> tuple[dict | None, dict | None]:
    """(trainer_state.json contents, optimizer.pt contents) when present."""
    path = Path(path)
    meta = json.loads((path / TRAINER_STATE).read_text()) if (path / TRAINER_STATE).is_file() else None
    opt = torch.load(path / OPTIMIZER, map_location="cpu", weights_only=True) if (path / OPTIMIZER).is_file() else None
    return meta, opt
