"""Writing a file atomically: a temporary file in the same folder, then ``os.replace``, so a reader (or a
resumed sweep) sees the old file or the new one, never half of one. One writer for the results store,
the reports and the memo; the store's cleanup knows the temporaries' names (``temporary_prefix``)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def temporary_prefix(path: Path) -> str:
    """What a temporary file for ``path`` is named with (mkstemp adds 8 random characters)."""
    return f".{path.name}-"


def atomic_write_with(path: str | Path, write: Callable[[BinaryIO], object], *, durable: bool = False) -> Path:
    """Replace ``path`` with what ``write`` writes into a binary file. ``durable``: flush it to disk
    before the rename (the results store: a power cut must not leave an empty log)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path))
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; results and reports are meant to be shared
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write(path: str | Path, text: str, *, durable: bool = False) -> Path:
    """Replace ``path`` with ``text`` (UTF-8)."""
    data = text.encode("utf-8")
    return atomic_write_with(path, lambda out: out.write(data), durable=durable)
