"""The ``nats`` sink against a real nats-server: what lands in the stream, and how errors read."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import orjson
import pytest
import trio
import trustme
from bezant_trio_nats import NatsSink, message_for, msg_id, subject_for
from bezant_trio_nats.publisher import Ack, AckError, tally
from bezant_trio_nats.testing import NatsServer
from nats_helpers import (
    by_subject,
    joined,
    read_stream,
    rest_events,
    run_consumer,
    stream_info,
    wait_hub_head,
)

from bezant_trio.model import Event
from bezant_trio.sinks.manager import SinkConfigError, SinkManager
from bezant_trio.store.hub import Hub

CONID = 265598


def _sink_config(server: NatsServer, **options: object) -> dict[str, object]:
    return {
        "name": "fanout",
        "type": "nats",
        "servers": [server.url],
        "retry": {"min": 0.05, "max": 0.3},
        "ack_timeout": 2,
        **options,
    }


def test_topics_map_to_subjects_and_msg_ids() -> None:
    assert subject_for("bezant", "orders") == "bezant.orders"
    assert subject_for("bezant", "marketdata:265598") == "bezant.marketdata.265598"
    assert subject_for("acct.DU1", "marketdata:265598") == "acct.DU1.marketdata.265598"
    # Characters a subject cannot carry are escaped, so every topic stays distinct.
    assert subject_for("bezant", "x:a..b") == "bezant.x.a.~.b"
    assert subject_for("bezant", "x:*") == "bezant.x.~2A"
    event = Event.build("marketdata:265598", 42, "2026-01-01T00:00:00.000Z", 7, b"{}")
    assert msg_id(event) == "7:marketdata:265598:42"


def test_acks_are_tallied_and_a_store_after_a_failure_counts_as_reordered() -> None:
    loop = asyncio.new_event_loop()
    try:
        messages = [
            message_for("bezant", Event.build("orders", c, "2026-01-01T00:00:00.000Z", 1, b"{}"))
            for c in range(1, 7)
        ]
        acks = [loop.create_future() for _ in range(5)]  # the sixth was never sent
        acks[0].set_result(Ack(seq=10, duplicate=True))
        acks[1].set_result(Ack(seq=11, duplicate=False))
        acks[2].set_exception(AckError("503"))
        acks[3].set_result(Ack(seq=12, duplicate=False))  # stored after #3 failed
        # acks[4] never came
        report, duplicates = tally(messages, acks, unsent_reason="not sent", no_ack="no ack")
    finally:
        loop.close()
    assert duplicates == [(messages[0], 10)]
    assert report.stored == 2 and report.reordered == 1
    assert report.failed == [
        ("orders@3", "AckError: 503"),
        ("orders@5", "no ack"),
        ("orders@6", "not sent"),
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"servers": []}, "option 'servers' needs at least one URL"),
        ({"servers": ["localhost:4222"]}, "must be URLs like nats://host:4222"),
        ({"replicas": 7}, "option 'replicas' must be from 1 to 5"),
        ({"stream": "A.B"}, "option 'stream' must be letters, digits"),
        ({"subject_prefix": "bez.>"}, "option 'subject_prefix' must be dot-separated tokens"),
        ({"max_age": 60, "duplicate_window": 120}, "duplicate_window (120s) cannot be longer"),
        ({"tls": {"ca_file": "/nonexistent/ca.pem"}}, "the file /nonexistent/ca.pem does not"),
        ({"tls": {"cert_file": __file__}}, "cert_file and key_file go together"),
        ({"subjects": "x"}, "unknown option 'subjects'"),
    ],
)
async def test_bad_options_stop_start_up_with_one_line_naming_the_sink(
    bezant_hub: Hub, options: dict[str, object], message: str
) -> None:
    config = {"name": "fanout", "type": "nats", **options}
    with pytest.raises(SinkConfigError) as caught:
        SinkManager(bezant_hub, [config])
    assert str(caught.value).startswith("sink 'fanout' (type nats)")
    assert message in str(caught.value)


async def test_every_event_reaches_the_stream_in_order_as_rest_serves_it(
    bezant_daemon_factory, bezant_gateway_simulator, nats_server: NatsServer
) -> None:
    sim = bezant_gateway_simulator
    with trio.fail_after(30):
        # resync off: the events per topic are counted exactly below.
        daemon = await bezant_daemon_factory(
            [_sink_config(nats_server, batch_size=40)],
            gateway=sim,
            config={"events": {"resync": False}},
        )
        async with httpx.AsyncClient(timeout=10) as client:
            await client.get(f"{daemon.http_url}/events/marketdata", params={"conid": CONID})
            await sim.wait_subscribed("orders")
            await sim.wait_subscribed("pnl")
            await sim.wait_subscribed(f"marketdata:{CONID}")
            await sim.emit_orders(120)
            await sim.emit_pnl(90)
            await sim.emit_marketdata(CONID, 150)
            heads = {"orders": 120, "pnl": 90, f"marketdata:{CONID}": 150}
            await wait_hub_head(daemon.hub, heads)
            # Every topic, with the frames the gateway sends on its own (sts, act, ...).
            topics = daemon.hub.topics()
            await daemon.sinks.wait_status(
                "fanout",
                lambda s: all(s["checkpoints"].get(t, 0) >= daemon.hub.head(t) for t in topics),
            )
            rest = {topic: await rest_events(client, daemon.http_url, topic) for topic in topics}
        stored = await read_stream([nats_server.url])

    subjects = by_subject(stored)
    assert set(heads) < set(topics)
    assert set(subjects) == {subject_for("bezant", topic) for topic in topics}
    assert {"bezant.orders", "bezant.pnl", f"bezant.marketdata.{CONID}"} < set(subjects)
    for topic in topics:
        messages = subjects[subject_for("bezant", topic)]
        assert joined(messages) == rest[topic].raw  # byte for byte, in cursor order
        assert [m.cursor for m in messages] == [e["cursor"] for e in rest[topic].events]
        first, event = messages[0], rest[topic].events[0]
        assert first.headers["Nats-Msg-Id"] == f"{event['reset_epoch']}:{topic}:{event['cursor']}"
        assert first.headers["Bezant-Topic"] == topic
        assert first.headers["Bezant-Cursor"] == str(event["cursor"])
        assert first.headers["Bezant-Reset-Epoch"] == str(event["reset_epoch"])
        assert first.headers["Bezant-Received-At"] == event["received_at"]
    assert [len(rest[t].events) for t in heads] == list(heads.values())
    status = daemon.sinks.status()["fanout"]
    assert status["details"]["published"] == len(stored)
    assert status["details"]["connected_to"] == f"127.0.0.1:{nats_server.port}"


async def test_a_durable_consumer_resumes_from_its_own_position(
    bezant_sink_manager_factory, nats_server: NatsServer
) -> None:
    with trio.fail_after(30):
        manager = await bezant_sink_manager_factory([_sink_config(nats_server)])
        for n in range(5):
            manager.hub.publish("orders", {"orderId": n})
        await manager.wait_delivered("fanout", 5)
        consume = ["--servers", nats_server.url, "--durable", "risk", "--exit-when-idle", "0.5"]
        first = await trio.to_thread.run_sync(lambda: run_consumer(*consume))
        for n in range(5, 8):
            manager.hub.publish("orders", {"orderId": n})
        manager.hub.publish("pnl", {"upnl": 1})
        await manager.wait_delivered("fanout", 9)
        second = await trio.to_thread.run_sync(lambda: run_consumer(*consume))
        pnl_only = [*consume[:3], "pnl-only", "--subject", "bezant.pnl", *consume[4:]]
        only_pnl = await trio.to_thread.run_sync(lambda: run_consumer(*pnl_only))
    orders = [e.json for e in (await manager.hub.read("orders", 0, 100)).events]
    pnl = [e.json for e in (await manager.hub.read("pnl", 0, 100)).events]
    assert first.stdout.splitlines() == orders[:5]
    assert second.stdout.splitlines() == [*orders[5:], *pnl]  # only what is new to "risk"
    assert only_pnl.stdout.splitlines() == pnl


async def test_a_retried_batch_is_stored_once(bezant_hub: Hub, nats_server: NatsServer) -> None:
    sink = NatsSink("fanout", servers=[nats_server.url])
    batch = [bezant_hub.publish("orders", {"orderId": n}) for n in range(10)]
    try:
        with trio.fail_after(20):
            await sink.deliver(batch)
            await sink.deliver(batch)  # at least once: the manager retried it
            await sink.deliver(batch[5:])
    finally:
        await sink.aclose()
    stored = await read_stream([nats_server.url])
    assert [m.cursor for m in stored] == list(range(1, 11))
    assert sink.status() | {"connected_to": None} == {
        "stream": "BEZANT",
        "subject_prefix": "bezant",
        "connected_to": None,
        "published": 10,
        "duplicates": 15,
        "reordered": 0,
        "collisions": 0,
    }


async def test_nothing_is_stored_twice_across_a_nats_restart(
    bezant_hub: Hub, nats_server: NatsServer
) -> None:
    """The duplicate window survives a server crash: the store rebuilds it."""
    sink = NatsSink("fanout", servers=[nats_server.url], ack_timeout=2)
    batch = [bezant_hub.publish("pnl", {"n": n}) for n in range(20)]
    try:
        with trio.fail_after(30):
            await sink.deliver(batch[:12])
            await nats_server.kill()
            with pytest.raises(
                Exception, match=r"connection lost|cannot connect|connection closed"
            ):
                await sink.deliver(batch)
            await nats_server.start()
            await sink.deliver(batch)  # the same batch again, as the manager retries it
    finally:
        await sink.aclose()
    stored = await read_stream([nats_server.url])
    assert [m.cursor for m in stored] == list(range(1, 21))
    assert sink.duplicates == 12


async def test_a_reused_cursor_is_reported_not_silently_dropped(
    bezant_sink_manager_factory, nats_server: NatsServer
) -> None:
    """A daemon without its durable log starts again at epoch 1, cursor 1: new events, old ids."""
    with trio.fail_after(30):
        first = await bezant_sink_manager_factory([_sink_config(nats_server)])
        first.hub.publish("orders", {"orderId": "before the restart"})
        await first.wait_delivered("fanout", 1)
        await first.aclose(trio.current_time() + 1)
        second = await bezant_sink_manager_factory([_sink_config(nats_server)])
        second.hub.publish("orders", {"orderId": "after the restart"})
        status = await _wait_failure(second)
    assert "have the Nats-Msg-Id of a different message" in status["last_error"]
    assert "store.path" in status["last_error"]
    assert status["details"]["collisions"] >= 1
    stored = await read_stream([nats_server.url])
    assert [orjson.loads(m.data)["payload"]["orderId"] for m in stored] == ["before the restart"]


async def _wait_failure(manager: SinkManager) -> dict[str, object]:
    await manager.wait_status("fanout", lambda s: s["failures"] >= 1)
    return manager.status()["fanout"]


async def test_a_subject_no_stream_takes_is_an_error_that_says_so(
    bezant_sink_manager_factory, nats_server: NatsServer
) -> None:
    with trio.fail_after(30):
        setup = await bezant_sink_manager_factory([_sink_config(nats_server)])
        setup.hub.publish("orders", {"orderId": 1})
        await setup.wait_delivered("fanout", 1)  # creates BEZANT for bezant.>
        manager = await bezant_sink_manager_factory(
            [_sink_config(nats_server, subject_prefix="elsewhere", create_stream=False)]
        )
        manager.hub.publish("orders", {"orderId": 1})
        status = await _wait_failure(manager)
    assert status["last_error"] == (
        "DeliveryError: stream BEZANT acknowledged 0 of 1 events; first missing orders@1:"
        " AckError: no stream takes this subject (no responders)"
    )


async def test_create_stream_updates_the_settings_of_an_existing_stream(
    bezant_hub: Hub, nats_server: NatsServer
) -> None:
    events = [bezant_hub.publish("orders", {"orderId": 1})]
    first = NatsSink("first", servers=[nats_server.url])
    second = NatsSink(
        "second",
        servers=[nats_server.url],
        subject_prefix="audit",
        max_age=3600,
        duplicate_window=30,
    )
    try:
        with trio.fail_after(20):
            await first.deliver(events)
            created = (await stream_info([nats_server.url])).config
            await second.deliver(events)
            updated = (await stream_info([nats_server.url])).config
    finally:
        await first.aclose()
        await second.aclose()
    assert (created.subjects, created.max_age, created.duplicate_window) == (
        ["bezant.>"],
        7 * 86400,
        120,
    )
    assert (updated.subjects, updated.max_age, updated.duplicate_window) == (
        ["bezant.>", "audit.>"],
        3600,
        30,
    )
    assert created.num_replicas == updated.num_replicas == 1


async def test_a_missing_stream_is_not_created_when_told_not_to(
    bezant_sink_manager_factory, nats_server: NatsServer
) -> None:
    with trio.fail_after(30):
        manager = await bezant_sink_manager_factory(
            [_sink_config(nats_server, stream="AUDIT", create_stream=False)]
        )
        manager.hub.publish("orders", {"orderId": 1})
        status = await _wait_failure(manager)
    assert "stream 'AUDIT' does not exist; create it" in status["last_error"]


async def test_an_unreachable_server_is_retried_until_it_comes(
    bezant_sink_manager_factory, nats_server: NatsServer
) -> None:
    await nats_server.stop(signal.SIGTERM)
    with trio.fail_after(30):
        manager = await bezant_sink_manager_factory([_sink_config(nats_server)])
        manager.hub.publish("gap", {"reason": "process_restart"})
        status = await _wait_failure(manager)
        assert f"cannot connect to NATS at {nats_server.url}" in status["last_error"]
        await nats_server.start()
        await manager.wait_delivered("fanout", 1)
    assert [m.subject for m in await read_stream([nats_server.url])] == ["bezant.gap"]


async def test_tls_with_a_private_ca(bezant_sink_manager_factory, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "server.crt")
    cert.private_key_pem.write_to_path(tmp_path / "server.key")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    server = NatsServer(
        tmp_path / "nats", tls=(str(tmp_path / "server.crt"), str(tmp_path / "server.key"))
    )
    try:
        with trio.fail_after(30):
            await server.start()
            manager = await bezant_sink_manager_factory(
                [_sink_config(server, tls={"ca_file": str(tmp_path / "ca.pem")})]
            )
            manager.hub.publish("orders", {"orderId": 1})
            await manager.wait_delivered("fanout", 1)
            untrusting = await bezant_sink_manager_factory(
                [_sink_config(server, name="untrusting", tls={})]
            )
            untrusting.hub.publish("orders", {"orderId": 1})
            await untrusting.wait_status("untrusting", lambda s: s["failures"] >= 1)
            error = untrusting.status()["untrusting"]["last_error"]
    finally:
        with trio.CancelScope(shield=True):
            await server.kill()
    assert server.url.startswith("tls://")
    assert "cannot connect to NATS" in error
