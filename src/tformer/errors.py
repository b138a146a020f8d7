"""The one exception type for mistakes a user can make (bad files, options, values).

The command line catches it, prints its one-line message and exits non-zero; programming errors stay
ordinary exceptions so they keep their tracebacks.
"""


class TformerError(Exception):
    """A user-facing error whose message is one line naming what is wrong (file, line, option, value)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split("\n")))
