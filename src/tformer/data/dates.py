"""Synthetic date-normalisation task: human-written dates -> ISO 8601.

Every example is a pair ``(source, target)`` where ``source`` is one calendar
date written in one of several human formats (English, German, French,
Spanish, Italian, Dutch, plus a few numeric layouts) and ``target`` is the same
date as ``YYYY-MM-DD``.  The formats deliberately put day, month and year in
different orders (day-month-year, month-day-year, year-month-day), so a
sequence-to-sequence model has to *reorder* its input, which is exactly what
attention is good at.

Design rules that keep the task well posed:

* Every format is unambiguous on its own: each numeric layout has one field
  order tied to its separator/shape (``3/21/2021`` is always month-first,
  ``21.03.2021`` and ``21-03-2021`` are always day-first, ``2021/03/21`` and
  ``20210321`` are year-first) and years are always written with four digits,
  so the century is never in doubt.
* Weekday prefixes are computed from the date, so they are always correct.
* Sources are at most 40 characters and only use Latin-1 characters.

Only the Python standard library is used.
"""

from __future__ import annotations

import datetime
import random
from typing import Callable, Dict, Iterator, List, Tuple

__all__ = ["FORMATS", "render_date", "make_date_pairs", "make_date_splits"]

Pair = Tuple[str, str]

# --------------------------------------------------------------------------
# Vocabulary. Index 0 of a month list is January; index 0 of a weekday list is
# Monday (matching ``datetime.date.weekday()``).
# --------------------------------------------------------------------------

_EN_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)
_EN_MONTHS_ABBR = (
    "Jan", "Feb", "Mar", "Apr", "May", "Jun",
    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
)
_EN_WEEKDAYS = (
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
)

_DE_MONTHS = (
    "Januar", "Februar", "März", "April", "Mai", "Juni",
    "Juli", "August", "September", "Oktober", "November", "Dezember",
)
_DE_WEEKDAYS = (
    "Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag",
)

_FR_MONTHS = (
    "janvier", "février", "mars", "avril", "mai", "juin",
    "juillet", "août", "septembre", "octobre", "novembre", "décembre",
)
_FR_MONTHS_ABBR = (
    "janv.", "févr.", "mars", "avr.", "mai", "juin",
    "juil.", "août", "sept.", "oct.", "nov.", "déc.",
)
_FR_WEEKDAYS = (
    "lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche",
)

_ES_MONTHS = (
    "enero", "febrero", "marzo", "abril", "mayo", "junio",
    "julio", "agosto", "septiembre", "octubre", "noviembre", "diciembre",
)
_ES_WEEKDAYS = (
    "lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo",
)

_IT_MONTHS = (
    "gennaio", "febbraio", "marzo", "aprile", "maggio", "giugno",
    "luglio", "agosto", "settembre", "ottobre", "novembre", "dicembre",
)

_NL_MONTHS = (
    "januari", "februari", "maart", "april", "mei", "juni",
    "juli", "augustus", "september", "oktober", "november", "december",
)


def _en_ordinal(day: int) -> str:
    """1 -> '1st', 2 -> '2nd', 11 -> '11th', 23 -> '23rd'."""
    if 11 <= day % 100 <= 13:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _fr_day(day: int) -> str:
    """French writes the first of the month as '1er'."""
    return "1er" if day == 1 else str(day)


def _year(d: datetime.date) -> str:
    """Always four digits, so the century is never ambiguous."""
    return f"{d.year:04d}"


# --------------------------------------------------------------------------
# Renderers, one per format name. Field order noted as D/M/Y.
# --------------------------------------------------------------------------

def _en_long(d: datetime.date) -> str:  # D M Y
    return f"{d.day} {_EN_MONTHS[d.month - 1]} {_year(d)}"


def _en_us_long(d: datetime.date) -> str:  # M D Y
    return f"{_EN_MONTHS[d.month - 1]} {d.day}, {_year(d)}"


def _en_abbr(d: datetime.date) -> str:  # M D Y
    return f"{_EN_MONTHS_ABBR[d.month - 1]} {d.day} {_year(d)}"


def _en_weekday(d: datetime.date) -> str:  # W M D Y
    return f"{_EN_WEEKDAYS[d.weekday()]}, {_EN_MONTHS[d.month - 1]} {d.day}, {_year(d)}"


def _en_ordinal_fmt(d: datetime.date) -> str:  # D M Y
    return f"the {_en_ordinal(d.day)} of {_EN_MONTHS[d.month - 1]}, {_year(d)}"


def _en_upper(d: datetime.date) -> str:  # D M Y, e.g. 03-MAR-2021
    return f"{d.day:02d}-{_EN_MONTHS_ABBR[d.month - 1].upper()}-{_year(d)}"


def _de_long(d: datetime.date) -> str:  # D M Y
    return f"{d.day}. {_DE_MONTHS[d.month - 1]} {_year(d)}"


def _de_weekday(d: datetime.date) -> str:  # W D M Y
    return f"{_DE_WEEKDAYS[d.weekday()]}, {d.day}. {_DE_MONTHS[d.month - 1]} {_year(d)}"


def _fr_long(d: datetime.date) -> str:  # D M Y
    return f"le {_fr_day(d.day)} {_FR_MONTHS[d.month - 1]} {_year(d)}"


def _fr_weekday(d: datetime.date) -> str:  # W D M Y
    return f"{_FR_WEEKDAYS[d.weekday()]} {_fr_day(d.day)} {_FR_MONTHS[d.month - 1]} {_year(d)}"


def _fr_abbr(d: datetime.date) -> str:  # D M Y
    return f"{_fr_day(d.day)} {_FR_MONTHS_ABBR[d.month - 1]} {_year(d)}"


def _es_long(d: datetime.date) -> str:  # D M Y
    return f"{d.day} de {_ES_MONTHS[d.month - 1]} de {_year(d)}"


def _es_weekday(d: datetime.date) -> str:  # W D M Y
    return f"{_ES_WEEKDAYS[d.weekday()]}, {d.day} de {_ES_MONTHS[d.month - 1]} de {_year(d)}"


def _it_long(d: datetime.date) -> str:  # D M Y
    return f"{d.day} {_IT_MONTHS[d.month - 1]} {_year(d)}"


def _nl_long(d: datetime.date) -> str:  # D M Y
    return f"{d.day} {_NL_MONTHS[d.month - 1]} {_year(d)}"


def _iso_slash(d: datetime.date) -> str:  # Y/M/D, zero padded
    return f"{_year(d)}/{d.month:02d}/{d.day:02d}"


def _iso_basic(d: datetime.date) -> str:  # YMD, no separators
    return f"{_year(d)}{d.month:02d}{d.day:02d}"


def _us_numeric(d: datetime.date) -> str:  # M/D/Y, slash, not padded
    return f"{d.month}/{d.day}/{_year(d)}"


def _de_numeric(d: datetime.date) -> str:  # D.M.Y, dot, zero padded
    return f"{d.day:02d}.{d.month:02d}.{_year(d)}"


def _dmy_dash(d: datetime.date) -> str:  # D-M-Y, dash, zero padded
    return f"{d.day:02d}-{d.month:02d}-{_year(d)}"


_RENDERERS: Dict[str, Callable[[datetime.date], str]] = {
    "en_long": _en_long,            # 3 March 2021
    "en_us_long": _en_us_long,      # March 3, 2021
    "en_abbr": _en_abbr,            # Mar 3 2021
    "en_weekday": _en_weekday,      # Wednesday, March 3, 2021
    "en_ordinal": _en_ordinal_fmt,  # the 3rd of March, 2021
    "en_upper": _en_upper,          # 03-MAR-2021
    "de_long": _de_long,            # 3. März 2021
    "de_weekday": _de_weekday,      # Mittwoch, 3. März 2021
    "fr_long": _fr_long,            # le 3 mars 2021
    "fr_weekday": _fr_weekday,      # mercredi 3 mars 2021
    "fr_abbr": _fr_abbr,            # 3 févr. 2021
    "es_long": _es_long,            # 3 de marzo de 2021
    "es_weekday": _es_weekday,      # miércoles, 3 de marzo de 2021
    "it_long": _it_long,            # 3 marzo 2021
    "nl_long": _nl_long,            # 3 maart 2021
    "iso_slash": _iso_slash,        # 2021/03/03
    "iso_basic": _iso_basic,        # 20210303
    "us_numeric": _us_numeric,      # 3/3/2021
    "de_numeric": _de_numeric,      # 03.03.2021
    "dmy_dash": _dmy_dash,          # 03-03-2021
}

FORMATS: Tuple[str, ...] = tuple(_RENDERERS)


def render_date(d: datetime.date, fmt: str) -> str:
    """Write date ``d`` in the named format ``fmt`` (one of :data:`FORMATS`)."""
    try:
        renderer = _RENDERERS[fmt]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown date format {fmt!r}; expected one of {', '.join(FORMATS)}"
        ) from None
    return renderer(d)


# --------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------

def _ordinal_range(start_year: int, end_year: int) -> Tuple[int, int]:
    if not (datetime.MINYEAR <= start_year <= end_year <= datetime.MAXYEAR):
        raise ValueError(
            f"need {datetime.MINYEAR} <= start_year <= end_year <= {datetime.MAXYEAR}, "
            f"got start_year={start_year}, end_year={end_year}"
        )
    lo = datetime.date(start_year, 1, 1).toordinal()
    hi = datetime.date(end_year, 12, 31).toordinal()
    return lo, hi


def _iter_pairs(rng: random.Random, lo: int, hi: int) -> Iterator[Pair]:
    """Endless stream of pairs: a date uniform over [lo, hi] and a uniform format."""
    while True:
        d = datetime.date.fromordinal(rng.randint(lo, hi))
        fmt = rng.choice(FORMATS)
        yield render_date(d, fmt), d.isoformat()


def _check_count(name: str, n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{name} must be a non-negative int, got {n!r}")


def make_date_pairs(
    n: int, seed: int, *, start_year: int = 1900, end_year: int = 2099
) -> List[Pair]:
    """``n`` random ``(source, target)`` pairs, deterministic for ``seed``.

    Each date is drawn uniformly from 1 January ``start_year`` to 31 December
    ``end_year`` (inclusive) and written in a format drawn uniformly from
    :data:`FORMATS`; the target is ``date.isoformat()``.  Duplicates are
    possible (sampling is with replacement).
    """
    _check_count("n", n)
    lo, hi = _ordinal_range(start_year, end_year)
    rng = random.Random(seed)
    stream = _iter_pairs(rng, lo, hi)
    return [next(stream) for _ in range(n)]


def make_date_splits(
    n_train: int, n_valid: int, n_test: int, seed: int
) -> Tuple[List[Pair], List[Pair], List[Pair]]:
    """Train/valid/test splits with pairwise-disjoint source strings.

    Every source string occurs at most once over all three splits, so nothing
    in valid or test was seen verbatim in training.  Dates are drawn over the
    default range (1900-2099).  Deterministic for ``seed``.
    """
    sizes = (n_train, n_valid, n_test)
    for name, n in zip(("n_train", "n_valid", "n_test"), sizes):
        _check_count(name, n)
    lo, hi = _ordinal_range(1900, 2099)
    total = sum(sizes)
    # Rough count of distinct sources; weekday formats add no extra variety.
    capacity = (hi - lo + 1) * len(FORMATS)
    if total > capacity // 2:
        raise ValueError(
            f"asked for {total} distinct examples; at most {capacity // 2} are supported"
        )

    rng = random.Random(seed)
    stream = _iter_pairs(rng, lo, hi)
    seen: set = set()
    splits: List[List[Pair]] = []
    for size in sizes:
        split: List[Pair] = []
        while len(split) < size:
            src, tgt = next(stream)
            if src in seen:
                continue
            seen.add(src)
            split.append((src, tgt))
        splits.append(split)
    return splits[0], splits[1], splits[2]
