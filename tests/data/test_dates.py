import datetime

import pytest

from tformer.data.dates import FORMATS, make_date_pairs, make_date_splits, render_date

D = datetime.date(2021, 3, 3)  # a Wednesday


def _format_of(source, target):
    """All formats that render ``target``'s date as ``source``."""
    d = datetime.date.fromisoformat(target)
    return [f for f in FORMATS if render_date(d, f) == source]


def test_formats_shape():
    assert isinstance(FORMATS, tuple)
    assert 14 <= len(FORMATS) <= 20
    assert len(set(FORMATS)) == len(FORMATS)
    for name in ("en_long", "en_us_long", "de_long", "fr_long", "es_long",
                 "iso_slash", "us_numeric", "de_numeric"):
        assert name in FORMATS


@pytest.mark.parametrize(
    "fmt, expected",
    [
        ("en_long", "3 March 2021"),
        ("en_us_long", "March 3, 2021"),
        ("en_abbr", "Mar 3 2021"),
        ("en_weekday", "Wednesday, March 3, 2021"),
        ("en_ordinal", "the 3rd of March, 2021"),
        ("en_upper", "03-MAR-2021"),
        ("de_long", "3. März 2021"),
        ("de_weekday", "Mittwoch, 3. März 2021"),
        ("fr_long", "le 3 mars 2021"),
        ("fr_weekday", "mercredi 3 mars 2021"),
        ("es_long", "3 de marzo de 2021"),
        ("es_weekday", "miércoles, 3 de marzo de 2021"),
        ("it_long", "3 marzo 2021"),
        ("nl_long", "3 maart 2021"),
        ("iso_slash", "2021/03/03"),
        ("iso_basic", "20210303"),
        ("us_numeric", "3/3/2021"),
        ("de_numeric", "03.03.2021"),
        ("dmy_dash", "03-03-2021"),
    ],
)
def test_render_known_date(fmt, expected):
    assert render_date(D, fmt) == expected


def test_render_field_order_distinct_day_month():
    d = datetime.date(2021, 12, 21)
    assert render_date(d, "us_numeric") == "12/21/2021"
    assert render_date(d, "de_numeric") == "21.12.2021"
    assert render_date(d, "iso_slash") == "2021/12/21"
    assert render_date(d, "dmy_dash") == "21-12-2021"
    assert render_date(datetime.date(1905, 2, 1), "fr_abbr") == "1er févr. 1905"
    assert render_date(datetime.date(1905, 2, 1), "fr_long") == "le 1er février 1905"
    assert render_date(datetime.date(2022, 8, 22), "en_ordinal") == "the 22nd of August, 2022"
    assert render_date(datetime.date(2022, 8, 11), "en_ordinal") == "the 11th of August, 2022"
    assert render_date(datetime.date(2022, 8, 31), "en_ordinal") == "the 31st of August, 2022"


@pytest.mark.parametrize(
    "d, en, de, fr, es",
    [
        (datetime.date(2021, 3, 3), "Wednesday", "Mittwoch", "mercredi", "miércoles"),
        (datetime.date(2000, 1, 1), "Saturday", "Samstag", "samedi", "sábado"),
        (datetime.date(1969, 7, 20), "Sunday", "Sonntag", "dimanche", "domingo"),
        (datetime.date(2024, 2, 29), "Thursday", "Donnerstag", "jeudi", "jueves"),
        (datetime.date(1900, 1, 1), "Monday", "Montag", "lundi", "lunes"),
    ],
)
def test_weekdays_correct(d, en, de, fr, es):
    assert render_date(d, "en_weekday").startswith(en + ", ")
    assert render_date(d, "de_weekday").startswith(de + ", ")
    assert render_date(d, "fr_weekday").startswith(fr + " ")
    assert render_date(d, "es_weekday").startswith(es + ", ")


@pytest.mark.parametrize("bad", ["", "klingon", "EN_LONG", None])
def test_unknown_format_raises(bad):
    with pytest.raises(ValueError):
        render_date(D, bad)


def test_pairs_deterministic_and_seed_dependent():
    a = make_date_pairs(300, seed=7)
    assert a == make_date_pairs(300, seed=7)
    assert a != make_date_pairs(300, seed=8)
    assert len(a) == 300
    assert make_date_pairs(0, seed=7) == []


def test_pairs_targets_valid_and_match_source():
    pairs = make_date_pairs(2000, seed=0)
    seen_formats = set()
    for src, tgt in pairs:
        d = datetime.date.fromisoformat(tgt)
        assert d.isoformat() == tgt
        assert 1900 <= d.year <= 2099
        fmts = _format_of(src, tgt)
        assert fmts, (src, tgt)
        seen_formats.update(fmts)
        assert len(src) <= 40
        src.encode("latin-1")  # only Latin-1 characters
    assert seen_formats == set(FORMATS)


def test_year_range_respected():
    pairs = make_date_pairs(500, seed=3, start_year=1999, end_year=2000)
    years = {datetime.date.fromisoformat(t).year for _, t in pairs}
    assert years == {1999, 2000}
    with pytest.raises(ValueError):
        make_date_pairs(1, seed=0, start_year=2001, end_year=2000)


def test_max_length_over_all_formats():
    # Longest month names / weekdays / two-digit days, exhaustively over a year.
    d = datetime.date(2021, 1, 1)
    longest = 0
    while d.year == 2021:
        for f in FORMATS:
            s = render_date(d, f)
            longest = max(longest, len(s))
            s.encode("latin-1")
        d += datetime.timedelta(days=1)
    assert longest <= 40


def test_numeric_formats_unambiguous():
    # Within each numeric format, distinct dates give distinct strings.
    for f in ("us_numeric", "de_numeric", "iso_slash", "iso_basic", "dmy_dash", "en_upper"):
        d = datetime.date(2020, 1, 1)
        out = set()
        while d.year == 2020:
            out.add(render_date(d, f))
            d += datetime.timedelta(days=1)
        assert len(out) == 366, f


def test_splits_sizes_disjoint_deterministic():
    tr, va, te = make_date_splits(1500, 200, 300, seed=11)
    assert (len(tr), len(va), len(te)) == (1500, 200, 300)
    s_tr = {s for s, _ in tr}
    s_va = {s for s, _ in va}
    s_te = {s for s, _ in te}
    assert not (s_tr & s_va)
    assert not (s_tr & s_te)
    assert not (s_va & s_te)
    for split in (tr, va, te):
        for src, tgt in split:
            assert _format_of(src, tgt)
    assert (tr, va, te) == make_date_splits(1500, 200, 300, seed=11)
    assert (tr, va, te) != make_date_splits(1500, 200, 300, seed=12)
