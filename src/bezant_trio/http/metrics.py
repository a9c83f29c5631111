"""``GET /metrics``: Prometheus text exposition, at no cost per event.

Almost everything is read at scrape time from the live status the daemon
already keeps (the hub's counters, the connector's and the sinks' status
dicts) by one custom collector, so ingestion pays nothing for metrics. Two
things need recording as they happen, and both are cheap:

- the log's commit latency, a histogram fed by ``hub.commit_observers``
  (once per committed *batch*, not per event);
- HTTP requests by route template, method and status, counted into a plain
  dict by an ``after_request`` hook and by the poll fast path (no lock, no
  label lookup per request).

Every label value comes from a fixed set, never from the request as sent: a
route is one of the app's templates or ``unmatched``, a method one of
:data:`METHODS` or ``other``, a status a number the app answered. So no
client can grow the registry (or the scrape) by inventing paths or methods.

Reads the hub and status callables; never imports the connector or sinks.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from quart import Response, request
from quart_trio import QuartTrio

from bezant_trio import __version__
from bezant_trio.http.fastpath import UNMATCHED, FastPolls
from bezant_trio.store.hub import Hub
from bezant_trio.wants import Wants

__all__ = ["CONTENT_TYPE", "METHODS", "DaemonMetrics"]

#: The text format ``generate_latest`` writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The method label values (RFC 9110 and PATCH); any other method counts as ``other``.
METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)

_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 10, 50, 100, 500, 1000, 5000)


class DaemonMetrics:
    """The daemon's metrics registry; :meth:`render` answers ``/metrics``.

    ``connector_status`` returns the connector's status dict (or None when
    the daemon does not connect), ``sinks_status`` the sink manager's;
    ``capacity_for`` gives a topic's ring capacity; ``in_flight`` the HTTP
    requests in progress; ``sse_clients`` the open streams; ``refused`` the
    requests refused at a cap or for their body, by reason (``http.limits``);
    ``connections`` the open HTTP connections, ``connections_dropped`` those
    closed at once beyond the cap and its reserve.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        connector_status: Callable[[], dict[str, Any] | None] = lambda: None,
        sinks_status: Callable[[], dict[str, dict[str, Any]]] = dict,
        capacity_for: Callable[[str], int] | None = None,
        in_flight: Callable[[], int] | None = None,
        sse_clients: Callable[[], int] | None = None,
        wants: Wants | None = None,
        refused: Callable[[], dict[str, int]] | None = None,
        connections: Callable[[], int] | None = None,
        connections_dropped: Callable[[], int] | None = None,
        process: bool = True,
    ) -> None:
        self.hub = hub
        self.connector_status = connector_status
        self.sinks_status = sinks_status
        self.capacity_for = capacity_for
        self.in_flight = in_flight
        self.sse_clients = sse_clients
        self.refused = refused
        self.connections = connections
        self.connections_dropped = connections_dropped
        self.wants = wants
        self.registry = CollectorRegistry(auto_describe=True)
        self.commit_seconds = Histogram(
            "bezant_log_commit_seconds",
            "Time one group commit of the event log took.",
            buckets=_COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.commit_events = Histogram(
            "bezant_log_commit_batch_events",
            "Events per group commit of the event log.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        #: (route template, method, status) -> requests answered.
        self.http_requests: dict[tuple[str, str, str], int] = {}
        hub.commit_observers.append(self.observe_commit)
        self.registry.register(_LiveCollector(self))
        if process:
            # The default registry's process/platform/GC collectors are stateless readers.
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)

    def observe_commit(self, latency: float, count: int) -> None:
        """A ``hub.commit_observers`` callback: one observation per committed batch."""
        self.commit_seconds.observe(latency)
        self.commit_events.observe(count)

    def install(self, app: QuartTrio, fast_polls: FastPolls) -> None:
        """Count every answered request (``create_app`` calls this).

        Quart's answers are counted by an ``after_request`` hook; the polls the
        fast path answers without Quart (``http.fastpath``) report here too.
        """

        @app.after_request
        async def _count_request(response: Response) -> Response:
            rule = request.url_rule
            self.count_request(
                rule.rule if rule is not None else UNMATCHED, request.method, response.status_code
            )
            return response

        if self.count_request not in fast_polls.observers:
            fast_polls.observers.append(self.count_request)

    def count_request(self, route: str, method: str, status: int) -> None:
        """Count one answered request under its route template (no lock, no label lookup).

        ``route`` is a route template or ``unmatched`` (the callers know only
        those); ``method`` is the request's, kept only if it is in :data:`METHODS`.
        """
        key = (route, method if method in METHODS else "other", str(status))
        counts = self.http_requests
        counts[key] = counts.get(key, 0) + 1

    def render(self) -> bytes:
        """The exposition text (what ``GET /metrics`` answers)."""
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """Reads the live status dicts at scrape time."""

    def __init__(self, metrics: DaemonMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        # Families are only known at scrape time; registering must not scrape.
        return []

    def collect(self) -> Iterator[Metric]:
        hub = self._metrics.hub
        status = hub.status()
        yield from _info()
        yield from self._hub_metrics(hub, status)
        yield from self._log_metrics(status.get("log"))
        yield from self._connector_metrics(self._metrics.connector_status())
        yield from self._sink_metrics(self._metrics.sinks_status())
        yield from self._http_metrics(status)

    def _hub_metrics(self, hub: Hub, status: dict[str, Any]) -> Iterator[Metric]:
        ingested = CounterMetricFamily(
            "bezant_events_ingested",
            "Events captured per topic since the process started (gap events included).",
            labels=["topic"],
        )
        for topic, count in status["events_published"].items():
            ingested.add_metric([topic], count)
        yield ingested
        head = GaugeMetricFamily(
            "bezant_topic_head_cursor", "Newest visible cursor per topic.", labels=["topic"]
        )
        ring = GaugeMetricFamily(
            "bezant_ring_events", "Events held in the in-memory ring per topic.", labels=["topic"]
        )
        capacity = GaugeMetricFamily(
            "bezant_ring_capacity", "Capacity of the in-memory ring per topic.", labels=["topic"]
        )
        for topic, size in status["buffer_sizes"].items():
            ring.add_metric([topic], size)
            head.add_metric([topic], status["head_cursors"].get(topic, 0))
            if self._metrics.capacity_for is not None:
                capacity.add_metric([topic], self._metrics.capacity_for(topic))
        yield head
        yield ring
        if self._metrics.capacity_for is not None:
            yield capacity
        yield GaugeMetricFamily(
            "bezant_reset_epoch", "The current reset epoch.", value=status["reset_epoch"]
        )
        yield GaugeMetricFamily(
            "bezant_wanted_conids",
            "Market-data conids some poller wants.",
            value=len(self._metrics.wants) if self._metrics.wants is not None else 0,
        )
        yield GaugeMetricFamily(
            "bezant_hub_waiters",
            "Readers parked waiting for events: long-polls, SSE streams and sink watchers.",
            value=status["waiting"],
        )
        yield GaugeMetricFamily(
            "bezant_uptime_seconds", "Seconds since the hub started.", value=hub.uptime_seconds()
        )
        # What the process's resident size cannot tell: memory the allocator
        # keeps after a burst (arenas, glibc's heap) stays resident, while a
        # leak keeps objects alive. Under a steady load this levels off.
        yield GaugeMetricFamily(
            "bezant_python_allocated_blocks",
            "Memory blocks the Python allocator has handed out and not yet had back "
            "(live objects and buffers).",
            value=sys.getallocatedblocks(),
        )

    def _log_metrics(self, log: dict[str, Any] | None) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "bezant_log_enabled", "1 when the durable SQLite log is on.", value=int(log is not None)
        )
        if log is None:
            return
        yield GaugeMetricFamily(
            "bezant_log_degraded",
            "1 while the log fails and events are served from memory.",
            value=int(log["state"] == "degraded"),
        )
        yield CounterMetricFamily(
            "bezant_log_commits", "Group commits of the event log.", value=log["commits"]
        )
        yield CounterMetricFamily(
            "bezant_log_committed_events",
            "Events committed to the event log.",
            value=log["committed_events"],
        )
        yield GaugeMetricFamily(
            "bezant_log_backlog_events",
            "Events shown while degraded that still wait to be committed.",
            value=log["backlog"],
        )

    def _connector_metrics(self, connector: dict[str, Any] | None) -> Iterator[Metric]:
        connected = bool(connector and connector.get("connected"))
        yield GaugeMetricFamily(
            "bezant_gateway_connected",
            "1 while the gateway WebSocket is open and subscribed.",
            value=int(connected),
        )
        yield CounterMetricFamily(
            "bezant_gateway_reconnects",
            "Reconnects to the gateway since the process started.",
            value=(connector or {}).get("reconnect_count", 0),
        )
        attempts = CounterMetricFamily(
            "bezant_gateway_connect_attempts",
            "Connection attempts to the gateway since the process started.",
            value=(connector or {}).get("connect_attempts", 0),
        )
        yield attempts
        failures = CounterMetricFamily(
            "bezant_gateway_connect_failures",
            "Failed connection attempts by reason (timeout, refused, needs_login, no_ready, ...).",
            labels=["reason"],
        )
        for reason, count in (connector or {}).get("failed_attempts", {}).items():
            failures.add_metric([reason], count)
        yield failures
        state = GaugeMetricFamily(
            "bezant_gateway_state",
            "1 for the state the gateway connection is in (docs/api.md, gateway states).",
            labels=["state"],
        )
        if connector is not None:
            state.add_metric([str(connector.get("state", "unknown"))], 1)
        yield state
        frames = CounterMetricFamily(
            "bezant_gateway_frames", "Frames received from the gateway by kind.", labels=["kind"]
        )
        for kind, count in (connector or {}).get("frames", {}).items():
            frames.add_metric([kind], count)
        yield frames

    def _sink_metrics(self, sinks: dict[str, dict[str, Any]]) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "bezant_sink_lag_events",
            "Events a sink has not acknowledged yet, summed over its topics.",
            labels=["sink"],
        )
        delivered = CounterMetricFamily(
            "bezant_sink_delivered_events",
            "Events a sink acknowledged (since it was started or last reloaded).",
            labels=["sink"],
        )
        failures = CounterMetricFamily(
            "bezant_sink_failures",
            "Failed deliveries of a sink (since it was started or last reloaded).",
            labels=["sink"],
        )
        state = GaugeMetricFamily(
            "bezant_sink_state", "1 for the state each sink is in.", labels=["sink", "state"]
        )
        for name, sink in sinks.items():
            lag.add_metric([name], sink.get("lag", 0))
            delivered.add_metric([name], sink.get("delivered", 0))
            failures.add_metric([name], sink.get("failures", 0))
            state.add_metric([name, str(sink.get("state", "unknown"))], 1)
        yield lag
        yield delivered
        yield failures
        yield state

    def _http_metrics(self, status: dict[str, Any]) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "bezant_http_requests",
            "HTTP requests answered, by route template, method and status.",
            labels=["route", "method", "status"],
        )
        for (route, method, code), count in sorted(self._metrics.http_requests.items()):
            requests.add_metric([route, method, code], count)
        yield requests
        if self._metrics.in_flight is not None:
            yield GaugeMetricFamily(
                "bezant_http_requests_in_flight",
                "HTTP requests being answered (long-polls and streams included).",
                value=self._metrics.in_flight(),
            )
        if self._metrics.sse_clients is not None:
            yield GaugeMetricFamily(
                "bezant_sse_clients",
                "Open Server-Sent Events streams.",
                value=self._metrics.sse_clients(),
            )
        if self._metrics.connections is not None:
            yield GaugeMetricFamily(
                "bezant_http_connections",
                "Open HTTP connections (http.max_connections caps them).",
                value=self._metrics.connections(),
            )
        if self._metrics.connections_dropped is not None:
            yield CounterMetricFamily(
                "bezant_http_connections_dropped",
                "Connections closed as soon as accepted: beyond http.max_connections and "
                "the /health reserve.",
                value=self._metrics.connections_dropped(),
            )
        if self._metrics.refused is not None:
            refused = CounterMetricFamily(
                "bezant_http_refused",
                "Requests refused before any route: at http.max_connections or "
                "http.max_streams (503), or for a request body (408, 413), by reason.",
                labels=["reason"],
            )
            for reason, count in self._metrics.refused().items():
                refused.add_metric([reason], count)
            yield refused


def _info() -> Iterator[Metric]:
    info = GaugeMetricFamily("bezant_build_info", "The running version.", labels=["version"])
    info.add_metric([__version__], 1)
    yield info
