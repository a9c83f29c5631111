"""Giving freed memory back to the operating system after a burst (glibc's ``malloc_trim``).

CPython frees an object's memory to the C allocator, and glibc keeps what
it got: the heap of the main thread and one arena per worker thread (the
log's reads run in threads) stay as large as their peak. After a burst, a
thousand SSE streams reading back into the log say, the process would hold
hundreds of MiB it no longer uses. :class:`MemoryTrimmer` calls
``malloc_trim(0)``, which returns every free page of every arena, in a
worker thread, a moment after the last of a burst of requests for it (so a
burst of stream ends costs one trim). Elsewhere than glibc it does nothing.
Touches no state of the daemon; a leaf any part may use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

import trio

__all__ = ["MemoryTrimmer", "malloc_trim"]

log = logging.getLogger(__name__)


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_MALLOC_TRIM = _load_malloc_trim()


def malloc_trim() -> bool:
    """Return free heap pages to the OS now; False where there is no ``malloc_trim``."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


class MemoryTrimmer:
    """Trims once, ``delay`` seconds after the latest :meth:`request`; run it in a nursery."""

    def __init__(self, delay: float = 1.0) -> None:
        self.delay = delay
        #: Trims done (since start).
        self.trims = 0
        self._requested = trio.Event()

    def request(self) -> None:
        """Ask for a trim soon (cheap; callable from any task, many times)."""
        self._requested.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Wait for requests and trim; never returns."""
        task_status.started()
        if _MALLOC_TRIM is None:
            await trio.sleep_forever()
        while True:
            await self._requested.wait()
            # Let the burst finish: every request during the delay restarts
            # it, up to ten delays after the first.
            latest = trio.current_time() + 10 * self.delay
            while self._requested.is_set() and trio.current_time() < latest:
                self._requested = trio.Event()
                with trio.move_on_after(self.delay):
                    await self._requested.wait()
            self._requested = trio.Event()
            # Requests that were cancelled (a client gone) leave reference
            # cycles: exception, traceback, frames. Collect them first, or
            # their memory is not free to give back.
            gc.collect()
            await trio.to_thread.run_sync(malloc_trim)
            self.trims += 1
