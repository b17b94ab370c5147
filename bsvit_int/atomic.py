"""Atomic file output: a destination is either fully replaced or left untouched.

Every writer in bsvit-int (models, reports, checkpoints, generated sources) goes through
`atomic_write`, so an interrupted run never leaves a half-written file behind.

How (docs/hardening.md):

* Linux: the data goes into an unnamed file (`open(dir, O_TMPFILE)`), which the kernel
  deletes by itself if the process dies, even by SIGKILL or a power cut before the link.
  Only when the data is complete and fsynced does it get a name (`linkat` through
  /proc/self/fd), which is then renamed over the destination. The one window in which a
  SIGKILL leaves a stray `.NAME.*.tmp` is between those two system calls, with no data
  being written.
* Elsewhere, or where the file system refuses O_TMPFILE: a named temporary file from
  `mkstemp` in the same directory, removed on any exception. A SIGKILL during the write
  leaves that temporary file behind (the destination is still untouched).
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from typing import IO, Callable, Optional

# Tests switch this off to exercise the portable path on Linux too.
_USE_O_TMPFILE = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")

# errno values meaning "this file system or kernel has no O_TMPFILE / cannot link it".
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT, errno.EPERM,
               errno.EXDEV, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


def atomic_write(path, write: Callable[[IO[bytes]], None]) -> None:
    """Call write(f) on a temporary file beside `path`, fsync it, then rename it over `path`.

    A new file gets mode 0o644; an existing destination keeps its mode. On any exception
    the temporary file is removed and the destination is unchanged.
    """
    path = os.fspath(path)
    directory, filename = os.path.split(os.path.abspath(path))
    mode = _destination_mode(path)
    if _USE_O_TMPFILE:
        fd = _open_unnamed(directory, path)
        if fd is not None:
            _write_unnamed(fd, directory, filename, mode, write)
            _fsync_directory(directory)
            return
    _write_named(path, directory, filename, mode, write)
    _fsync_directory(directory)


def atomic_write_bytes(path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


# --------------------------------------------------------------------------- O_TMPFILE


def _open_unnamed(directory: str, path: str) -> Optional[int]:
    """An O_TMPFILE descriptor in `directory`, or None if this file system has none."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | getattr(os, "O_CLOEXEC", 0),
                       0o600)
    except OSError as e:
        if e.errno in _NO_TMPFILE:
            return None
        # Name the destination, not the directory the user never asked to write.
        raise type(e)(e.errno, e.strerror, path) from None


def _write_synced(temp_file: IO[bytes], write: Callable[[IO[bytes]], None], mode: int) -> None:
    """write(f), then make the data durable and give the file its final mode.

    Temporary files are created 0o600 (mkstemp) or with the process umask (O_TMPFILE);
    without the chmod, outputs would not get the destination's mode.
    """
    write(temp_file)
    temp_file.flush()
    os.fsync(temp_file.fileno())
    if hasattr(os, "fchmod"):
        os.fchmod(temp_file.fileno(), mode)


def _write_unnamed(fd: int, directory: str, filename: str, mode: int,
                   write: Callable[[IO[bytes]], None]) -> None:
    with os.fdopen(fd, "w+b") as temp_file:
        _write_synced(temp_file, write, mode)
        dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            temp_name = _link_unnamed(temp_file, dir_fd, filename)
            try:
                os.replace(temp_name, filename, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp_name, dir_fd=dir_fd)
                raise
        finally:
            os.close(dir_fd)


def _link_unnamed(temp_file: IO[bytes], dir_fd: int, filename: str) -> str:
    """Give the complete unnamed file a temporary name in the destination directory."""
    source = f"/proc/self/fd/{temp_file.fileno()}"
    for _ in range(100):
        temp_name = f".{filename}.{os.urandom(6).hex()}.tmp"
        try:
            # A dst_dir_fd makes CPython call linkat(..., AT_SYMLINK_FOLLOW), which is what
            # links the file behind the /proc/self/fd magic link (plain link() would not).
            os.link(source, temp_name, dst_dir_fd=dir_fd, follow_symlinks=True)
            return temp_name
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in _NO_TMPFILE:
                raise
            return _copy_to_named(temp_file, dir_fd, filename)
    raise FileExistsError(errno.EEXIST, "no free temporary name", filename)


def _copy_to_named(temp_file: IO[bytes], dir_fd: int, filename: str) -> str:
    # The kernel made an unnamed file but will not link it (e.g. /proc is a different
    # mount namespace's): copy the finished data into a named temporary file instead.
    temp_name = f".{filename}.{os.urandom(6).hex()}.tmp"
    out_fd = os.open(temp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(out_fd, "wb") as out:
            temp_file.seek(0)
            while block := temp_file.read(1 << 20):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
            if hasattr(os, "fchmod"):
                os.fchmod(out.fileno(), stat.S_IMODE(os.fstat(temp_file.fileno()).st_mode))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name, dir_fd=dir_fd)
        raise
    return temp_name


# --------------------------------------------------------------------------- portable path


def _write_named(path: str, directory: str, filename: str, mode: int,
                 write: Callable[[IO[bytes]], None]) -> None:
    try:
        fd, temp_path = tempfile.mkstemp(prefix=f".{filename}.", suffix=".tmp", dir=directory)
    except OSError as e:
        # Name the destination, not the temporary file the user never asked for.
        raise type(e)(e.errno, e.strerror, path) from None
    try:
        with os.fdopen(fd, "wb") as temp_file:
            _write_synced(temp_file, write, mode)
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        raise


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
