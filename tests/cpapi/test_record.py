"""``bezant-trio record`` against the simulator: what it writes replays as it was received."""

from __future__ import annotations

import orjson
import trio
import trio.testing
from trio_websocket import open_websocket_url

from bezant_trio.cli import main
from bezant_trio.cpapi.record import Recorder, record_session
from bezant_trio.simulator import ReplaySession, open_simulator


async def test_recording_holds_rest_answers_frames_and_commands_without_the_session_id(
    tmp_path,
) -> None:
    out = tmp_path / "session.jsonl"
    async with open_simulator(heartbeat_interval=0.2) as sim:
        stop = trio.Event()

        async def trade_then_stop() -> None:
            await sim.wait_subscribed("orders", timeout=10)
            await sim.emit_orders(3)
            await sim.wait_written("orders", 3, timeout=10)
            # The recorder drains with an ech+hb barrier: what was written is recorded.
            stop.set()

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trade_then_stop)
                frames = await record_session(
                    sim.base_url, out, commands=["sor+{}"], duration=15, stop=stop
                )
        session_id = sim.session
    text = out.read_text()
    assert session_id not in text  # replaced by zeros wherever it appeared
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert lines[0]["format"] == "bezant-trio-session" and lines[0]["commands"] == ["sor+{}"]
    rest = {line["path"]: line for line in lines if line.get("dir") == "rest"}
    assert set(rest) == {"/tickle", "/iserver/auth/status", "/iserver/accounts"}
    assert rest["/tickle"]["body"]["session"] == "0" * 32
    assert rest["/iserver/accounts"]["body"]["selectedAccount"] == "DU1234"
    texts = [line["text"] for line in lines if line.get("dir") == "in"]
    assert len(texts) == frames and texts[-1] == "ech+hb"  # the closing barrier's echo
    received = [orjson.loads(text) for text in texts[:-1]]
    assert received[0]["success"] == "simuser"  # the greeting, then act and sts
    assert [f["topic"] for f in received[1:3]] == ["act", "sts"]
    orders = [f for f in received if f.get("topic") == "sor"]
    assert [f["args"][0]["seq"] for f in orders] == [1, 2, 3]
    sent = [line["text"] for line in lines if line.get("dir") == "out"]
    assert sent == ["sor+{}", "ech+hb"]
    # the greeting came before the subscription was sent
    times = {line.get("text"): line["t"] for line in lines if "t" in line}
    greeting = next(line["t"] for line in lines if line.get("dir") == "in")
    assert times["sor+{}"] >= greeting

    # ... and the recording replays: the same frames, in order.
    replay = ReplaySession.load(out, speed=20)
    async with open_simulator(replay=replay) as player:
        with trio.fail_after(10):
            async with open_websocket_url(player.ws_url) as ws:
                replayed = [await ws.get_message() for _ in range(len(texts))]
    assert replayed == [text.replace(session_id, "0" * 32) for text in texts]


class _SlowFile:
    """A file whose writes take longer the earlier they were asked (like a busy thread pool)."""

    def __init__(self) -> None:
        self.text = ""
        self._pending = 0

    async def write(self, line: str) -> None:
        self._pending += 1
        await trio.sleep(1.0 / self._pending)
        self.text += line

    async def flush(self) -> None:
        self._pending = max(0, self._pending - 1)


async def test_recorder_lines_keep_the_order_write_was_called_in(autojump_clock) -> None:
    # A command written by one task just before the answer another task
    # writes must not land after it: the recording once had the closing
    # ech+hb before sor+{} (each write ran in its own worker thread).
    out = _SlowFile()
    recorder = Recorder(out, started=trio.current_time())
    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(recorder.write, {"dir": "out", "text": f"c{n}"})
            await trio.testing.wait_all_tasks_blocked()
    entries = [orjson.loads(line) for line in out.text.splitlines()]
    assert [entry["text"] for entry in entries] == [f"c{n}" for n in range(20)]
    assert recorder.lines == 20


def test_record_cli_says_what_failed_in_one_line(tmp_path, capsys) -> None:
    assert main(["record", "--duration", "0"]) == 2
    status = main(
        ["record", "--url", "http://127.0.0.1:9/v1/api", "--out", str(tmp_path / "s.jsonl")]
    )
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bezant-trio record: cannot reach the gateway")
    assert "Traceback" not in capsys.readouterr().err
