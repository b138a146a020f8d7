"""Text in pictures drawn as written: matplotlib reads $...$ in any string as a formula, and a token, a title or
a metric name with a dollar sign would become maths, or an error."""

from __future__ import annotations

import functools


def plain_text(draw):
    """Run a drawing function with matplotlib's maths parsing off."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib.pyplot as plt

        with plt.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return wrapper
