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
import sys
import tempfile
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tformer.errors import TformerError
from tformer.models.validation import describe_type, value_fits

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"  # transformers' reading of tokenizer.json (written by interop exports)
TARGET_TOKENIZER = "tokenizer.target.json"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
# A folder of the run that every new checkpoint of the directory takes over from the one it replaces: the
# weights of earlier checkpoints kept for averaging them (tformer.training.averaging).
AVERAGING = "averaging"
# What a save writes, and so replaces: a file of these that the new copy lacks (a trainer state saved by an
# earlier run) goes with the old copy. Everything else in the directory (the averaging snapshots, a user's
# notes or pictures) is carried over into each new copy, never deleted.
MODEL_FILES = frozenset({CONFIG, WEIGHTS, TOKENIZER, TOKENIZER_CONFIG, TARGET_TOKENIZER, TRAINER_STATE,
                         OPTIMIZER})


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

    save_dir moves the old copy to .NAME.old just before the new one takes its place, and what it carries over
    (the averaging snapshots, files that are not the model's) into the new copy before that. A process killed in
    between leaves no NAME: the old copy is whole, so it returns, and what was carried over goes back into it.
    Safe to call from several processes at once (every rank of a resumed run): each step is one rename, and a
    rename another process already made is skipped."""
    path = Path(path)
    restored = False
    if not path.exists() and _aside(path).is_dir():
        try:
            os.replace(_aside(path), path)
            restored = True
        except FileNotFoundError:  # another process put it back first
            pass
    if path.is_dir():
        for tmp in _temporary_copies(path):
            _carry_over(tmp, path)
    return restored


def _carry_over(source: Path, target: Path) -> list[str]:
    """Move the entries of `source` that a save does not write (see MODEL_FILES) into `target`, where it lacks
    them; the names moved."""
    moved = []
    for entry in list(source.iterdir()) if source.is_dir() else []:
        if entry.name in MODEL_FILES or (target / entry.name).exists() or (target / entry.name).is_symlink():
            continue
        try:
            os.replace(entry, target / entry.name)
            moved.append(entry.name)
        except FileNotFoundError:  # another process moved it first
            pass
    return moved


def _as_umask_allows(folder: Path) -> None:
    """The permissions a plain mkdir and open would have given: mkdtemp makes the folder private (0700), and
    safetensors writes its file so (0600), which would hide a saved model from the user's group."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~umask)


def save_dir(path: str | Path, write: Callable[[Path], None]) -> None:
    """Run write(tmp_dir) and put tmp_dir at `path` atomically enough: the old copy survives until the new is whole.
    What `path` holds besides the model's files (MODEL_FILES) is kept: it moves into the new copy."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TformerError(f"{path}: cannot make its folder ({exc.strerror or exc})") from None
    restore_interrupted_save(path)  # else the old copy a killed save left aside would be deleted below
    for stale in _temporary_copies(path):  # what killed saves wrote, never swapped in
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), dir=path.parent))
    except OSError as exc:
        raise TformerError(f"{path}: cannot save ({exc.strerror or exc}); nothing was written") from None
    old = _aside(path)
    try:
        write(tmp)
        _as_umask_allows(tmp)
        for f in tmp.iterdir():  # flush file contents before the rename makes them visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _carry_over(path, tmp)  # renames: the averaging snapshots and the user's files are not copied
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        # The old copy goes back to its place if the failed swap left it aside, and what was carried over back
        # into it.
        try:
            restore_interrupted_save(path)
        except OSError:
            pass  # it stays at .NAME.old, where the next save or resume looks
        _carry_over(tmp, path if path.is_dir() else old)
        shutil.rmtree(tmp, ignore_errors=True)
        reason = _storage_problem(path, sys.exc_info()[1])
        if reason is not None:
            kept = "the previous copy is kept" if path.is_dir() or old.is_dir() else "nothing was saved"
            raise TformerError(f"{path}: cannot save ({reason}); {kept}") from None
        raise


def check_writable(path: str | Path) -> None:
    """Before a run: that a model directory can be saved at `path` (its nearest existing folder takes a new
    folder), so that a read-only or forbidden place is said before the training, not after it."""
    path = Path(path).absolute()
    place = next(p for p in path.parents if p.is_dir())  # where the new copy is written (or its folders made)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tformer-write-test-", dir=place))
    except OSError as exc:
        raise TformerError(f"{path}: cannot save there ({exc.strerror or exc} in {place})") from None


LOW_SPACE = 64 * 2**20  # bytes free under which a failed write is taken for a full disk


def _storage_problem(path: Path, exc: BaseException | None) -> str | None:
    """What kept a save from being written, in words, when the cause is the storage (a full disk, a read-only
    or forbidden folder); None for anything else (a bug keeps its traceback)."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if isinstance(exc, (OSError, RuntimeError)) and free is not None and free < LOW_SPACE:
        return f"the disk is full: {free / 2**20:.0f} MB free in {path.parent}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return None


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
    """config.json of the model directory `path`, checked to be a JSON object."""
    path = Path(path)
    if not path.is_dir():
        if _aside(path).is_dir():
            raise TformerError(f"{path}: model directory not found (a save stopped midway left the previous copy at "
                               f"{_aside(path)}; resuming the run or the next save puts it back)")
        if path.exists():
            raise TformerError(f"{path}: is a file, not a model directory (config.json, model.safetensors, ...)")
        raise TformerError(f"{path}: model directory not found")
    cfg = path / CONFIG
    if not cfg.is_file():
        raise TformerError(f"{path}: not a model directory (no {CONFIG})")
    data = read_json(cfg)
    if not isinstance(data, dict):
        raise TformerError(f"{cfg}: expected a JSON object of model options, got {_kind(data)}")
    return data


def read_json(file: Path) -> Any:
    """The JSON in `file`; what is not JSON (or not UTF-8) is a TformerError naming it."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TformerError(f"{file}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise TformerError(f"{file}: not valid UTF-8 (damaged, or not a JSON file)") from None
    except OSError as exc:
        raise TformerError(f"{file}: cannot read ({exc.strerror or exc})") from None


def _kind(value: Any) -> str:
    """How an error names a JSON value of the wrong kind."""
    kinds = {dict: "a JSON object", list: "a list", str: "a string", bool: "true or false", type(None): "null"}
    return kinds.get(type(value), "a number")


def saved_section(data: dict, key: str, file: Path, holds: str) -> dict:
    """data[key], the JSON object of `file` that holds `holds` (said when it is missing)."""
    value = data.get(key)
    if value is None:
        raise TformerError(f"{file}: no {key!r} (the {holds}) in it")
    if not isinstance(value, dict):
        raise TformerError(f"{file}: {key}: expected a JSON object (the {holds}), got {_kind(value)}")
    return value


def from_saved(cls: type, values: dict, source: str, section: str = "", keys: dict[str, str] | None = None) -> Any:
    """cls (a dataclass: a model config, the trainer state) from the fields of `values` that it has, each checked
    against its field's type first: a hand-edited file fails here, naming the key and the value, and not later
    in the model's code.

    source: what an error names first (the file); section: the keys' prefix there ("head." for values under
    "head"); keys: the name the file gives a field, where it differs from the field's."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    given = {k: v for k, v in values.items() if k in names}
    for key, value in given.items():
        if not value_fits(value, hints[key]):
            raise TformerError(f"{source}: {section}{(keys or {}).get(key, key)}: expected {describe_type(hints[key])}, "
                               f"got {value!r}")
    try:
        return cls(**given)
    except (TypeError, ValueError) as exc:  # the dataclass's own checks (d_model divisible by n_heads, ...)
        raise TformerError(f"{source}: {section.rstrip('.') + ': ' if section else ''}{exc}") from None


def load_weights(path: str | Path, model: nn.Module, strict: bool = True) -> None:
    """Load model.safetensors into `model`, built from config.json; tied weights stored once are restored
    through the tie."""
    weights = Path(path) / WEIGHTS
    if not weights.is_file():
        raise TformerError(f"{path}: no {WEIGHTS}")
    load_state(model, read_weights(weights), weights, strict, Path(path) / CONFIG)


def read_weights(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except Exception as exc:
        raise TformerError(f"{file}: cannot read weights ({str(exc).splitlines()[0]})") from None


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path, strict: bool = True,
               config: Path | None = None) -> None:
    """Load a saved state dict (tied tensors stored once) into `model`; `source` names it in errors, and
    `config` the file the model was built from (a hand-edited size no longer fits the weights)."""
    current = model.state_dict()
    fits = f"the weights do not fit {config or 'the model'}"
    for name, tensor in current.items():  # in the model's order: the embeddings, where a vocabulary shows, first
        if name in state and state[name].shape != tensor.shape:
            raise TformerError(f"{source}: {fits} (first: {name} is {tuple(state[name].shape)}, the "
                               f"{'config' if config else 'model'} makes {tuple(tensor.shape)})"
                               f"{_defaults_used(config, model)}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Keys dropped by unique_state_dict are aliases of a saved tensor and are filled through the tie.
    saved = {current[k].data_ptr() for k in state if k in current}
    missing = [k for k in missing if current[k].data_ptr() not in saved]
    if strict and (missing or unexpected):
        raise TformerError(f"{source}: {fits} (missing {missing[:3]}, unexpected {unexpected[:3]})")


def _defaults_used(config: Path | None, model: nn.Module) -> str:
    """"; config.json has no 'd_model' (its default 768 was used)": a hand-edited file that lost a size key
    shows as weights that do not fit, and this says why."""
    options = getattr(model, "config", None)
    if config is None or not is_dataclass(options) or not config.is_file():
        return ""
    try:
        saved = read_config(config.parent)
    except TformerError:
        return ""
    absent = [f"{f.name!r} (its default {getattr(options, f.name)!r} was used)" for f in fields(options)
              if f.name not in saved and f.init]
    return f"; {config.name} has no {', '.join(absent)}" if absent else ""


def load_trainer_state(path: str | Path) -> tuple[dict, dict]:
    """(trainer_state.json contents, optimizer.pt contents) of a saved run, each checked to hold what a resumed
    run reads from it (the "trainer" object; "optimizer" and "rng"): a damaged file is a TformerError naming it."""
    path = Path(path)
    meta = read_json(path / TRAINER_STATE)
    if not isinstance(meta, dict) or not isinstance(meta.get("trainer"), dict):
        raise TformerError(f"{path / TRAINER_STATE}: expected a JSON object with the trainer's state (\"trainer\")")
    file = path / OPTIMIZER
    if not file.is_file():
        raise TformerError(f"{file}: missing (the optimizer state a resumed run goes on from)")
    try:
        opt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, or not a torch file: torch's first sentence says which
        reason = str(exc).splitlines()[0].split(". ")[0]
        raise TformerError(f"{file}: cannot read the optimizer state ({reason})") from None
    if not isinstance(opt, dict) or not isinstance(opt.get("optimizer"), dict) or "rng" not in opt:
        raise TformerError(f"{file}: not a tformer optimizer state (expected \"optimizer\" and \"rng\")")
    return meta, opt
