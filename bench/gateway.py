"""The simulated gateway the benchmarks run against, in a process of its own.

It is the stock :class:`bezant_trio.simulator.GatewaySimulator` (``/sim/burst``,
``/sim/wait``, ``/sim/emit/...`` and the rest unchanged) plus one route the
latency and fan-out measurements need and the simulator does not have:

``POST /bench/stamped {"conid": C, "count": N, "rate": R}`` sends ``N``
market-data frames for ``C`` (the realistic ~150-byte frame of ``/sim/burst``)
at ``R`` frames/s on an absolute schedule, each carrying ``"t_ns"``: the
sender's ``time.time_ns()`` taken just before the frame is queued on the
socket. Readers on the same machine subtract it from their own clock. The
frame's own ``_updated`` has millisecond resolution, too coarse for a 2 ms
target. Answers once the last frame is queued.

``POST /bench/burst_many {"conids": [...], "count_each": N}`` is
``/sim/burst`` for several conids at once, frames interleaved round-robin as a
real multi-instrument feed would be (the scaling measurement).

Prints the base URL (``http://127.0.0.1:PORT/v1/api``) on stdout, like
``bezant-trio simulate --port 0 --no-tls``.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time

import orjson
import trio
from wsproto.connection import Connection as WsProtocol
from wsproto.connection import ConnectionType
from wsproto.events import TextMessage

from bezant_trio.simulator import frames
from bezant_trio.simulator.connection import Outgoing
from bezant_trio.simulator.gateway import GatewaySimulator
from bezant_trio.simulator.httpserver import Request, Response


class BenchGateway(GatewaySimulator):
    """The simulator plus ``POST /bench/stamped``."""

    async def handle_request(self, request: Request) -> Response:
        if request.method == "POST" and request.path == "/bench/stamped":
            try:
                body = orjson.loads(request.body or b"{}")
                conid = int(body.get("conid", frames.DEFAULT_CONID))
                count = int(body.get("count", 1))
                rate = float(body.get("rate", 1000.0))
            except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
                return Response(400, {"error": str(exc)})
            return Response(200, await self.send_stamped(conid, count, rate))
        if request.method == "POST" and request.path == "/bench/burst_many":
            try:
                body = orjson.loads(request.body or b"{}")
                conids = [int(c) for c in body["conids"]]
                each = int(body["count_each"])
            except (KeyError, ValueError, TypeError, orjson.JSONDecodeError) as exc:
                return Response(400, {"error": str(exc)})
            return Response(200, await self.burst_many(conids, each))
        return await super().handle_request(request)

    async def burst_many(self, conids: list[int], each: int) -> dict[str, object]:
        """``/sim/burst`` for several conids at once, their frames interleaved round-robin.

        Goes to the connections subscribed to the first conid (one client
        subscribing them all). Everything is encoded before the first byte is
        sent, so ``encode_seconds`` can be taken off a sender-side clock.
        """
        targets = self.subscribers(frames.marketdata_channel(conids[0]))
        started = time.perf_counter()
        encoder = WsProtocol(ConnectionType.SERVER)
        headers: dict[int, bytes] = {}
        now = int(time.time() * 1000)
        chunks: list[bytes] = []
        buffer = bytearray()
        for seq in range(1, each + 1):
            for conid in conids:
                raw = orjson.dumps(
                    frames.marketdata_frame(
                        conid, seq, now, server_id="q0", fields=frames.DEFAULT_MD_FIELDS
                    )
                )
                header = headers.get(len(raw))
                if header is None:
                    encoded = encoder.send(TextMessage(data=raw.decode()))
                    header = headers[len(raw)] = encoded[: len(encoded) - len(raw)]
                buffer += header
                buffer += raw
                if len(buffer) >= 256 * 1024:
                    chunks.append(bytes(buffer))
                    buffer.clear()
        if buffer:
            chunks.append(bytes(buffer))
        encode_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for conn in targets:
            items = [Outgoing("raw", chunk) for chunk in chunks]
            items[-1].done = trio.Event()
            for item in items:
                await conn.enqueue(item)
            await items[-1].done.wait()
        return {
            "connections": len(targets),
            "frames": each * len(conids),
            "encode_seconds": encode_seconds,
            "send_seconds": time.perf_counter() - started,
        }

    async def send_stamped(self, conid: int, count: int, rate: float) -> dict[str, object]:
        channel = frames.marketdata_channel(conid)
        fields = frames.DEFAULT_MD_FIELDS
        start = trio.current_time()
        sent = late = 0
        for seq in range(1, count + 1):
            due = start + (seq - 1) / rate if math.isfinite(rate) and rate > 0 else start
            if trio.current_time() < due:
                await trio.sleep_until(due)
            elif seq > 1 and trio.current_time() - due > 0.001:
                late += 1
            frame = frames.marketdata_frame(
                conid, seq, int(time.time() * 1000), server_id="q0", fields=fields
            )
            frame["t_ns"] = time.time_ns()
            text = orjson.dumps(frame).decode()
            for conn in self.subscribers(channel):
                if await conn.enqueue(Outgoing("text", text)):
                    sent += 1
        return {"sent": sent, "late": late, "seconds": trio.current_time() - start}


async def _main(port: int) -> None:
    sim = BenchGateway(host="127.0.0.1", port=port, tls=False, heartbeat_interval=10.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        print(sim.base_url, flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    trio.run(_main, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
