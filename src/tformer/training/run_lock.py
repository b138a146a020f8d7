"""One run at a time in a model directory: an advisory lock held by the process that writes the checkpoints.

Two runs saving to the same --out would replace each other's checkpoints, and the second would delete the first's
averaging snapshots: the second is refused at once. The lock is fcntl.flock on LOCK_FILE inside the directory, held
for the run's life. The kernel lets go of it when the process ends, however it ends, so a killed run never leaves
its folder locked; a lock file left behind (by a run killed before it could remove it) means nothing and is reused.

Saves swap the directory (checkpoint.save_dir) and move the lock file into each new copy by a rename, which keeps
the file, and so its lock, the same. Under DDP only rank 0 writes, so only rank 0 locks. Where fcntl does not
exist (Windows) there is no lock.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import warnings
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from tformer.errors import TformerError

LOCK_FILE = ".tformer.lock"

# The directories this process holds (their real paths): the command line locks --out before its first look at
# the saved run, and train() locks it again, which must not refuse its own process.
_held: set[str] = set()


@contextlib.contextmanager
def hold(out_dir: str | Path) -> Iterator[None]:
    """Lock the model directory `out_dir` for the block, making the directory if it is not there (and removing it,
    and the folders made for it, if still empty at the end: a run that saved nothing leaves nothing). A directory
    another run holds is a TformerError naming it."""
    key = os.path.realpath(out_dir)
    if fcntl is None or key in _held:
        yield
        return
    out = Path(out_dir)
    if not out.exists():
        # A save killed between its renames left the model aside (.NAME.old): a new empty folder here would keep
        # it from being put back.
        from tformer.training.checkpoint import restore_interrupted_save

        restore_interrupted_save(out)
    made = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TformerError(f"{out}: cannot make the folder ({exc.strerror or exc})") from None
    try:
        fd = _acquire(out)
    except BaseException:
        _remove_empty(made)
        raise
    _held.add(key)
    try:
        yield
    finally:
        _held.discard(key)
        if fd is not None:
            _release(fd, out / LOCK_FILE)
        _remove_empty(made)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders made for a run (deepest first) that are still empty."""
    for folder in folders:
        try:
            folder.rmdir()  # only an empty one
        except OSError:
            return


def _acquire(out: Path) -> int | None:
    """The open, locked lock file of `out`; None where the file system takes no locks (said in a warning)."""
    file = out / LOCK_FILE
    for _ in range(100):
        try:
            fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise TformerError(f"{out}: cannot lock the folder for this run ({exc.strerror or exc} on {file})") \
                from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise TformerError(f"{out}: another training run{holder} is writing to this folder; wait for it "
                                   f"to end, or choose another folder") from None
            warnings.warn(f"{out}: cannot lock the folder ({exc.strerror or exc}); a second run started on it "
                          "would not be stopped", stacklevel=3)
            return None
        # A run ending removes its lock file: if it did so between our open and our lock, the file we locked is
        # no longer the one at that name, and a third run would lock a new one beside us. Lock the one there now.
        try:
            here = os.stat(file)
        except FileNotFoundError:
            here = None
        mine = os.fstat(fd)
        if here is not None and (here.st_ino, here.st_dev) == (mine.st_ino, mine.st_dev):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            return fd
        os.close(fd)
    raise TformerError(f"{out}: cannot lock the folder for this run ({file} keeps being replaced)")


def _read_holder(fd: int) -> str:
    """' (process PID on HOST)', as the holder wrote it in the lock file; '' when it cannot be read."""
    try:
        pid, host = os.pread(fd, 200, 0).decode().split()
    except (OSError, UnicodeDecodeError, ValueError):
        return ""
    return f" (process {pid} on {host})"


def _release(fd: int, file: Path) -> None:
    """Remove the lock file, if it is still ours, then let go of the lock: removed first, no run can lock the file
    after we let go of it while a newer one takes its name."""
    try:
        here = os.stat(file)
        mine = os.fstat(fd)
        if (here.st_ino, here.st_dev) == (mine.st_ino, mine.st_dev):
            os.unlink(file)
    except OSError:
        pass  # moved aside with the directory by a save that failed midway: the next run reuses it
    os.close(fd)  # closing the file lets go of the lock
