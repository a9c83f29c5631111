"""The webhook sink against a real HTTP receiver on 127.0.0.1.

Signatures are checked with an implementation of the Standard Webhooks
verification written here from the spec, independent of the sink's code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time

import orjson
import trio

from bezant_trio.sinks.manager import SinkManager
from bezant_trio.store.hub import Hub
from bezant_trio.testing import Received, Reply, WebhookReceiver

KEY = b"a 24-byte test key here!"
SECRET = "whsec_" + base64.b64encode(KEY).decode()


def verify_standard_webhook(secret: str, request: Received, *, tolerance: int = 300) -> bool:
    """Standard Webhooks verification: v1 = base64(HMAC-SHA256(key, "id.ts.body"))."""
    msg_id = request.headers["webhook-id"]
    timestamp = request.headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance:
        return False
    key = base64.b64decode(secret[len("whsec_") :])
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + request.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    for candidate in request.headers["webhook-signature"].split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected):
            return True
    return False


def _delivered_once(receiver: WebhookReceiver) -> list[dict]:
    """Accepted events, with retried batches (same webhook-id) counted once."""
    seen: set[str] = set()
    events: list[dict] = []
    for request in receiver.accepted:
        if request.headers["webhook-id"] in seen:
            continue
        seen.add(request.headers["webhook-id"])
        events.extend(request.events)
    return events


async def _start(factory, receiver: WebhookReceiver, **options) -> SinkManager:
    config = {"name": "hook", "type": "webhook", "url": receiver.url, **options}
    return await factory([config])


async def test_outage_then_recovery_delivers_everything_in_order_signed(
    bezant_sink_manager_factory, webhook_receiver: WebhookReceiver, autojump_clock
):
    receiver = webhook_receiver
    receiver.answer(
        Reply(500),
        Reply(503),
        Reply(hang=True),  # the sink's timeout fires
        Reply(500),
        Reply(hang=True),
        Reply(502),
    )
    with trio.fail_after(600):
        manager = await _start(
            bezant_sink_manager_factory,
            receiver,
            secret=SECRET,
            timeout=2,
            batch_size=50,
            headers={"x-tenant": "desk-1"},
            retry={"min": 1, "max": 8},
        )
        hub: Hub = manager.hub
        for i in range(120):
            hub.publish("orders", {"i": i})
        for i in range(30):
            hub.publish("pnl", {"i": i})
        await manager.wait_delivered("hook", 150)

    for request in receiver.requests:
        assert request.method == "POST" and request.path == "/hook"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["x-tenant"] == "desk-1"
        assert verify_standard_webhook(SECRET, request)
        topics = {e["topic"] for e in request.events}
        assert len(topics) == 1
        topic = topics.pop()
        first, last = request.events[0]["cursor"], request.events[-1]["cursor"]
        assert request.headers["webhook-id"] == f"{hub.cursor_space}:{topic}:{first}-{last}"
        for event in request.events:
            assert event["id"] == f"{hub.cursor_space}:{topic}:{event['cursor']}"
    events = _delivered_once(receiver)
    assert [e["cursor"] for e in events if e["topic"] == "orders"] == list(range(1, 121))
    assert [e["cursor"] for e in events if e["topic"] == "pnl"] == list(range(1, 31))
    assert events[0]["payload"] == {"i": 0}
    # The failed attempts were all for the first batch, repeated with the same id.
    assert len({r.headers["webhook-id"] for r in receiver.requests[:7]}) == 1
    status = manager.status()["hook"]
    assert status["failures"] == 6 and status["state"] == "running" and status["lag"] == 0
    assert status["details"] == {"last_http_status": 200, "signed": True}


async def test_retry_after_is_honoured_and_capped_at_retry_max(
    bezant_sink_manager_factory, webhook_receiver: WebhookReceiver, autojump_clock
):
    receiver = webhook_receiver
    receiver.answer(Reply(429, (("retry-after", "7"),)))
    with trio.fail_after(600):
        manager = await _start(bezant_sink_manager_factory, receiver, retry={"min": 1, "max": 20})
        manager.hub.publish("orders", {"i": 0})
        await receiver.wait_until(lambda: len(receiver.accepted) == 1)
        receiver.answer(Reply(503, (("retry-after", "600"),)))
        manager.hub.publish("orders", {"i": 1})
        await receiver.wait_until(lambda: len(receiver.accepted) == 2)
    first, second, third, fourth = receiver.requests
    assert 7 <= second.at - first.at < 7.5
    assert 20 <= fourth.at - third.at < 20.5  # 600 s asked, retry.max is 20
    assert "webhook-signature" not in first.headers  # no secret, no signature


async def test_other_4xx_is_retried_with_backoff_and_recorded(
    bezant_sink_manager_factory, webhook_receiver: WebhookReceiver, autojump_clock
):
    receiver = webhook_receiver
    receiver.answer(Reply(400, (("retry-after", "30"),)), Reply(422))
    with trio.fail_after(600):
        manager = await _start(bezant_sink_manager_factory, receiver, retry={"min": 2, "max": 2})
        manager.hub.publish("orders", {"i": 0})
        await receiver.wait_until(lambda: len(receiver.requests) == 2)
        await manager.wait_status("hook", lambda s: s["failures"] == 2)
        status = manager.status()["hook"]
        assert status["details"]["last_http_status"] == 422
        assert "HTTP 422" in status["last_error"]
        await receiver.wait_until(lambda: len(receiver.accepted) == 1)
    first, second, third = receiver.requests
    assert 2 <= second.at - first.at < 2.5  # a 400's Retry-After is not honoured
    assert 2 <= third.at - second.at < 2.5


async def test_410_gone_disables_the_sink(
    bezant_sink_manager_factory, webhook_receiver: WebhookReceiver, autojump_clock, caplog
):
    receiver = webhook_receiver
    receiver.answer(Reply(410))
    with trio.fail_after(600):
        manager = await _start(bezant_sink_manager_factory, receiver)
        manager.hub.publish("orders", {"i": 0})
        await manager.wait_status("hook", lambda s: s["state"] == "disabled")
        for i in range(5):
            manager.hub.publish("orders", {"i": i})
        await trio.sleep(300)  # virtual time: a live sink would have retried many times
    assert len(receiver.requests) == 1
    status = manager.status()["hook"]
    assert status["state"] == "disabled" and status["lag"] == 6
    assert "410" in status["last_error"]
    disabled = [r for r in caplog.records if "disabled" in r.getMessage()]
    assert len(disabled) == 1 and disabled[0].levelno == logging.ERROR


async def test_secret_never_appears_in_status_logs_or_errors(
    bezant_sink_manager_factory, webhook_receiver: WebhookReceiver, autojump_clock, caplog
):
    caplog.set_level(logging.DEBUG)
    receiver = webhook_receiver
    receiver.answer(Reply(500), Reply(hang=True))
    with trio.fail_after(600):
        manager = await _start(
            bezant_sink_manager_factory, receiver, secret=SECRET, timeout=1, retry={"min": 1}
        )
        manager.hub.publish("orders", {"i": 0})
        await receiver.wait_until(lambda: len(receiver.accepted) == 1)
        sink = manager.sinks["hook"]
        await sink.aclose()
        receiver_down = "http://127.0.0.1:1/hook"  # nothing listens on port 1
        await manager.reload(
            [{"name": "hook", "type": "webhook", "url": receiver_down, "secret": SECRET}]
        )
        manager.hub.publish("orders", {"i": 1})
        await manager.wait_status("hook", lambda s: s["failures"] >= 1)
    encoded = SECRET.removeprefix("whsec_")
    places = [
        caplog.text,
        orjson.dumps(manager.status()).decode(),
        repr(sink),
        repr(manager.sinks["hook"]),
    ]
    for text in places:
        assert encoded not in text and KEY.decode() not in text
    assert "failed" in manager.status()["hook"]["last_error"]
