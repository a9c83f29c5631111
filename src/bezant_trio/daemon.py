"""The supervisor: one root nursery that wires every part together.

This is the only module that knows the connector, the hub and its log, the
HTTP service and the sinks (docs/architecture.md). Start-up is ordered so
that ``run`` reports started (and systemd hears READY=1) only when the daemon
can serve: the log is open, the writer runs, the connector has started, the
HTTP socket is bound.

A graceful stop has one deadline, computed when the stop is asked for
(``shutdown_grace`` seconds from the signal to the exit, every phase
included), and each phase runs under it; see :meth:`Daemon._shutdown`.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from bezant_trio import fds, logs
from bezant_trio.config import Config, ConfigError, config_secrets, load_config
from bezant_trio.cpapi.connector import Connector
from bezant_trio.cpapi.subscriptions import BARS_LIMIT, BOOK_LIMIT
from bezant_trio.errors import StartupError
from bezant_trio.http import HttpLimits, HttpService
from bezant_trio.sinks.manager import SinkConfigError, SinkManager
from bezant_trio.store.hub import Hub
from bezant_trio.store.log import EventLog, LogOpenError
from bezant_trio.store.state import StateViews
from bezant_trio.systemd import SystemdNotifier, WriterHealth
from bezant_trio.wants import Wants

__all__ = ["Daemon", "StartupError", "open_daemon", "serve_until_signalled"]

log = logging.getLogger(__name__)

#: The last part of the shutdown deadline kept for what must not be skipped:
#: committing what is pending, marking the log clean, storing sink checkpoints.
#: Waiting on others (the gateway's echo, a sink's receiver) ends before it.
#: At most a quarter of ``shutdown_grace``.
FINAL_RESERVE = 1.5


class Daemon:
    """The whole daemon, startable as ``await nursery.start(daemon.run)``.

    Prefer :func:`open_daemon`, which also stops it under the deadline.
    """

    def __init__(
        self,
        config: Config,
        *,
        connect: bool = True,
        config_path: str | None = None,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.config = config
        #: Where SIGHUP re-reads the ``sinks:`` section from.
        self.config_path = config_path
        #: Tests that publish into the hub directly can run without a gateway.
        self.connect = connect
        self.hub: Hub | None = None
        #: Per-instrument demand: HTTP records wants, the connector follows them.
        self.wants = Wants(config.events.marketdata.max_conids)
        self.bars = Wants(BARS_LIMIT, what="streaming-bars", setting=None)
        self.book = Wants(BOOK_LIMIT, what="price-ladder", setting=None)
        self.connector: Connector | None = None
        self.sinks: SinkManager | None = None
        self.http: HttpService | None = None
        self.http_url: str | None = None
        self.state = "starting"
        #: systemd's notify socket (a no-op without ``$NOTIFY_SOCKET``).
        self.notifier = notifier if notifier is not None else SystemdNotifier.from_env()
        self._stop = trio.Event()
        #: ``trio.current_time()`` by which a graceful stop is over (set by request_stop).
        self.stop_deadline: float | None = None
        #: Set once the daemon serves (what READY=1 means).
        self.serving = trio.Event()

    # ------------------------------------------------------------- control

    def request_stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does); the deadline starts now."""
        if self.stop_deadline is None:
            self.stop_deadline = trio.current_time() + self.config.shutdown_grace
        self._stop.set()

    async def reload_sinks(self, sink_configs: Any) -> None:
        """Replace the sink set; raises SinkConfigError and keeps the old set."""
        assert self.sinks is not None
        await self.sinks.reload(sink_configs)

    async def on_sighup(self) -> None:
        """Reopen log files and file sinks, re-read the config's ``sinks:`` section.

        Sinks are added, removed or changed without a restart; a bad new config
        is rejected with a log line and the running sinks stay. systemd hears
        ``RELOADING=1`` before and ``READY=1`` after.
        """
        if self.sinks is None or self.state != "serving":
            log.info("SIGHUP ignored: the daemon is %s", self.state)
            return
        self.notifier.reloading()
        try:
            logs.reopen_log_files()
            self.sinks.reopen()
            try:
                new = await trio.to_thread.run_sync(load_config, self.config_path)
                logs.add_secrets(config_secrets(new))
                await self.sinks.reload(new.sinks)
            except (ConfigError, SinkConfigError) as exc:
                log.error("SIGHUP: keeping the running sinks; the new config is invalid: %s", exc)
                return
            log.info("SIGHUP: sinks reloaded (%d)", len(new.sinks))
        finally:
            self.notifier.ready(self.status_line())

    # ----------------------------------------------------------------- run

    async def run(self, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`request_stop`; raises :class:`StartupError` on bad start-up."""
        config = self.config
        logs.add_secrets(config_secrets(config))
        before, after = fds.raise_open_files_limit()
        if after != before:
            log.info("open-files limit raised from %d to %d", before, after)
        event_log = None
        if config.store.path:
            try:
                # Checkpoints run from a task of their own (Hub.run_checkpoints),
                # never inside a commit the writer waits for.
                event_log = await trio.to_thread.run_sync(
                    lambda: EventLog.open(
                        config.store.path,
                        synchronous=config.store.synchronous,
                        auto_checkpoint=False,
                    )
                )
            except LogOpenError as exc:
                raise StartupError(f"store.path: {exc}") from None
        try:
            await self._run(event_log, task_status)
        finally:
            self.notifier.close()
            if event_log is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(event_log.close)

    async def _run(self, event_log: EventLog | None, task_status: trio.TaskStatus[Daemon]) -> None:
        config = self.config
        state = StateViews(
            finished_ttl=config.events.finished_orders_ttl,
            keep_conid=self.wants.__contains__,
            quote_ttl=max(config.events.marketdata.idle_unsubscribe, 60.0),
        )
        hub = self.hub = Hub(config.events.capacity_for, event_log=event_log, state=state)
        await hub.open()
        try:
            sinks = self.sinks = SinkManager(hub, config.sinks)
        except SinkConfigError as exc:
            raise StartupError(str(exc)) from None
        if self.connect:
            self.connector = Connector(
                hub,
                gateway=config.gateway,
                events=config.events,
                wants=self.wants,
                bars=self.bars,
                book=self.book,
            )
        http = self.http = HttpService(
            hub,
            bind=config.http.bind,
            wants=self.wants,
            bars=self.bars,
            book=self.book,
            token=config.http.token,
            status_extra=self._status_extra,
            health=self._health,
            readiness=self._readiness,
            connector_status=lambda: self.connector.status() if self.connector else None,
            sinks_status=sinks.status,
            capacity_for=config.events.capacity_for,
            allowed_hosts=config.http.allowed_hosts,
            limits=HttpLimits(
                max_connections=config.http.max_connections,
                max_streams=config.http.max_streams,
            ),
            graceful_timeout=config.shutdown_grace,
        )
        notifier = self.notifier
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run_writer)
            await nursery.start(hub.run_checkpoints)
            if notifier.watchdog_interval is not None:
                health = WriterHealth(lambda: hub.pending, period=notifier.watchdog_interval)
                hub.commit_observers.append(health.observe_commit)
                await nursery.start(notifier.run_watchdog, health)
            await nursery.start(self._run_retention)
            connector_scope = trio.CancelScope()
            if self.connector is not None:
                await nursery.start(self._run_in_scope, self.connector.run, connector_scope)
            sinks_scope = trio.CancelScope()
            await nursery.start(self._run_in_scope, sinks.run, sinks_scope)
            self.http_url = await nursery.start(http.run)
            self.state = "serving"
            log.info("serving on %s (epoch %d)", self.http_url, hub.reset_epoch)
            try:
                sinks.run_startup_hooks(daemon=self)
            except SinkConfigError as exc:
                raise StartupError(str(exc)) from None
            self.serving.set()
            notifier.ready(self.status_line())
            await nursery.start(notifier.run_status, self.status_line)
            task_status.started(self)
            await self._stop.wait()
            await self._shutdown(connector_scope, sinks_scope)
            # What is left (the writer, the pruner, the server) has nothing more to do.
            nursery.cancel_scope.cancel()
        log.info("stopped")

    async def _shutdown(
        self, connector_scope: trio.CancelScope, sinks_scope: trio.CancelScope
    ) -> None:
        """Stop taking input, answer long-polls, flush, let sinks finish, all by one deadline.

        The order (docs/architecture.md, "Shutdown"): drain the gateway
        connection (frames already on the wire are captured), stop accepting
        HTTP connections, close the hub (long-polls and streams are answered,
        pending events are committed, the log is marked clean), let each sink
        finish the batch it is delivering and store its checkpoints, wait for
        the HTTP requests still in flight. Waiting on others (the gateway's
        echo, a sink's receiver) ends ``FINAL_RESERVE`` before the deadline,
        so the log and the checkpoints always get their turn.
        """
        assert self.hub is not None and self.sinks is not None and self.http is not None
        assert self.stop_deadline is not None
        deadline = self.stop_deadline
        soft = deadline - min(FINAL_RESERVE, self.config.shutdown_grace / 4)
        self.state = "stopping"
        self.notifier.stopping()
        log.info("shutting down (within %.1f s)", max(0.0, deadline - trio.current_time()))
        self.sinks.run_shutdown_hooks(daemon=self)
        if self.connector is not None:
            # Drain first: frames already on their way are captured, not dropped.
            with trio.move_on_at(soft):
                await self.connector.stop()
        connector_scope.cancel()
        self.http.stop_accepting()
        with trio.move_on_at(deadline):
            await self.hub.close()
        await self.sinks.aclose(deadline, finish_by=soft)
        sinks_scope.cancel()
        # The long-polls and streams the hub just woke are answering; wait for
        # them, then close what is idle.
        with trio.move_on_at(deadline):
            await self.http.wait_idle()

    async def _run_in_scope(
        self, run: Any, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]
    ) -> None:
        with scope:
            await run(task_status=task_status)

    async def _run_retention(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Prune the log every ``store.prune_interval`` in small batches."""
        task_status.started()
        assert self.hub is not None
        event_log = self.hub.event_log
        if event_log is None:
            return
        store = self.config.store
        while True:
            started = time.monotonic()
            try:
                removed = await trio.to_thread.run_sync(
                    lambda: event_log.prune(
                        store.retention_days_for,
                        now=time.time(),
                        max_events_per_topic=store.max_events_per_topic,
                    )
                )
            except Exception as exc:  # prune errors must not stop capture; report and retry
                log.error("retention prune failed: %s", exc)
            else:
                if removed:
                    took = time.monotonic() - started
                    log.info("retention removed %d events in %.1f s", removed, took)
            await trio.sleep(store.prune_interval)

    # -------------------------------------------------------------- status

    def status_line(self) -> str:
        """One line saying what the daemon is doing (systemd's STATUS=)."""
        if self.state != "serving" or self.hub is None:
            return self.state
        if self.connector is not None:
            line = self.connector.status_line()
        else:
            line = f"not connecting, epoch {self.hub.reset_epoch}, {len(self.hub.topics())} topics"
        if self.hub.event_log is not None and self.hub.log_state.degraded:
            line += f"; log degraded: {self.hub.log_state.last_error}"
        return line

    def _status_extra(self) -> dict[str, Any]:
        assert self.hub is not None
        if self.connector is not None:
            extra = self.connector.status()
        else:
            extra = {
                "connected": False,
                "state": "not_connecting",
                "last_message_at": None,
                "reconnect_count": 0,
                "last_error": None,
                "frames": {},
                "topics_subscribed": self.hub.topics(),
            }
        extra["wanted_conids"] = self.wants.wanted()
        extra["uptime_seconds"] = self.hub.uptime_seconds()
        extra["sinks"] = self.sinks.status() if self.sinks is not None else {}
        return extra

    def _readiness(self) -> tuple[int, dict[str, Any]]:
        """``/health/ready``: 200 when connected and receiving with a writable log, else 503."""
        reasons: list[str] = []
        if self.state != "serving" or self.hub is None:
            reasons.append(f"the daemon is {self.state}")
        elif self.connector is None:
            reasons.append("not connecting to a gateway")
        elif not self.connector.connected:
            error = self.connector.last_error
            reasons.append(f"gateway {self.connector.state}" + (f": {error}" if error else ""))
        elif not self.connector.receiving:
            reasons.append(
                f"no frame from the gateway for {self.config.events.heartbeat_timeout:g} s"
            )
        if self.hub is not None and self.hub.event_log is not None and self.hub.log_state.degraded:
            reasons.append(f"the event log is degraded: {self.hub.log_state.last_error}")
        if reasons:
            return 503, {"status": "not_ready", "reason": "; ".join(reasons)}
        return 200, {"status": "ready"}

    def _health(self) -> tuple[int, dict[str, Any]]:
        if self.state != "serving" or self.hub is None:
            return 503, {"status": self.state}
        connected = self.connector.connected if self.connector is not None else False
        log_state = None
        if self.hub.event_log is not None:
            log_state = "degraded" if self.hub.log_state.degraded else "ok"
        degraded = log_state == "degraded" or (self.connector is not None and not connected)
        return 200, {
            "status": "degraded" if degraded else "ok",
            "connected": connected,
            "log": log_state,
        }


@asynccontextmanager
async def open_daemon(
    config: Config,
    *,
    connect: bool = True,
    config_path: str | None = None,
    notifier: SystemdNotifier | None = None,
) -> AsyncIterator[Daemon]:
    """Start a daemon, serving when the body starts; stop it under the deadline on exit.

    Raises :class:`StartupError` (one line saying what to fix) when it cannot
    start. Leaving the block, however it is left, asks for a graceful stop
    and waits for it (``shutdown_grace`` seconds at most, plus the log's close).
    """
    daemon = Daemon(config, connect=connect, config_path=config_path, notifier=notifier)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        try:
            yield daemon
        finally:
            daemon.request_stop()


async def serve_until_signalled(
    config: Config,
    *,
    config_path: str | None = None,
    task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a daemon until SIGINT or SIGTERM (a graceful stop); SIGHUP reloads sinks.

    Reports the serving :class:`Daemon` through ``task_status``.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with open_daemon(config, config_path=config_path) as daemon:
            task_status.started(daemon)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await daemon.on_sighup()
                    continue
                log.info("received %s; stopping", signal.Signals(signum).name)
                break
