"""Reading text and parallel corpora: UTF-8 files, plain or gzip, one sentence per line.

Every problem a user's file can have becomes one TformerError that names the file (and line).
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

from tformer.errors import TformerError

GZIP_MAGIC = b"\x1f\x8b"


def split_lines(text: str) -> list[str]:
    """Lines end at \n, \r\n or \r only: str.splitlines() also breaks at U+2028, U+0085, form feeds and
    other characters that occur inside corpus lines, which would misalign a parallel corpus."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _decode(raw: bytes, name: str) -> str:
    """UTF-8 bytes as text without a byte-order mark; bytes that are not UTF-8 are an error naming the line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise TformerError(f"{name}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x})") from None
    return text[1:] if text.startswith("\ufeff") else text


def read_text(path: str | Path, allow_empty: bool = False) -> str:
    """The whole of a UTF-8 text file, without a byte-order mark; gzip files (.gz, or any name: told by their
    first two bytes, which no UTF-8 text starts with) are decompressed."""
    path = Path(path)
    if not path.exists():
        raise TformerError(f"{path}: file not found")
    if path.is_dir():
        raise TformerError(f"{path}: is a directory, expected a text file")
    try:
        raw = path.read_bytes()
        if path.suffix.lower() == ".gz" or raw[:2] == GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise TformerError(f"{path}: cannot read ({exc})") from None
    text = _decode(raw, str(path))
    if not text and not allow_empty:
        raise TformerError(f"{path}: file is empty")
    return text


def read_lines(path: str | Path, allow_empty: bool = False) -> list[str]:
    """All lines of a UTF-8 text file (.gz read through gzip), without their line endings."""
    lines = split_lines(read_text(path, allow_empty=True))
    if not lines and not allow_empty:
        raise TformerError(f"{path}: file is empty")
    return lines


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> list[tuple[str, str]]:
    """Aligned (source, target) pairs from two files whose line i translate each other."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise TformerError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: a parallel corpus needs aligned files"
        )
    return list(zip(src, tgt))


def read_whole_input(path: str | Path | None, stdin: io.TextIOBase | None = None) -> str:
    """The whole text of a file, or of standard input when path is None or '-': the same characters either way
    (line endings and a final newline kept)."""
    if path is None or str(path) == "-":
        import sys

        stream = stdin or sys.stdin
        if hasattr(stream, "buffer"):
            return _decode(stream.buffer.read(), "<stdin>")
        return stream.read()
    return read_text(path, allow_empty=True)


def read_text_input(path: str | Path | None, stdin: io.TextIOBase | None = None) -> list[str]:
    """Lines from a file, or from standard input when path is None or '-'."""
    if path is None or str(path) == "-":
        import sys

        stream = stdin or sys.stdin
        # The bytes, decoded here: Python's own decoding of stdin may let bad bytes through as lone surrogates.
        if hasattr(stream, "buffer"):
            return split_lines(_decode(stream.buffer.read(), "<stdin>"))
        return split_lines(stream.read())
    return read_lines(path)
