"""Load generators that run in a process of their own (so their CPU is not the server's).

``fanout``: open ``--n`` keep-alive connections, send one long-poll on each,
print ``SENT``, then record when each answer arrives. Prints one JSON line:
``{"latencies_ms": [...], "errors": k}``, each latency being the receipt time
minus the ``t_ns`` stamped by the sender (in the event's payload for the
daemon, top-level for the baseline).

With ``--sse`` each connection opens an SSE stream instead, and the latency
is taken when the first ``data:`` line with a stamp arrives.

``poll``: the stand-in for wrk when wrk is not installed: ``--conns``
keep-alive connections issue GETs back to back for ``--duration`` seconds,
each for a random topic of ``--topic`` and a random ``since`` in
``[--lo, --hi]``. Prints ``{"requests", "seconds", "rps", "non_200"}``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import orjson
import trio

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import Http


def _stamp_of(body: bytes) -> int | None:
    data = orjson.loads(body)
    if "t_ns" in data:
        return int(data["t_ns"])
    for event in data.get("events", ()):
        stamp = event.get("payload", {}).get("t_ns")
        if stamp is not None:
            return int(stamp)
    return None


async def _read_sse_stamp(client: Http) -> int | None:
    """Read an open SSE response's chunks until an event with a stamp arrives."""
    while True:
        size = int((await client.read_line()).split(b";")[0], 16)
        if size == 0:
            return None  # the stream ended first
        chunk = await client.read_exact(size)
        await client.read_exact(2)
        for line in chunk.split(b"\n"):
            if line.startswith(b"data: "):
                stamp = orjson.loads(line[6:]).get("payload", {}).get("t_ns")
                if stamp is not None:
                    return int(stamp)


async def fanout(base: str, path: str, n: int, timeout: float, sse: bool = False) -> None:
    clients = [Http(base) for _ in range(n)]
    latencies: list[float] = []
    errors: list[str] = []
    sent = 0
    all_sent = trio.Event()

    async def one(client: Http) -> None:
        nonlocal sent
        try:
            await client.send_request("GET", path)
            sent += 1
            if sent == n:
                all_sent.set()
            status, headers = await client.read_head()
            if sse and status == 200:
                body = b"(stream ended)"
                stamp = await _read_sse_stamp(client)
                received = time.time_ns()
            else:
                body = await client.read_body(status, headers)
                received = time.time_ns()
                stamp = _stamp_of(body) if status == 200 else None
            if stamp is None:
                errors.append(f"status {status}: {body[:100]!r}")
            else:
                latencies.append((received - stamp) / 1e6)
        except Exception as exc:  # reported, never fatal: the count of errors is the result
            errors.append(repr(exc))
            if not all_sent.is_set():
                sent += 1
                if sent == n:
                    all_sent.set()
        finally:
            await client.aclose()

    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(one, client)
            await all_sent.wait()
            print("SENT", flush=True)
    print(
        orjson.dumps(
            {"latencies_ms": latencies, "errors": errors[:20], "error_count": len(errors)}
        ).decode(),
        flush=True,
    )


async def poll(
    base: str, template: str, topics: list[str], lo: int, hi: int, conns: int, duration: float
) -> None:
    count = 0
    bad = 0
    deadline = trio.current_time() + duration
    rng = random.Random(7)

    async def worker() -> None:
        nonlocal count, bad
        client = Http(base)
        try:
            while trio.current_time() < deadline:
                path = template.format(topic=rng.choice(topics), since=rng.randint(lo, hi))
                reply = await client.get(path)
                count += 1
                if reply.status != 200:
                    bad += 1
        finally:
            await client.aclose()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(conns):
            nursery.start_soon(worker)
    seconds = time.perf_counter() - started
    print(
        orjson.dumps(
            {"requests": count, "seconds": seconds, "rps": count / seconds, "non_200": bad}
        ).decode(),
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("fanout")
    f.add_argument("--url", required=True)
    f.add_argument("--path", required=True)
    f.add_argument("--n", type=int, default=500)
    f.add_argument("--timeout", type=float, default=60)
    f.add_argument("--sse", action="store_true", help="SSE streams instead of long-polls")
    p = sub.add_parser("poll")
    p.add_argument("--url", required=True)
    p.add_argument("--template", required=True, help="path with {topic} and {since}")
    p.add_argument("--topic", action="append", default=[])
    p.add_argument("--lo", type=int, required=True)
    p.add_argument("--hi", type=int, required=True)
    p.add_argument("--conns", type=int, default=16)
    p.add_argument("--duration", type=float, default=5)
    args = parser.parse_args()
    if args.mode == "fanout":
        trio.run(fanout, args.url, args.path, args.n, args.timeout, args.sse)
    else:
        trio.run(
            poll,
            args.url,
            args.template,
            args.topic or ["orders"],
            args.lo,
            args.hi,
            args.conns,
            args.duration,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
