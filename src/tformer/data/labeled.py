"""Labelled text for fine-tuning encoders: sentence (pair) classification and regression, and token tagging.

  read_classification  a TSV, CSV or JSONL file -> one TextExample per row (GLUE-style: text, optional pair, label)
  LabelVocab           string labels <-> ids, in a stable order, saved as a plain list in config.json
  read_conll           a CoNLL column file (token ... tag, blank line between sentences) -> TaggedSentence

Files are UTF-8, plain or gzip (read through tformer.data.parallel.read_text). Every problem with a user's file
is one TformerError naming the file and, where there is one, the line: `dev.tsv:17: ...`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tformer.data.parallel import read_text, split_lines
from tformer.errors import TformerError

FORMATS = ("tsv", "csv", "jsonl")
_EXTENSIONS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}


@dataclass
class TextExample:
    """One row: its text (stripped), the second text of a pair or None, its label (None when unlabelled) and the
    line of the file it starts on (1-based, the header being line 1 of a TSV/CSV file)."""

    text: str
    pair: str | None
    label: str | float | None
    line: int


@dataclass
class TaggedSentence:
    """One sentence of a CoNLL file: its tokens, one tag per token, and the line of its first token."""

    tokens: list[str]
    tags: list[str]
    line: int


# -- classification and regression files --------------------------------------------------------------------


def read_classification(
    path: str | Path,
    text_column: str = "sentence",
    pair_column: str | None = None,
    label_column: str | None = "label",
    fmt: str = "auto",
    label_type: str = "str",
) -> list[TextExample]:
    """The rows of a TSV, CSV or JSONL file, in file order.

    fmt="auto" chooses by extension (.tsv, .csv, .jsonl or .json, each optionally followed by .gz). TSV and CSV
    files start with a header row naming the columns; TSV fields are split at tabs with no quoting (as GLUE's
    files need: their sentences contain unbalanced quotes), CSV fields may be quoted as the csv module reads them.
    A JSONL file holds one JSON object per line, its keys being the column names.

    Text and pair fields are stripped of surrounding white space and must not be empty. label_column=None reads
    unlabelled rows (input for prediction; any label column is ignored). label_type="str" keeps labels as strings
    (JSON integers and booleans become "1", "true"); label_type="float" parses them as finite numbers
    (regression). Blank lines are skipped.
    """
    path = Path(path)
    if fmt == "auto":
        fmt = _format_of(path)
    if fmt not in FORMATS:
        raise TformerError(f"unknown data format {fmt!r} for {path}: expected one of {', '.join(FORMATS)} (or auto)")
    if label_type not in ("str", "float"):
        raise TformerError(f"unknown label type {label_type!r}: expected 'str' (classification) "
                           f"or 'float' (regression)")
    wanted = [c for c in (text_column, pair_column, label_column) if c is not None]
    if len(set(wanted)) < len(wanted):  # a text paired with itself, or a label that is its own text
        raise TformerError(f"{path}: the text, pair and label columns must differ, not {', '.join(map(repr, wanted))}")
    text = read_text(path)
    rows = _json_rows(path, text, wanted) if fmt == "jsonl" else _table_rows(path, text, fmt, wanted)
    examples = []
    for line, fields in rows:
        examples.append(TextExample(
            text=_text_field(fields[text_column], text_column, path, line),
            pair=None if pair_column is None else _text_field(fields[pair_column], pair_column, path, line),
            label=None if label_column is None else _label_field(fields[label_column], label_column, label_type,
                                                                 path, line),
            line=line,
        ))
    if not examples:
        raise TformerError(f"{path}: no rows" + ("" if fmt == "jsonl" else " after the header"))
    return examples


def _format_of(path: Path) -> str:
    if path.is_dir():
        raise TformerError(f"{path}: is a directory, expected a .tsv, .csv or .jsonl file")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    if suffixes and suffixes[-1] in _EXTENSIONS:
        return _EXTENSIONS[suffixes[-1]]
    if str(path) == "-":
        raise TformerError("-: labelled data is read from a file (its name says its format), not from stdin")
    raise TformerError(f"{path}: cannot tell the format from the file name; name it .tsv, .csv or .jsonl "
                       f"(optionally .gz); CoNLL columns and SQuAD JSON are read by tagging and qa models "
                       f"(finetune --task tagging or --task qa)")


def _table_rows(path: Path, text: str, fmt: str, wanted: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, {column: field}) for each data row of a TSV or CSV file with a header row."""
    records = _tsv_records(text) if fmt == "tsv" else _csv_records(path, text)
    header_line, header = next(records, (0, None))
    if header is None:
        raise TformerError(f"{path}: file is empty")
    header = [name.strip() for name in header]
    shown = ", ".join(repr(name) for name in header)
    for name in wanted:
        if name not in header:
            raise TformerError(f"{path}:{header_line}: no column {name!r} in the header (columns: {shown})")
        if header.count(name) > 1:
            raise TformerError(f"{path}:{header_line}: the header names column {name!r} twice (columns: {shown})")
    sep = "tab" if fmt == "tsv" else "comma"
    for line, fields in records:
        if len(fields) != len(header):
            raise TformerError(f"{path}:{line}: {len(fields)} {sep}-separated fields, but the header at line "
                               f"{header_line} has {len(header)} ({shown})")
        yield line, dict(zip(header, fields))


def _tsv_records(text: str) -> Iterator[tuple[int, list[str]]]:
    for number, line in enumerate(split_lines(text), start=1):
        if "\t" in line or line.strip():  # a blank line is skipped; a row of empty fields is not
            yield number, line.split("\t")


def _csv_records(path: Path, text: str) -> Iterator[tuple[int, list[str]]]:
    # newline="" keeps line breaks inside quoted fields; reader.line_num counts physical lines read so far,
    # so a record starts on the line after the previous record ended.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    ended = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise TformerError(f"{path}:{ended + 1}: malformed CSV ({exc})") from None
        start, ended = ended + 1, reader.line_num
        if len(fields) > 1 or (fields and fields[0].strip()):  # a blank line is skipped; ",," is not
            yield start, fields


def _json_rows(path: Path, text: str, wanted: list[str]) -> Iterator[tuple[int, dict]]:
    for number, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TformerError(f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno}); "
                               f"a JSONL file holds one JSON object per line") from None
        if not isinstance(row, dict):
            raise TformerError(f"{path}:{number}: expected a JSON object, found {_json_kind(row)}")
        for name in wanted:
            if name not in row:
                keys = ", ".join(repr(k) for k in row) or "none"
                raise TformerError(f"{path}:{number}: no field {name!r} (fields: {keys})")
        yield number, row


def _json_kind(value) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}[type(value)]


def _text_field(value, column: str, path: Path, line: int) -> str:
    if not isinstance(value, str):
        raise TformerError(f"{path}:{line}: field {column!r} is {_json_kind(value)}, expected a string")
    value = value.strip()
    if not value:
        raise TformerError(f"{path}:{line}: empty text in column {column!r}")
    return value


def _label_field(value, column: str, label_type: str, path: Path, line: int) -> str | float:
    where = f"{path}:{line}"
    if label_type == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and value.strip():
            try:
                number = float(value)
            except ValueError:
                raise TformerError(f"{where}: label {value.strip()!r} in column {column!r} is not a number") from None
        else:
            raise TformerError(f"{where}: label in column {column!r} is {_describe(value)}, expected a number")
        if not math.isfinite(number):
            raise TformerError(f"{where}: label {value!r} in column {column!r} is not a finite number")
        return number
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise TformerError(f"{where}: label in column {column!r} is {_describe(value)}, expected a string or an integer")


def _describe(value) -> str:
    return "empty" if isinstance(value, str) else _json_kind(value)


# -- label vocabulary ---------------------------------------------------------------------------------------------


def _label_order(label: str) -> tuple:
    """Numbers first, in numeric order ("2" before "10"), then the other labels alphabetically."""
    try:
        number = float(label)
    except ValueError:
        return (1, 0.0, label)
    return (0, number, label) if math.isfinite(number) else (1, 0.0, label)


class LabelVocab:
    """The labels of a classification task and their ids: id i is labels[i].

    The order depends only on the set of training labels, never on which appears first, so the same data always
    gives the same ids: numeric-looking labels in numeric order ("0", "1", "2", "10"), then the others sorted.
    """

    def __init__(self, labels: Sequence[str]):
        labels = [str(label) for label in labels]
        if not labels:
            raise TformerError("a classification task needs at least one label")
        if len(set(labels)) != len(labels):
            twice = sorted({label for label in labels if labels.count(label) > 1})
            raise TformerError(f"the label list names {', '.join(map(repr, twice))} more than once")
        self.labels = labels
        self._ids = {label: i for i, label in enumerate(labels)}

    @classmethod
    def from_labels(cls, labels: Iterable[str]) -> LabelVocab:
        return cls(sorted({str(label) for label in labels}, key=_label_order))

    @classmethod
    def from_examples(cls, examples: Iterable[TextExample]) -> LabelVocab:
        labels = set()
        for example in examples:
            if example.label is None:
                raise TformerError(f"line {example.line} has no label; training examples need one")
            labels.add(str(example.label))
        return cls.from_labels(labels)

    @classmethod
    def from_list(cls, labels: Sequence[str]) -> LabelVocab:
        """As saved by to_list(), in that order."""
        return cls(labels)

    def to_list(self) -> list[str]:
        return list(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label) -> bool:
        return str(label) in self._ids

    def __eq__(self, other) -> bool:
        return isinstance(other, LabelVocab) and self.labels == other.labels

    def __repr__(self) -> str:
        return f"LabelVocab({self.labels!r})"

    def encode(self, label: str, where: str | None = None) -> int:
        """The id of a label; `where` (such as "dev.tsv:17") names its place in the error for an unseen label."""
        try:
            return self._ids[str(label)]
        except KeyError:
            at = f" at {where}" if where else ""
            raise TformerError(f"label {str(label)!r}{at} was not in the training labels "
                               f"({', '.join(self.labels)})") from None

    def encode_examples(self, examples: Iterable[TextExample], source: str | Path) -> list[int]:
        """The ids of the examples' labels; an unseen label is an error naming source:line."""
        return [self.encode(e.label, f"{source}:{e.line}") for e in examples]

    def decode(self, index: int) -> str:
        if not 0 <= index < len(self.labels):
            raise IndexError(f"label id {index} is out of range for {len(self.labels)} labels")
        return self.labels[index]


# -- CoNLL column files --------------------------------------------------------------------------------------------


def read_conll(path: str | Path, token_column: int = 0, tag_column: int | None = -1) -> list[TaggedSentence]:
    """The sentences of a CoNLL column file (CoNLL-2003: `token POS chunk NER`), in file order.

    One token per line, columns separated by white space, a blank line between sentences; the token and tag are
    taken from the given columns (negative counts from the end). `-DOCSTART-` lines mark documents and are
    skipped; so is the blank line after them. A last sentence without a blank line after it is kept. Every token
    line must have as many columns as the first, so that a negative tag_column always means the same column.
    tag_column=None reads tokens only (text to tag: one column is enough, a tag column is ignored); the tags are
    then empty strings.
    """
    path = Path(path)
    lines = split_lines(read_text(path))
    sentences: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = columns_seen = first_line = 0

    def close():
        nonlocal tokens, tags
        if tokens:
            sentences.append(TaggedSentence(tokens, tags, start))
            tokens, tags = [], []

    for number, line in enumerate(lines, start=1):
        columns = line.split()
        if not columns:
            close()
            continue
        if columns[0] == "-DOCSTART-":
            close()
            continue
        n = len(columns)
        if tag_column is None:
            if not -n <= token_column < n:
                raise TformerError(f"{path}:{number}: too few columns ({n}) to read the token from column "
                                   f"{token_column}")
        elif not (-n <= token_column < n and -n <= tag_column < n) or token_column % n == tag_column % n:
            raise TformerError(f"{path}:{number}: too few columns ({n}) to read the token from column {token_column} "
                               f"and the tag from column {tag_column}")
        if not columns_seen:
            columns_seen, first_line = n, number
        elif n != columns_seen:
            raise TformerError(f"{path}:{number}: {n} columns, but line {first_line} has {columns_seen}; "
                               f"every token line needs the same columns")
        if not tokens:
            start = number
        tokens.append(columns[token_column])
        tags.append(columns[tag_column] if tag_column is not None else "")
    close()
    if not sentences:
        raise TformerError(f"{path}: no sentences (only blank and -DOCSTART- lines)")
    return sentences
