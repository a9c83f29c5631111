"""The console at ``/`` in headless Chromium, against a daemon fed by the simulator.

What a person looking at the page would see: the gateway connected, an order
appearing and moving through its statuses, the banner while the gateway is
gone and the gap once it is back, quotes with their changed fields
highlighted, nothing at all without the token, and a page that fits a phone.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio
from harness import Page, Scene, scene

ORDER = "352055828"  # the simulator's first order id
TOKEN = "console-test-token-7c1d"
#: The whole of one test, browser and daemon included.
TEST_TIMEOUT = 90

# Above the tests' own bound: the first test of the module also starts Chromium.
pytestmark = pytest.mark.timeout(TEST_TIMEOUT + 30)


async def test_the_page_shows_connected_and_an_order_moving_through_its_statuses(
    page: Page, tmp_path: Path
) -> None:
    sinks = [
        {"name": "audit", "type": "file", "topics": ["orders"], "path": str(tmp_path / "a")},
        # Nobody listens on port 9: this sink retries and falls behind.
        {
            "name": "hook",
            "type": "webhook",
            "url": "http://127.0.0.1:9/hook",
            "topics": ["orders"],
            "retry": {"min": 0.5, "max": 1},
        },
    ]
    with trio.fail_after(TEST_TIMEOUT):
        async with scene(sinks=sinks, store_path=tmp_path / "events.db") as s:
            await page.open(s.url)
            await page.wait_text("#gw-state", "connected")
            assert await page.text("#banner") == ""
            row = f'tr[data-order-id="{ORDER}"] .status'
            for status in ("PreSubmitted", "Submitted", "Filled"):
                await s.sim.emit_orders(1)
                await page.wait_text(row, status)
            head = 'tr[data-topic="orders"] td.num'
            await page.wait_for(
                "the orders topic's head cursor",
                lambda d: (
                    d.execute_script(
                        "return document.querySelector(arguments[0])?.textContent", head
                    )
                    == str(s.daemon.hub.head("orders"))
                ),
            )
            await page.wait_present('tr[data-sink="audit"][data-state="running"]')
            # The lagging sink: its state, the events it has not delivered, and for how long.
            await page.wait_present('tr[data-sink="hook"][data-state="retrying"]')
            lag = 'tr[data-sink="hook"] td:nth-of-type(3)'
            await page.wait_for(
                "the hook sink's lag in time",
                lambda d: re.fullmatch(
                    r"\d+ s",
                    d.execute_script(f"return document.querySelector('{lag}').textContent"),
                ),
            )
            assert int(await page.text('tr[data-sink="hook"] td:nth-of-type(2)') or 0) >= 1
            assert await page.text("#log-state") == "ok"
            assert await page.text("#gw-account .kind") == "paper"
    assert page.problems() == []


async def test_dropping_the_gateway_shows_the_banner_then_the_gap_and_resyncs_in_the_timeline(
    page: Page,
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with scene(resync=True) as s:
            await s.sim.emit_pnl(1)
            await page.open(s.url)
            await page.wait_text("#gw-state", "connected")
            await page.wait_present('tr[data-topic="pnl"]')
            assert await page.js("return document.querySelectorAll('#timeline li').length") == 0
            # Logged out while dropped: the daemon cannot reconnect until the login is back,
            # so the banner stays up long enough to be seen.
            s.sim.set_authenticated(False)
            await s.sim.drop_connections()
            banner = await page.wait_contains("#banner", "Not receiving from the gateway")
            assert "needs_login" in banner
            assert await page.js("return document.getElementById('banner').ariaLive") == (
                "assertive"
            )
            s.sim.set_authenticated(True)
            await page.wait_text("#gw-state", "connected")
            await page.wait_present('#timeline li[data-reason="reconnected_after_disconnect"]')
            await page.wait_text("#banner", "")
            assert await page.text("#gw-reconnects") == "1"
            # The REST truth fetched after a gap, as the connector publishes it.
            epoch = s.daemon.hub.reset_epoch
            s.daemon.hub.publish("orders", _resync("/iserver/account/orders", epoch, {
                "orders": [{"orderId": 424242, "status": "Submitted", "ticker": "MSFT"}]
            }))  # fmt: skip
            s.daemon.hub.publish("pnl", _resync("/iserver/account/pnl/partitioned", epoch, {}))
            await page.wait_present('#timeline li[data-kind="resync"][data-topic="orders"]')
            await page.wait_present('#timeline li[data-kind="resync"][data-topic="pnl"]')
            await page.wait_text('tr[data-order-id="424242"] .status', "Submitted")
    assert page.problems() == []


def _resync(source: str, epoch: int, data: object) -> dict[str, object]:
    return {"reason": "resync", "source": source, "new_reset_epoch": epoch, "data": data}


async def test_a_degraded_log_is_shown_loudly_until_it_recovers(page: Page, tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with scene(store_path=tmp_path / "events.db") as s:
            await page.open(s.url)
            await page.wait_text("#log-state", "ok")
            hub = s.daemon.hub
            assert hub is not None and hub.event_log is not None
            # A real SQLITE_FULL: the database may not grow past its current size.
            writer = hub.event_log._conn
            pages = writer.execute("PRAGMA page_count").fetchone()[0]
            writer.execute(f"PRAGMA max_page_count={pages}")
            for i in range(2000):
                hub.publish("filler", {"i": i, "pad": "x" * 200})
            await page.wait_text("#log-state", "degraded")
            await page.wait_contains("#banner", "Event log degraded")
            assert await page.js("return document.getElementById('banner').dataset.level") == (
                "error"
            )
            writer.execute("PRAGMA max_page_count=1073741823")
            await page.wait_text("#log-state", "ok")
            await page.wait_text("#banner", "")
    assert page.problems() == []


async def test_quotes_of_wanted_conids_show_and_a_changed_field_is_highlighted(
    page: Page,
) -> None:
    conid = 265598
    last = f'tr[data-conid="{conid}"] td[data-field="31"]'
    with trio.fail_after(TEST_TIMEOUT):
        async with scene(conids=(conid,)) as s:
            await s.sim.wait_subscribed(f"marketdata:{conid}", timeout=20)
            await s.sim.emit_marketdata(conid, 1)
            await page.open(s.url)
            await page.wait_text(last, "382.90")
            # Record every time the cell is highlighted, however short the highlight.
            await page.js(
                "window.flashes = 0; const cell = document.querySelector(arguments[0]);"
                "new MutationObserver(() => { if (cell.classList.contains('changed'))"
                " window.flashes += 1; }).observe(cell, {attributes: true});",
                last,
            )
            await s.sim.emit_marketdata(conid, 1)
            await page.wait_text(last, "382.91")
            await page.wait_for("the changed last price highlighted", lambda d: d.execute_script(
                "return window.flashes"
            ))  # fmt: skip
            # The page only reads: its polls want no conid of their own.
            assert s.daemon.wants.wanted() == [conid]
    assert page.problems() == []


async def test_with_a_token_the_page_shows_no_data_until_the_token_is_given(page: Page) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with scene(token=TOKEN) as s:
            await s.sim.emit_orders(1)
            await page.open(s.url)
            await page.wait_for("the token form", lambda d: d.execute_script(
                "return !document.getElementById('login').hidden"
            ))  # fmt: skip
            assert await page.js("return document.getElementById('data').hidden") is True
            source = await trio.to_thread.run_sync(lambda: page.driver.page_source)
            assert ORDER not in source and "simuser" not in source and "DU1234" not in source
            # The page asked for data, and every such request was refused.
            answered = _data_answers(s)
            assert answered and set(answered) == {"401"}, answered

            await _submit_token(page, "wrong-token")
            await page.wait_contains("#login-error", "refused")
            assert await page.js("return document.getElementById('data').hidden") is True

            await _submit_token(page, TOKEN)
            await page.wait_text("#gw-state", "connected")
            await page.wait_text(f'tr[data-order-id="{ORDER}"] .status', "PreSubmitted")
            assert await page.js("return sessionStorage.getItem('bezant-trio.token')") == TOKEN
            urls = await page.js("return performance.getEntriesByType('resource').map(e => e.name)")
            assert not [u for u in urls if TOKEN in u], "the token must never be in a URL"

            # Asked once: a reload of the tab keeps the token.
            await page.open(s.url)
            await page.wait_text("#gw-state", "connected")
            assert await page.js("return document.getElementById('login').hidden") is True

            await page.js("document.getElementById('forget-token').click()")
            await page.wait_for("the token form again", lambda d: d.execute_script(
                "return !document.getElementById('login').hidden"
            ))  # fmt: skip
            assert await page.text("#orders-body") == ""
            assert await page.js("return sessionStorage.getItem('bezant-trio.token')") is None
    assert page.problems() == []


async def test_at_phone_width_the_page_fits_and_tables_scroll_inside_it(page: Page) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with scene() as s:
            await page.emulate_width(390)
            await page.open(s.url)
            assert await page.js("return window.innerWidth") == 390
            await page.wait_text("#gw-state", "connected")
            await s.sim.emit_orders(1)
            await page.wait_present(f'tr[data-order-id="{ORDER}"]')
            overflow = await page.js(
                "const e = document.documentElement; return e.scrollWidth - e.clientWidth"
            )
            assert overflow <= 0, f"the page is {overflow}px wider than a phone's screen"
            # Wide tables scroll in their own region, which a keyboard can reach.
            assert await page.js(
                "return [...document.querySelectorAll('.scroll')]"
                ".every(e => e.tabIndex === 0 && e.getAttribute('role') === 'region')"
            )
    assert page.problems() == []


SSE_BODY = (
    "retry: 1500\n: stream of orders after cursor 0\n\n"
    'id: 1\nevent: orders\ndata: {"a":1}\n\n'
    ": heartbeat\n\n"
    "id: 2\r\ndata: line one\r\ndata:line two\r\n\r\n"
    "id: 3\rdata: \u00e9t\u00e9 \u2713\r\r"
)
SSE_MESSAGES = [
    {"retry": 1500},
    {"id": "1", "event": "orders", "data": '{"a":1}'},
    {"id": "2", "data": "line one\nline two"},
    {"id": "3", "data": "\u00e9t\u00e9 \u2713"},
]


async def test_the_stream_parser_reads_messages_however_the_bytes_are_split(page: Page) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with scene() as s:
            await page.open(s.url)
            await page.wait_text("#gw-state", "connected")
            # Every split of the body in two, and one byte at a time (UTF-8 split mid-character).
            results = await trio.to_thread.run_sync(
                lambda: page.driver.execute_async_script(
                    """
                    const [text, done] = arguments;
                    (async () => {
                      const { sseMessages } = await import("/console/console.js");
                      const bytes = new TextEncoder().encode(text);
                      const splits = [...Array(bytes.length + 1).keys()].map((i) => [
                        bytes.slice(0, i), bytes.slice(i),
                      ]);
                      splits.push([...bytes].map((b) => new Uint8Array([b])));
                      const out = [];
                      for (const chunks of splits) {
                        const body = new ReadableStream({
                          start(c) { chunks.forEach((x) => c.enqueue(x)); c.close(); },
                        });
                        const messages = [];
                        for await (const m of sseMessages(body)) messages.push(m);
                        out.push(messages);
                      }
                      return out;
                    })().then(done, (e) => done(String(e)));
                    """,
                    SSE_BODY,
                )
            )
    assert isinstance(results, list), results
    assert len(results) == len(SSE_BODY.encode()) + 2
    for messages in results:
        assert messages == SSE_MESSAGES


async def test_order_records_and_rates_are_read_as_the_daemon_means_them(page: Page) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with scene() as s:
            await page.open(s.url)
            await page.wait_text("#gw-state", "connected")
            got = await trio.to_thread.run_sync(
                lambda: page.driver.execute_async_script(
                    """
                    const done = arguments[0];
                    import("/console/console.js").then(({ ordersIn, Rates }) => {
                      const order = { orderId: 7, status: "Submitted" };
                      const orders = [
                        ordersIn({ topic: "sor", args: [order, 3, null] }),
                        ordersIn({ reason: "resync", data: [order] }),
                        ordersIn({ reason: "resync", data: { orders: [order] } }),
                        ordersIn({ reason: "reconnected_after_disconnect", new_reset_epoch: 2 }),
                      ].map((list) => list.length);
                      const rates = new Rates();
                      rates.add({ orders: 0 }, 0);
                      const none = rates.rate("orders");
                      for (let t = 1; t <= 90; t += 1) rates.add({ orders: 2 * t, pnl: t }, t);
                      const window = rates.samples.at(-1).at - rates.samples[0].at;
                      const steady = [rates.rate("orders"), rates.rate("pnl"), window];
                      rates.add({ orders: 1 }, 91); // a restarted daemon counts from 0 again
                      done({ orders, none, steady, after: rates.samples.length });
                    }, (e) => done(String(e)));
                    """
                )
            )
    assert got == {"orders": [1, 1, 1, 0], "none": None, "steady": [2, 1, 60], "after": 1}


def _data_answers(s: Scene) -> dict[str, int]:
    """Requests to data routes the daemon answered so far, by status."""
    assert s.daemon.http is not None
    counts: dict[str, int] = {}
    for (route, _method, status), n in s.daemon.http.metrics.http_requests.items():
        if route.startswith(("/events", "/state", "/metrics", "/openapi")):
            counts[status] = counts.get(status, 0) + n
    return counts


async def _submit_token(page: Page, token: str) -> None:
    await page.js(
        "const input = document.getElementById('token-input'); input.value = arguments[0];"
        "document.getElementById('login-form').requestSubmit();",
        token,
    )
