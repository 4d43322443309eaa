"""Writing a file so that no reader ever sees half of it.

Imports nothing of this package, so every layer (``dataset_prep`` included) can use it.
"""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path, mode="w", **open_kwargs):
    r"""A stream for the new content of ``path``, moved onto ``path`` when the block ends.

    The content goes to a temporary file in the same folder (so that the final
    ``os.replace`` is atomic), readable by all like an ordinary file (0644).
    If the block raises, the temporary file is removed and ``path`` stays as
    it was.

    Args:
        mode (str): ``"w"`` for text, ``"wb"`` for bytes.
        open_kwargs: passed to ``open`` (e.g. ``encoding``).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=folder)
    try:
        with os.fdopen(handle, mode, **open_kwargs) as stream:
            yield stream
        os.chmod(temporary, 0o644)  # mkstemp makes it private
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
