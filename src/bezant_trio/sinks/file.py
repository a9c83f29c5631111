"""The ``file`` sink: events appended to a JSON Lines file, one event per line.

Each line is the event's wire JSON, the same object ``GET /events/{topic}``
returns, so ``jq`` and the REST clients read both alike. Options: ``path``
(required), ``fsync`` (``batch``: fsync after every batch, the default;
``never``: leave it to the OS), ``rotate_bytes`` (rotate to ``path.1``,
``path.2``, ... before a batch would grow the file past it) and
``rotate_keep`` (how many rotated files to keep, default 5).

``reopen()`` (SIGHUP) makes the next batch open ``path`` afresh, so an
external ``logrotate`` can rename the file away and signal the daemon.

The events are the account's orders and fills, so the file is created 0600
(whatever the umask), and a symbolic link at ``path`` is refused rather than
followed: someone who can write the directory must not be able to point the
sink at another file it would then append to. A link there at start is a
config error; one planted later fails the delivery (retried until removed).

All file I/O runs in a worker thread; this module touches only its own file.
"""

from __future__ import annotations

import errno
import os
from typing import IO

import trio

from bezant_trio.model import Event
from bezant_trio.sinks.interface import DeliveryError, Option

__all__ = ["FileSink"]


def _positive(value: int) -> int:
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _file_path(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a file path, got an empty string")
    path = os.path.abspath(os.path.expanduser(value))
    if os.path.islink(path):
        raise ValueError(f"must not be a symbolic link ({path}); point it at the file itself")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory; point it at a file")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise ValueError(f"the directory {parent} does not exist; create it first")
    return path


class FileSink:
    """Appends each batch to ``path`` as JSON Lines (see the module docstring)."""

    type_name = "file"
    options = {
        "path": Option(str, check=_file_path, help="the JSON Lines file to append to"),
        "fsync": Option(str, default="batch", choices=("batch", "never")),
        "rotate_bytes": Option(int, default=None, check=_positive),
        "rotate_keep": Option(int, default=5, check=_positive),
    }

    def __init__(
        self,
        name: str,
        *,
        path: str,
        fsync: str = "batch",
        rotate_bytes: int | None = None,
        rotate_keep: int = 5,
    ) -> None:
        self.name = name
        self.path = _file_path(path)
        self.fsync = fsync
        self.rotate_bytes = rotate_bytes
        self.rotate_keep = rotate_keep
        self.rotations = 0
        self._file: IO[bytes] | None = None
        # Set from the Trio thread, read by the writer thread before each batch:
        # the handle is only ever touched by one write at a time.
        self._reopen_requested = False

    async def deliver(self, batch: list[Event]) -> None:
        """Append ``batch`` (one line per event); fsync it when ``fsync: batch``."""
        data = b"".join([event.json + b"\n" for event in batch])
        await trio.to_thread.run_sync(self._write, data)

    def reopen(self) -> None:
        """Open ``path`` afresh before the next batch (after logrotate renamed it)."""
        self._reopen_requested = True

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._close)

    # ------------------------------------------------------ worker thread

    def _write(self, data: bytes) -> None:
        if self._reopen_requested:
            self._reopen_requested = False
            self._close()
        if self._file is None:
            self._file = self._open()
        size = os.fstat(self._file.fileno()).st_size
        if self.rotate_bytes is not None and size > 0 and size + len(data) > self.rotate_bytes:
            self._rotate()
            assert self._file is not None
            size = 0
        handle = self._file
        try:
            view = memoryview(data)
            while view:
                written = handle.write(view)
                view = view[written or 0 :]
            if self.fsync == "batch":
                os.fsync(handle.fileno())
        except BaseException:
            # Never leave half a batch behind: the retry writes it whole again.
            try:
                handle.truncate(size)
            except OSError:
                pass
            raise

    def _rotate(self) -> None:
        self._close()
        for index in range(self.rotate_keep - 1, 0, -1):
            older = f"{self.path}.{index}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{index + 1}")
        os.replace(self.path, f"{self.path}.1")
        self.rotations += 1
        self._file = self._open()

    def _open(self) -> IO[bytes]:
        """``path`` for appending: created 0600, never through a symbolic link."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            try:
                fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                fd = os.open(self.path, flags)
            else:
                os.fchmod(fd, 0o600)  # the umask may have taken bits away
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DeliveryError(
                    f"{self.path} is a symbolic link; the file sink does not follow links:"
                    " remove it and delivery goes on"
                ) from None
            raise
        return os.fdopen(fd, "ab", buffering=0)

    def _close(self) -> None:
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()
