"""Benchmarks of bezant-trio against the raw ceiling of its own stack, in the same run.

    .venv/bin/python bench/run.py                 # everything, writes bench/RESULTS.md
    .venv/bin/python bench/run.py --quick         # every measurement at tiny sizes (< 60 s)
    .venv/bin/python bench/run.py --only ingest,poll --runs 7
    .venv/bin/python bench/run.py --only ingest --profile   # + py-spy profiles in bench/profile/

Every server is a process of its own on 127.0.0.1 (port 0): the simulated
gateway (``bench/gateway.py``), the daemon (``python -m bezant_trio run``),
the baselines (``baseline_ws.py``, ``baseline_http.py``), the load
generators (wrk, ``loadgen.py``) and the webhook receiver (``receiver.py``).
Baseline and daemon runs are interleaved and each ratio is taken within one
pair of runs, because the machine is shared and noisy; figures are medians
of ``--runs`` (default 5) with min-max. Nothing here asserts a speed: the
verdict column compares with the issue's targets and never fails the run.
See ``bench/README.md`` for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import itertools
import json
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import trio

from bezant_trio.model import format_ts, parse_ts
from bezant_trio.testing import fork_children

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
import biglog
from _common import (
    BENCH_DIR,
    PYTHON,
    REPO,
    ChildProcess,
    DaemonProcess,
    Http,
    cpu_seconds,
    daemon_config,
    percentile,
    request_once,
    spawn,
    start_daemon,
    start_gateway,
    summarise,
)

MEASUREMENTS = ("ingest", "poll", "latency", "fanout", "memory", "sinks", "scaling", "small")

#: Sizes per mode. ``quick`` only proves every measurement still runs.
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "ingest_n": 200_000,
        "poll_seconds": 5.0,
        "latency_rate": 1000.0,
        "latency_seconds": 10.0,
        "fanout_n": 500,
        "memory_n": 100_000,
        "sinks_n": 50_000,
        "scaling_n": 100_000,
        "scaling_conids": (1, 10, 100),
        "scaling_capacities": (1000, 100_000),
        "poll_fill": 1100,
        "idle_seconds": 30.0,
        "settle_seconds": 1.0,
        "big_log_events": 10_000_000,
        "big_log_topics": 10,
        "small_log_events": 100_000,
        "history_requests": 200,
        "retention_rows": 1_000_000,
        "retention_events": 8000,
    },
    "quick": {
        "ingest_n": 3000,
        "poll_seconds": 0.5,
        "latency_rate": 1000.0,
        "latency_seconds": 0.5,
        "fanout_n": 20,
        "memory_n": 2000,
        "sinks_n": 1000,
        "scaling_n": 2000,
        "scaling_conids": (1, 10),
        "scaling_capacities": (200, 200),  # the 100,000 ring's run is the same code: skipped
        "poll_fill": 300,
        "idle_seconds": 1.0,
        "settle_seconds": 0.2,
        "big_log_events": 20_000,
        "big_log_topics": 2,
        "small_log_events": 2000,
        "history_requests": 20,
        "retention_rows": 5000,
        "retention_events": 300,
    },
}


# ---------------------------------------------------------------- result model


@dataclass
class Row:
    """One figure: the daemon's runs, the baseline's runs, per-pair ratios and the target."""

    figure: str
    unit: str
    daemon: list[float]
    baseline: list[float] | None = None
    ratio: list[float] | None = None
    target: str = ""
    #: Given the median: True (met), False (missed), None (no target).
    check: Callable[[float], bool] | None = None
    on: str = "ratio"  # which median the check looks at: ratio | daemon

    def __post_init__(self) -> None:
        # The ratio of each interleaved pair, unless given (a ratio of other figures).
        if self.ratio is None and self.baseline is not None:
            self.ratio = ratio_of(self.daemon, self.baseline)

    def to_dict(self) -> dict[str, Any]:
        verdict = None
        if self.check is not None:
            values = self.ratio if self.on == "ratio" else self.daemon
            if values:
                verdict = bool(self.check(summarise(values)["median"]))
        return {
            "figure": self.figure,
            "unit": self.unit,
            "daemon": self.daemon,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "target": self.target,
            "met": verdict,
        }


@dataclass
class Section:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "rows": [row.to_dict() for row in self.rows],
            "notes": self.notes,
            "extra": self.extra,
            "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }


def ratio_of(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=True) if y]


# ---------------------------------------------------------------- helpers


async def status(base: str) -> dict[str, Any]:
    reply = await request_once(base, "GET", "/events/_status")
    return reply.json()


async def head(base: str, topic: str) -> int:
    return int((await status(base))["head_cursors"].get(topic, 0))


async def want_conids(daemon: str, gateway: str, conids: list[int]) -> None:
    """Poll each conid once (the daemon subscribes it upstream) and wait for the gateway to see it."""
    client = Http(daemon)
    try:
        for conid in conids:
            reply = await client.get(f"/events/marketdata?conid={conid}")
            if reply.status not in (200, 204):
                raise RuntimeError(
                    f"subscribing conid {conid}: {reply.status} {reply.body[:200]!r}"
                )
    finally:
        await client.aclose()
    reply = await request_once(
        gateway,
        "POST",
        "/sim/wait",
        {"subscribed": [f"marketdata:{c}" for c in conids], "timeout": 30},
    )
    if reply.status != 200:
        raise RuntimeError(f"the gateway never saw the subscriptions: {reply.body[:300]!r}")


async def follow(base: str, topic: str, since: int, until: int) -> dict[str, Any]:
    """A long-polling reader that reads every event up to cursor ``until`` (limit 1000).

    Returns when it holds ``until``, with the receipt time and how many
    requests (and 412 resumptions) that took. It does not parse bodies: the
    ``x-bezant-cursor`` header carries the cursor to poll with next.
    """
    client = Http(base)
    requests = expired = 0
    try:
        while since < until:
            reply = await client.get(f"/events/{topic}?since={since}&limit=1000&wait=30")
            requests += 1
            if reply.status in (200, 204):
                since = int(reply.headers["x-bezant-cursor"])
            elif reply.status == 412:
                expired += 1
                since = int(reply.json()["head_cursor"])
            else:
                raise RuntimeError(f"poll answered {reply.status}: {reply.body[:200]!r}")
        return {"t_end_ns": time.time_ns(), "requests": requests, "expired": expired}
    finally:
        await client.aclose()


async def watch_heads(base: str, targets: dict[str, int], interval: float = 0.01) -> int:
    """Poll ``/events/_status`` until every topic's head reaches its target; the time seen."""
    client = Http(base)
    try:
        while True:
            heads = (await client.get("/events/_status")).json()["head_cursors"]
            if all(heads.get(t, 0) >= c for t, c in targets.items()):
                return time.time_ns()
            await trio.sleep(interval)
    finally:
        await client.aclose()


async def run_baseline_ws(
    ctx: Bench,
    gateway: str,
    conids: list[int],
    count: int,
    *,
    burst: dict[str, Any] | None = None,
    keep: bool = False,
    latency: bool = False,
    stamped: dict[str, Any] | None = None,
    raw: bool = False,
) -> dict[str, Any]:
    """One run of the bare trio-websocket client; returns its report plus the burst's timing."""
    argv = [PYTHON, str(BENCH_DIR / "baseline_ws.py"), "--gateway", gateway, "--count", str(count)]
    for conid in conids:
        argv += ["--conid", str(conid)]
    if keep:
        argv.append("--keep")
    if latency:
        argv.append("--latency")
    if raw:
        argv.append("--raw")
    child = spawn(ctx.tag("baseline-ws"), argv, ctx.workdir)
    try:
        await child.wait_for(re.compile("READY"))
        reply = await request_once(
            gateway,
            "POST",
            "/sim/wait",
            {"subscribed": [f"marketdata:{c}" for c in conids], "timeout": 30},
        )
        assert reply.status == 200, reply.body
        t0 = time.time_ns()
        sent: dict[str, Any] = {}
        if burst is not None:
            sent = await send_burst(gateway, conids, count)
        elif stamped is not None:
            sent = (await request_once(gateway, "POST", "/bench/stamped", stamped)).json()
        match = await child.wait_for(re.compile(r'(\{"frames".*\})'), timeout=ctx.timeout(count))
        out = orjson.loads(match.group(1))
        out["t0_ns"] = t0
        out["origin_ns"] = t0 + sent.get("encode_seconds", 0.0) * 1e9
        return out
    finally:
        await child.close()


async def send_burst(gateway: str, conids: list[int], total: int) -> dict[str, Any]:
    """``/sim/burst`` for one conid, ``/bench/burst_many`` (interleaved) for several."""
    if len(conids) == 1:
        reply = await request_once(
            gateway, "POST", "/sim/burst", {"conid": conids[0], "count": total}
        )
    else:
        reply = await request_once(
            gateway,
            "POST",
            "/bench/burst_many",
            {"conids": conids, "count_each": total // len(conids)},
        )
    if reply.status != 200:
        raise RuntimeError(f"burst failed: {reply.status} {reply.body[:300]!r}")
    return reply.json()


async def daemon_ingest(
    ctx: Bench,
    daemon: DaemonProcess,
    base: str,
    gateway: str,
    conids: list[int],
    total: int,
    *,
    reader: str = "follow",
) -> dict[str, Any]:
    """Burst ``total`` frames over ``conids``; time until the last is visible to a poller.

    ``reader="follow"``: one long-polling reader reads every event (one conid);
    ``reader="status"``: ``/events/_status`` is polled for the heads (many conids).
    """
    each = total // len(conids)
    topics = [f"marketdata:{c}" for c in conids]
    heads = (await status(base))["head_cursors"]
    starts = {t: int(heads.get(t, 0)) for t in topics}
    targets = {t: starts[t] + each for t in topics}
    cpu0 = cpu_seconds(daemon.pid)
    seen: dict[str, Any] = {}
    sent: dict[str, Any] = {}
    with trio.fail_after(ctx.timeout(total)):
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                if reader == "follow":
                    seen.update(
                        await follow(base, topics[0], starts[topics[0]], targets[topics[0]])
                    )
                else:
                    seen["t_end_ns"] = await watch_heads(base, targets)

            nursery.start_soon(read)
            await trio.sleep(0.05)  # the reader is parked before the first frame leaves
            t0 = time.time_ns()
            sent.update(await send_burst(gateway, conids, each * len(conids)))
    origin = t0 + sent["encode_seconds"] * 1e9
    seconds = (seen["t_end_ns"] - origin) / 1e9
    return {
        "rate": each * len(conids) / seconds,
        "seconds": seconds,
        "cpu_us_per_frame": (cpu_seconds(daemon.pid) - cpu0) / (each * len(conids)) * 1e6,
        "requests": seen.get("requests"),
        "expired": seen.get("expired"),
        "origin_ns": origin,
    }


# ---------------------------------------------------------------- load generation


#: ``--no-wrk``: use loadgen.py even where wrk is installed (what CI without wrk runs).
NO_WRK = False


def _wrk() -> str | None:
    return None if NO_WRK else shutil.which("wrk")


def _wrk_script(path: Path, ranges: list[tuple[str, int, int]]) -> None:
    entries = ",\n".join(f'  {{"{prefix}", {lo}, {hi}}}' for prefix, lo, hi in ranges)
    path.write_text(
        "math.randomseed(7)\n"
        f"local targets = {{\n{entries}\n}}\n"
        "request = function()\n"
        "  local t = targets[math.random(#targets)]\n"
        '  return wrk.format("GET", t[1] .. math.random(t[2], t[3]) .. "&limit=100")\n'
        "end\n"
    )


async def poll_rate(
    ctx: Bench, base: str, ranges: list[tuple[str, int, int]], seconds: float
) -> float:
    """Requests/s of 16 keep-alive connections on ``GET <prefix><random since>&limit=100``.

    ``ranges``: (path prefix ending in ``since=``, lowest since, highest since).
    wrk (one thread, its own process) when installed, else ``loadgen.py poll``.
    """
    wrk = _wrk()
    if wrk:
        script = ctx.workdir / f"poll-{ctx.counter()}.lua"
        _wrk_script(script, ranges)
        out = await trio.run_process(
            [wrk, "-t1", "-c16", f"-d{max(1, round(seconds))}s", "-s", str(script), base],
            capture_stdout=True,
            capture_stderr=True,
        )
        text = out.stdout.decode()
        match = re.search(r"Requests/sec:\s+([\d.]+)", text)
        non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
        if not match:
            raise RuntimeError(f"wrk said:\n{text}\n{out.stderr.decode()}")
        if non2xx and int(non2xx.group(1)):
            raise RuntimeError(f"wrk saw {non2xx.group(1)} non-2xx answers: the ranges are wrong")
        return float(match.group(1))
    # One conid per load generator run keeps the fallback simple: mixed topics use wrk.
    prefix, lo, hi = ranges[0]
    path, _, _ = prefix.partition("?")
    out = await trio.run_process(
        [
            PYTHON,
            str(BENCH_DIR / "loadgen.py"),
            "poll",
            "--url",
            base,
            "--template",
            path.replace(path.rsplit("/", 1)[1], "{topic}") + "?since={since}&limit=100",
            *itertools.chain.from_iterable(
                ["--topic", p.partition("?")[0].rsplit("/", 1)[1]] for p, _, _ in ranges
            ),
            "--lo",
            str(lo),
            "--hi",
            str(hi),
            "--duration",
            str(seconds),
        ],
        capture_stdout=True,
    )
    return float(orjson.loads(out.stdout.splitlines()[-1])["rps"])


def ring_range(topic_head: int, capacity: int) -> tuple[int, int]:
    """``since`` values whose answer holds 100 events that are all in the ring."""
    first = max(1, topic_head - capacity + 1)
    return first - 1, topic_head - 100


async def start_baseline_http(
    ctx: Bench, size: int, *, raw: bool = False
) -> tuple[ChildProcess, str]:
    child = spawn(
        ctx.tag("baseline-http"),
        [PYTHON, str(BENCH_DIR / "baseline_http.py"), "--size", str(size)]
        + (["--raw-asgi"] if raw else []),
        ctx.workdir,
    )
    match = await child.wait_for(re.compile(r"serving on (http://\S+)"))
    return child, match.group(1)


async def start_relay(ctx: Bench, gateway: str, conids: list[int]) -> tuple[ChildProcess, str]:
    """``baseline_relay.py`` subscribed to ``conids`` (the latency floor of the stack)."""
    argv = [PYTHON, str(BENCH_DIR / "baseline_relay.py"), "--gateway", gateway]
    for conid in conids:
        argv += ["--conid", str(conid)]
    child = spawn(ctx.tag("relay"), argv, ctx.workdir)
    ctx.children.append(child)
    match = await child.wait_for(re.compile(r"serving on (http://\S+)"))
    reply = await request_once(
        gateway,
        "POST",
        "/sim/wait",
        {"subscribed": [f"marketdata:{c}" for c in conids], "timeout": 30},
    )
    if reply.status != 200:
        raise RuntimeError(f"the relay never subscribed: {reply.body[:300]!r}")
    return child, match.group(1)


async def read_stamped(
    ctx: Bench,
    url: str,
    path: str,
    since: int,
    gateway: str,
    conid: int,
    count: int,
    rate: float,
    *,
    sse: bool = False,
) -> dict[str, Any]:
    """``reader.py`` (its own process) on ``path`` while the simulator sends stamped frames."""
    argv = [
        PYTHON,
        str(BENCH_DIR / "reader.py"),
        "--url",
        url,
        "--path",
        path,
        "--since",
        str(since),
        "--count",
        str(count),
        "--timeout",
        str(ctx.timeout(count) + count / rate),
    ]
    if sse:
        argv.append("--sse")
    child = spawn(ctx.tag("reader"), argv, ctx.workdir)
    try:
        await child.wait_for(re.compile("READY"))
        await trio.sleep(0.05)  # its first request is parked before the first frame
        reply = await request_once(
            gateway, "POST", "/bench/stamped", {"conid": conid, "count": count, "rate": rate}
        )
        if reply.status != 200:
            raise RuntimeError(f"stamped send failed: {reply.body[:200]!r}")
        match = await child.wait_for(
            re.compile(r'(\{"latencies_ms".*\})'), timeout=ctx.timeout(count) + 10
        )
        return orjson.loads(match.group(1))
    finally:
        await child.close()


# ---------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.size = SIZES["quick" if args.quick else "full"]
        self.runs = args.runs if args.runs else (1 if args.quick else 5)
        self.workdir = Path(tempfile.mkdtemp(prefix="bezant-bench-"))
        self._counter = 0
        self.children: list[ChildProcess | DaemonProcess] = []
        self.profile = args.profile
        self.profile_dir = BENCH_DIR / "profile"

    def counter(self) -> int:
        self._counter += 1
        return self._counter

    def tag(self, name: str) -> str:
        return f"{name}-{self.counter()}"

    def timeout(self, frames: int) -> float:
        """A generous bound for moving ``frames`` (at least 60 s; 1,000 frames/s worst case)."""
        return max(60.0, frames / 1000)

    async def gateway(self) -> tuple[ChildProcess, str]:
        child, url = await start_gateway(self.workdir, self.tag("gateway"))
        self.children.append(child)
        return child, url

    async def daemon(self, gateway: str, **config: Any) -> tuple[DaemonProcess, str]:
        """A daemon (its own process) on ``gateway``; ``config`` goes to ``daemon_config``."""
        tag = self.tag("daemon")
        child, url = await start_daemon(
            self.workdir, daemon_config(gateway, self.workdir, tag=tag, **config), tag
        )
        self.children.append(child)
        return child, url

    async def stop_all(self) -> None:
        for child in reversed(self.children):
            await child.close()
        self.children.clear()

    def say(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    # ----------------------------------------------------------- profiling

    @contextlib.asynccontextmanager
    async def profiled(self, pid: int, name: str):  # type: ignore[no-untyped-def]
        """py-spy record on ``pid`` for the body; writes bench/profile/<name>.{txt,raw}."""
        spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
        if not self.profile or not Path(spy).exists():  # noqa: ASYNC240 - one stat before a profile
            yield
            return
        self.profile_dir.mkdir(exist_ok=True)
        raw = self.profile_dir / f"{name}.raw"
        proc = subprocess.Popen(  # noqa: ASYNC220 - py-spy runs beside the body, stopped by SIGINT
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "200",
                "--threads",
                "--format",
                "raw",
                "--output",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await trio.sleep(0.5)
        try:
            yield
        finally:
            proc.send_signal(signal.SIGINT)
            with trio.move_on_after(20):
                while proc.poll() is None:  # noqa: ASYNC110 - a child's exit sets no trio.Event
                    await trio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
            if raw.exists():
                (self.profile_dir / f"{name}.txt").write_text(summarise_profile(raw))

    # ----------------------------------------------------------- 1. ingest

    async def ingest(self) -> Section:
        n = self.size["ingest_n"]
        section = Section("ingest", f"1. Ingest throughput ({n:,} market-data frames, one conid)")
        _, gw = await self.gateway()
        on, on_url = await self.daemon(gw, log=True)
        off, off_url = await self.daemon(gw, log=False)
        # Log off with a ring that holds the whole burst: the reader reads every
        # frame (with the default ring it may fall behind, get 412 and skip ahead).
        big, big_url = await self.daemon(gw, log=False, capacity={"marketdata": n})
        await want_conids(on_url, gw, [101])
        await want_conids(off_url, gw, [102])
        await want_conids(big_url, gw, [105])
        base_rate, on_rate, off_rate, big_rate, big_cpu, off_expired = [], [], [], [], [], []
        base_cpu, on_cpu, off_cpu, on_req, off_req = [], [], [], [], []
        raw_rate, raw_cpu = [], []
        for run in range(self.runs):
            b = await run_baseline_ws(self, gw, [103], n, burst={})
            base_rate.append(n / ((b["t_last_ns"] - b["origin_ns"]) / 1e9))
            base_cpu.append(b["cpu_seconds"] / n * 1e6)
            w = await run_baseline_ws(self, gw, [104], n, burst={}, raw=True)
            raw_rate.append(n / ((w["t_last_ns"] - w["origin_ns"]) / 1e9))
            raw_cpu.append(w["cpu_seconds"] / n * 1e6)
            r_on = await daemon_ingest(self, on, on_url, gw, [101], n)
            r_off = await daemon_ingest(self, off, off_url, gw, [102], n)
            r_big = await daemon_ingest(self, big, big_url, gw, [105], n)
            big_rate.append(r_big["rate"])
            big_cpu.append(r_big["cpu_us_per_frame"])
            off_expired.append(r_off["expired"])
            on_rate.append(r_on["rate"])
            off_rate.append(r_off["rate"])
            on_cpu.append(r_on["cpu_us_per_frame"])
            off_cpu.append(r_off["cpu_us_per_frame"])
            on_req.append(r_on["requests"])
            off_req.append(r_off["requests"])
            self.say(
                f"ingest run {run + 1}: baseline {base_rate[-1]:,.0f}/s, log on {on_rate[-1]:,.0f}/s"
                f" ({r_on['requests']} polls), log off {off_rate[-1]:,.0f}/s ({r_off['requests']} polls,"
                f" {r_off['expired']} x 412), log off + ring of N {big_rate[-1]:,.0f}/s"
                f" ({r_big['requests']} polls, {r_big['expired']} x 412)"
            )
        if self.profile:
            for daemon, url, conid, name in (
                (on, on_url, 101, "ingest-log-on"),
                (off, off_url, 102, "ingest-log-off"),
            ):
                async with self.profiled(daemon.pid, name):
                    await daemon_ingest(self, daemon, url, gw, [conid], n)
        section.rows += [
            Row(
                "CPU per frame, log on (daemon process, all threads; vs bare wsproto)",
                "µs",
                on_cpu,
                raw_cpu,
                ratio_of(on_cpu, raw_cpu),
                "≤ 1.5x bare wsproto",
                lambda r: r <= 1.5,
            ),
            Row(
                "CPU per frame, log off (vs bare wsproto)",
                "µs",
                off_cpu,
                raw_cpu,
                ratio_of(off_cpu, raw_cpu),
                "≤ 1.1x bare wsproto",
                lambda r: r <= 1.1,
            ),
            Row(
                "frames/s, SQLite log on (synchronous: normal; vs bare wsproto)",
                "frames/s",
                on_rate,
                raw_rate,
                ratio_of(on_rate, raw_rate),
                "≥ 0.7x bare wsproto",
                lambda r: r >= 0.7,
            ),
            Row(
                "frames/s, log off (vs bare wsproto)",
                "frames/s",
                off_rate,
                raw_rate,
            ),
            Row(
                "frames/s, log off, marketdata ring holding all N (the reader reads every frame;"
                " vs bare wsproto)",
                "frames/s",
                big_rate,
                raw_rate,
            ),
            Row(
                "CPU per frame, log off, ring holding all N (vs bare wsproto)",
                "µs",
                big_cpu,
                raw_cpu,
            ),
            Row(
                "frames/s, log on, vs the trio-websocket client (the first round's baseline)",
                "frames/s",
                on_rate,
                base_rate,
            ),
            Row(
                "frames/s, log off, vs the trio-websocket client",
                "frames/s",
                off_rate,
                base_rate,
            ),
            Row(
                "bare wsproto client vs the trio-websocket client",
                "frames/s",
                raw_rate,
                base_rate,
            ),
            Row(
                "CPU per frame, trio-websocket client (vs bare wsproto)",
                "µs",
                base_cpu,
                raw_cpu,
            ),
            Row("poll requests the reader needed, log on", "requests", on_req),
            Row("poll requests the reader needed, log off", "requests", off_req),
            Row(
                "412 answers the log-off reader got (it fell a ring behind and skipped ahead)",
                "answers",
                off_expired,
            ),
        ]
        section.notes += [
            "Frames/s = N / (time the reader holds the last cursor - time the simulator began"
            " sending). The start is the POST /sim/burst time plus the simulator's own"
            " encode_seconds (it encodes every frame before the first byte leaves).",
            "Daemon reader: one long-poller on GET /events/marketdata:C?since=…&limit=1000&wait=30,"
            " following next_cursor (412 → resume at head_cursor), in the bench process.",
            "With the log on, a reader that falls a ring behind is served from SQLite and reads"
            " every frame. With the log off and the default ring (2,000 market-data events) it"
            " gets 412 and resumes at the head: the figure is then the time until the last frame"
            " is visible, but the reader did not read them all. The 'ring holding all N' row is"
            " the log-off figure where the reader reads every frame.",
            "Baseline: baseline_ws.py --raw, the bare wsproto reader: wsproto directly on a trio"
            " stream, every frame of one socket read parsed with orjson before the next read, nothing"
            " kept. Same simulator, same frames, a conid of its own; runs interleaved with the"
            " daemon's. The trio-websocket client (baseline_ws.py without --raw) is kept for"
            " comparison with the first round.",
        ]
        await self.stop_all()
        return section

    # ----------------------------------------------------------- 2. poll

    async def poll(self) -> Section:
        seconds = self.size["poll_seconds"]
        cap = 1000
        section = Section(
            "poll", "2. Poll throughput (16 keep-alive connections, limit=100, full orders ring)"
        )
        _, gw = await self.gateway()
        d, url = await self.daemon(gw, log=True, capacity={"orders": cap})
        fill = max(self.size["poll_fill"], cap + 100)
        reply = await request_once(gw, "POST", "/sim/wait", {"subscribed": "orders", "timeout": 30})
        assert reply.status == 200, reply.body
        reply = await request_once(gw, "POST", "/sim/emit/orders", {"count": fill})
        assert reply.status == 200, reply.body
        last = reply.json()["last_seq"]
        with trio.fail_after(60):
            await watch_heads(url, {"orders": last})
        lo, hi = ring_range(last, cap)
        sample = await request_once(url, "GET", f"/events/orders?since={lo}&limit=100")
        assert len(sample.json()["events"]) == 100
        bchild, burl = await start_baseline_http(self, len(sample.body))
        rchild, rurl = await start_baseline_http(self, len(sample.body), raw=True)
        self.children += [bchild, rchild]
        ranges = [("/events/orders?since=", lo, hi)]
        daemon_rps, base_rps, raw_rps = [], [], []
        for run in range(self.runs):
            base_rps.append(await poll_rate(self, burl, ranges, seconds))
            daemon_rps.append(await poll_rate(self, url, ranges, seconds))
            raw_rps.append(await poll_rate(self, rurl, ranges, seconds))
            self.say(
                f"poll run {run + 1}: baseline {base_rps[-1]:,.0f}/s, daemon {daemon_rps[-1]:,.0f}/s,"
                f" bare ASGI {raw_rps[-1]:,.0f}/s"
            )
        if self.profile:
            async with self.profiled(d.pid, "poll"):
                await poll_rate(self, url, ranges, seconds)
        section.rows.append(
            Row(
                "GET /events/orders?since=<random>&limit=100",
                "req/s",
                daemon_rps,
                base_rps,
                ratio_of(daemon_rps, base_rps),
                "ratio ≥ 0.6",
                lambda r: r >= 0.6,
            )
        )
        section.rows.append(
            Row(
                "headroom: the same body from a bare ASGI app on Hypercorn, no Quart (vs the baseline)",
                "req/s",
                raw_rps,
                base_rps,
            )
        )
        section.notes += [
            f"Ring: orders, capacity {cap}, full ({fill} orders emitted). since is uniform in"
            f" [{lo}, {hi}] so every answer carries exactly 100 events ({len(sample.body):,} bytes).",
            "Baseline: baseline_http.py, a bare Quart-Trio route on the daemon's own Hypercorn"
            " config (bezant_trio.http.server.serve_http) answering a pre-built body of the same size.",
            "Load: "
            + (
                "wrk -t1 -c16 (its own process)."
                if _wrk()
                else "loadgen.py poll (wrk is not installed; Python client, its own process)."
            ),
        ]
        await self.stop_all()
        return section

    # ----------------------------------------------------------- 3. latency

    async def latency(self) -> Section:
        rate = self.size["latency_rate"]
        count = int(rate * self.size["latency_seconds"])
        section = Section(
            "latency", f"3. Latency at {rate:,.0f} events/s (send → reader's receipt)"
        )
        _, gw = await self.gateway()
        daemon, url = await self.daemon(gw, log=True)
        conid, sse_conid, old_conid, base_conid, relay_conid = 301, 302, 304, 303, 305
        await want_conids(url, gw, [conid, sse_conid, old_conid])
        _, relay_url = await start_relay(self, gw, [relay_conid])
        warm = count // 10
        names = ("lp", "relay_lp", "sse", "relay_sse", "floor", "old")
        got: dict[str, dict[str, list[float]]] = {
            name: {"p50": [], "p99": [], "max": []} for name in names
        }
        for run in range(self.runs):
            b = await run_baseline_ws(
                self,
                gw,
                [base_conid],
                count,
                latency=True,
                stamped={"conid": base_conid, "count": count, "rate": rate},
                raw=True,
            )
            _add_percentiles(got["floor"], b["latencies_ms"][warm:])
            for name, base, topic, cid, sse in (
                ("relay_lp", relay_url, f"marketdata:{relay_conid}", relay_conid, False),
                ("lp", url, f"marketdata:{conid}", conid, False),
                ("relay_sse", relay_url, f"marketdata:{relay_conid}", relay_conid, True),
                ("sse", url, f"marketdata:{sse_conid}", sse_conid, True),
            ):
                if base == relay_url:
                    since = (await request_once(base, "GET", "/head")).json()["head"]
                else:
                    since = await head(base, topic)
                path = f"/events/{topic}" + ("/stream" if sse else "")
                out = await read_stamped(self, base, path, since, gw, cid, count, rate, sse=sse)
                _add_percentiles(got[name], out["latencies_ms"][warm:])
            values = await self._longpoll_latency(url, gw, old_conid, count, rate)
            _add_percentiles(got["old"], values[warm:])
            self.say(
                f"latency run {run + 1}: floor p50 {got['floor']['p50'][-1]:.2f} ms;"
                + "".join(
                    f" {name} p50 {got[name]['p50'][-1]:.2f} p99 {got[name]['p99'][-1]:.2f};"
                    for name in ("relay_lp", "lp", "relay_sse", "sse", "old")
                )
            )
        if self.profile:
            # One more run of each daemon path under py-spy, after the measured ones.
            for name, topic, cid, sse in (
                ("latency-longpoll", f"marketdata:{conid}", conid, False),
                ("latency-sse", f"marketdata:{sse_conid}", sse_conid, True),
            ):
                since = await head(url, topic)
                path = f"/events/{topic}" + ("/stream" if sse else "")
                async with self.profiled(daemon.pid, name):
                    await read_stamped(self, url, path, since, gw, cid, count, rate, sse=sse)
        lp, relay_lp, sse, relay_sse = got["lp"], got["relay_lp"], got["sse"], got["relay_sse"]
        section.rows += [
            Row(
                "long-poll p50, log on (vs the bare relay, same reader)",
                "ms",
                lp["p50"],
                relay_lp["p50"],
                ratio_of(lp["p50"], relay_lp["p50"]),
                "≤ 2x the bare relay",
                lambda r: r <= 2.0,
            ),
            Row(
                "long-poll p99, log on (vs the bare relay, same reader)",
                "ms",
                lp["p99"],
                relay_lp["p99"],
                ratio_of(lp["p99"], relay_lp["p99"]),
                "≤ 2 ms",
                lambda v: v <= 2.0,
                on="daemon",
            ),
            Row(
                "long-poll max, log on",
                "ms",
                lp["max"],
                relay_lp["max"],
            ),
            Row(
                "SSE p50, log on (vs the bare relay's stream)",
                "ms",
                sse["p50"],
                relay_sse["p50"],
                ratio_of(sse["p50"], relay_sse["p50"]),
                "≤ 0.5 ms",
                lambda v: v <= 0.5,
                on="daemon",
            ),
            Row(
                "SSE p99, log on (vs the bare relay's stream)",
                "ms",
                sse["p99"],
                relay_sse["p99"],
                ratio_of(sse["p99"], relay_sse["p99"]),
                "≤ 2 ms",
                lambda v: v <= 2.0,
                on="daemon",
            ),
            Row(
                "SSE max, log on",
                "ms",
                sse["max"],
                relay_sse["max"],
            ),
            Row(
                "floor: bare wsproto client's own receipt, p50 (vs the bare relay's long-poll)",
                "ms",
                got["floor"]["p50"],
                relay_lp["p50"],
            ),
            Row(
                "floor: bare wsproto client's own receipt, p99",
                "ms",
                got["floor"]["p99"],
                relay_lp["p99"],
            ),
            Row(
                "round-one method: long-poll p50 read in the bench's own loop, through Quart"
                " (vs the daemon row above)",
                "ms",
                got["old"]["p50"],
                lp["p50"],
            ),
            Row(
                "round-one method: long-poll p99 (vs the daemon row above)",
                "ms",
                got["old"]["p99"],
                lp["p99"],
            ),
        ]
        section.notes += [
            f"The simulator stamps t_ns = time.time_ns() into each frame just before queueing it"
            f" ({count:,} frames per run at {rate:,.0f}/s on an absolute schedule); the reader"
            " subtracts it from its clock on receipt. The first 10% of each run is warm-up and dropped.",
            "Reader: bench/reader.py, a blocking raw-socket HTTP/1.1 client in a process of its own"
            " (TCP_NODELAY, keep-alive, receipt = whole body or SSE chunk in). The daemon rows and"
            " the bare-relay rows use it alike. Long-poll: GET …?since=<next_cursor>&limit=1000&wait=5;"
            " SSE: GET …/stream with Last-Event-ID.",
            "Bare relay: bench/baseline_relay.py, the bare wsproto client of the ingest baseline"
            " handing each socket read's frames to the waiting reader through one trio.Event, on a"
            " bare ASGI app on the daemon's Hypercorn config; no hub, no ring, no log.",
            "Round-one method: the reader the first round used, in the bench process's own Trio"
            " loop, sending Content-Length: 0 on every GET (which sent each poll through Quart"
            " rather than the fast path). It is kept to show what the old figure included.",
        ]
        await self.stop_all()
        return section

    async def _longpoll_latency(
        self, url: str, gw: str, conid: int, count: int, rate: float
    ) -> list[float]:
        """The first round's long-poll reader: in this process, through Quart."""
        topic = f"marketdata:{conid}"
        since = await head(url, topic)
        until = since + count
        values: list[float] = []
        with trio.fail_after(self.timeout(count) + count / rate):
            async with trio.open_nursery() as nursery:

                async def reader() -> None:
                    nonlocal since
                    client = Http(url)
                    try:
                        while since < until:
                            await client.send_request(
                                "GET",
                                f"/events/{topic}?since={since}&limit=1000&wait=5",
                                headers={"content-length": "0"},
                            )
                            status_code, headers = await client.read_head()
                            body = await client.read_body(status_code, headers)
                            received = time.time_ns()
                            if headers.get("connection", "").lower() == "close":
                                await client.aclose()
                            if status_code == 200:
                                data = orjson.loads(body)
                                for event in data["events"]:
                                    stamp = event["payload"].get("t_ns")
                                    if stamp:
                                        values.append((received - stamp) / 1e6)
                                since = data["next_cursor"]
                            elif status_code != 204:
                                raise RuntimeError(f"long-poll answered {status_code}")
                    finally:
                        await client.aclose()

                nursery.start_soon(reader)
                await trio.sleep(0.05)
                await request_once(
                    gw, "POST", "/bench/stamped", {"conid": conid, "count": count, "rate": rate}
                )
        return values

    # ----------------------------------------------------------- 4. fan-out

    async def fanout(self) -> Section:
        n = self.size["fanout_n"]
        section = Section(
            "fanout", f"4. Fan-out ({n} concurrent long-pollers on one topic, one event)"
        )
        _, gw = await self.gateway()
        d, url = await self.daemon(gw, log=True)
        conid = 401
        topic = f"marketdata:{conid}"
        await want_conids(url, gw, [conid])
        await request_once(gw, "POST", "/bench/stamped", {"conid": conid, "count": 1, "rate": 1})
        with trio.fail_after(30):
            await watch_heads(url, {topic: 1})
        bchild, burl = await start_baseline_http(self, 100)
        rchild, rurl = await start_baseline_http(self, 100, raw=True)
        self.children += [bchild, rchild]
        d_p99, d_max, b_p99, b_max, growth, errors = [], [], [], [], [], 0
        r_p99: list[float] = []
        r_max: list[float] = []
        s_p99: list[float] = []
        s_max: list[float] = []
        few = max(2, n // 10)
        few_d: list[float] = []
        few_r: list[float] = []
        for run in range(self.runs):
            b = await self._fanout_once(burl, "/wait", n, burl, None)
            w = await self._fanout_once(rurl, "/wait", n, rurl, None)
            r_p99.append(w["p99"])
            r_max.append(w["max"])
            few_r.append((await self._fanout_once(rurl, "/wait", few, rurl, None))["p99"])
            since = await head(url, topic)
            few_d.append(
                (
                    await self._fanout_once(
                        url, f"/events/{topic}?since={since}&wait=30", few, gw, d
                    )
                )["p99"]
            )
            since = await head(url, topic)
            r = await self._fanout_once(url, f"/events/{topic}?since={since}&wait=30", n, gw, d)
            since = await head(url, topic)
            s = await self._fanout_once(
                url, f"/events/{topic}/stream?since={since}", n, gw, d, sse=True
            )
            s_p99.append(s["p99"])
            s_max.append(s["max"])
            errors += s["errors"]
            b_p99.append(b["p99"])
            b_max.append(b["max"])
            d_p99.append(r["p99"])
            d_max.append(r["max"])
            growth.append(r["rss_growth_mib"])
            errors += r["errors"] + b["errors"]
            self.say(
                f"fanout run {run + 1}: baseline p99 {b['p99']:.1f} ms max {b['max']:.1f};"
                f" daemon p99 {r['p99']:.1f} ms max {r['max']:.1f}, RSS +{r['rss_growth_mib']:.1f} MiB;"
                f" SSE p99 {s['p99']:.1f} ms max {s['max']:.1f}"
            )
        if self.profile:
            # One more fan-out of each kind under py-spy (the 500 connections
            # parking are in the profile too), after the measured runs.
            for name, stream in (("fanout-longpoll", False), ("fanout-sse", True)):
                since = await head(url, topic)
                path = (
                    f"/events/{topic}/stream?since={since}"
                    if stream
                    else f"/events/{topic}?since={since}&wait=30"
                )
                async with self.profiled(d.pid, name):
                    await self._fanout_once(url, path, n, gw, d, sse=stream)
        section.rows += [
            Row(
                f"p99 time until each of {n} long-pollers has the event (vs bare ASGI)",
                "ms",
                d_p99,
                r_p99,
                ratio_of(d_p99, r_p99),
                "≤ 1.3x bare ASGI",
                lambda r: r <= 1.3,
            ),
            Row(
                f"time until all {n} have it (max; vs bare ASGI)",
                "ms",
                d_max,
                r_max,
            ),
            Row(
                f"SSE: p99 time until each of {n} open streams has the event (vs bare ASGI's"
                " long-polls)",
                "ms",
                s_p99,
                r_p99,
                ratio_of(s_p99, r_p99),
                "≤ 40 ms",
                lambda v: v <= 40,
                on="daemon",
            ),
            Row(
                f"SSE: time until all {n} streams have it (max)",
                "ms",
                s_max,
                r_max,
            ),
            Row(
                f"p99 of {n} long-pollers vs the bare Quart-Trio app (the first round's baseline)",
                "ms",
                d_p99,
                b_p99,
            ),
            Row(
                "bare ASGI vs the bare Quart-Trio app",
                "ms",
                r_p99,
                b_p99,
            ),
            Row(
                f"readers: p99 of {few} long-pollers (vs bare ASGI with {few})",
                "ms",
                few_d,
                few_r,
            ),
            Row(
                "daemon RSS growth (pollers connected and answered)",
                "MiB",
                growth,
                None,
                None,
                "≤ 50 MB",
                lambda v: v <= 50 / 1.048576,
                on="daemon",
            ),
        ]
        section.notes += [
            f"loadgen.py fanout (its own process) opens {n} connections, sends one long-poll on each,"
            " and once the daemon reports them all parked (_status.waiting) the simulator sends one"
            " stamped frame. Latency = receipt - t_ns, per poller.",
            "Baseline: baseline_http.py --raw-asgi, a bare ASGI app on the same Hypercorn config;"
            " GET /wait parks on a trio.Event that POST /fire sets (t_ns taken at set()). The"
            " daemon's figure also includes the frame's way from the simulator through the"
            " connector and the log's commit. baseline_http.py (Quart-Trio) is kept for comparison.",
            f"Errors (non-200 or no stamp) over all runs: {errors}.",
        ]
        await self.stop_all()
        return section

    async def _fanout_once(
        self,
        url: str,
        path: str,
        n: int,
        fire_at: str,
        daemon: DaemonProcess | None,
        sse: bool = False,
    ) -> dict[str, Any]:
        if daemon is not None:
            # The streams of an earlier round must be gone before `waiting` counts this one's.
            with trio.move_on_after(30):
                while (await status(url))["waiting"]:  # noqa: ASYNC110 - another process's state
                    await trio.sleep(0.05)
        rss0 = daemon.rss_kib() if daemon else 0
        child = spawn(
            self.tag("fanout"),
            [
                PYTHON,
                str(BENCH_DIR / "loadgen.py"),
                "fanout",
                "--url",
                url,
                "--path",
                path,
                "--n",
                str(n),
                *(["--sse"] if sse else []),
            ],
            self.workdir,
        )
        try:
            await child.wait_for(re.compile("SENT"), timeout=60)
            with trio.fail_after(60):
                while True:
                    if daemon is not None:
                        parked = (await status(url))["waiting"]
                    else:
                        parked = (await request_once(url, "GET", "/waiting")).json()["waiting"]
                    if parked >= n:
                        break
                    await trio.sleep(0.05)
            peak = daemon.rss_kib() if daemon else 0
            if daemon is not None:
                await request_once(
                    fire_at, "POST", "/bench/stamped", {"conid": 401, "count": 1, "rate": 1}
                )
            else:
                await request_once(fire_at, "POST", "/fire")
            with trio.fail_after(60):
                while True:
                    match = re.search(r'(\{"latencies_ms".*\})', child.log_text())
                    if match:
                        break
                    if daemon is not None:
                        peak = max(peak, daemon.rss_kib())
                    await trio.sleep(0.005)
            out = orjson.loads(match.group(1))
            if daemon is not None:
                peak = max(peak, daemon.rss_kib())
        finally:
            await child.close()
        lat = out["latencies_ms"]
        return {
            "p99": percentile(lat, 99) if lat else float("nan"),
            "max": max(lat) if lat else float("nan"),
            "errors": out["error_count"],
            "rss_growth_mib": (peak - rss0) / 1024,
        }

    # ----------------------------------------------------------- 5. memory

    async def memory(self) -> Section:
        n = self.size["memory_n"]
        section = Section("memory", f"5. Memory ({n:,} buffered ~150-byte events)")
        _, gw = await self.gateway()
        off, on, base = [], [], []
        for run in range(self.runs):
            b = await run_baseline_ws(self, gw, [503], n, burst={}, keep=True)
            base.append((b["rss_after_kib"] - b["rss_before_kib"]) / 1024)
            for log, sink, conid in ((False, off, 501), (True, on, 502)):
                d, url = await self.daemon(gw, log=log, capacity={"marketdata": n})
                await want_conids(url, gw, [conid])
                await trio.sleep(self.size["settle_seconds"] / 2)
                rss0 = d.rss_kib()
                await send_burst(gw, [conid], n)
                with trio.fail_after(self.timeout(n)):
                    await watch_heads(url, {f"marketdata:{conid}": n}, interval=0.05)
                await trio.sleep(self.size["settle_seconds"] / 2)
                sink.append((d.rss_kib() - rss0) / 1024)
                await d.close()
                self.children.remove(d)
            self.say(
                f"memory run {run + 1}: baseline +{base[-1]:.1f} MiB, log off +{off[-1]:.1f} MiB, log on +{on[-1]:.1f} MiB"
            )
        section.rows += [
            Row(
                "RSS growth, log off",
                "MiB",
                off,
                base,
                ratio_of(off, base),
                "≤ 60 MB",
                lambda v: v <= 60 / 1.048576,
                on="daemon",
            ),
            Row(
                "RSS growth, log on",
                "MiB",
                on,
                base,
                ratio_of(on, base),
                "≤ 60 MB",
                lambda v: v <= 60 / 1.048576,
                on="daemon",
            ),
        ]
        section.notes += [
            f"A fresh daemon per run with events.capacity.marketdata = {n:,}; RSS (VmRSS) after"
            f" subscribing and idling {self.size['settle_seconds'] / 2:g} s, then after all events are in"
            f" the ring (+{self.size['settle_seconds'] / 2:g} s).",
            "Baseline: the bare trio-websocket client keeping every received frame's str in a list.",
            "Raw payload bytes alone: ~16 MB (n x ~162 bytes on the wire).",
        ]
        await self.stop_all()
        return section

    # ----------------------------------------------------------- 6. sinks

    async def sinks(self) -> Section:
        n = self.size["sinks_n"]
        section = Section("sinks", f"6. Sinks ({n:,} frames, SQLite log on, sinks on marketdata:*)")
        _, gw = await self.gateway()
        fast = spawn(
            self.tag("receiver-fast"),
            [PYTHON, str(BENCH_DIR / "receiver.py"), "--mode", "fast"],
            self.workdir,
        )
        stall = spawn(
            self.tag("receiver-stall"),
            [PYTHON, str(BENCH_DIR / "receiver.py"), "--mode", "stall"],
            self.workdir,
        )
        self.children += [fast, stall]
        fast_url = (await fast.wait_for(re.compile(r"serving on (\S+)"))).group(1)
        stall_url = (await stall.wait_for(re.compile(r"serving on (\S+)"))).group(1)
        variants = {
            "none": [],
            "file": [
                {
                    "name": "s",
                    "type": "file",
                    "topics": ["marketdata:*"],
                    "path": str(self.workdir / f"sink-{self.counter()}.jsonl"),
                }
            ],
            "webhook": [
                {
                    "name": "s",
                    "type": "webhook",
                    "topics": ["marketdata:*"],
                    "url": f"{fast_url}/hook",
                }
            ],
            "stalled": [
                {
                    "name": "s",
                    "type": "webhook",
                    "topics": ["marketdata:*"],
                    "url": f"{stall_url}/hook",
                    "timeout": 120.0,
                }
            ],
        }
        daemons: dict[str, tuple[DaemonProcess, str, int]] = {}
        for index, (name, sinks) in enumerate(variants.items()):
            child, url = await self.daemon(gw, log=True, sinks=sinks)
            conid = 601 + index
            await want_conids(url, gw, [conid])
            daemons[name] = (child, url, conid)
        ingest: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        sink_rate: dict[str, list[float]] = {"file": [], "webhook": []}
        for run in range(self.runs):
            for name, (child, url, conid) in daemons.items():
                delivered0 = 0
                if name in sink_rate:
                    delivered0 = (await status(url))["sinks"]["s"]["delivered"]
                result = await daemon_ingest(self, child, url, gw, [conid], n)
                ingest[name].append(result["rate"])
                cpu[name].append(result["cpu_us_per_frame"])
                if name in sink_rate:
                    with trio.fail_after(self.timeout(n)):
                        while (await status(url))["sinks"]["s"]["delivered"] < delivered0 + n:  # noqa: ASYNC110 - polling another process's status
                            await trio.sleep(0.01)
                    done = time.time_ns()
                    # The same origin as the ingest figure: the burst's first send.
                    sink_rate[name].append(n / ((done - result["origin_ns"]) / 1e9))
            self.say(
                f"sinks run {run + 1}: ingest none {ingest['none'][-1]:,.0f}/s, file {ingest['file'][-1]:,.0f}/s,"
                f" webhook {ingest['webhook'][-1]:,.0f}/s, stalled {ingest['stalled'][-1]:,.0f}/s;"
                f" delivered file {sink_rate['file'][-1]:,.0f}/s, webhook {sink_rate['webhook'][-1]:,.0f}/s"
            )
        stalled_state = (await status(daemons["stalled"][1]))["sinks"]["s"]
        section.rows += [
            Row(
                "file sink: sustained delivery vs ingest (same run)",
                "events/s",
                sink_rate["file"],
                ingest["file"],
            ),
            Row(
                "webhook sink (local receiver): sustained delivery vs ingest",
                "events/s",
                sink_rate["webhook"],
                ingest["webhook"],
            ),
            Row(
                "ingest with the file sink vs without",
                "frames/s",
                ingest["file"],
                ingest["none"],
            ),
            Row(
                "ingest with the webhook sink vs without",
                "frames/s",
                ingest["webhook"],
                ingest["none"],
            ),
            Row(
                "ingest with a stalled webhook sink vs without",
                "frames/s",
                ingest["stalled"],
                ingest["none"],
                ratio_of(ingest["stalled"], ingest["none"]),
                "no measurable effect (ratio ≈ 1 within run-to-run spread)",
                lambda r: r >= 0.9,
            ),
            Row(
                "daemon CPU per ingested frame with a stalled sink vs without",
                "µs",
                cpu["stalled"],
                cpu["none"],
            ),
            Row(
                "daemon CPU per ingested frame with the file sink vs without",
                "µs",
                cpu["file"],
                cpu["none"],
            ),
            Row(
                "daemon CPU per ingested frame with the webhook sink vs without",
                "µs",
                cpu["webhook"],
                cpu["none"],
            ),
        ]
        section.notes += [
            "Four daemons (log on) on one simulator, each with a conid of its own, burst in turn"
            " per run: no sink, a file sink (fsync: batch), a webhook sink to receiver.py --mode fast"
            " (204 at once), a webhook sink to receiver.py --mode stall (never answers; timeout 120 s)."
            " Sinks use the default batch_size (100).",
            "Sink rate = N / (time _status.sinks.s.delivered reached N - burst start); ingest as in 1.",
            f"Stalled sink at the end: state {stalled_state['state']}, delivered"
            f" {stalled_state['delivered']}, lag {stalled_state['lag']:,}.",
        ]
        await self.stop_all()
        return section

    # ----------------------------------------------------------- 8. small machines

    async def small(self) -> Section:
        """Idle CPU, RSS after start, start-up and history on a big log, retention under load."""
        big_n = self.size["big_log_events"]
        topics = self.size["big_log_topics"]
        per_topic = big_n // topics
        section = Section(
            "small",
            f"8. Small machines (idle, start-up, a {big_n:,}-event log, a retention pass)",
        )
        _, gw = await self.gateway()
        relay, _ = await start_relay(self, gw, [851])

        # Logs built with SQLite directly (bench/biglog.py): far faster than ingesting them.
        big = self.workdir / "big.db"
        small_log = self.workdir / "small.db"
        old = self.workdir / "old.db"
        fresh = self.workdir / "fresh.db"
        now_ms = int(time.time() * 1000)
        built = {}
        for path, n_topics, each, start_ms, step in (
            # 8,000 s of market data per topic (a trading day's worth of one busy conid).
            (big, topics, per_topic, now_ms - 86_400_000, 8_000_000 / per_topic),
            (small_log, 1, self.size["small_log_events"], now_ms - 86_400_000, 1.0),
            # retention: the same rows, 30 days old (pruned at start) or 1 day old (kept)
            (old, 1, self.size["retention_rows"], now_ms - 30 * 86_400_000, 1.0),
            (fresh, 1, self.size["retention_rows"], now_ms - 86_400_000, 1.0),
        ):
            seconds = await trio.to_thread.run_sync(
                biglog.build, str(path), list(range(900, 900 + n_topics)), each, start_ms, step
            )
            built[path.name] = (
                f"{path.name}: {n_topics} x {each:,} events, built in {seconds:.1f} s"
            )
            self.say(built[path.name])

        idle_cpu, rss_on, relay_rss = [], [], []
        start_big, start_empty = [], []
        hist_big, hist_small = [], []
        ret_with, ret_without, prune_seconds = [], [], []
        for run in range(self.runs):
            # Idle: 100 wanted conids, no traffic; and the RSS of a fresh daemon.
            d, url = await self.daemon(gw, log=True)
            await trio.sleep(self.size["settle_seconds"])
            rss_on.append(d.rss_kib() / 1024)
            relay_rss.append(relay.rss_kib() / 1024)
            await want_conids(url, gw, list(range(2001, 2101)))
            await trio.sleep(self.size["settle_seconds"])
            cpu0, t0 = cpu_seconds(d.pid), time.monotonic()
            await trio.sleep(self.size["idle_seconds"])
            idle_cpu.append((cpu_seconds(d.pid) - cpu0) / (time.monotonic() - t0) * 100)
            await d.close()
            self.children.remove(d)
            # Start-up until READY=1 and then history (since_ts at random inside the log),
            # on the big log and a small one, both closed cleanly.
            for path, starts, hist, span in (
                (small_log, start_empty, hist_small, self.size["small_log_events"] / 1000),
                (big, start_big, hist_big, 8000.0),
            ):
                took, p99 = await self._startup_and_history(gw, path, span)
                starts.append(took)
                hist.append(p99)
            # Retention: ingest latency while 1M rows are pruned at start, vs none pruned.
            for path, into in ((old, ret_with), (fresh, ret_without)):
                p99, pruned_in = await self._retention_p99(gw, path)
                into.append(p99)
                if pruned_in is not None:
                    prune_seconds.append(pruned_in)
            self.say(
                f"small run {run + 1}: idle {idle_cpu[-1]:.3f} % CPU, RSS {rss_on[-1]:.1f} MiB"
                f" (relay {relay_rss[-1]:.1f}); start-up {start_empty[-1]:.2f} s small log,"
                f" {start_big[-1]:.2f} s big; history p99 {hist_big[-1]:.2f} ms big,"
                f" {hist_small[-1]:.2f} small; ingest p99 {ret_with[-1]:.2f} ms during"
                f" retention, {ret_without[-1]:.2f} without"
                + (f" (pruned in {prune_seconds[-1]:.1f} s)" if prune_seconds else "")
            )
        rows = self.size["retention_rows"]
        section.rows += [
            Row(
                "idle: daemon CPU with 100 wanted conids and no traffic",
                "% of a core",
                idle_cpu,
                None,
                None,
                "≤ 0.2 %",
                lambda v: v <= 0.2,
                on="daemon",
            ),
            Row(
                "RSS after start, log on (vs the bare relay's RSS)",
                "MiB",
                rss_on,
                relay_rss,
                ratio_of(rss_on, relay_rss),
                "≤ 45 MB",
                lambda v: v <= 45 / 1.048576,
                on="daemon",
            ),
            Row(
                f"start-up until READY=1, a {big_n:,}-event log (vs a"
                f" {self.size['small_log_events']:,}-event log)",
                "s",
                start_big,
                start_empty,
                ratio_of(start_big, start_empty),
                "≤ 2 s",
                lambda v: v <= 2.0,
                on="daemon",
            ),
            Row(
                f"GET /events/{{topic}}/history?since_ts= p99, a {big_n:,}-event log"
                f" (vs a {self.size['small_log_events']:,}-event log)",
                "ms",
                hist_big,
                hist_small,
                ratio_of(hist_big, hist_small),
                "≤ 20 ms",
                lambda v: v <= 20,
                on="daemon",
            ),
            Row(
                f"ingest p99 latency during a retention pass deleting {rows:,} rows (vs the"
                " same log with nothing to delete)",
                "ms",
                ret_with,
                ret_without,
                ratio_of(ret_with, ret_without),
                "≤ 1.2x without",
                lambda r: r <= 1.2,
            ),
            Row(f"how long that retention pass took ({rows:,} rows)", "s", prune_seconds),
        ]
        section.notes += [
            "Idle: a fresh daemon (log on), 100 conids wanted (subscribed upstream), then its CPU"
            f" time (from /proc) over {self.size['idle_seconds']:g} s with no frames but the"
            " simulator's heartbeats. /proc counts in 10 ms ticks: the resolution is"
            f" {1 / self.size['idle_seconds']:.2f} % over this window.",
            f"RSS: VmRSS {self.size['settle_seconds']:g} s after the daemon serves, log on, nothing"
            " captured yet. Reference: the"
            " bare relay (trio, wsproto, Hypercorn, a bare ASGI app) in the same state.",
            "Start-up: the time from spawning `python -m bezant_trio run` to its READY=1 on a"
            " NOTIFY_SOCKET of the bench's (interpreter start and imports included), on logs left"
            " as a clean stop leaves them; then the history requests on the same daemon.",
            f"History: {self.size['history_requests']} sequential GET /events/marketdata:<conid>/history?since_ts=<random time"
            " inside the log>&limit=100 from a client in the bench process; the p99 of their round"
            " trips.",
            f"Retention: a log holding {rows:,} market-data rows of one topic, 30 days old"
            " (retention keeps 14), so the daemon's first retention pass, at start, deletes all of"
            " them; the same rows 1 day old (nothing to delete) for the comparison. Latency ="
            " bench/reader.py long-polling another conid while the simulator sends"
            f" {self.size['retention_events']:,} stamped frames at 1,000/s right after READY.",
            "The logs: " + "; ".join(built.values()) + ".",
        ]
        await self.stop_all()
        return section

    async def _startup_and_history(self, gw: str, path: Path, span: float) -> tuple[float, float]:
        """Spawn a daemon on ``path``: seconds until its READY=1, then the p99 of history
        requests at random times within the ``span`` seconds a topic covers."""
        sock_path = self.workdir / f"notify-{self.counter()}.sock"
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
        await sock.bind(str(sock_path))
        tag = self.tag("daemon")
        d = _common.daemon_process(
            self.workdir,
            daemon_config(gw, self.workdir, log=True, tag=tag, store={"path": str(path)}),
            tag,
            env={"NOTIFY_SOCKET": str(sock_path)},
        )
        self.children.append(d)
        try:
            with trio.fail_after(120):
                started = time.monotonic()
                d.spawn()
                while b"READY=1" not in (await sock.recv(4096)).split(b"\n"):
                    pass
                took = time.monotonic() - started
            url = await d.wait_serving()
            client = Http(url)
            rng = random.Random(17)
            try:
                topic = "marketdata:900"
                first = (await client.get(f"/events/{topic}/history?limit=1")).json()["events"]
                t_first = parse_ts(first[0]["received_at"])
                times: list[float] = []
                for _ in range(self.size["history_requests"]):
                    since = format_ts(t_first + rng.random() * span * 0.9)
                    t0 = time.perf_counter()
                    reply = await client.get(f"/events/{topic}/history?since_ts={since}&limit=100")
                    times.append((time.perf_counter() - t0) * 1000)
                    if reply.status != 200 or not reply.json()["events"]:
                        raise RuntimeError(f"history answered {reply.status}: {reply.body[:200]!r}")
            finally:
                await client.aclose()
            return took, percentile(times, 99)
        finally:
            sock.close()
            await d.close()
            self.children.remove(d)

    async def _retention_p99(self, gw: str, path: Path) -> tuple[float, float | None]:
        """Ingest latency p99 right after start on a copy of ``path``; and how long pruning took."""
        copy = self.workdir / f"ret-{self.counter()}.db"
        await trio.to_thread.run_sync(shutil.copyfile, path, copy)
        d, url = await self.daemon(gw, log=True, store={"path": str(copy)})
        try:
            conid = 852
            await want_conids(url, gw, [conid])
            count = self.size["retention_events"]
            topic = f"marketdata:{conid}"
            out = await read_stamped(
                self, url, f"/events/{topic}", await head(url, topic), gw, conid, count, 1000.0
            )
            values = out["latencies_ms"][count // 10 :]
            pruned_in = None
            pattern = re.compile(r"retention removed \d+ events in ([\d.]+) s")
            with trio.move_on_after(120):  # the pass may outlast the stamped frames
                while (removed := pattern.search(d.log_text())) is None and path.name == "old.db":  # noqa: ASYNC110 - another process's log
                    await trio.sleep(0.2)
            if removed:
                pruned_in = float(removed.group(1))
            return percentile(values, 99), pruned_in
        finally:
            await d.close()
            self.children.remove(d)
            copy.unlink(missing_ok=True)

    # ----------------------------------------------------------- 7. scaling

    async def scaling(self) -> Section:
        n = self.size["scaling_n"]
        ks = self.size["scaling_conids"]
        small, large = self.size["scaling_capacities"]
        seconds = self.size["poll_seconds"]
        section = Section("scaling", f"7. Scaling ({n:,} frames per burst; log on)")
        _, gw = await self.gateway()
        s1, s1_url = await self.daemon(gw, log=True, capacity={"marketdata": small})
        s2, s2_url = None, ""
        if large != small:
            s2, s2_url = await self.daemon(gw, log=True, capacity={"marketdata": large})
        top = max(ks)
        d_conids = list(range(7001, 7001 + top))
        b_conids = list(range(8001, 8001 + top))
        await want_conids(s1_url, gw, d_conids)
        if s2 is not None:
            await want_conids(s2_url, gw, [9001])
        configs = [
            (f"{k} conid{'s' if k > 1 else ''}, ring {small:,}", s1, s1_url, d_conids[:k], small)
            for k in ks
        ]
        if large != small:
            configs.append((f"1 conid, ring {large:,}", s2, s2_url, [9001], large))
        body_size = 0
        ingest: dict[str, tuple[list[float], list[float]]] = {c[0]: ([], []) for c in configs}
        cpu: dict[str, list[float]] = {c[0]: [] for c in configs}
        polls: dict[str, tuple[list[float], list[float]]] = {c[0]: ([], []) for c in configs}
        bchild = None
        burl = ""
        for run in range(self.runs):
            for label, child, url, conids, cap in configs:
                b = await run_baseline_ws(
                    self, gw, b_conids[: len(conids)], n // len(conids) * len(conids), burst={}
                )
                ingest[label][1].append(b["frames"] / ((b["t_last_ns"] - b["origin_ns"]) / 1e9))
                r = await daemon_ingest(self, child, url, gw, conids, n, reader="status")
                ingest[label][0].append(r["rate"])
                cpu[label].append(r["cpu_us_per_frame"])
                heads = (await status(url))["head_cursors"]
                ranges = []
                for conid in conids:
                    h = int(heads[f"marketdata:{conid}"])
                    lo, hi = ring_range(h, cap)
                    ranges.append((f"/events/marketdata:{conid}?since=", lo, hi))
                if bchild is None:
                    prefix, lo, _ = ranges[0]
                    body_size = len(
                        (await request_once(url, "GET", f"{prefix}{lo}&limit=100")).body
                    )
                    bchild, burl = await start_baseline_http(self, body_size)
                    self.children.append(bchild)
                polls[label][1].append(
                    await poll_rate(self, burl, [("/events/x?since=", 0, 1)], seconds)
                )
                polls[label][0].append(await poll_rate(self, url, ranges, seconds))
                self.say(
                    f"scaling run {run + 1} [{label}]: ingest {r['rate']:,.0f}/s (baseline"
                    f" {ingest[label][1][-1]:,.0f}/s, {r['cpu_us_per_frame']:.1f} µs/frame);"
                    f" poll {polls[label][0][-1]:,.0f}/s (baseline {polls[label][1][-1]:,.0f}/s)"
                )
        for label, *_ in configs:
            d_rate, b_rate = ingest[label]
            section.rows.append(Row(f"ingest, {label}", "frames/s", d_rate, b_rate))
        for label, *_ in configs:
            section.rows.append(Row(f"ingest CPU per frame, {label}", "µs", cpu[label]))
        for label, *_ in configs:
            d_rps, b_rps = polls[label]
            section.rows.append(Row(f"poll, {label}", "req/s", d_rps, b_rps))
        section.extra["conids"] = list(ks)
        section.extra["capacities"] = [small, large]
        section.notes += [
            "Ingest: /bench/burst_many sends the frames of all conids interleaved round-robin (as a"
            " multi-instrument feed would); visible = every topic's head in /events/_status (polled"
            " every 10 ms) has reached its last cursor, so no reader's HTTP cost is in these figures.",
            "Poll: wrk on GET /events/marketdata:<random conid>?since=<random within that ring>"
            f"&limit=100 (body ≈ {body_size:,} bytes; baseline the same size).",
        ]
        await self.stop_all()
        return section


def _add_percentiles(into: dict[str, list[float]], values: list[float]) -> None:
    into["p50"].append(percentile(values, 50) if values else float("nan"))
    into["p99"].append(percentile(values, 99) if values else float("nan"))
    into["max"].append(max(values) if values else float("nan"))


def _growth_statement(rows: list[Row], ks: tuple[int, ...], small: int, large: int) -> str:
    """Flat or growing: ingest by CPU per frame, poll by its ratio to the baseline.

    Absolute rates follow the machine's load from one configuration to the
    next; CPU per frame and same-run ratios do not (much).
    """

    def median_of(prefix: str, field_name: str) -> float | None:
        for row in rows:
            values = getattr(row, field_name)
            if row.figure.startswith(prefix) and values:
                return summarise(values)["median"]
        return None

    parts = []
    first, last = ks[0], ks[-1]
    for what, field_name, unit, cost_up in (
        ("ingest CPU per frame", "daemon", "µs/frame", True),
        ("poll", "ratio", "x baseline", False),
    ):
        a = median_of(f"{what}, {first} conid", field_name)
        b = median_of(f"{what}, {last} conids", field_name)
        c = median_of(f"{what}, 1 conid, ring {large:,}", field_name)
        if a and b:
            change = (b - a) / a * 100
            parts.append(
                f"{what}: {a:,.2f} {unit} at {first} conid → {b:,.2f} at {last} conids"
                f" ({change:+.0f}%: cost {_shape(change, cost_up)} with the number of conids)"
            )
        if a and c:
            change = (c - a) / a * 100
            parts.append(
                f"{what}: ring {small:,} → {large:,}: {a:,.2f} → {c:,.2f} {unit}"
                f" ({change:+.0f}%: cost {_shape(change, cost_up)} with ring capacity)"
            )
    return "\n".join(f"- {p}" for p in parts)


def _shape(change_percent: float, cost_up: bool) -> str:
    """``change_percent`` of a figure in which a rise means more cost (``cost_up``) or less."""
    if abs(change_percent) <= 15:
        return "flat (within ±15%, inside this machine's run-to-run spread)"
    grows = change_percent > 0 if cost_up else change_percent < 0
    return "grows" if grows else "falls"


# ---------------------------------------------------------------- profile summary


_COMPONENTS = (
    ("bezant_trio/cpapi/", "bezant cpapi (read loop, classify)"),
    ("bezant_trio/store/log", "bezant store/log.py (SQLite, Python side)"),
    ("bezant_trio/store/", "bezant store (hub, ring)"),
    ("bezant_trio/model", "bezant model (Event.build)"),
    ("bezant_trio/http/", "bezant http (routes, SSE)"),
    ("bezant_trio/sinks/", "bezant sinks"),
    ("bezant_trio/", "bezant (other)"),
    ("trio/_core/_io_epoll", "trio: epoll wait (idle, or waiting for I/O)"),
    ("trio_websocket/", "trio-websocket (reader task, message channel)"),
    ("wsproto/", "wsproto (frame parsing)"),
    ("trio/", "trio (scheduler, channels, sockets, cancel scopes)"),
    ("outcome/", "trio (scheduler, channels, sockets, cancel scopes)"),
    ("hypercorn/", "hypercorn + h11 (HTTP server)"),
    ("h11/", "hypercorn + h11 (HTTP server)"),
    ("quart", "quart + werkzeug (request/response objects)"),
    ("werkzeug/", "quart + werkzeug (request/response objects)"),
    ("flask/", "quart + werkzeug (request/response objects)"),
    ("<string>", "generated __init__ (dataclasses, attrs: Event, outcome, trio)"),
)


def _component(frame: str) -> str:
    for marker, name in _COMPONENTS:
        if marker in frame:
            return name
    return "stdlib / other"


def summarise_profile(raw: Path, top: int = 20) -> str:
    """py-spy raw (collapsed, --threads) output to shares per thread, component and function.

    The first frame of each stack names the thread. Percentages are of all
    samples of the threads concerned; 200 samples/s per busy thread.
    """
    threads: dict[str, int] = {}
    main_self: dict[str, int] = {}
    main_comp: dict[str, int] = {}
    worker_self: dict[str, int] = {}
    worker_incl: dict[str, int] = {}
    main_total = worker_total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith("thread") else "thread ?"
        frames = [_short(re.sub(r":\d+\)$", ")", f)) for f in frames[1:]] or ["?"]
        is_main = "MainThread" in thread
        kind = "MainThread (the Trio loop)" if is_main else "worker threads (to_thread: SQLite)"
        threads[kind] = threads.get(kind, 0) + count
        leaf = frames[-1]
        if is_main:
            main_total += count
            main_self[leaf] = main_self.get(leaf, 0) + count
            comp = _component(leaf)
            main_comp[comp] = main_comp.get(comp, 0) + count
        else:
            worker_total += count
            worker_self[leaf] = worker_self.get(leaf, 0) + count
            for name in {f for f in frames if "bezant_trio" in f}:
                worker_incl[name] = worker_incl.get(name, 0) + count
    total = main_total + worker_total
    if not total:
        return "no samples\n"

    def pct(count: int, whole: int) -> str:
        return f"{count / whole * 100:5.1f}%"

    out = [f"samples: {total} (py-spy --threads, 200 Hz)", "", "threads (share of all samples):"]
    for name, count in sorted(threads.items(), key=lambda kv: -kv[1]):
        out.append(f"  {pct(count, total)}  {name}")
    if main_total:
        out += ["", "MainThread by component (self time, share of the main thread's samples):"]
        for name, count in sorted(main_comp.items(), key=lambda kv: -kv[1]):
            out.append(f"  {pct(count, main_total)}  {name}")
        out += ["", "MainThread top functions (self):"]
        for name, count in sorted(main_self.items(), key=lambda kv: -kv[1])[:top]:
            out.append(f"  {pct(count, main_total)}  {name}")
    if worker_total:
        out += ["", "worker threads: bezant functions (inclusive, share of worker samples):"]
        for name, count in sorted(worker_incl.items(), key=lambda kv: -kv[1])[:10]:
            out.append(f"  {pct(count, worker_total)}  {name}")
    return "\n".join(out) + "\n"


def _short(frame: str) -> str:
    # "func (/path/to/site-packages/pkg/mod.py)" -> "func (pkg/mod.py)"
    match = re.match(r"^(.*) \((.*)\)$", frame)
    if not match:
        return frame
    func, path = match.groups()
    for marker in ("site-packages/", "/src/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})"


# ---------------------------------------------------------------- report


def machine_facts() -> dict[str, str]:
    facts: dict[str, str] = {}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
        facts["cpu"] = f"{model.group(1) if model else '?'} x {cpuinfo.count('processor')}"
    except OSError:
        facts["cpu"] = "?"
    meminfo = Path("/proc/meminfo").read_text()
    mem = re.search(r"MemTotal:\s*(\d+)", meminfo)
    facts["memory"] = f"{int(mem.group(1)) / 1024 / 1024:.1f} GiB" if mem else "?"
    facts["kernel"] = platform.release()
    facts["python"] = platform.python_version()
    versions = []
    for dist in (
        "trio",
        "trio-websocket",
        "wsproto",
        "hypercorn",
        "quart",
        "quart-trio",
        "h11",
        "orjson",
    ):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    facts["packages"] = ", ".join(versions)
    facts["sqlite"] = sqlite3.sqlite_version
    wrk = _wrk()
    if wrk:
        proc = subprocess.run([wrk, "--version"], capture_output=True, text=True)
        facts["wrk"] = (
            (proc.stdout + proc.stderr).splitlines()[0] if (proc.stdout + proc.stderr) else "wrk"
        )
    else:
        facts["wrk"] = "not installed (loadgen.py used)"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "src"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        facts["commit"] = commit + (" (src/ has uncommitted changes)" if dirty else "")
    except OSError:
        facts["commit"] = "?"
    if _common.DAEMON_SRC:
        facts["daemon source"] = _common.DAEMON_SRC
    return facts


def _fmt(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "n/a"
    if unit in ("ms", "µs", "MiB", "s", "% of a core"):
        return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,.0f}"


def _cell(values: list[float] | None, unit: str) -> str:
    if not values:
        return "—"
    s = summarise(values)
    if s["n"] == 1:
        return _fmt(s["median"], unit)
    return f"{_fmt(s['median'], unit)} ({_fmt(s['min'], unit)}-{_fmt(s['max'], unit)})"


def _ratio_cell(values: list[float] | None) -> str:
    if not values:
        return "—"
    s = summarise(values)
    return f"**{s['median']:.2f}** ({s['min']:.2f}-{s['max']:.2f})"


def render(results: dict[str, Any], facts: dict[str, str], quick: bool, runs: int) -> str:
    lines = [
        "# bezant-trio benchmark results"
        + (" (quick smoke run: sizes are tiny, figures mean nothing)" if quick else ""),
        "",
        "Written by `bench/run.py` (see `bench/README.md`). Each cell: median of the runs"
        " (min-max). Ratios are daemon ÷ baseline, taken within each interleaved pair of runs,"
        " then the median of those. Verdicts compare with the targets in bench/README.md; nothing fails on them.",
        "",
        "## Machine",
        "",
    ]
    for key, value in facts.items():
        lines.append(f"- **{key}**: {value}")
    lines.append(f"- **runs per figure**: {runs}")
    lines.append("")
    headline = []
    for name in MEASUREMENTS:
        section = results.get(name)
        if not section:
            continue
        for row in section["rows"]:
            if row["target"]:
                headline.append((section, row))
    if headline:
        lines += [
            "## Headline",
            "",
            "| figure | daemon | baseline | ratio | target | met |",
            "|---|---|---|---|---|---|",
        ]
        for section, row in headline:
            met = {True: "yes", False: "**no**", None: "—"}[row["met"]]
            lines.append(
                f"| {section['title'].split(' (')[0]}: {row['figure']} ({row['unit']}) | {_cell(row['daemon'], row['unit'])}"
                f" | {_cell(row['baseline'], row['unit'])} | {_ratio_cell(row['ratio'])} | {row['target']} | {met} |"
            )
        lines.append("")
    for name in MEASUREMENTS:
        section = results.get(name)
        if not section:
            continue
        measured = f"_measured {section['measured_at']}"
        if section["extra"].get("commit"):
            measured += f" on {section['extra']['commit']}"
        lines += [f"## {section['title']}", "", measured + "_", ""]
        lines += [
            "| figure | unit | daemon | baseline | ratio | target | met |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in section["rows"]:
            met = {True: "yes", False: "**no**", None: ""}[row["met"]]
            lines.append(
                f"| {row['figure']} | {row['unit']} | {_cell(row['daemon'], row['unit'])} |"
                f" {_cell(row['baseline'], row['unit'])} | {_ratio_cell(row['ratio'])} | {row['target']} | {met} |"
            )
        lines.append("")
        if section["extra"].get("load"):
            before, after = section["extra"]["load"]
            lines += [
                f"_1-minute load average at start / end: {before:.1f} / {after:.1f} on"
                f" {os.cpu_count()} cores (the machine is shared: above ~2, other processes"
                " competed for the CPU and absolute figures are pessimistic; ratios less so)_",
                "",
            ]
        if name == "scaling":
            rows = [
                Row(r["figure"], r["unit"], r["daemon"], r["baseline"], r["ratio"])
                for r in section["rows"]
            ]
            ks = tuple(section["extra"].get("conids", (1, 10, 100)))
            small, large = section["extra"].get("capacities", (1000, 100_000))
            lines += [
                "How cost grows with work:",
                "",
                _growth_statement(rows, ks, small, large),
                "",
            ]
        for note in section["notes"]:
            lines.append(f"- {note}")
        lines.append("")
    analysis = BENCH_DIR / "ANALYSIS.md"
    if analysis.exists() and not quick:
        lines += [analysis.read_text().rstrip(), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


async def amain(args: argparse.Namespace) -> int:
    bench = Bench(args)
    only = [name.strip() for name in args.only.split(",")] if args.only else list(MEASUREMENTS)
    unknown = [name for name in only if name not in MEASUREMENTS]
    if unknown:
        print(
            f"unknown measurement(s) {unknown}; choose from {', '.join(MEASUREMENTS)}",
            file=sys.stderr,
        )
        return 2
    json_path = Path(args.out).with_suffix(".json")
    results: dict[str, Any] = {}
    if json_path.exists() and not args.fresh:
        saved = json.loads(json_path.read_text())
        results = saved.get("sections", {})
        if args.render_only:
            Path(args.out).write_text(  # noqa: ASYNC240 - the report, written once
                render(results, saved["machine"], bench.quick, saved.get("runs", bench.runs))
            )
            print(f"rendered {args.out} from {json_path}")
            shutil.rmtree(bench.workdir, ignore_errors=True)
            return 0
    started = time.perf_counter()
    bench.say(
        f"workdir {bench.workdir}; {bench.runs} runs per figure; {'quick' if bench.quick else 'full'} sizes"
    )
    failures = 0
    try:
        for name in only:
            bench.say(f"--- {name}")
            load_before = os.getloadavg()[0]
            commit = machine_facts().get("commit", "?")
            try:
                section = await getattr(bench, name)()
                section.extra["load"] = (load_before, os.getloadavg()[0])
                section.extra["commit"] = commit
            except Exception as exc:  # one broken measurement must not lose the others' results
                failures += 1
                bench.say(f"{name} FAILED: {exc!r}")
                import traceback

                traceback.print_exc()
                await bench.stop_all()
                continue
            results[name] = section.to_dict()
            facts = machine_facts()
            json_path.write_text(
                json.dumps(
                    {"machine": facts, "runs": bench.runs, "sections": results},
                    indent=1,
                    default=str,
                )
            )
            Path(args.out).write_text(render(results, facts, bench.quick, bench.runs))  # noqa: ASYNC240 - the report, written once
    finally:
        with trio.CancelScope(shield=True):
            await bench.stop_all()
        if not args.keep_workdir:
            shutil.rmtree(bench.workdir, ignore_errors=True)
    bench.say(f"done in {time.perf_counter() - started:.0f} s; wrote {args.out}")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, 1 run: proves the bench runs (< 60 s)"
    )
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(MEASUREMENTS)}")
    parser.add_argument("--runs", type=int, default=0, help="runs per figure (default 5; quick 1)")
    parser.add_argument("--no-wrk", action="store_true", help="load with loadgen.py, not wrk")
    parser.add_argument("--src", help="run the daemon from this source tree (PYTHONPATH), for A/B")
    parser.add_argument("--out", help="report path (default bench/RESULTS.md; quick: a temp file)")
    parser.add_argument("--fresh", action="store_true", help="drop earlier sections of the report")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy profiles into bench/profile/"
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and databases")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the report from its .json (e.g. after editing ANALYSIS.md)",
    )
    args = parser.parse_args()
    global NO_WRK
    NO_WRK = args.no_wrk
    if args.src:
        _common.DAEMON_SRC = str(Path(args.src).resolve())
    if args.out is None:
        args.out = (
            str(Path(tempfile.gettempdir()) / "bezant-bench-quick.md")
            if args.quick
            else str(BENCH_DIR / "RESULTS.md")
        )
    if args.quick and not args.profile:
        # The smoke's figures mean nothing, so its daemons (a second of CPU
        # each, 18 of them) and scripts (gateways, baselines, load generators:
        # half a second each, 34 of them) fork from one process that imported
        # the daemon; a measured run execs each, as a user's start would.
        fork_children()
    try:
        return trio.run(amain, args)
    finally:
        fork_children(False)


if __name__ == "__main__":
    sys.exit(main())
