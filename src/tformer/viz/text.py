"""Text in pictures drawn as written.

matplotlib reads $...$ in any string as a formula, so a token, a title or a metric name with a dollar sign would
become maths, or an error: parsing is turned off. Its default font (DejaVu Sans) has no Chinese, Japanese or
Korean characters: fonts installed here that have them are added as fallbacks, and characters no font has are
named once, in one warning, instead of matplotlib's two warnings per character.
"""

from __future__ import annotations

import functools
import re
import warnings

# Fonts with CJK characters that systems commonly install; the first ones found here are used as fallbacks.
_FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK KR", "Source Han Sans", "WenQuanYi Zen Hei",
                   "WenQuanYi Micro Hei", "Droid Sans Fallback", "Microsoft YaHei", "MS Gothic", "PingFang SC",
                   "Hiragino Sans", "Apple SD Gothic Neo", "Noto Sans")
_MISSING_GLYPH = re.compile(r"Glyph \d+ \((.*)\) missing from font")


def _font_families() -> list[str]:
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return ["DejaVu Sans"] + [name for name in _FALLBACK_FONTS if name in installed]


def plain_text(draw):
    """Run a drawing function with matplotlib's maths parsing off, CJK fallback fonts, and one warning for the
    characters no font here can draw."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib.pyplot as plt

        with plt.rc_context({"text.parse_math": False, "font.family": _font_families()}), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = draw(*args, **kwargs)
        missing: list[str] = []
        for w in caught:
            match = _MISSING_GLYPH.search(str(w.message))
            if match is None:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                continue
            name = match.group(1)  # e.g. \N{HIRAGANA LETTER GA}
            char = name.encode().decode("unicode_escape") if name.startswith("\\N{") else name
            if char not in missing:
                missing.append(char)
        if missing:
            shown = " ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            warnings.warn(f"no font here has the characters {shown}: they are drawn as boxes (install a font that "
                          "has them, such as Noto Sans CJK)", stacklevel=2)
        return result

    return wrapper
