"""Atomic file output: a destination is either fully replaced or left untouched.

Every writer in bsvit-int (models, reports, checkpoints, generated sources) goes through
`atomic_write`, so an interrupted run never leaves a half-written file behind.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from typing import IO, Callable


def atomic_write(path, write: Callable[[IO[bytes]], None]) -> None:
    """Call write(f) on a temporary file beside `path`, fsync it, then rename it over `path`.

    A new file gets mode 0o644; an existing destination keeps its mode. On any exception
    the temporary file is removed and the destination is unchanged.
    """
    path = os.fspath(path)
    directory, filename = os.path.split(os.path.abspath(path))
    mode = _destination_mode(path)
    try:
        fd, temp_path = tempfile.mkstemp(prefix=f".{filename}.", suffix=".tmp", dir=directory)
    except OSError as e:
        # Name the destination, not the temporary file the user never asked for.
        raise type(e)(e.errno, e.strerror, path) from None
    try:
        with os.fdopen(fd, "wb") as temp_file:
            write(temp_file)
            temp_file.flush()
            os.fsync(temp_file.fileno())
            # mkstemp creates the file 0o600, which would make outputs unreadable to others.
            if hasattr(os, "fchmod"):
                os.fchmod(temp_file.fileno(), mode)
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        raise
    _fsync_directory(directory)


def atomic_write_bytes(path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def _destination_mode(path: str) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o644


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable; best effort because some platforms and file
    # systems refuse to open or fsync directories, and the data is already in place.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
