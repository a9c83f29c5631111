"""``GET /metrics``: Prometheus text that parses, and counters that move."""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families
from serving import exchange, start_service, status_of

from bezant_trio.config import config_from_mapping
from bezant_trio.daemon import Daemon
from bezant_trio.http.context import HttpContext
from bezant_trio.http.metrics import DaemonMetrics
from bezant_trio.simulator import GatewaySimulator
from bezant_trio.store.hub import Hub
from bezant_trio.store.log import EventLog
from helpers import SSL_CONTEXT, capacity_of, wait_until


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}, via prometheus-client's own parser."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(parsed: dict[Any, float], name: str, **labels: str) -> float:
    return parsed[(name, tuple(sorted(labels.items())))]


async def _scrape(client: httpx.AsyncClient, base: str, **kw: Any) -> dict[Any, float]:
    response = await client.get(f"{base}/metrics", **kw)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_metrics_parse_and_counters_move(serve, client: httpx.AsyncClient) -> None:
    hub = Hub(capacity_of(orders=10))
    await hub.open()
    metrics = DaemonMetrics(hub, capacity_for=capacity_of(orders=10))
    with trio.fail_after(10):
        base = await serve(HttpContext(hub=hub), metrics=metrics)
        for i in range(3):
            hub.publish("orders", {"i": i})
        assert (await client.get(f"{base}/events/orders?since=0")).status_code == 200
        first = await _scrape(client, base)
        for i in range(12):
            hub.publish("orders", {"i": i})
        assert (await client.get(f"{base}/events/orders?since=99")).status_code == 412
        assert (await client.get(f"{base}/nope")).status_code == 404
        second = await _scrape(client, base)
    assert value(first, "bezant_events_ingested_total", topic="orders") == 3
    assert value(second, "bezant_events_ingested_total", topic="orders") == 15
    assert value(second, "bezant_topic_head_cursor", topic="orders") == 15
    assert value(second, "bezant_ring_events", topic="orders") == 10
    assert value(second, "bezant_ring_capacity", topic="orders") == 10
    assert value(second, "bezant_reset_epoch") == 1
    assert value(second, "bezant_log_enabled") == 0
    assert value(second, "bezant_gateway_connected") == 0
    route = {"route": "/events/<topic>", "method": "GET"}
    assert value(first, "bezant_http_requests_total", status="200", **route) == 1
    assert value(second, "bezant_http_requests_total", status="200", **route) == 1
    assert value(second, "bezant_http_requests_total", status="412", **route) == 1
    assert (
        value(second, "bezant_http_requests_total", route="unmatched", method="GET", status="404")
        == 1
    )
    # The first scrape itself was counted by the second.
    assert (
        value(second, "bezant_http_requests_total", route="/metrics", method="GET", status="200")
        == 1
    )
    assert value(second, "process_resident_memory_bytes") > 0


async def test_metrics_need_the_token_and_count_the_401(serve, client: httpx.AsyncClient) -> None:
    hub = Hub(capacity_of())
    await hub.open()
    metrics = DaemonMetrics(hub, process=False)
    with trio.fail_after(10):
        base = await serve(HttpContext(hub=hub, token="t0ken-xyz"), metrics=metrics)
        assert (await client.get(f"{base}/metrics")).status_code == 401
        parsed = await _scrape(client, base, headers={"authorization": "Bearer t0ken-xyz"})
    assert (
        value(parsed, "bezant_http_requests_total", route="/metrics", method="GET", status="401")
        == 1
    )
    assert not any(name.startswith("process_") for name, _ in parsed)


async def test_commit_latency_histogram_is_fed_by_commit_observers(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    elog = EventLog.open(tmp_path / "events.db")
    hub = Hub(capacity_of(), event_log=elog)
    await hub.open()
    metrics = DaemonMetrics(hub, process=False)
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as tasks:
                await tasks.start(hub.run_writer)
                for i in range(5):
                    hub.publish("orders", {"i": i})
                await wait_until(lambda: hub.head("orders") == 5)
                tasks.cancel_scope.cancel()
        parsed = samples(metrics.render().decode())
    finally:
        elog.close()
    commits = value(parsed, "bezant_log_commits_total")
    assert commits >= 1
    assert value(parsed, "bezant_log_commit_seconds_count") == commits
    assert value(parsed, "bezant_log_commit_batch_events_sum") == 5
    assert value(parsed, "bezant_log_committed_events_total") == 5
    assert value(parsed, "bezant_log_degraded") == 0


async def test_daemon_metrics_show_gateway_frames_sinks_and_waiters(nursery: trio.Nursery) -> None:
    sim = await nursery.start(GatewaySimulator().run)
    config = config_from_mapping(
        {
            "gateway": {"url": sim.base_url},
            "http": {"bind": "127.0.0.1:0"},
            "sinks": [{"name": "rec", "type": "test", "topics": ["orders"]}],
        },
        env={},
    )
    daemon = Daemon(config)
    with trio.fail_after(20):
        await nursery.start(daemon.run)
        await sim.wait_subscribed("orders", timeout=10)
        await sim.emit_orders(4)
        await daemon.sinks.sinks["rec"].wait_for(4)
        async with (
            httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client,
            trio.open_nursery() as polls,
        ):

            async def long_poll() -> None:
                # Polls again whenever an event (a pnl frame the stream sends) answers it.
                since = 0
                while True:
                    r = await client.get(f"{daemon.http_url}/events/pnl?since={since}&wait=30")
                    if r.status_code == 200:
                        since = r.json()["next_cursor"]

            polls.start_soon(long_poll)
            # A scrape while both are parked (the poll is briefly not, between answers).
            parsed = await _scrape(client, daemon.http_url)
            while value(parsed, "bezant_hub_waiters") < 2:
                await wait_until(lambda: daemon.hub.status()["waiting"] >= 2)
                parsed = await _scrape(client, daemon.http_url)
            polls.cancel_scope.cancel()
    assert value(parsed, "bezant_gateway_connected") == 1
    assert value(parsed, "bezant_gateway_frames_total", kind="event") >= 4
    assert value(parsed, "bezant_gateway_reconnects_total") == 0
    assert value(parsed, "bezant_events_ingested_total", topic="orders") >= 4
    assert value(parsed, "bezant_sink_delivered_events_total", sink="rec") >= 4
    assert value(parsed, "bezant_sink_failures_total", sink="rec") == 0
    assert value(parsed, "bezant_sink_lag_events", sink="rec") == 0
    assert value(parsed, "bezant_sink_state", sink="rec", state="running") == 1
    # The long-poll and the sink's watcher are both parked in the hub.
    assert value(parsed, "bezant_hub_waiters") >= 2
    assert value(parsed, "bezant_http_requests_in_flight") >= 2  # the long-poll and the scrape
    assert value(parsed, "bezant_sse_clients") == 0
    daemon.request_stop()
    sim.stop()


async def test_made_up_methods_and_paths_do_not_become_label_values(
    nursery: trio.Nursery,
) -> None:
    # The attack: every request with a new 2 KB method (401s and 405s included)
    # used to add a label value for good, and the scrape grew with them.
    service = await start_service(nursery, token="s3cret-token")
    rng = random.Random(7)
    with trio.fail_after(60):
        for index in range(300):
            method = "".join(rng.choices(string.ascii_uppercase, k=2048))
            path = rng.choice(["/events/orders", "/health", f"/made/up/{index}", "/metrics"])
            auth = "Authorization: Bearer s3cret-token\r\n" if index % 2 else ""
            answer = await exchange(
                service.url,
                f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n".encode(),
            )
            assert status_of(answer) in (401, 404, 405), answer[:100]
        async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client:
            response = await client.get(
                f"{service.url}/metrics", headers={"authorization": "Bearer s3cret-token"}
            )
    assert len(response.content) < 32 * 1024
    labels = [
        labels for (name, labels) in samples(response.text) if name == "bezant_http_requests_total"
    ]
    methods = {dict(pairs)["method"] for pairs in labels}
    routes = {dict(pairs)["route"] for pairs in labels}
    assert methods == {"other"}
    assert routes <= {"unmatched", "/events/<topic>", "/health", "/metrics"}
    assert (
        sum(
            value(samples(response.text), "bezant_http_requests_total", **dict(pairs))
            for pairs in labels
        )
        == 300
    )
