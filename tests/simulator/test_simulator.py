"""The gateway simulator behaves like the CPAPI gateway, and its faults do what they say.

Everything crosses real loopback sockets: httpx for REST and ``/sim``, a plain
trio-websocket client for the WebSocket. To prove that something did *not*
arrive, a test injects a marker frame and checks that the marker is the next
message: every frame to a connection goes through one FIFO queue, so anything
sent before the marker would have come first.
"""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from bezant_trio.simulator import (
    GatewaySimulator,
    SeqRanges,
    SimulatorTimeout,
    open_simulator,
    run_cli,
)
from bezant_trio.simulator.commands import parse_command, parse_session_cookie
from helpers import SSL_CONTEXT

CONID = 265598
MARKER = {"topic": "marker"}


# ------------------------------------------------------------------- helpers


@pytest.fixture
async def sim() -> AsyncIterator[GatewaySimulator]:
    async with open_simulator() as simulator:
        yield simulator


@asynccontextmanager
async def connect(
    sim: GatewaySimulator,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    message_queue_size: int = 1024,
) -> AsyncIterator[WebSocketConnection]:
    """A client WebSocket; sends the valid session cookie unless ``headers`` is given."""
    if headers is None:
        headers = [sim.cookie_header()]
    if sim.tls and ssl_context is None:
        ssl_context = sim.client_ssl_context()
    async with open_websocket_url(
        sim.ws_url,
        ssl_context=ssl_context,
        extra_headers=headers,
        message_queue_size=message_queue_size,
    ) as ws:
        yield ws


async def receive(ws: WebSocketConnection) -> Any:
    message = await ws.get_message()
    return orjson.loads(message)


async def receive_ready(ws: WebSocketConnection) -> None:
    """Consume the ready sequence: system/success, then act, then sts (corpus: ready-sequence)."""
    assert await receive(ws) == {
        "topic": "system",
        "success": "simuser",
        "isFT": False,
        "isPaper": True,
    }
    act = await receive(ws)
    assert act["topic"] == "act"
    assert act["args"]["accounts"] == ["DU1234"] and act["args"]["selectedAccount"] == "DU1234"
    assert act["args"]["isPaper"] is True and "serverInfo" in act["args"]
    sts = await receive(ws)
    assert sts["topic"] == "sts"
    assert sts["args"]["authenticated"] is True and sts["args"]["competing"] is False
    assert sts["args"]["username"] == "simuser"


@asynccontextmanager
async def ready_client(
    sim: GatewaySimulator, *commands: str, **options: Any
) -> AsyncIterator[WebSocketConnection]:
    """A connected, ready client that has sent ``commands`` and had them applied."""
    async with connect(sim, **options) as ws:
        await receive_ready(ws)
        conn_id = max(conn.id for conn in sim.connections)
        for command in commands:
            await ws.send_message(command)
        await sim.wait_for(
            lambda s: sum(c["connection"] == conn_id for c in s.commands) >= len(commands)
        )
        yield ws


async def assert_next_is_marker(sim: GatewaySimulator, ws: WebSocketConnection) -> None:
    await sim.inject(MARKER)
    assert await receive(ws) == MARKER


def seqs_of(frames: list[dict[str, Any]]) -> list[int]:
    return [frame["args"][0]["seq"] for frame in frames]


# ------------------------------------------------------------------ pure parts


def test_seq_ranges_merge_overlaps_and_count_each_seq_once() -> None:
    seqs = SeqRanges()
    for first, last in [(1, 3), (4, 4), (10, 12), (2, 5), (7, 8), (6, 6), (11, 20)]:
        seqs.add(first, last)
    assert seqs.ranges() == [[1, 8], [10, 20]]
    assert seqs.count == 19
    assert 9 not in seqs and 10 in seqs and seqs.last == 20


def test_commands_parse_like_the_gateway_reads_them() -> None:
    assert parse_command("sor+{}").kind == "subscribe"
    assert parse_command("uor+{}").channel == "orders"
    smd = parse_command('smd+265598+{"fields":["31","84"]}')
    assert (smd.kind, smd.conid, smd.fields) == ("subscribe", 265598, ("31", "84"))
    assert parse_command("umd+265598+{}").kind == "unsubscribe"
    assert parse_command('{"session":"abc"}').session == "abc"
    assert parse_command("ech+hb").kind == "echo"
    assert parse_command("tic").kind == "tic"
    assert (parse_command("utr").kind, parse_command("utr").channel) == ("unsubscribe", "trades")
    assert parse_command("xyz+{}").kind == "unknown"
    assert parse_command("smd+notanumber+{}").kind == "unknown"


def test_session_cookie_is_read_url_encoded_or_raw() -> None:
    assert parse_session_cookie("api=%7B%22session%22%3A%22abc%22%7D") == "abc"
    assert parse_session_cookie('x=1; api={"session":"abc"}') == "abc"
    assert parse_session_cookie("api=abc") is None
    assert parse_session_cookie("") is None


# ------------------------------------------------------------------------ REST


async def test_tickle_answers_session_then_401_when_auth_is_off(sim: GatewaySimulator) -> None:
    with trio.fail_after(10):
        async with httpx.AsyncClient(verify=SSL_CONTEXT, base_url=sim.base_url) as client:
            response = await client.post("/tickle")
            assert response.status_code == 200
            body = response.json()
            assert body["session"] == sim.session and len(body["session"]) == 32
            assert body["collission"] is False
            assert body["iserver"]["authStatus"]["authenticated"] is True
            status = await client.get("/iserver/auth/status")
            assert status.json()["authenticated"] is True

            sim.set_authenticated(False)
            response = await client.post("/tickle")
            assert response.status_code == 401
            assert response.json()["error"] == "not authenticated"
            assert (await client.post("/iserver/auth/status")).status_code == 401

            sim.set_authenticated(True)
            assert (await client.post("/tickle")).status_code == 200
            assert (await client.get("/no/such/path")).status_code == 404
            assert sim.tickle_count == 3


async def test_websocket_handshake_is_refused_with_401_when_auth_is_off(
    sim: GatewaySimulator,
) -> None:
    with trio.fail_after(10):
        sim.set_authenticated(False)
        with pytest.raises(HandshakeError) as caught:
            async with connect(sim):
                pass
        assert getattr(caught.value, "status_code", None) == 401


# ------------------------------------------------------------------ WebSocket


async def test_session_cookie_gives_ready_frame_then_act_and_sts(sim: GatewaySimulator) -> None:
    with trio.fail_after(10):
        async with connect(sim) as ws:
            await receive_ready(ws)
        # The raw-JSON spelling of the cookie is accepted too.
        raw = [(b"cookie", b'api={"session":"' + sim.session.encode() + b'"}')]
        async with connect(sim, headers=raw) as ws:
            await receive_ready(ws)


async def test_missing_cookie_waits_for_session_message(sim: GatewaySimulator) -> None:
    with trio.fail_after(10):
        async with connect(sim, headers=[]) as ws:
            assert await receive(ws) == {"message": "waiting for session"}
            await ws.send_message('{"session":"0000"}')
            await sim.wait_for(lambda s: any(c["result"] == "rejected_session" for c in s.commands))
            await ws.send_message(orjson.dumps({"session": sim.session}).decode())
            await receive_ready(ws)
            assert [c["result"] for c in sim.commands] == ["rejected_session", "session"]


async def test_subscribes_before_ready_frame_are_dropped_and_after_accepted() -> None:
    with trio.fail_after(10):
        async with open_simulator(ready_delay=0.3) as sim, connect(sim) as ws:
            # Sent the moment the socket opens, well inside ready_delay.
            await ws.send_message("sor+{}")
            await sim.wait_for(lambda s: s.dropped_before_ready == 1)
            await receive_ready(ws)
            assert sim.state()["connections"][0]["subscriptions"]["orders"] is False
            # Nobody is subscribed, so nothing is generated and no seq is used.
            assert await sim.emit_orders(2) == []
            await assert_next_is_marker(sim, ws)

            await ws.send_message("sor+{}")
            await sim.wait_subscribed("orders")
            assert await sim.emit_orders(1) == [1]
            frame = await receive(ws)
            assert frame["topic"] == "sor" and frame["args"][0]["seq"] == 1
            assert sim.state()["dropped_before_ready"] == 1


async def test_stream_frames_carry_increasing_seqs_and_reach_only_subscribers(
    sim: GatewaySimulator,
) -> None:
    with trio.fail_after(10):
        async with (
            ready_client(sim, "sor+{}", "spl+{}", "str+{}") as account_ws,
            ready_client(sim, f'smd+{CONID}+{{"fields":["31","84","86"]}}') as md_ws,
        ):
            assert await sim.emit_orders(3) == [1, 2, 3]
            assert await sim.emit_pnl(2) == [1, 2]
            assert await sim.emit_trades(1) == [1]
            assert await sim.emit_marketdata(CONID, 2) == [1, 2]

            orders = [await receive(account_ws) for _ in range(3)]
            assert {f["topic"] for f in orders} == {"sor"} and seqs_of(orders) == [1, 2, 3]
            assert orders[0]["args"][0]["status"] == "PreSubmitted"
            pnl = [await receive(account_ws) for _ in range(2)]
            assert [f["args"]["DU1234.Core"]["seq"] for f in pnl] == [1, 2]
            assert pnl[0]["args"]["DU1234.Core"]["rowType"] == 1
            trade = await receive(account_ws)
            assert trade["topic"] == "str" and trade["args"][0]["seq"] == 1
            await assert_next_is_marker(sim, account_ws)

            md = [await receive(md_ws) for _ in range(2)]
            assert [f["seq"] for f in md] == [1, 2]
            assert md[0]["topic"] == f"smd+{CONID}" and md[0]["conid"] == CONID
            assert {"31", "84", "86", "_updated", "server_id"} <= md[0].keys()
            await assert_next_is_marker(sim, md_ws)

            channels = sim.state()["channels"]
            assert channels["orders"]["written"] == [[1, 3]]
            assert channels[f"marketdata:{CONID}"]["written_count"] == 2


async def test_umd_stops_market_data_without_an_answer(sim: GatewaySimulator) -> None:
    # corpus: behaviour.jsonl umd-no-answer
    with trio.fail_after(10):
        async with ready_client(sim, f"smd+{CONID}+{{}}") as ws:
            assert await sim.emit_marketdata(CONID, 1) == [1]
            assert (await receive(ws))["seq"] == 1
            await ws.send_message(f"umd+{CONID}+{{}}")
            await sim.wait_for(lambda s: s.commands[-1]["text"].startswith("umd"))
            assert await sim.emit_marketdata(CONID, 1) == []
            await assert_next_is_marker(sim, ws)
            assert sim.state()["connections"][0]["subscriptions"]["marketdata"] == []


async def test_echo_is_the_raw_text_and_tic_is_answered_four_times(sim: GatewaySimulator) -> None:
    # corpus: ws_system.jsonl echo-raw-text, behaviour.jsonl tic-answered-four-times
    with trio.fail_after(10):
        async with ready_client(sim, "tic", "ech+hb") as ws:
            tics = [await receive(ws) for _ in range(4)]
            assert all(t == tics[0] for t in tics)
            assert tics[0]["topic"] == "tic" and tics[0]["alive"] is True
            assert tics[0]["id"] == sim.session and isinstance(tics[0]["lastAccessed"], int)
            assert await ws.get_message() == "ech+hb"
            assert [c["result"] for c in sim.commands] == ["accepted", "accepted"]


# ----------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("mode", "client_code"), [("abrupt", 1006), ("reset", 1006), ("close", 1001)]
)
async def test_drop_closes_every_socket(sim: GatewaySimulator, mode: str, client_code: int) -> None:
    with trio.fail_after(10):
        async with ready_client(sim, "sor+{}") as first, ready_client(sim) as second:
            assert await sim.drop_connections(mode) == 2
            for ws in (first, second):
                with pytest.raises(ConnectionClosed) as caught:
                    await ws.get_message()
                assert caught.value.reason.code == client_code
            assert sim.connections == []
            closed = sim.state()["closed_connections"]
            assert len(closed) == 2 and all(
                mode in c["close_reason"] or "closed" in c["close_reason"] for c in closed
            )


async def test_stall_silences_frames_and_heartbeats_until_unstalled() -> None:
    with trio.fail_after(10):
        async with (
            open_simulator(heartbeat_interval=0.05) as sim,
            ready_client(sim, "sor+{}") as ws,
        ):
            assert (await receive(ws))["topic"] == "system"  # a heartbeat
            sim.stall()
            # A stalled gateway has no eligible receiver: nothing generated, no seq used.
            assert await sim.emit_orders(1) == []
            await sim.inject(MARKER)
            # Silence can only be shown by waiting; 0.3 s is six heartbeat intervals.
            with trio.move_on_after(0.3) as silence:
                await ws.get_message()
            assert silence.cancelled_caught
            sim.unstall()
            # The marker queued during the stall is delivered first, then heartbeats resume.
            assert await receive(ws) == MARKER
            assert "hb" in await receive(ws)

            sim.stall(seconds=0.1)
            await sim.wait_for(lambda s: not s.stalled)
            assert await sim.emit_orders(1) == [1]


async def test_malformed_binary_and_non_utf8_frames_reach_the_client(
    sim: GatewaySimulator,
) -> None:
    with trio.fail_after(10):
        async with ready_client(sim) as ws:
            assert await sim.send_malformed() == 1
            text = await ws.get_message()
            assert isinstance(text, str)
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(text)

            await sim.send_binary()
            binary = await ws.get_message()
            assert isinstance(binary, bytes) and orjson.loads(binary)["topic"] == "ntf"

            await sim.send_invalid_utf8()
            undecodable = await ws.get_message()
            assert isinstance(undecodable, bytes)
            with pytest.raises(UnicodeDecodeError):
                undecodable.decode("utf-8")

            # Non-UTF-8 in a *text* frame breaks RFC 6455: the client fails the socket.
            await sim.send_invalid_utf8(as_text=True)
            with pytest.raises(ConnectionClosed) as caught:
                await ws.get_message()
            assert caught.value.reason.code == 1007
            # trio-websocket fails the socket locally without sending a close
            # frame, so its exit would wait for one; hang up from our side.
            await sim.drop_connections()


async def test_auth_flap_sends_sts_false(sim: GatewaySimulator) -> None:
    with trio.fail_after(10):
        async with ready_client(sim) as ws:
            await sim.send_auth_status(authenticated=False)
            assert await receive(ws) == {"topic": "sts", "args": {"authenticated": False}}


async def test_restart_drops_sockets_and_invalidates_the_old_session(
    sim: GatewaySimulator,
) -> None:
    with trio.fail_after(10):
        old_session = sim.session
        old_cookie = sim.cookie_header()
        async with ready_client(sim) as ws:
            new_session = await sim.restart(down_for=0.2)
            assert new_session != old_session and sim.down
            with pytest.raises(ConnectionClosed):
                await ws.get_message()
        async with httpx.AsyncClient(verify=SSL_CONTEXT, base_url=sim.base_url) as client:
            assert (await client.post("/tickle")).status_code == 503
            await sim.wait_for(lambda s: not s.down)
            assert (await client.post("/tickle")).json()["session"] == new_session
        async with connect(sim, headers=[old_cookie]) as ws:
            assert await receive(ws) == {"message": "waiting for session"}


async def test_slow_mode_spaces_frames_out(sim: GatewaySimulator) -> None:
    with trio.fail_after(10):
        async with ready_client(sim, "sor+{}") as ws:
            sim.set_slow(0.05)
            started = trio.current_time()
            assert await sim.emit_orders(5) == [1, 2, 3, 4, 5]
            assert seqs_of([await receive(ws) for _ in range(5)]) == [1, 2, 3, 4, 5]
            assert trio.current_time() - started >= 5 * 0.05


async def test_background_stream_sends_consecutive_seqs_until_stopped(
    sim: GatewaySimulator,
) -> None:
    with trio.fail_after(10):
        async with ready_client(sim, "sor+{}", f"smd+{CONID}+{{}}") as ws:
            sim.start_stream({"orders": 200, "marketdata": 200})
            orders: list[int] = []
            marketdata: list[int] = []
            while len(orders) < 10 or len(marketdata) < 10:
                frame = await receive(ws)
                if frame["topic"] == "sor":
                    orders.append(frame["args"][0]["seq"])
                elif frame["topic"] == f"smd+{CONID}":
                    marketdata.append(frame["seq"])
            assert orders == list(range(1, len(orders) + 1))
            assert marketdata == list(range(1, len(marketdata) + 1))
            sim.stop_stream()
            assert sim.state()["stream"] == {"running": False, "rates": {}}


async def test_slow_client_is_dropped_without_blocking_other_clients() -> None:
    # 3.4 s alone; CPU-bound (a 200,000-frame burst), so beside the other lanes
    # and a busy core it took over 10 s once. The bound is against a hang.
    with trio.fail_after(40):
        async with (
            open_simulator(queue_size=2, send_timeout=0.2) as sim,
            ready_client(sim, f"smd+{CONID}+{{}}", message_queue_size=1) as _stuck,
            ready_client(sim, "sor+{}") as healthy,
        ):
            # ``_stuck`` never reads again: a burst bigger than the socket buffers
            # wedges its writer, its queue fills, and the emitter gives up on it.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sim.burst_marketdata, CONID, 200_000)
                await sim.wait_for(lambda s: len(s.connections) == 1)
            assert "slow consumer" in sim.state()["closed_connections"][0]["close_reason"]
            assert await sim.emit_orders(1) == [1]
            assert seqs_of([await receive(healthy)]) == [1]


async def test_burst_of_20000_frames_arrives_complete_and_in_order(
    sim: GatewaySimulator,
) -> None:
    with trio.fail_after(30):  # 2.2 s alone, CPU-bound like the one above
        count = 20_000
        async with ready_client(sim, f"smd+{CONID}+{{}}") as ws:
            seqs: list[int] = []

            async def read_all() -> None:
                while len(seqs) < count:
                    seqs.append((await receive(ws))["seq"])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_all)
                result = await sim.burst_marketdata(CONID, count)
            assert result.complete and result.frames == count
            assert (result.first_seq, result.last_seq) == (1, count)
            assert seqs == list(range(1, count + 1))
            assert sim.written(f"marketdata:{CONID}").ranges() == [[1, count]]


async def test_binary_frames_mode_sends_json_as_binary_messages() -> None:
    with trio.fail_after(10):
        async with open_simulator(binary_frames=True) as sim, connect(sim) as ws:
            ready = await ws.get_message()
            assert isinstance(ready, bytes) and orjson.loads(ready)["success"] == "simuser"
            await ws.get_message()
            await ws.get_message()
            await ws.send_message(f"smd+{CONID}+{{}}")
            await sim.wait_subscribed(f"marketdata:{CONID}")
            await sim.emit_marketdata(CONID, 1)
            await sim.burst_marketdata(CONID, 3)
            messages = [await ws.get_message() for _ in range(4)]
            assert all(isinstance(m, bytes) for m in messages)
            assert [orjson.loads(m)["seq"] for m in messages] == [1, 2, 3, 4]


def test_cli_reports_bad_arguments_as_status_2() -> None:
    assert run_cli(["--rate", "bogus=1"]) == 2


async def test_wait_for_raises_simulator_timeout(sim: GatewaySimulator) -> None:
    with trio.fail_after(10), pytest.raises(SimulatorTimeout):
        await sim.wait_ready(timeout=0.05)


# ------------------------------------------------------------------------- TLS


async def test_tls_works_with_the_simulator_ca_and_fails_without_it() -> None:
    with trio.fail_after(10):
        async with open_simulator(tls=True) as sim:
            assert sim.base_url.startswith("https://") and sim.ws_url.startswith("wss://")
            assert sim.ca_pem is not None and sim.ca_pem_path is not None
            async with httpx.AsyncClient(verify=sim.client_ssl_context()) as client:
                assert (await client.post(f"{sim.base_url}/tickle")).status_code == 200
            async with ready_client(sim, "sor+{}") as ws:
                await sim.emit_orders(1)
                assert seqs_of([await receive(ws)]) == [1]

            async with httpx.AsyncClient(verify=SSL_CONTEXT) as client:
                with pytest.raises(httpx.ConnectError):
                    await client.post(f"{sim.base_url}/tickle")
            # (trio-websocket hangs on a failed TLS handshake instead of raising,
            # so the WebSocket port's TLS is checked with a bare TLS stream.)
            stream = await trio.open_ssl_over_tcp_stream(
                "127.0.0.1", sim.port, ssl_context=ssl.create_default_context()
            )
            with pytest.raises(trio.BrokenResourceError) as caught:
                await stream.do_handshake()
            assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
            await trio.aclose_forcefully(stream)
            # Failed handshakes did not hurt the simulator.
            verify = ssl.create_default_context(cafile=sim.ca_pem_path)
            async with httpx.AsyncClient(verify=verify) as client:
                assert (await client.post(f"{sim.base_url}/tickle")).status_code == 200


# ------------------------------------------------------------- control API


async def test_http_control_api_drives_the_same_faults(sim: GatewaySimulator) -> None:
    with trio.fail_after(10):
        async with httpx.AsyncClient(verify=SSL_CONTEXT, base_url=sim.control_url) as control:
            async with ready_client(sim, "sor+{}", f"smd+{CONID}+{{}}") as ws:
                waited = await control.post("/wait", json={"ready": 1, "subscribed": "orders"})
                assert waited.json() == {"ok": True}

                emitted = await control.post("/emit/orders", json={"count": 2})
                assert emitted.json() == {
                    "channel": "orders",
                    "sent": 2,
                    "first_seq": 1,
                    "last_seq": 2,
                }
                assert seqs_of([await receive(ws) for _ in range(2)]) == [1, 2]
                emitted = await control.post("/emit/marketdata", json={"conid": CONID})
                assert emitted.json()["channel"] == f"marketdata:{CONID}"
                assert (await receive(ws))["seq"] == 1

                await control.post("/inject", json={"frame": {"topic": "x"}})
                assert await receive(ws) == {"topic": "x"}
                await control.post("/inject", json={"frame": "raw text"})
                assert await ws.get_message() == "raw text"
                await control.post("/malformed")
                with pytest.raises(orjson.JSONDecodeError):
                    orjson.loads(await ws.get_message())
                await control.post("/binary", json={"text": '{"topic":"b"}'})
                assert await ws.get_message() == b'{"topic":"b"}'
                await control.post("/invalid-utf8")
                with pytest.raises(UnicodeDecodeError):
                    (await ws.get_message()).decode()
                await control.post("/sts", json={"authenticated": False})
                assert (await receive(ws))["args"] == {"authenticated": False}

                burst = (await control.post("/burst", json={"conid": CONID, "count": 50})).json()
                assert burst["complete"] and (burst["first_seq"], burst["last_seq"]) == (2, 51)
                assert [(await receive(ws))["seq"] for _ in range(50)] == list(range(2, 52))

                await control.post("/stall", json={"seconds": None})
                assert (await control.get("/state")).json()["stalled"] is True
                assert (await control.post("/emit/orders")).json()["sent"] == 0
                await control.post("/unstall")
                assert sim.stalled is False

                await control.post("/slow", json={"delay": 0.01})
                assert sim.slow_delay == 0.01
                await control.post("/slow", json={"delay": 0})

                config = await control.post("/config", json={"heartbeat_interval": 5})
                assert config.json()["heartbeat_interval"] == 5
                stream = await control.post("/stream", json={"rates": {"pnl": 1}})
                assert stream.json() == {"running": True, "rates": {"pnl": 1.0}}
                await control.post("/stream/stop")
                assert sim.state()["stream"]["running"] is False

                dropped = await control.post("/drop", json={"mode": "close", "code": 1001})
                assert dropped.json() == {"dropped": 1}
                with pytest.raises(ConnectionClosed):
                    await ws.get_message()

            await control.post("/auth", json={"authenticated": False})
            assert (await control.post(sim.base_url + "/tickle")).status_code == 401
            await control.post("/auth", json={"authenticated": True})
            restarted = await control.post("/restart", json={"down_for": 0})
            assert restarted.json()["session"] == sim.session

            state = (await control.get("/state")).json()
            assert state["connections"] == [] and len(state["closed_connections"]) == 1
            assert state["channels"]["orders"]["written"] == [[1, 2]]
            assert state["closed_connections"][0]["subscriptions"]["orders"] is True
            assert state["tickle_count"] == 1 and state["restarts"] == 1

            timed_out = await control.post("/wait", json={"ready": 1, "timeout": 0.05})
            assert timed_out.status_code == 408
            assert (await control.post("/emit/bogus")).status_code == 404
            assert (await control.post("/drop", json={"mode": "sideways"})).status_code == 400
            assert (await control.post("/stream", json={"rates": {"x": 1}})).status_code == 400
            assert (await control.post("/emit/orders", content=b"[")).status_code == 400
            assert (await control.get("/drop")).status_code == 405


# ----------------------------------------------------------------------- CLI


async def test_cli_prints_base_url_and_serves_until_sigterm() -> None:
    with trio.fail_after(10):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bezant_trio.simulator", "--port", "0", "--no-tls"],
            stdout=subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                assert chunk, "the simulator exited before printing its URL"
                line += chunk
            base_url = line.decode().strip()
            assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1/api")
            async with httpx.AsyncClient(verify=SSL_CONTEXT) as client:
                assert (await client.post(f"{base_url}/tickle")).status_code == 200
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
