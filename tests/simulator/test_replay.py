"""Replaying a recorded session: the file format, the player, and a real daemon fed by it."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

import httpx
import orjson
import pytest
import trio
from trio_websocket import open_websocket_url

from bezant_trio.config import config_from_mapping
from bezant_trio.daemon import Daemon
from bezant_trio.simulator import (
    GatewaySimulator,
    ReplaySession,
    SessionFormatError,
    corpus,
    open_simulator,
    run_cli,
)
from helpers import SSL_CONTEXT, wait_until

SHIPPED = corpus.session_path("assembled-paper-day.jsonl")
HEADER = '{"format":"bezant-trio-session","version":1}'


def session_lines() -> list[dict]:
    return [orjson.loads(line) for line in SHIPPED.read_text().splitlines()[1:]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no bezant-trio-session header"),
        ('{"format":"other"}', "line 1: the first line must be"),
        ('{"format":"bezant-trio-session","version":9}', "line 1: unknown version"),
        (HEADER + "\n[1]", "line 2: not a JSON object"),
        (HEADER + "\nnot json", "line 2: not JSON"),
        (HEADER + '\n{"t":-1,"dir":"in","text":"x"}', "line 2: 't' must be"),
        (HEADER + '\n{"t":1,"dir":"sideways"}', "line 2: 'dir' must be"),
        (HEADER + '\n{"t":1,"dir":"in"}', "line 2: an 'in' entry needs 'text'"),
        (HEADER + '\n{"t":1,"dir":"rest","path":"/x"}', "needs 'path' and 'status'"),
    ],
)
def test_a_bad_session_file_names_the_line(text: str, message: str) -> None:
    with pytest.raises(SessionFormatError, match=message):
        ReplaySession.parse(text, name="s.jsonl")


def test_the_shipped_session_cites_the_corpus_for_every_frame() -> None:
    session = ReplaySession.load(SHIPPED)
    frames = [line for line in session_lines() if line["dir"] == "in"]
    assert len(session.frames) == len(frames) > 30
    for line in frames:
        entry = corpus.by_id(line["corpus"])
        if "text" in entry:
            assert line["text"] == entry["text"]
        else:
            assert orjson.loads(line["text"]) == entry["data"]


async def test_replay_plays_every_frame_in_order_and_still_answers_the_echo() -> None:
    text = "\n".join(
        [
            HEADER,
            '{"t":0.0,"dir":"meta","event":"ws_open"}',
            '{"t":0.02,"dir":"in","text":"{\\"topic\\":\\"system\\",\\"success\\":\\"u\\"}"}',
            '{"t":0.01,"dir":"rest","method":"GET","path":"/iserver/accounts","status":200,'
            '"body":{"accounts":["U7"]}}',
            '{"t":0.05,"dir":"out","text":"sor+{}"}',
            '{"t":0.04,"dir":"in","text":"ech+hb"}',
            '{"t":0.06,"dir":"in","text":"{\\"x\\":1}","binary":true}',
        ]
    )
    replay = ReplaySession.parse(text, speed=2.0)
    async with open_simulator(replay=replay) as sim:
        with trio.fail_after(10):
            async with httpx.AsyncClient(verify=SSL_CONTEXT, base_url=sim.base_url) as client:
                assert (await client.get("/iserver/accounts")).json() == {"accounts": ["U7"]}
                assert (await client.post("/tickle")).json()["session"] == sim.session
            async with open_websocket_url(sim.ws_url) as ws:
                started = trio.current_time()
                got = [await ws.get_message() for _ in range(3)]
                assert trio.current_time() - started >= 0.06 / 2 * 0.9
                assert got == ['{"topic":"system","success":"u"}', "ech+hb", b'{"x":1}']
                await ws.send_message("ech+hb")  # pings are still answered live
                assert await ws.get_message() == "ech+hb"
                await ws.send_message("sor+{}")
                await sim.wait_for(lambda s: len(s.commands) == 2)
    assert [c["result"] for c in sim.commands] == ["accepted", "ignored_replay"]
    assert replay.describe()["played"] == 1


def test_simulate_cli_refuses_a_bad_session_with_status_2(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("nope\n")
    assert run_cli(["--replay", str(bad)]) == 2
    assert "line 1: not JSON" in capsys.readouterr().err
    assert run_cli(["--replay", str(tmp_path / "missing.jsonl")]) == 2


async def test_simulate_replay_subprocess_plays_the_shipped_session() -> None:
    with trio.fail_after(20):
        command = [sys.executable, "-m", "bezant_trio.simulator", "--port", "0", "--no-tls"]
        command += ["--replay", str(SHIPPED), "--replay-speed", "50"]
        process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
        try:
            assert process.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                assert chunk, "the simulator exited before printing its URL"
                line += chunk
            ws_url = line.decode().strip().replace("http://", "ws://") + "/ws"
            async with open_websocket_url(ws_url) as ws:
                first = orjson.loads(await ws.get_message())
            assert first["topic"] == "system" and first["success"] == "BASELINE_USER"
            process.terminate()
            assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_the_shipped_session_replayed_into_a_daemon_gives_exactly_its_events(
    nursery: trio.Nursery,
) -> None:
    # What each frame is captured under comes from its corpus entry, not from
    # the classifier under test.
    expected: dict[str, list[bytes]] = defaultdict(list)
    for line in session_lines():
        if line["dir"] == "in":
            topic = corpus.by_id(line["corpus"])["expect"]["topic"]
            if topic is not None:
                expected[topic].append(line["text"].encode())
    assert {topic: len(payloads) for topic, payloads in expected.items()} == {
        "system": 3,  # greeting, Unsubscribed <serverId>, unsubscribed from summary
        "act": 1,
        "sts": 2,
        "trades": 3,
        "marketdata:265598": 6,
        "pnl": 2,
        "account_summary": 2,
        "ledger": 2,
        "orders": 7,
        "ntf": 1,
        "bars:265598": 1,
        "book:265598": 1,
        "blt": 1,
    }
    replay = ReplaySession.load(SHIPPED, speed=20)
    sim = GatewaySimulator(replay=replay)
    await nursery.start(sim.run)
    config = config_from_mapping(
        {"gateway": {"url": sim.base_url}, "http": {"bind": "127.0.0.1:0"}}, env={}
    )
    # After the greeting the daemon also fetches the truth of its channels
    # (orders, pnl) from REST and publishes it as one resync event each. The
    # replayed gateway knows no orders, so the forced call answers an empty
    # list and the daemon asks once more without force (cpapi/resync.py).
    resynced = {
        "orders": "/iserver/account/orders",
        "pnl": "/iserver/account/pnl/partitioned",
    }
    with trio.fail_after(30):
        daemon = await nursery.start(Daemon(config).run)
        await sim.wait_for(lambda s: replay.played == 1)
        await wait_until(
            lambda: all(
                daemon.hub.head(topic) >= len(payloads) + (topic in resynced)
                for topic, payloads in expected.items()
            )
        )
        got: dict[str, list[bytes]] = {}
        resyncs: dict[str, list[str]] = {}
        for topic in expected:
            for event in (await daemon.hub.read(topic, 0, 100)).events:
                if event.payload.get("reason") == "resync":
                    resyncs.setdefault(topic, []).append(event.payload["source"])
                else:
                    got.setdefault(topic, []).append(event.payload_json)
        await wait_until(lambda: daemon.connector.frames["echo"] >= 1)
        frames = daemon.connector.status()["frames"]
        daemon.request_stop()
    assert got == dict(expected)  # every frame once, in order, byte for byte
    assert resyncs == {topic: [source] for topic, source in resynced.items()}
    assert set(daemon.hub.topics()) - {"gap"} == set(expected)
    # heartbeats, tic answers and the echo were counted, never captured
    assert frames["heartbeat"] == 6 and frames["echo"] >= 1 and "malformed" not in frames
    sim.stop()
