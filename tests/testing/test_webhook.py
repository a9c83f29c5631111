"""The shared webhook receiver: what it records, how it answers, how it checks signatures."""

from __future__ import annotations

import httpx
import pytest
import trio

from bezant_trio.testing import Reply, WebhookReceiver, verify_signature
from helpers import SSL_CONTEXT

# The Standard Webhooks specification's own example.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_BODY = b'{"test": 2432232314}'
SPEC_HEADERS = {
    "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
    "webhook-timestamp": "1614265330",
    "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
}
BATCH = b'{"events":[{"topic":"orders","cursor":1},{"topic":"orders","cursor":2}]}'


def test_signature_of_the_spec_example_verifies_and_tampering_does_not() -> None:
    now = 1614265330
    assert verify_signature(SPEC_SECRET, SPEC_HEADERS, SPEC_BODY, now=now)
    # One valid signature among several (key rotation) is enough.
    rotated = {
        **SPEC_HEADERS,
        "webhook-signature": "v1,bm90IGl0 " + SPEC_HEADERS["webhook-signature"],
    }
    assert verify_signature(SPEC_SECRET, rotated, SPEC_BODY, now=now)
    assert not verify_signature(SPEC_SECRET, SPEC_HEADERS, SPEC_BODY + b" ", now=now)
    assert not verify_signature(
        SPEC_SECRET, {**SPEC_HEADERS, "webhook-id": "x"}, SPEC_BODY, now=now
    )
    assert not verify_signature(SPEC_SECRET, SPEC_HEADERS, SPEC_BODY, now=now + 301)  # too old
    headers = {k: v for k, v in SPEC_HEADERS.items() if k != "webhook-signature"}
    assert not verify_signature(SPEC_SECRET, headers, SPEC_BODY, now=now)


async def test_scripted_replies_then_the_default_and_every_request_recorded(
    nursery: trio.Nursery,
) -> None:
    receiver = await nursery.start(WebhookReceiver().run)
    receiver.answer(Reply(503, retry_after=7), Reply(429, (("x-why", "busy"),)), Reply(hang=True))
    with trio.fail_after(10):
        async with httpx.AsyncClient(
            verify=SSL_CONTEXT, timeout=httpx.Timeout(5, read=0.5)
        ) as client:
            first = await client.post(receiver.url, content=BATCH, headers={"x-tenant": "a"})
            second = await client.post(receiver.url, content=BATCH)
            with pytest.raises(httpx.ReadTimeout):
                await client.post(receiver.url, content=BATCH)
            fourth = await client.post(receiver.url, content=BATCH)
            not_a_batch = await client.post(receiver.url, content=b"{}")
    assert (first.status_code, first.headers["retry-after"]) == (503, "7")
    assert (second.status_code, second.headers["x-why"]) == (429, "busy")
    assert fourth.status_code == 200 and not_a_batch.status_code == 400
    assert [r.status for r in receiver.requests] == [503, 429, None, 200, 400]
    assert receiver.requests[0].headers["x-tenant"] == "a"
    assert receiver.requests[0].path == "/hook" and receiver.requests[0].body == BATCH
    assert [r.status for r in receiver.accepted] == [200]
    assert [e["cursor"] for e in receiver.events()] == [1, 2]
    assert receiver.posts == 5 and receiver.events_received == 8


async def test_hold_keeps_requests_unanswered_until_release(nursery: trio.Nursery) -> None:
    receiver = await nursery.start(WebhookReceiver().run)
    receiver.hold()
    statuses: list[int] = []

    async def post(client: httpx.AsyncClient) -> None:
        statuses.append((await client.post(receiver.url, content=BATCH)).status_code)

    with trio.fail_after(10):
        async with (
            httpx.AsyncClient(verify=SSL_CONTEXT, timeout=5) as client,
            trio.open_nursery() as posts,
        ):
            posts.start_soon(post, client)
            posts.start_soon(post, client)
            await receiver.wait_until(lambda: receiver.held == 2)
            assert statuses == [] and receiver.accepted == []
            receiver.release()
    assert statuses == [200, 200] and receiver.held == 0


async def test_down_refuses_connections_and_up_listens_on_the_same_port(
    nursery: trio.Nursery,
) -> None:
    receiver = await nursery.start(WebhookReceiver().run)
    url = receiver.url
    with trio.fail_after(10):
        async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=5) as client:
            receiver.down()
            assert not receiver.is_up
            with pytest.raises(httpx.ConnectError):
                await client.post(url, content=BATCH)
            await receiver.up()
            assert receiver.url == url
            assert (await client.post(url, content=BATCH)).status_code == 200


async def test_cursors_mode_keeps_only_cursors_and_flags_bad_signatures(
    nursery: trio.Nursery,
) -> None:
    receiver = await nursery.start(WebhookReceiver(SPEC_SECRET, record="cursors").run)
    later = b'{"events":[{"topic":"orders","cursor":3},{"topic":"orders","cursor":1}]}'
    with trio.fail_after(10):
        async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=5) as client:
            for body in (BATCH, BATCH, later):
                await client.post(receiver.url, content=body, headers=SPEC_HEADERS)
    assert receiver.requests == []
    assert receiver.cursors["orders"].count == 3  # repeats counted once
    assert receiver.out_of_order == []  # cursor 1 again is a repeat, not out of order
    assert receiver.bad_signatures == 3  # the spec's signature does not sign these bodies
