"""An asyncio event loop on a thread of its own, awaitable from Trio.

nats-py is an asyncio library and the daemon is a Trio program. A sink has no
task of its own (the manager calls ``deliver`` and ``aclose``), so it cannot
hold a ``trio_asyncio.open_loop()`` open across batches; a dedicated thread
with its own loop can. Trio hands a coroutine over with
``asyncio.run_coroutine_threadsafe`` and sleeps on a ``trio.Event`` that the
future's completion callback sets through ``TrioToken.run_sync_soon``: no Trio
worker thread blocks per call (``trio.to_thread.run_sync(future.result)`` would
park one for every batch). The plugin's README has the measurements.

Owns the thread and its loop; knows nothing of NATS or of sinks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import trio

__all__ = ["AsyncioThread"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Bound on the loop's own clean-up (cancelling leftovers, closing generators).
_STOP_TIMEOUT = 5.0


class AsyncioThread:
    """A lazily started asyncio loop thread; :meth:`run` awaits coroutines on it from Trio.

    :meth:`aclose` stops the loop (cancelling what still runs on it, like
    ``asyncio.run`` does) and joins the thread; it is idempotent.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise RuntimeError(f"{self.name}: the asyncio thread is closed")
        if self._loop is None:
            # The loop is made here, not in the thread, so callbacks can be
            # queued at once; run_forever picks them up when the thread starts.
            # Not through the event-loop policy: trio-asyncio, if any plugin
            # imports it, replaces the policy and refuses inside Trio.
            self._loop = asyncio.SelectorEventLoop()
            self._thread = threading.Thread(
                target=self._serve, args=(self._loop,), name=self.name, daemon=True
            )
            self._thread.start()
        return self._loop

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.run_forever()
        finally:
            try:
                _cancel_leftovers(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                # getaddrinfo ran on the loop's default executor: join its threads.
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    async def run(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``async_fn(*args)`` on the loop thread and return (or raise) its outcome.

        Cancelling the calling Trio task cancels the asyncio task too.
        """
        loop = self._ensure_started()
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_future: Future[T]) -> None:  # on the loop thread, or here if already done
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass  # Trio has gone; nobody waits for this outcome

        future = asyncio.run_coroutine_threadsafe(_call(async_fn, *args), loop)
        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()  # thread-safe: asks the loop to cancel the task
            raise
        return future.result()

    async def aclose(self) -> None:
        """Stop the loop (leftover tasks are cancelled) and join the thread."""
        if self._closed:
            return
        self._closed = True
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        with trio.move_on_after(_STOP_TIMEOUT) as scope:
            await trio.to_thread.run_sync(thread.join, abandon_on_cancel=True)
        if scope.cancelled_caught:
            log.warning("%s: the asyncio thread did not stop in %gs", self.name, _STOP_TIMEOUT)


async def _call(async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    return await async_fn(*args)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """What ``asyncio.run`` does at exit: cancel every task and let them finish."""
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    gathered = asyncio.gather(*tasks, return_exceptions=True)
    try:
        loop.run_until_complete(asyncio.wait_for(gathered, _STOP_TIMEOUT))
    except TimeoutError:
        log.warning("%d asyncio task(s) ignored cancellation; closing the loop anyway", len(tasks))
