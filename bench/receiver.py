"""A local webhook receiver for the sink benchmark, in a process of its own.

``--mode fast`` answers every POST with 204 as soon as its body is read;
``--mode stall`` reads the request and never answers (a hung receiver: the
sink waits for its timeout, retries, waits again). ``GET /count`` returns how
many events (``"cursor":`` occurrences) fast mode has taken. Prints
``serving on http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import sys

import h11
import orjson
import trio

received = {"events": 0, "posts": 0}


async def serve_connection(stream: trio.SocketStream, mode: str) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            body = bytearray()
            request = None
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(262144)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return
            assert request is not None
            if request.method == b"GET":
                payload = orjson.dumps(received)
                status = 200
            else:
                if mode == "stall":
                    await trio.sleep_forever()
                received["posts"] += 1
                received["events"] += bytes(body).count(b'"cursor":')
                payload = b""
                status = 204 if not payload else 200
            headers = [("content-length", str(len(payload)))]
            if payload:
                headers.append(("content-type", "application/json"))
            out = conn.send(h11.Response(status_code=status, headers=headers)) or b""
            if payload:
                out += conn.send(h11.Data(data=payload)) or b""
            out += conn.send(h11.EndOfMessage()) or b""
            await stream.send_all(out)
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
        return
    finally:
        await trio.aclose_forcefully(stream)


async def _main(mode: str) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    print(f"serving on http://127.0.0.1:{port}", flush=True)
    await trio.serve_listeners(lambda stream: serve_connection(stream, mode), listeners)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["fast", "stall"], default="fast")
    args = parser.parse_args()
    trio.run(_main, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
