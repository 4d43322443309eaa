"""The one exception ``dataset_prep`` raises for input it cannot convert."""


class DatasetPrepError(ValueError):
    """A source file or argument that cannot be converted.

    The message is one line naming the file (or argument), what is wrong with it
    and how to fix it; the command line prints it as is and exits with status 2.
    """


def one_line(exc: BaseException) -> str:
    """``exc`` as ``Type: message`` on one line, to quote inside a DatasetPrepError."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())
