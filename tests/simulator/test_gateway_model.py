"""The simulator behaves as the frame corpus says the real gateway does.

Each test names the corpus entries it holds the simulator to. Real sockets:
httpx for REST, a plain trio-websocket client for the WebSocket.
"""

from __future__ import annotations

import httpx
import orjson
import pytest
import trio
from test_simulator import CONID, assert_next_is_marker, connect, ready_client, receive

from bezant_trio.simulator import GatewaySimulator, corpus, open_simulator
from bezant_trio.simulator.commands import parse_command
from bezant_trio.simulator.frames import MD_ALWAYS
from helpers import SSL_CONTEXT

ACCOUNT = "DU1234"


def corpus_keys(entry_id: str) -> set[str]:
    return set(corpus.by_id(entry_id)["data"])


@pytest.fixture
async def sim() -> GatewaySimulator:
    async with open_simulator() as simulator:
        yield simulator


# --------------------------------------------------------------- commands


@pytest.mark.parametrize(
    "entry", corpus.entries(kind="ws_out"), ids=[e["id"] for e in corpus.entries(kind="ws_out")]
)
def test_every_corpus_command_is_read_as_the_gateway_reads_it(entry: dict) -> None:
    command = parse_command(entry["text"])
    expect = entry["expect"]
    assert command.kind == expect["command"]
    assert command.channel == expect.get("channel")
    assert command.conid == expect.get("conid")
    assert command.account == expect.get("account")
    assert command.server_id == expect.get("server_id")
    if "fields" in expect:
        assert list(command.fields or ()) == expect["fields"]


# ------------------------------------------------------------------- REST


async def test_rest_answers_have_the_real_shapes(sim: GatewaySimulator) -> None:
    with trio.fail_after(10):
        async with httpx.AsyncClient(verify=SSL_CONTEXT, base_url=sim.base_url) as client:
            tickle = (await client.post("/tickle")).json()
            assert set(tickle) == corpus_keys("tickle-captured")
            auth_keys = set(corpus.by_id("tickle-captured")["data"]["iserver"]["authStatus"])
            assert set(tickle["iserver"]["authStatus"]) == auth_keys
            status = (await client.get("/iserver/auth/status")).json()
            assert set(status) == corpus_keys("auth-status-captured")
            accounts = (await client.get("/iserver/accounts")).json()
            assert set(accounts) == corpus_keys("accounts-captured")
            assert accounts["selectedAccount"] == ACCOUNT and accounts["sessionId"]
            init = await client.post(
                "/iserver/auth/ssodh/init", json={"publish": True, "compete": False}
            )
            assert set(init.json()) == corpus_keys("ssodh-init-openapi")
            assert (await client.get("/iserver/account/orders?force=true")).json() == {
                "orders": [],
                "snapshot": True,
            }
            assert (await client.get("/iserver/account/trades")).json() == []
            # The first request may answer empty (corpus: pnl-partitioned-empty-openapi).
            assert (await client.get("/iserver/account/pnl/partitioned")).json() == {"upnl": {}}
            root = await client.get(sim.base_url.removesuffix("/v1/api") + "/")
            assert root.status_code == 302  # corpus: behaviour.jsonl offline-root-redirects
            assert root.headers["location"].startswith("/sso/Login")
    assert sim.rest_calls["/tickle"] == 1 and sim.rest_calls["/iserver/account/orders"] == 1
    assert [(method, path) for _, method, path in sim.rest_log][:2] == [
        ("POST", "/tickle"),
        ("GET", "/iserver/auth/status"),
    ]


async def test_resync_endpoints_answer_with_what_was_streamed(sim: GatewaySimulator) -> None:
    with trio.fail_after(10):
        async with ready_client(sim, "sor+{}", "str+{}", "spl+{}") as ws:
            await sim.emit_orders(4)  # order 1: record, Submitted, Filled; order 2: record
            await sim.emit_trades(2)
            await sim.emit_pnl(3)
            streamed = [await receive(ws) for _ in range(9)]
            async with httpx.AsyncClient(verify=SSL_CONTEXT, base_url=sim.base_url) as client:
                orders = (await client.get("/iserver/account/orders?force=true")).json()
                trades = (await client.get("/iserver/account/trades")).json()
                pnl = (await client.get("/iserver/account/pnl/partitioned")).json()
    # The consumer's merge of the sor stream is the gateway's answer.
    merged: dict[int, dict] = {}
    for frame in streamed[:4]:
        for item in frame["args"]:
            merged.setdefault(item["orderId"], {}).update(item)
    assert orders["snapshot"] is True
    assert {o["orderId"]: o for o in orders["orders"]} == merged
    first, second = orders["orders"]
    assert first["status"] == "Filled" and first["ticker"] == "AAPL" and first["seq"] == 3
    assert second["status"] == "PreSubmitted"
    # Updates carry only what changed (corpus: sor-status-changes-doc).
    assert (
        "ticker" not in streamed[1]["args"][0] and streamed[1]["args"][0]["status"] == "Submitted"
    )
    assert [t["seq"] for t in trades] == [1, 2]
    assert trades == [frame["args"][0] for frame in streamed[4:6]]
    assert pnl == {"upnl": streamed[8]["args"]}


async def test_rest_calls_are_counted_per_endpoint(sim: GatewaySimulator) -> None:
    with trio.fail_after(10):
        async with httpx.AsyncClient(verify=SSL_CONTEXT, base_url=sim.base_url) as client:
            for _ in range(3):
                await client.get("/iserver/account/orders", params={"force": "true"})
            await client.get("/iserver/account/pnl/partitioned")
            await client.get("/no/such/endpoint")
        async with httpx.AsyncClient(verify=SSL_CONTEXT, base_url=sim.control_url) as control:
            waited = await control.post(
                "/wait", json={"rest_calls": {"/iserver/account/orders": 3}}
            )
            assert waited.json() == {"ok": True}
            state = (await control.get("/state")).json()
    assert state["rest_calls"] == {
        "/iserver/account/orders": 3,
        "/iserver/account/pnl/partitioned": 1,
        "/no/such/endpoint": 1,
    }
    times = [t for t, _, path in sim.rest_log if path == "/iserver/account/orders"]
    assert times == sorted(times) and len(times) == 3


# ------------------------------------------------------------ market data


async def test_market_data_first_frame_is_full_then_only_what_changed(
    sim: GatewaySimulator,
) -> None:
    # corpus: ws_marketdata.jsonl smd-first-captured, smd-delta-captured-*,
    # behaviour.jsonl smd-deltas-only-changed
    fields = ["31", "84", "86", "85", "88"]
    with trio.fail_after(10):
        command = f"smd+{CONID}+" + orjson.dumps({"fields": fields}).decode()
        async with ready_client(sim, command) as ws:
            assert await sim.emit_marketdata(CONID, 12) == list(range(1, 13))
            got = [await receive(ws) for _ in range(12)]
    first, *deltas = got
    assert set(first) == {*fields, "6509", *MD_ALWAYS, "seq"}
    assert first["server_id"] == first["6119"] and first["conidEx"] == str(CONID)
    for delta in deltas:
        assert set(MD_ALWAYS) <= set(delta) <= {*fields, "6509", *MD_ALWAYS, "seq"}
    # Deltas carry changing subsets, never the static availability field again.
    subsets = {frozenset(d) - set(MD_ALWAYS) - {"seq"} for d in deltas}
    assert len(subsets) > 2 and all("6509" not in s for s in subsets)
    merged: dict = {}
    for frame in got:
        merged.update(frame)
    truth = sim.truth.quote(CONID)
    assert truth is not None
    assert {k: truth[k] for k in fields} == {k: merged[k] for k in fields}


async def test_a_second_connection_gets_its_own_full_first_frame(sim: GatewaySimulator) -> None:
    # corpus: ws_marketdata.jsonl smd-first-after-reconnect-captured
    with trio.fail_after(10):
        async with ready_client(sim, f"smd+{CONID}+{{}}") as early:
            await sim.emit_marketdata(CONID, 3)
            assert [(await receive(early))["seq"] for _ in range(3)] == [1, 2, 3]
            async with ready_client(sim, f"smd+{CONID}+{{}}") as late:
                await sim.emit_marketdata(CONID, 1)
                to_early, to_late = await receive(early), await receive(late)
    assert to_early["seq"] == to_late["seq"] == 4
    assert "6509" in to_late and "6509" not in to_early


async def test_market_data_ends_after_the_expiry_until_subscribed_again() -> None:
    # corpus: behaviour.jsonl smd-expires-after-10-minutes (600 s by default)
    async with open_simulator(marketdata_expiry=0.2) as sim:
        with trio.fail_after(10):
            async with ready_client(sim, f"smd+{CONID}+{{}}") as ws:
                assert await sim.emit_marketdata(CONID, 1) == [1]
                assert "6509" in await receive(ws)
                await trio.sleep(0.3)  # let the server-side expiry pass
                assert await sim.emit_marketdata(CONID, 1) == []
                await assert_next_is_marker(sim, ws)
                assert sim.state()["connections"][0]["marketdata_expired"] == 1
                await ws.send_message(f"smd+{CONID}+{{}}")
                await sim.wait_subscribed(f"marketdata:{CONID}")
                assert await sim.emit_marketdata(CONID, 1) == [2]
                assert "6509" in await receive(ws)  # a new subscription starts full again
    assert GatewaySimulator().marketdata_expiry == 600.0


async def test_duplicate_first_quote_reproduces_the_captured_quirk() -> None:
    # corpus: behaviour.jsonl smd-first-frame-twice
    async with open_simulator(duplicate_first_quote=True) as sim:
        with trio.fail_after(10):
            async with ready_client(sim, f"smd+{CONID}+{{}}") as ws:
                await sim.emit_marketdata(CONID, 2)
                got = [await receive(ws) for _ in range(3)]
    assert got[0] == got[1] and got[2]["seq"] == 2


# ---------------------------------------------- account summary, ledger, bars, book


async def test_account_summary_and_ledger_stream_and_confirm_unsubscription(
    sim: GatewaySimulator,
) -> None:
    # corpus: ssd-captured, ssd-nonmonetary-row, sld-blank-currencies-campus,
    # unsubscribed-from-summary, unsubscribed-from-ledger
    with trio.fail_after(10):
        async with ready_client(sim, f"ssd+{ACCOUNT}+{{}}", f"sld+{ACCOUNT}+{{}}") as ws:
            assert await sim.emit("account_summary", 2) == [1, 2]
            assert await sim.emit("ledger", 2) == [1, 2]
            first, second, ledger1, ledger2 = [await receive(ws) for _ in range(4)]
            await ws.send_message(f"usd+{ACCOUNT}+{{}}")
            assert await receive(ws) == {"result": "unsubscribed from summary"}
            await ws.send_message(f"uld+{ACCOUNT}+{{}}")
            assert await receive(ws) == {"result": "unsubscribed from ledger"}
            assert await sim.emit("account_summary", 1) == []
    assert first["topic"] == f"ssd+{ACCOUNT}" and "args" not in first
    assert {r["key"] for r in first["result"]} == {"ExcessLiquidity-S", "AccruedCash-S", "Cushion"}
    assert {r["key"] for r in second["result"]} == {"ExcessLiquidity-S"}
    assert set(first["result"][0]) == set(corpus.by_id("ssd-captured")["data"]["result"][0])
    assert ledger1["topic"] == f"sld+{ACCOUNT}"
    keys = [entry["key"] for entry in ledger2["result"]]
    assert keys == ["LedgerListBASE", "LedgerListUSD", "LedgerListEUR"]
    blank = [e for e in ledger2["result"] if set(e) == {"key", "timestamp"}]
    assert blank, "an unchanged currency is blank: key and timestamp only"


async def test_bars_answer_once_with_a_server_id_and_umh_is_confirmed(
    sim: GatewaySimulator,
) -> None:
    # corpus: smh-doc, smh-answers-once, unsubscribed-server-id
    with trio.fail_after(10):
        async with ready_client(sim) as ws:
            await ws.send_message(f'smh+{CONID}+{{"period":"2h","bar":"5min"}}')
            answer = await receive(ws)
            assert answer["topic"] == f"smh+{CONID}" and answer["points"] == len(answer["data"])
            assert set(answer["data"][0]) == {"o", "c", "h", "l", "v", "t"}
            assert set(corpus_keys("smh-doc")) <= set(answer)
            assert await sim.emit_bars(CONID, 1) == [2]
            update = await receive(ws)
            assert update["serverId"] == answer["serverId"] and len(update["data"]) == 1
            await ws.send_message(f"umh+{answer['serverId']}")
            assert await receive(ws) == {"message": f"Unsubscribed {answer['serverId']}"}
            assert await sim.emit_bars(CONID, 1) == []


async def test_book_streams_the_price_ladder_and_ubd_ends_it_silently(
    sim: GatewaySimulator,
) -> None:
    # corpus: sbd-ladder-campus
    with trio.fail_after(10):
        async with ready_client(sim, f"sbd+{ACCOUNT}+{CONID}") as ws:
            assert await sim.emit_book(CONID, 1) == [1]
            ladder = await receive(ws)
            assert ladder["topic"] == f"sbd+{ACCOUNT}+{CONID}"
            assert {"row", "focus", "price"} <= set(ladder["data"][0])
            assert any("bid" in row for row in ladder["data"])
            assert any("ask" in row for row in ladder["data"])
            await ws.send_message(f"ubd+{ACCOUNT}")
            await sim.wait_for(lambda s: s.commands[-1]["text"] == f"ubd+{ACCOUNT}")
            assert await sim.emit_book(CONID, 1) == []
            await assert_next_is_marker(sim, ws)


# ------------------------------------------------------------------ faults


async def test_hanging_rest_reads_every_call_and_answers_none(sim: GatewaySimulator) -> None:
    # corpus: behaviour.jsonl offline-rest-never-answers
    sim.hang_rest()
    with trio.fail_after(10):
        async with httpx.AsyncClient(
            verify=SSL_CONTEXT, base_url=sim.base_url, timeout=0.3
        ) as client:
            for path in ("/tickle", "/iserver/auth/status", "/iserver/account/orders"):
                with pytest.raises(httpx.ReadTimeout):
                    await client.get(path)
        async with httpx.AsyncClient(verify=SSL_CONTEXT, base_url=sim.control_url) as control:
            state = (await control.get("/state")).json()  # the controls still answer
            assert state["rest_hang"] is True and state["rest_calls"]["/tickle"] == 1
            await control.post("/rest/hang", json={"hang": False})
        async with httpx.AsyncClient(verify=SSL_CONTEXT, base_url=sim.base_url) as client:
            assert (await client.post("/tickle")).status_code == 200


async def test_silent_websocket_accepts_and_never_speaks(sim: GatewaySimulator) -> None:
    # corpus: behaviour.jsonl offline-websocket-silent
    async with httpx.AsyncClient(verify=SSL_CONTEXT, base_url=sim.control_url) as control:
        await control.post("/ws/silent", json={"silent": True})
    with trio.fail_after(10):
        async with connect(sim) as ws:
            for command in ("ech+hb", "tic", "sor+{}"):
                await ws.send_message(command)
            await sim.wait_for(lambda s: len(s.commands) == 3)
            with trio.move_on_after(0.3) as silence:
                await ws.get_message()
            assert silence.cancelled_caught
        await sim.wait_connections(0)
    assert {c["result"] for c in sim.commands} == {"ignored_silent"}
    assert sim.state()["closed_connections"][-1]["silent"] is True


async def test_brokerage_session_is_down_until_ssodh_init(sim: GatewaySimulator) -> None:
    # corpus: rest.jsonl auth-status-down-captured, ssodh-init-openapi;
    # ws_system.jsonl sts-authenticated-false
    with trio.fail_after(10):
        async with ready_client(sim) as open_ws:
            assert await sim.set_session_down() == 1
            assert await receive(open_ws) == {"topic": "sts", "args": {"authenticated": False}}
        async with httpx.AsyncClient(verify=SSL_CONTEXT, base_url=sim.base_url) as client:
            tickle = await client.post("/tickle")
            assert tickle.status_code == 200
            assert tickle.json()["iserver"]["authStatus"]["authenticated"] is False
            status = (await client.get("/iserver/auth/status")).json()
            assert status == corpus.by_id("auth-status-down-captured")["data"]
            assert (await client.get("/iserver/accounts")).status_code == 401
            async with connect(sim) as ws:
                # No greeting while the session is down, only sts saying so.
                assert await receive(ws) == {"topic": "sts", "args": {"authenticated": False}}
                await assert_next_is_marker(sim, ws)
            init = await client.post(
                "/iserver/auth/ssodh/init", json={"publish": True, "compete": False}
            )
            assert init.json()["authenticated"] is True
            assert (await client.post("/tickle")).json()["iserver"]["authStatus"]["authenticated"]
        async with connect(sim) as ws:
            assert (await receive(ws))["success"] == "simuser"
    assert sim.ssodh_inits == 1


async def test_competing_login_needs_compete_true_to_take_the_session(
    sim: GatewaySimulator,
) -> None:
    # corpus: ws_system.jsonl sts-competing-lost
    with trio.fail_after(10):
        async with ready_client(sim) as ws:
            assert await sim.set_competing() == 1
            told = await receive(ws)
            assert told["args"] == {"authenticated": False, "competing": True, "fail": ""}
        async with httpx.AsyncClient(verify=SSL_CONTEXT, base_url=sim.base_url) as client:
            auth = (await client.post("/tickle")).json()["iserver"]["authStatus"]
            assert (auth["authenticated"], auth["competing"]) == (False, True)
            polite = await client.post("/iserver/auth/ssodh/init", json={"compete": False})
            assert (polite.json()["authenticated"], polite.json()["competing"]) == (False, True)
            taken = await client.post("/iserver/auth/ssodh/init", json={"compete": True})
            assert (taken.json()["authenticated"], taken.json()["competing"]) == (True, False)


async def test_truth_and_new_controls_over_http(sim: GatewaySimulator) -> None:
    with trio.fail_after(10):
        async with ready_client(sim, "sor+{}", f"smd+{CONID}+{{}}", f"ssd+{ACCOUNT}+{{}}") as ws:
            async with httpx.AsyncClient(verify=SSL_CONTEXT, base_url=sim.control_url) as control:
                emitted = (await control.post("/emit/account_summary", json={"count": 1})).json()
                assert emitted["channel"] == f"account_summary:{ACCOUNT}"
                await control.post("/emit/orders", json={"count": 1})
                await control.post("/emit/marketdata", json={"conid": CONID})
                truth = (await control.get("/truth")).json()
                config = await control.post("/config", json={"marketdata_expiry": None})
                assert config.status_code == 200 and sim.marketdata_expiry is None
            assert [await receive(ws) for _ in range(3)]
    assert [o["orderId"] for o in truth["orders"]] == [352055828]
    assert truth["quotes"][str(CONID)]["conid"] == CONID
