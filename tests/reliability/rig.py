"""The reliability rig: a simulated gateway, a daemon, pollers, sinks and the invariants.

A :class:`Rig` puts together, over real sockets:

- a :class:`~bezant_trio.simulator.GatewaySimulator` streaming a mixed load
  (orders, PnL, trades, market data for two conids), whose per-channel
  ``written`` ledger says which frames really reached a socket;
- the daemon, either in this Trio run (:class:`InProcessDaemon`, for
  inspection) or as a real process (:class:`~bezant_trio.testing.DaemonProcess`,
  for SIGTERM, ``kill -9`` and output greps), always with the SQLite log on;
- one HTTP poller per topic (long-polls through Hypercorn, surviving
  restarts of the daemon);
- sinks: the in-memory ``test`` sink (in-process only), a ``file`` sink and a
  ``webhook`` sink posting to a :class:`~bezant_trio.testing.WebhookReceiver`.

:meth:`Rig.verify` checks the promises of docs/architecture.md ("The visibility
rule", "Cursors, epochs and gaps") at the end of a scenario: every frame the
gateway wrote while the daemon was connected is captured exactly once and in
order (holes are allowed only inside the windows of process restarts, where a
frame may be in flight while the process dies; frames written only to a
connection after the daemon had failed it never reached it, and do not
count); each outage yields exactly one epoch bump and one gap per known
topic; every poller and sink ends with everything.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import trio

from bezant_trio.config import config_from_mapping
from bezant_trio.daemon import Daemon, open_daemon
from bezant_trio.simulator import GatewaySimulator
from bezant_trio.simulator.connection import WsConnection
from bezant_trio.testing import DaemonProcess, HTTPError, LeanClient, WebhookReceiver
from helpers import seq_of

CONIDS = (265598, 8314)
CHANNELS = ("orders", "pnl", "trades", *(f"marketdata:{c}" for c in CONIDS))
#: Events per second per channel (market data: per conid) of the mixed stream.
DEFAULT_RATES = {"orders": 40.0, "pnl": 40.0, "trades": 40.0, "marketdata": 40.0}
SINK_TOPICS = ["orders", "pnl", "trades", "marketdata:*", "gap"]
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#: Whether frames the daemon had received but not read yet may be lost when it
#: ends a connection itself (keepalive tickle 401, ``sts authenticated=false``).
#: They were, until the connector learnt to drain such a connection
#: (tests/reliability/README.md, "Bugs found"); True would give those outages a
#: loss window from the newest frame a poller had seen. Kept as a switch to
#: tell a drain problem from others.
DAEMON_CLOSE_DROPS_IN_FLIGHT = False
#: The bound of one step of a scenario: a reconnect, a few events per channel,
#: a sink catching up. Each takes a second or two when it works (the fault
#: matrix's slowest, the gateway down for 3 s, about 4), so a broken one fails
#: in seconds rather than at a scenario's own bound; the long versions
#: (``BEZANT_SOAK=1``: the gateway down for 30 s) get a minute.
STEP = 60.0 if os.environ.get("BEZANT_SOAK") == "1" else 15.0


def is_gap(event: dict[str, Any]) -> bool:
    payload = event["payload"]
    return isinstance(payload, dict) and "new_reset_epoch" in payload and "reason" in payload


def expand(ranges: Iterable[Iterable[int]]) -> set[int]:
    return {seq for first, last in ranges for seq in range(first, last + 1)}


# ---------------------------------------------------------------- daemons


class InProcessDaemon:
    """The daemon in this Trio run: ``daemon.hub``, ``.connector``, ``.sinks`` are inspectable."""

    def __init__(self, nursery: trio.Nursery, config: dict[str, Any]) -> None:
        self.nursery = nursery
        self.config = config
        self.daemon: Daemon | None = None
        self.url: str | None = None
        self._stop = trio.Event()
        self._done = trio.Event()

    async def start(self) -> str:
        self._stop, self._done = trio.Event(), trio.Event()
        stop, done = self._stop, self._done

        async def serve(*, task_status: trio.TaskStatus[Daemon]) -> None:
            try:
                async with open_daemon(config_from_mapping(self.config, env={})) as daemon:
                    task_status.started(daemon)
                    await stop.wait()
            finally:
                done.set()

        self.daemon = await self.nursery.start(serve)
        self.url = self.daemon.http_url
        assert self.url is not None
        return self.url

    async def stop(self) -> None:
        """A graceful stop (``open_daemon`` bounds it by the shutdown deadline)."""
        self.url = None
        if self.daemon is not None and not self._done.is_set():
            self._stop.set()
            with trio.fail_after(self.daemon.config.shutdown_grace + 10):
                await self._done.wait()


# ---------------------------------------------------------------- pollers


class Poller:
    """Long-polls one topic from cursor 0 for as long as it runs, across daemon restarts."""

    def __init__(
        self, rig: Rig, topic: str, *, wait: float = 1.0, limit: int = 500, pause: float = 0.0
    ) -> None:
        self.rig = rig
        self.topic = topic
        self.wait = wait
        self.limit = limit
        self.pause = pause
        self.events: list[dict[str, Any]] = []
        self.since = 0
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self._changed = trio.Event()

    def last_seq(self) -> int:
        for event in reversed(self.events):
            if not is_gap(event):
                return seq_of(event)
        return 0

    def data_count(self) -> int:
        return sum(not is_gap(e) for e in self.events)

    async def wait_for(self, predicate: Callable[[Poller], bool], *, timeout: float = STEP) -> None:
        try:
            with trio.fail_after(timeout):
                while not predicate(self):
                    await self._changed.wait()
        except trio.TooSlowError:
            raise trio.TooSlowError(
                f"poller of {self.topic}: not there within {timeout} s; at cursor {self.since}, "
                f"last seq {self.last_seq()}, {self.data_count()} events, statuses "
                f"{dict(self.statuses)}, errors {self.errors[-3:]}"
            ) from None

    def _request(self) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {"since": self.since, "limit": self.limit, "wait": self.wait}
        family, _, key = self.topic.partition(":")
        if family == "marketdata":
            # The documented way in: it also tells the daemon the conid is wanted.
            params["conid"] = key
            return "/events/marketdata", params
        return f"/events/{self.topic}", params

    async def run(self, client: LeanClient) -> None:
        while True:
            base = self.rig.daemon.url if self.rig.daemon is not None else None
            if base is None:
                await trio.sleep(0.02)  # the daemon is restarting
                continue
            path, params = self._request()
            try:
                response = await client.get(
                    base + path, params=params, headers=self.rig.auth_headers
                )
            except HTTPError:
                await trio.sleep(0.02)  # the daemon went away mid-request
                continue
            self.statuses[response.status_code] += 1
            if response.status_code == 200:
                body = response.json()
                events = body["events"]
                if events:
                    if events[0]["cursor"] <= self.since:
                        self.errors.append(f"{self.topic}: cursor went back at {self.since}")
                    self.events += events
                self.since = body["next_cursor"]
                self._changed.set()
                self._changed = trio.Event()
            elif response.status_code != 204:
                self.errors.append(f"{self.topic}: HTTP {response.status_code} {response.text}")
                await trio.sleep(0.05)
            if self.pause:
                await trio.sleep(self.pause)


# ---------------------------------------------------------------- the rig


@dataclass
class Expect:
    """What the scenario did, to check the invariants against."""

    #: Reconnects to the gateway (epoch bumps with reason reconnected_after_disconnect).
    reconnects: int = 0
    #: Process restarts (epoch bumps with reason process_restart).
    restarts: int = 0
    #: Per channel, ``(lo, hi]`` seq windows where a frame may be lost with its process.
    restart_windows: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    #: Sinks that ended disabled on purpose (not held to "ends with everything").
    disabled_sinks: tuple[str, ...] = ()


@dataclass
class Report:
    """What :meth:`Rig.verify` measured (for the README and failure messages)."""

    captured: dict[str, int] = field(default_factory=dict)
    holes: dict[str, int] = field(default_factory=dict)
    #: Frames written only to connections the daemon had failed, per channel.
    abandoned_only: dict[str, int] = field(default_factory=dict)
    gaps: dict[str, Counter[str]] = field(default_factory=dict)
    reset_epoch: int = 0


class Rig:
    """The simulator, a daemon, pollers and a webhook endpoint in one nursery."""

    def __init__(
        self,
        nursery: trio.Nursery,
        tmp_path: Path,
        *,
        sim_options: dict[str, Any] | None = None,
        token: str | None = None,
    ) -> None:
        self.nursery = nursery
        self.tmp_path = tmp_path
        self.sim = GatewaySimulator(**{"heartbeat_interval": 0.25, **(sim_options or {})})
        self.token = token
        self.daemon: InProcessDaemon | DaemonProcess | None = None
        self.endpoint: WebhookReceiver | None = None
        self.pollers: dict[str, Poller] = {}
        self.client: LeanClient | None = None
        self._poller_scope = trio.CancelScope()
        self._stopped = False
        #: Every WebSocket the gateway accepted, oldest first: their own ledgers
        #: say which seqs went to which connection.
        self.ws_connections: list[WsConnection] = []
        #: Connections the daemon failed for a protocol violation: id -> per
        #: channel, the newest seq queued ahead of the violating frame. What the
        #: gateway writes to them after it never reaches the daemon's reader
        #: (while a failed connection's socket was left open, it stayed subscribed).
        self.abandoned: dict[int, dict[str, int]] = {}
        opened = self.sim._connection_opened

        def record(connection: WsConnection) -> None:
            self.ws_connections.append(connection)
            opened(connection)

        # The one seam to see every connection, even one that opens and closes
        # between two looks (the simulator keeps only the last 20 closed ones).
        self.sim._connection_opened = record  # type: ignore[method-assign]

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def store_path(self) -> Path:
        return self.tmp_path / "state" / "events.db"

    @property
    def file_sink_path(self) -> Path:
        return self.tmp_path / "sink.jsonl"

    async def start_gateway(self) -> None:
        await self.nursery.start(self.sim.run)
        self.endpoint = await self.nursery.start(WebhookReceiver(WEBHOOK_SECRET).run)
        # Pollers and status waits ask hundreds of times a second: the lean
        # client costs a fifth of httpx's CPU per request (testing/http.py).
        self.client = LeanClient(timeout=30)

    def config(
        self,
        *,
        heartbeat_timeout: float = 2.0,
        test_sink: bool = True,
        extra_sinks: Iterable[dict[str, Any]] = (),
        store_path: Path | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A daemon config against this rig's simulator, log on, fast timings."""
        assert self.endpoint is not None
        self.file_sink_path.parent.mkdir(parents=True, exist_ok=True)
        sinks: list[dict[str, Any]] = [
            {
                "name": "hook",
                "type": "webhook",
                "url": self.endpoint.url,
                "secret": WEBHOOK_SECRET,
                "topics": SINK_TOPICS,
                "batch_size": 200,
                "retry": {"min": 0.05, "max": 0.3},
                "timeout": 5,
            },
            {
                "name": "file",
                "type": "file",
                "path": str(self.file_sink_path),
                "topics": SINK_TOPICS,
                "fsync": "never",
            },
        ]
        if test_sink:
            sinks.append(
                {
                    "name": "recorder",
                    "type": "test",
                    "topics": SINK_TOPICS,
                    "retry": {"min": 0.05, "max": 0.3},
                }
            )
        sinks += list(extra_sinks)
        config: dict[str, Any] = {
            "gateway": {"url": self.sim.base_url, "tickle_interval": 0.3},
            "http": {"bind": "127.0.0.1:0", "token": self.token},
            "events": {
                "heartbeat_timeout": heartbeat_timeout,
                "ready_timeout": 2,
                "backoff": {"min": 0.05, "max": 0.3},
                "channels": ["orders", "pnl", "trades"],
                "capacity": {"default": 2000},
                "marketdata": {"idle_unsubscribe": 0},
                # The ledgers count the gateway's frames exactly; a resync event
                # (the simulator answers /iserver/account/orders) is not one.
                "resync": False,
            },
            "store": {"path": str(store_path or self.store_path)},
            "shutdown_grace": 5,
            "sinks": sinks,
        }
        for key, value in overrides.items():
            config[key] = value
        return config

    async def start_in_process(self, config: dict[str, Any]) -> InProcessDaemon:
        daemon = InProcessDaemon(self.nursery, config)
        self.daemon = daemon
        await daemon.start()
        return daemon

    async def start_process(
        self, config: dict[str, Any], env: dict[str, str] | None = None
    ) -> DaemonProcess:
        daemon = DaemonProcess(self.tmp_path, config, env=env)
        self.daemon = daemon
        await daemon.start()
        return daemon

    # ------------------------------------------------------------ the stream

    async def wait_subscribed(self) -> None:
        """Wait until the daemon's connection has every channel and conid subscribed."""
        for channel in CHANNELS:
            await self.sim.wait_subscribed(channel, timeout=STEP)

    async def wait_newest_subscribed(self) -> None:
        """Wait until the newest connection to the gateway has every channel subscribed.

        (An older connection may still be open on the gateway's side for a moment.)
        """

        def holds(sim: GatewaySimulator) -> bool:
            newest = max(sim.connections, key=lambda c: c.id, default=None)
            return newest is not None and all(newest.wants(ch) for ch in CHANNELS)

        await self.sim.wait_for(holds, timeout=STEP)

    def seen(self) -> dict[str, int]:
        """The newest seq a poller has seen, per channel (seen means committed)."""
        return {ch: self.pollers[ch].last_seq() for ch in CHANNELS}

    def assigned(self) -> dict[str, int]:
        """The newest seq the gateway assigned, per channel."""
        return {ch: self.sim._channel(ch).last_assigned for ch in CHANNELS}

    def abandon_open_connections(self) -> None:
        """Call just before sending every open connection a frame the daemon must
        fail it for (a protocol violation): frames queued behind that frame, and
        all the gateway writes to a leaked connection later on, never reach the
        daemon's reader, so they do not count as written to the daemon."""
        cutoff = self.assigned()
        for connection in self.sim.connections:
            self.abandoned.setdefault(connection.id, cutoff)

    def written_to_daemon(self, channel: str) -> set[int]:
        """The seqs of ``channel`` written to a connection the daemon was reading.

        The simulator's ``written`` ledger, less what went only to connections
        after the daemon had failed them (see :attr:`abandoned`).
        """
        seqs: set[int] = set()
        every: set[int] = set()
        for connection in self.ws_connections:
            ranges = connection.written.get(channel)
            if ranges is None:
                continue
            cut = self.abandoned.get(connection.id, {}).get(channel)
            for first, last in ranges.ranges():
                every.update(range(first, last + 1))
                seqs.update(range(first, (last if cut is None else min(last, cut)) + 1))
        # Every connection was seen: their ledgers add up to the simulator's.
        assert every == expand(self.sim.written(channel).ranges()), channel
        return seqs

    def writers(self, channel: str, seq: int) -> str:
        """Which connections ``seq`` of ``channel`` was written to (for failure messages)."""
        names = []
        for connection in self.ws_connections:
            ranges = connection.written.get(channel)
            if ranges is not None and seq in ranges:
                cut = self.abandoned.get(connection.id, {}).get(channel)
                names.append(
                    f"connection {connection.id}"
                    + ("" if cut is None else f" (failed by the daemon after seq {cut})")
                )
        return ", ".join(names) or "no connection"

    def start_pollers(self, **options: Any) -> None:
        assert self.client is not None
        client = self.client

        for channel in (*CHANNELS, "gap"):
            self.pollers[channel] = Poller(self, channel, **options)

        async def run_all() -> None:
            with self._poller_scope:
                async with trio.open_nursery() as nursery:
                    for poller in self.pollers.values():
                        nursery.start_soon(poller.run, client)

        self.nursery.start_soon(run_all)

    async def warm_up(self, rates: dict[str, float] | None = None, events: int = 15) -> None:
        """Start pollers (they want the conids) and the stream; wait for ``events`` per channel."""
        if not self.pollers:
            self.start_pollers()
        await self.wait_subscribed()
        self.sim.start_stream(rates or DEFAULT_RATES)
        await self.wait_events(events)

    async def wait_events(self, more: int) -> None:
        """Wait until every channel's poller has seen ``more`` data events beyond now."""
        targets = {ch: self.pollers[ch].data_count() + more for ch in CHANNELS}
        for channel, target in targets.items():
            await self.pollers[channel].wait_for(lambda p, t=target: p.data_count() >= t)

    async def drain(self) -> None:
        """Stop the stream; wait until pollers hold every frame written and sinks caught up."""
        self.sim.stop_stream()
        for channel in CHANNELS:
            last = max(self.written_to_daemon(channel), default=0)
            await self.pollers[channel].wait_for(lambda p, n=last: p.last_seq() >= n)
        await self.wait_sinks_caught_up()

    async def status(self) -> dict[str, Any]:
        assert self.client is not None and self.daemon is not None and self.daemon.url
        response = await self.client.get(
            f"{self.daemon.url}/events/_status", headers=self.auth_headers
        )
        assert response.status_code == 200, response.text
        return response.json()

    async def wait_status(
        self,
        predicate: Callable[[dict[str, Any]], Any],
        *,
        poll: float = 0.02,
        timeout: float = STEP,
    ) -> dict[str, Any]:
        """Poll ``_status`` until ``predicate`` holds (the daemon may be another process)."""
        status: dict[str, Any] | None = None
        try:
            with trio.fail_after(timeout):
                while True:
                    status = await self.status()
                    if predicate(status):
                        return status
                    await trio.sleep(poll)
        except trio.TooSlowError:
            raise trio.TooSlowError(
                f"the daemon's status did not get there within {timeout} s; last: {status}"
            ) from None

    async def wait_sinks_caught_up(
        self, skip: Iterable[str] = (), *, timeout: float = STEP
    ) -> None:
        """Wait until every sink (but ``skip``) holds every topic's head."""
        try:
            with trio.fail_after(timeout):
                await self._sinks_caught_up(set(skip))
        except trio.TooSlowError:
            sinks = (await self.status())["sinks"]
            raise trio.TooSlowError(
                f"sinks not caught up within {timeout} s: "
                + str({n: (s["state"], s["lag"], s["last_error"]) for n, s in sinks.items()})
            ) from None

    async def _sinks_caught_up(self, skip: set[str]) -> None:
        while True:
            status = await self.status()
            heads = status["head_cursors"]
            behind = {
                name: sink["lag"]
                for name, sink in status["sinks"].items()
                if name not in skip
                and (
                    sink["lag"]
                    or any(
                        sink["checkpoints"].get(t, 0) < heads.get(t, 0) for t in sink["checkpoints"]
                    )
                )
            }
            if not behind:
                return
            await trio.sleep(0.05)

    async def stop(self) -> None:
        """Stop everything; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._poller_scope.cancel()
        self.sim.stop_stream()
        if isinstance(self.daemon, DaemonProcess):
            if self.daemon.running:
                await self.daemon.stop(signal.SIGTERM, timeout=30)
            self.daemon.kill()
        elif self.daemon is not None:
            await self.daemon.stop()
        if self.client is not None:
            await self.client.aclose()
        self.sim.stop()

    # ------------------------------------------------------------ reading

    async def read_all(self, topic: str) -> list[dict[str, Any]]:
        """Every event of ``topic`` from cursor 0, through the HTTP API."""
        assert self.client is not None and self.daemon is not None and self.daemon.url
        events: list[dict[str, Any]] = []
        since = 0
        while True:
            response = await self.client.get(
                f"{self.daemon.url}/events/{topic}",
                params={"since": since, "limit": 1000},
                headers=self.auth_headers,
            )
            assert response.status_code in (200, 204), (topic, response.status_code, response.text)
            if response.status_code == 204 or not response.json()["events"]:
                return events
            body = response.json()
            events += body["events"]
            since = body["next_cursor"]

    # ------------------------------------------------------------ the invariants

    async def verify(self, expect: Expect) -> Report:
        """Check every invariant (see the module docstring); returns what it measured."""
        report = Report()
        status = await self.status()
        report.reset_epoch = status["reset_epoch"]
        outages = expect.reconnects + expect.restarts
        full: dict[str, list[dict[str, Any]]] = {}
        for channel in CHANNELS:
            events = full[channel] = await self.read_all(channel)
            self._check_topic(channel, events, expect, report)
        gaps = full["gap"] = await self.read_all("gap")
        assert len(gaps) == outages, ("gap topic", [g["payload"] for g in gaps])
        # The first start has epoch 1; every outage bumps it once.
        assert status["reset_epoch"] == 1 + outages, (status["reset_epoch"], expect)
        assert [g["payload"]["new_reset_epoch"] for g in gaps] == list(range(2, 2 + outages))
        if expect.restarts == 0:
            assert status["reconnect_count"] == expect.reconnects, status["last_error"]
        for topic, poller in self.pollers.items():
            assert not poller.errors, poller.errors[:5]
            assert poller.events == full[topic], f"poller of {topic} differs from the log"
        self._check_sinks(full, expect)
        return report

    def _check_topic(
        self, channel: str, events: list[dict[str, Any]], expect: Expect, report: Report
    ) -> None:
        cursors = [e["cursor"] for e in events]
        assert cursors == sorted(set(cursors)), f"{channel}: cursors not strictly increasing"
        data = [e for e in events if not is_gap(e)]
        seqs = [seq_of(e) for e in data]
        assert seqs == sorted(set(seqs)), f"{channel}: a frame captured twice or out of order"
        everything = expand(self.sim.written(channel).ranges())
        extra = set(seqs) - everything
        assert not extra, (
            f"{channel}: captured frames the gateway never wrote: {sorted(extra)[:10]}"
        )
        written = self.written_to_daemon(channel)
        holes = sorted(written - set(seqs))
        windows = expect.restart_windows.get(channel, [])
        outside = [s for s in holes if not any(lo < s <= hi for lo, hi in windows)]
        assert not outside, (
            f"{channel}: {len(outside)} frames written while connected were not captured, "
            f"e.g. seqs {outside[:10]} (of {len(written)} written; seq {outside[0]} went to "
            f"{self.writers(channel, outside[0])}); " + _around(events, outside[0])
        )
        report.captured[channel] = len(seqs)
        report.holes[channel] = len(holes)
        report.abandoned_only[channel] = len(everything - written - set(seqs))
        # One gap per outage, in epoch order, and every event carries the epoch
        # that was current when it was received.
        reasons = Counter(e["payload"]["reason"] for e in events if is_gap(e))
        report.gaps[channel] = reasons
        assert reasons["reconnected_after_disconnect"] == expect.reconnects, (channel, reasons)
        assert reasons["process_restart"] == expect.restarts, (channel, reasons)
        epoch = events[0]["reset_epoch"] if events else 1
        for event in events:
            if is_gap(event):
                assert event["payload"]["new_reset_epoch"] == event["reset_epoch"] > epoch
                epoch = event["reset_epoch"]
            else:
                assert event["reset_epoch"] == epoch, (channel, event["cursor"], epoch)

    def _check_sinks(self, full: dict[str, list[dict[str, Any]]], expect: Expect) -> None:
        wanted = {t: full[t] for t in (*CHANNELS, "gap")}
        endpoint = self.endpoint
        assert endpoint is not None and self.daemon is not None
        configured = {sink["name"] for sink in (self.daemon.config or {}).get("sinks") or ()}
        if "hook" in configured and "hook" not in expect.disabled_sinks:
            assert endpoint.bad_signatures == 0, f"{endpoint.bad_signatures} bad signatures"
            assert all(r.signature_ok for r in endpoint.requests), "bad webhook signature"
            # Each webhook event is the wire event with its own "id" in front.
            events = [{k: v for k, v in e.items() if k != "id"} for e in endpoint.events()]
            _check_at_least_once("webhook sink", events, wanted)
        if "file" in configured and "file" not in expect.disabled_sinks:
            # A file sink that never wrote its file delivered nothing: that fails
            # below as "never got cursors", it is not a check to skip.
            path = self.file_sink_path
            lines = path.read_bytes().splitlines() if path.exists() else []
            _check_at_least_once("file sink", [orjson.loads(line) for line in lines], wanted)
        if isinstance(self.daemon, InProcessDaemon) and self.daemon.daemon is not None:
            sinks = self.daemon.daemon.sinks
            assert sinks is not None
            for name, sink in sinks.sinks.items():
                if name in expect.disabled_sinks or not hasattr(sink, "events"):
                    continue
                delivered = [orjson.loads(e.json) for e in sink.events]
                _check_at_least_once(f"sink {name}", delivered, wanted)


def _around(events: list[dict[str, Any]], seq: int) -> str:
    """What the log holds around a missing seq: the neighbours and any gap between them."""
    before = after = None
    for index, event in enumerate(events):
        if not is_gap(event) and seq_of(event) > seq:
            after = index
            break
    if after is None:
        return "after the last captured frame"
    for index in range(after - 1, -1, -1):
        if not is_gap(events[index]):
            before = index
            break
    window = events[(before or 0) : after + 1]
    return "around it: " + ", ".join(
        f"{e['cursor']}:{e['payload']['reason'] if is_gap(e) else seq_of(e)}@{e['received_at']}"
        for e in window
    )


def _check_at_least_once(
    what: str, delivered: list[dict[str, Any]], wanted: dict[str, list[dict[str, Any]]]
) -> None:
    """Everything, in cursor order per topic, repeats allowed (at-least-once)."""
    firsts: dict[str, dict[int, dict[str, Any]]] = {t: {} for t in wanted}
    order: dict[str, list[int]] = {t: [] for t in wanted}
    for event in delivered:
        topic = event["topic"]
        if topic not in firsts:
            continue
        seen = firsts[topic]
        if event["cursor"] in seen:
            assert seen[event["cursor"]] == event, f"{what}: {topic} {event['cursor']} changed"
            continue
        seen[event["cursor"]] = event
        order[topic].append(event["cursor"])
    for topic, events in wanted.items():
        assert order[topic] == sorted(order[topic]), f"{what}: {topic} delivered out of order"
        got = [firsts[topic][c] for c in order[topic]]
        missing = [e["cursor"] for e in events if e["cursor"] not in firsts[topic]]
        assert not missing, f"{what}: {topic} never got cursors {missing[:10]} ({len(missing)})"
        assert got == events, f"{what}: {topic} differs from the log"
