"""The sink manager: every configured sink instance, its delivery task and its checkpoints.

:class:`SinkManager` is built from the ``sinks:`` config (checked by
:mod:`~bezant_trio.sinks.specs`, with the sink types the plugins register,
:mod:`~bezant_trio.sinks.plugins`), runs one
:class:`~bezant_trio.sinks.runner.SinkRunner` per sink in its own nursery,
stores the checkpoints the runners advance in ``hub.checkpoints`` (the log's
table, or memory without a log) at most ``CHECKPOINT_INTERVAL`` after a
delivery, swaps sinks live on SIGHUP (:meth:`SinkManager.reload`) and stops
them by one deadline (:meth:`SinkManager.aclose`).

Delivery is never a hook fan-out: a sink that fails or blocks stalls only its
own task; ingestion, the HTTP surface and the other sinks do not wait on it.

This module reads the hub and its checkpoint store; it never publishes, never
touches the gateway and never imports ``http`` or ``cpapi``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy
import trio

from bezant_trio.sinks.interface import SinkConfigError
from bezant_trio.sinks.plugins import (
    call_lifecycle_hook,
    create_plugin_manager,
    plugin_manager,
    sink_types,
)
from bezant_trio.sinks.runner import SinkRunner
from bezant_trio.sinks.specs import SinkSpec, build_sink, parse_sink_specs, validate_sink_configs
from bezant_trio.util import describe

if TYPE_CHECKING:
    from bezant_trio.store.hub import Hub

# Besides SinkManager, names the daemon, the CLI and the test fixtures import from here.
__all__ = [
    "SinkConfigError",
    "SinkManager",
    "create_plugin_manager",
    "plugin_manager",
    "validate_sink_configs",
]

log = logging.getLogger(__name__)

#: Checkpoints are stored at most this long after a delivery (and at shutdown).
CHECKPOINT_INTERVAL = 0.5
#: How long a sink stopped by a reload may finish the batch it is delivering.
RELOAD_GRACE = 5.0
#: Upper bound on waiting for a cancelled sink to stop, and on its ``aclose()``
#: (both also end by the stop's deadline).
SINK_CLOSE_TIMEOUT = 5.0
#: What ``aclose`` keeps of its time, at most, for storing checkpoints and closing.
CHECKPOINT_RESERVE = 1.0
#: When ``run`` is cancelled without ``aclose``: how long stopping may take.
FINAL_FLUSH_TIMEOUT = 5.0


class SinkManager:
    """Every configured sink instance and its delivery task.

    Built from the ``sinks:`` config (validated here, raising
    :class:`SinkConfigError`), started with ``await nursery.start(manager.run)``,
    stopped with :meth:`aclose`. ``sinks`` maps each name to its instance.
    """

    def __init__(
        self,
        hub: Hub,
        sink_configs: Sequence[Mapping[str, Any]],
        *,
        pm: pluggy.PluginManager | None = None,
    ) -> None:
        self.hub = hub
        self.pm = pm if pm is not None else plugin_manager()
        self._types = sink_types(self.pm)
        specs = parse_sink_specs(sink_configs, self._types)
        instances = [self._build(spec) for spec in specs]
        self._runners: dict[str, SinkRunner] = {
            spec.name: self._new_runner(spec, sink)
            for spec, sink in zip(specs, instances, strict=True)
        }
        self._nursery: trio.Nursery | None = None
        self._progress = trio.Event()
        self._flush_lock = trio.Lock()
        self._reload_lock = trio.Lock()
        self._finishing = False
        self._closed = trio.Event()

    @property
    def sinks(self) -> dict[str, Any]:
        """Sink name -> sink instance, in config order."""
        return {name: runner.sink for name, runner in self._runners.items()}

    # ---------------------------------------------------------------- run

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load checkpoints, start every sink's task; started once all run; until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for runner in list(self._runners.values()):
                    await self._start(runner)
                nursery.start_soon(self._persist_loop)
                task_status.started()
                await self._closed.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            if not self._closed.is_set():
                # Cancelled without aclose(): still keep what was acknowledged.
                now = trio.current_time()
                await self._finish(now, now + FINAL_FLUSH_TIMEOUT)

    def _build(self, spec: SinkSpec) -> Any:
        """The sink instance of ``spec``, told the hub's cursor space if it asks for it."""
        sink = build_sink(spec, self._types)
        set_cursor_space = getattr(sink, "set_cursor_space", None)
        if callable(set_cursor_space):
            try:
                set_cursor_space(self.hub.cursor_space)
            except Exception as exc:
                raise SinkConfigError(
                    f"sink {spec.name!r} (type {spec.type_name}): set_cursor_space() failed:"
                    f" {describe(exc)}"
                ) from exc
        return sink

    async def _start(self, runner: SinkRunner) -> None:
        assert self._nursery is not None
        stored = await self.hub.checkpoints.load(runner.spec.name)
        for topic, cursor in stored.items():
            runner.checkpoints.setdefault(topic, cursor)
        await self._nursery.start(runner.run)

    def _new_runner(
        self, spec: SinkSpec, sink: Any, checkpoints: dict[str, int] | None = None
    ) -> SinkRunner:
        return SinkRunner(spec, sink, self.hub, dict(checkpoints or {}), self._note_progress)

    def _note_progress(self) -> None:
        self._progress.set()

    async def _persist_loop(self) -> None:
        while True:
            await self._progress.wait()
            await trio.sleep(CHECKPOINT_INTERVAL)  # batch the writes of a busy sink
            self._progress = trio.Event()
            await self._flush(list(self._runners.values()))

    async def _flush(self, runners: Sequence[SinkRunner]) -> None:
        """Store the checkpoints ``runners`` advanced; a failed store is kept for the next flush."""
        async with self._flush_lock:
            for runner in runners:
                dirty = runner.take_dirty()
                if not dirty:
                    continue
                try:
                    await self.hub.checkpoints.store(runner.spec.name, dirty)
                except Exception as exc:  # retried at the next flush; delivery goes on
                    runner.restore_dirty(dirty)
                    log.warning(
                        "storing checkpoints of sink %r failed, will retry: %s",
                        runner.spec.name,
                        describe(exc),
                    )

    # ---------------------------------------------------------------- status

    def status(self) -> dict[str, dict[str, Any]]:
        """``_status.sinks``: per sink name, its type, topics, checkpoints, lag, counters, state."""
        return {name: runner.status() for name, runner in self._runners.items()}

    async def wait_delivered(self, name: str, count: int) -> None:
        """Wait until sink ``name`` has acknowledged ``count`` events (tests, demos).

        Counts since this manager started the sink (a reload that changes it
        starts again from 0); bound it with ``trio.fail_after``.
        """
        await self.wait_status(name, lambda status: status["delivered"] >= count)

    async def wait_status(self, name: str, predicate: Callable[[dict[str, Any]], bool]) -> None:
        """Wait until ``predicate(status()[name])`` holds; re-checked on every change."""
        while True:
            runner = self._runners[name]
            changed = runner.changed
            if predicate(runner.status()):
                return
            await changed.wait()

    # ---------------------------------------------------------------- plugins

    def run_startup_hooks(self, *, daemon: Any) -> None:
        """Call every plugin's ``startup(daemon=...)``; SinkConfigError names a failing one."""
        call_lifecycle_hook(self.pm, "startup", strict=True, daemon=daemon)

    def run_shutdown_hooks(self, *, daemon: Any) -> None:
        """Call every plugin's ``shutdown(daemon=...)``; failures are logged, all are called."""
        call_lifecycle_hook(self.pm, "shutdown", strict=False, daemon=daemon)

    # ---------------------------------------------------------------- SIGHUP

    def reopen(self) -> None:
        """Ask every sink with a ``reopen()`` (the file sink) to reopen its file."""
        for name, runner in self._runners.items():
            reopen = getattr(runner.sink, "reopen", None)
            if not callable(reopen):
                continue
            try:
                reopen()
            except Exception as exc:
                log.error("sink %r: reopen() failed: %s", name, describe(exc))

    async def reload(self, sink_configs: Sequence[Mapping[str, Any]]) -> None:
        """Add, remove and replace sinks live; on a bad config raise and keep the old set.

        A sink whose entry is unchanged keeps running untouched. A changed one
        finishes its batch in flight, then restarts with the new options from
        the same checkpoints. A removed one is stopped and its checkpoints are
        deleted (a sink added later under that name starts from the beginning).
        """
        async with self._reload_lock:
            if self._finishing:
                raise SinkConfigError("sinks: cannot reload, the daemon is shutting down")
            specs = parse_sink_specs(sink_configs, self._types)
            old = self._runners
            fresh = {
                spec.name: self._build(spec)
                for spec in specs
                if spec.name not in old or old[spec.name].spec.source != spec.source
            }
            wanted = {spec.name for spec in specs}
            retiring = [r for n, r in old.items() if n not in wanted or n in fresh]
            finish_by = trio.current_time() + RELOAD_GRACE
            await self._retire(retiring, finish_by, finish_by + 2 * SINK_CLOSE_TIMEOUT)
            for runner in retiring:
                if runner.spec.name not in wanted:
                    await self.hub.checkpoints.delete(runner.spec.name)
            if self._finishing:
                # aclose() began meanwhile and stops what runs: start nothing new.
                raise SinkConfigError("sinks: cannot reload, the daemon is shutting down")
            runners: dict[str, SinkRunner] = {}
            for spec in specs:
                if spec.name not in fresh:
                    runners[spec.name] = old[spec.name]
                    continue
                previous = old.get(spec.name)
                if previous is None:
                    runners[spec.name] = self._new_runner(spec, fresh[spec.name])
                    continue
                runner = self._new_runner(spec, fresh[spec.name], previous.checkpoints)
                # Checkpoints whose storing failed are stored by the new runner.
                runner.restore_dirty(previous.take_dirty())
                runners[spec.name] = runner
            self._runners = runners
            for name in fresh:
                if self._nursery is None or self._finishing:
                    break
                await self._start(runners[name])
            log.info(
                "sinks reloaded: %d started, %d stopped, %d unchanged",
                len(fresh),
                len(retiring),
                len(specs) - len(fresh),
            )

    async def _retire(
        self, runners: Sequence[SinkRunner], finish_by: float, deadline: float
    ) -> None:
        """Stop ``runners``, store their checkpoints, close them; every wait ends by ``deadline``.

        Batches in flight may finish until ``finish_by``; then the runners are
        cancelled. Their checkpoints are stored even when ``deadline`` has
        passed: what was acknowledged but not stored would be delivered again
        after a restart.
        """
        if not runners:
            return
        for runner in runners:
            runner.request_stop()
        started = [runner for runner in runners if runner.started]
        with trio.move_on_at(min(finish_by, deadline)):
            for runner in started:
                await runner.stopped.wait()
        for runner in runners:
            runner.cancel()
        # A cancelled runner unwinds at once, unless its delivery runs in a
        # thread that cannot be cancelled. Its delivery may still be
        # acknowledged, so wait for it, keeping half of what is left of the
        # time for storing checkpoints and closing the sinks.
        now = trio.current_time()
        with trio.move_on_at(min(now + SINK_CLOSE_TIMEOUT, now + max(0.0, deadline - now) / 2)):
            for runner in started:
                await runner.stopped.wait()
        await self._flush(runners)
        close_by = min(trio.current_time() + SINK_CLOSE_TIMEOUT, deadline)
        async with trio.open_nursery() as nursery:
            for runner in runners:
                nursery.start_soon(runner.close_sink, close_by)

    # ---------------------------------------------------------------- stop

    async def aclose(self, deadline: float, *, finish_by: float | None = None) -> None:
        """Graceful stop, over by ``deadline`` (a ``trio.current_time()``).

        Batches in flight may finish until ``finish_by``; then every sink is
        cancelled, its checkpoints are stored and it is closed. Nothing waits
        past ``deadline``, even while the caller is being cancelled, and the
        checkpoints are stored even when ``finish_by`` (or the deadline) has
        passed. By default ``finish_by`` leaves a quarter of the time (at most
        ``CHECKPOINT_RESERVE``) for the checkpoints. Idempotent; ``run``
        returns once this is done.
        """
        if finish_by is None:
            left = max(0.0, deadline - trio.current_time())
            finish_by = deadline - min(CHECKPOINT_RESERVE, left / 4)
        await self._finish(min(finish_by, deadline), deadline)

    async def _finish(self, finish_by: float, deadline: float) -> None:
        if self._finishing:
            with trio.move_on_at(deadline):  # the first call stores the checkpoints
                await self._closed.wait()
            return
        self._finishing = True
        try:
            # Shielded: checkpoints must be stored even when the caller is
            # being cancelled, or the next start redelivers more. Every wait
            # inside has its own bound, none past the deadline.
            with trio.CancelScope(shield=True):
                # A reload in flight finishes first, unless it would take
                # until finish_by; then stop what runs, and it starts nothing.
                locked = False
                try:
                    self._reload_lock.acquire_nowait()
                    locked = True
                except trio.WouldBlock:
                    with trio.move_on_at(finish_by):
                        await self._reload_lock.acquire()
                        locked = True
                try:
                    await self._retire(list(self._runners.values()), finish_by, deadline)
                finally:
                    if locked:
                        self._reload_lock.release()
        finally:
            self._closed.set()
