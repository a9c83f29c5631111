"""The supervisor: one root nursery that wires every part together.

This is the only module that knows the connector, the hub and its log, the
HTTP surface and the sinks. Start-up is ordered so that ``run`` reports
started (and systemd hears READY=1) only when the daemon can serve: the log
is open, the writer runs, the connector has started, the HTTP socket is bound.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

import trio

from bezant_trio import logs
from bezant_trio.config import Config, ConfigError, load_config
from bezant_trio.cpapi.connector import DRAIN_MAX, Connector, ConnectorSettings
from bezant_trio.http.app import HttpContext, create_app
from bezant_trio.http.fastpath import FastPolls
from bezant_trio.http.metrics import DaemonMetrics
from bezant_trio.http.server import BindError, InFlight, serve_http
from bezant_trio.http.sse import SseStreams
from bezant_trio.sinks.manager import SinkConfigError, SinkManager
from bezant_trio.store.hub import Hub
from bezant_trio.store.log import EventLog, LogOpenError
from bezant_trio.systemd import SystemdNotifier, WriterHealth

__all__ = ["Daemon", "StartupError"]

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The daemon cannot start; ``str()`` is one line saying what to fix (exit 2)."""


class Daemon:
    """The whole daemon, startable as ``await nursery.start(daemon.run)``."""

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
        self.connector: Connector | None = None
        self.sinks: SinkManager | None = None
        self.http_url: str | None = None
        self.state = "starting"
        #: systemd's notify socket (a no-op without ``$NOTIFY_SOCKET``).
        self.notifier = notifier if notifier is not None else SystemdNotifier.from_env()
        self.metrics: DaemonMetrics | None = None
        self.streams = SseStreams()
        #: The ASGI fast path for plain polls (on; tests switch it off to compare).
        self.fast_polls = FastPolls()
        self._stop = trio.Event()
        #: Set once the daemon serves (what READY=1 means).
        self.serving = trio.Event()
        self._http_stop = trio.Event()

    # ------------------------------------------------------------- control

    def request_stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
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
        event_log = None
        if config.store.path:
            try:
                event_log = await trio.to_thread.run_sync(
                    lambda: EventLog.open(config.store.path, synchronous=config.store.synchronous)
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
        hub = self.hub = Hub(
            config.events.capacity_for,
            event_log=event_log,
            max_conids=config.events.marketdata.max_conids,
        )
        await hub.open()
        try:
            self.sinks = SinkManager(hub, config.sinks)
        except SinkConfigError as exc:
            raise StartupError(str(exc)) from None
        if self.connect:
            self.connector = Connector(hub, ConnectorSettings.from_config(config))
        metrics = self.metrics = DaemonMetrics(
            hub,
            connector_status=lambda: self.connector.status() if self.connector else None,
            sinks_status=lambda: self.sinks.status() if self.sinks else {},
            capacity_for=config.events.capacity_for,
            in_flight=lambda: app.count,
            sse_clients=lambda: self.streams.clients,
        )
        app = self._http = InFlight(
            create_app(
                HttpContext(
                    hub=hub,
                    token=config.http.token,
                    status_extra=self._status_extra,
                    health=self._health,
                    metrics=metrics.render,
                    history_enabled=lambda: event_log is not None,
                    streams=self.streams,
                    fast_polls=self.fast_polls,
                    extensions=[metrics.install],
                )
            )
        )
        notifier = self.notifier
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run_writer)
            if notifier.watchdog_interval is not None:
                health = WriterHealth(lambda: hub.pending, period=notifier.watchdog_interval)
                hub.commit_observers.append(health.observe_commit)
                await nursery.start(notifier.run_watchdog, health)
            await nursery.start(self._run_retention)
            connector_scope = trio.CancelScope()
            if self.connector is not None:
                await nursery.start(self._run_connector, connector_scope)
            sinks_scope = trio.CancelScope()
            await nursery.start(self._run_sinks, sinks_scope)
            try:
                binds = await nursery.start(
                    lambda task_status: serve_http(
                        app,
                        config.http.bind,
                        shutdown_trigger=self._http_stop.wait,
                        graceful_timeout=config.shutdown_grace,
                        task_status=task_status,
                    )
                )
            except BindError as exc:
                raise StartupError(str(exc)) from None
            self.http_url = binds[0]
            self.state = "serving"
            log.info("serving on %s (epoch %d)", self.http_url, hub.reset_epoch)
            self.sinks.run_startup_hooks(daemon=self)
            self.serving.set()
            notifier.ready(self.status_line())
            await nursery.start(notifier.run_status, self.status_line)
            task_status.started(self)
            await self._stop.wait()
            await self._shutdown(nursery, connector_scope, sinks_scope)
        log.info("stopped")

    async def _shutdown(
        self,
        nursery: trio.Nursery,
        connector_scope: trio.CancelScope,
        sinks_scope: trio.CancelScope,
    ) -> None:
        """Stop taking input, answer long-polls, flush, let sinks finish, exit."""
        assert self.hub is not None and self.sinks is not None
        self.state = "stopping"
        self.notifier.stopping()
        log.info("shutting down")
        self.sinks.run_shutdown_hooks(daemon=self)
        if self.connector is not None:
            # Drain first: frames already on their way are captured, not dropped.
            await self.connector.stop(min(DRAIN_MAX, self.config.shutdown_grace))
        connector_scope.cancel()
        self._http_stop.set()
        with trio.move_on_after(self.config.shutdown_grace + 1):
            await self.hub.close()
        with trio.move_on_after(self.config.shutdown_grace + 1):
            await self.sinks.aclose(self.config.shutdown_grace)
        sinks_scope.cancel()
        # Hypercorn stopped accepting; wait for the requests in flight (the
        # long-polls just woken) to be answered, then close what is idle.
        with trio.move_on_after(self.config.shutdown_grace):
            await self._http.wait_idle()
        # What is left (the writer, the pruner) has nothing more to do.
        nursery.cancel_scope.cancel()

    async def _run_connector(
        self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]
    ) -> None:
        assert self.connector is not None
        with scope:
            await self.connector.run(task_status=task_status)

    async def _run_sinks(
        self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]
    ) -> None:
        assert self.sinks is not None
        with scope:
            await self.sinks.run(task_status=task_status)

    async def _run_retention(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Prune the log every ``store.prune_interval`` in small batches."""
        task_status.started()
        assert self.hub is not None
        event_log = self.hub.event_log
        if event_log is None:
            return
        store = self.config.store
        while True:
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
                    log.info("retention removed %d events", removed)
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
        extra["uptime_seconds"] = self.hub.uptime_seconds()
        extra["sinks"] = self.sinks.status() if self.sinks is not None else {}
        return extra

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


def config_secrets(config: Config) -> list[str]:
    """Every secret value of ``config`` (the token, sink secrets): what logs must never show.

    Found as the values :meth:`Config.to_dict` masks, so it stays in step
    with what ``check-config`` hides.
    """
    found: list[str] = []
    _collect_masked(config.to_dict(mask_secrets=False), config.to_dict(mask_secrets=True), found)
    return found


def _collect_masked(plain: Any, masked: Any, found: list[str]) -> None:
    if isinstance(plain, dict) and isinstance(masked, dict):
        for key, value in plain.items():
            _collect_masked(value, masked.get(key), found)
    elif isinstance(plain, list) and isinstance(masked, list):
        for value, hidden in zip(plain, masked, strict=False):
            _collect_masked(value, hidden, found)
    elif isinstance(plain, str) and masked != plain:
        found.append(plain)


async def run_until_signalled(daemon: Daemon) -> None:
    """Run ``daemon``; SIGINT/SIGTERM stop it gracefully, SIGHUP reloads sinks."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:

        async def watch() -> None:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await daemon.on_sighup()
                else:
                    log.info("received %s; stopping", signal.Signals(signum).name)
                    daemon.request_stop()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await daemon.run()
            nursery.cancel_scope.cancel()
