"""systemd integration: the notify protocol, the watchdog, the unit file.

A fake ``$NOTIFY_SOCKET`` (a unix datagram socket, by path and abstract)
stands in for systemd. The watchdog runs on ``autojump_clock``, so its
period is checked to the virtual second.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from bezant_trio.simulator import GatewaySimulator
from bezant_trio.store.hub import Hub
from bezant_trio.store.log import EventLog
from bezant_trio.systemd import SystemdNotifier, WriterHealth
from bezant_trio.testing import DaemonProcess
from helpers import SSL_CONTEXT, capacity_of, wall_clock_bound

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "bezant-trio.service"


class FakeSystemd:
    """A bound unix datagram socket recording every notify message with its Trio time."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._changed = trio.Event()
        self.sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._scope = trio.CancelScope()

    async def bind(self) -> None:
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        await self.sock.bind(target)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:
                task_status.started()
                while True:
                    data = await self.sock.recv(65536)
                    fields = dict(line.split("=", 1) for line in data.decode().splitlines())
                    self.messages.append((trio.current_time(), fields))
                    self._changed.set()
                    self._changed = trio.Event()
        finally:
            self.sock.close()

    def with_field(self, key: str, value: str | None = None) -> list[tuple[float, dict[str, str]]]:
        return [
            (at, f) for at, f in self.messages if key in f and (value is None or f[key] == value)
        ]

    async def wait_for(self, key: str, value: str | None = None, count: int = 1) -> None:
        while len(self.with_field(key, value)) < count:
            await self._changed.wait()

    async def wait_status(self, pattern: str) -> str:
        """Wait for a STATUS= matching the regex ``pattern``; returns it."""
        while True:
            for _, fields in self.messages:
                if re.fullmatch(pattern, fields.get("STATUS", "")):
                    return fields["STATUS"]
            await self._changed.wait()

    def close(self) -> None:
        self._scope.cancel()
        if not self.address.startswith("@"):
            Path(self.address).unlink(missing_ok=True)


@pytest.fixture(params=["path", "abstract"])
async def fake_systemd(
    request: pytest.FixtureRequest, nursery: trio.Nursery, tmp_path: Path
) -> Iterator[FakeSystemd]:
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
    else:
        address = f"@bezant-test-{uuid.uuid4().hex}"
    fake = FakeSystemd(address)
    await fake.bind()
    await nursery.start(fake.run)
    yield fake
    fake.close()


# ---------------------------------------------------------------- messages


async def test_ready_status_reloading_stopping_reach_the_socket(fake_systemd: FakeSystemd) -> None:
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": fake_systemd.address})
    assert notifier.enabled
    with trio.fail_after(5):
        assert notifier.ready("connected, epoch 7, 12 topics")
        assert notifier.status("reconnecting in 8 s:\ntickle 401")
        assert notifier.reloading()
        assert notifier.stopping()
        await fake_systemd.wait_for("STOPPING")
    fields = [f for _, f in fake_systemd.messages]
    assert fields[0] == {"READY": "1", "STATUS": "connected, epoch 7, 12 topics"}
    # A newline would start a bogus field: a status is always one line.
    assert fields[1] == {"STATUS": "reconnecting in 8 s: tickle 401"}
    assert fields[2]["RELOADING"] == "1" and int(fields[2]["MONOTONIC_USEC"]) > 0
    assert fields[3]["STOPPING"] == "1"
    notifier.close()


async def test_unchanged_status_is_not_resent(fake_systemd: FakeSystemd) -> None:
    notifier = SystemdNotifier(fake_systemd.address)
    with trio.fail_after(5):
        notifier.status("a")
        notifier.status("a")
        notifier.status("b")
        await fake_systemd.wait_for("STATUS", "b")
    assert [f["STATUS"] for _, f in fake_systemd.messages] == ["a", "b"]


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = SystemdNotifier.from_env({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False


def test_watchdog_pid_of_another_process_disables_the_watchdog() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000"}
    assert SystemdNotifier.from_env(env).watchdog_interval == 15.0
    other = SystemdNotifier.from_env({**env, "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval is None
    mine = SystemdNotifier.from_env({**env, "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval == 15.0


def test_a_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    notifier = SystemdNotifier(str(tmp_path / "gone.sock"))
    assert notifier.ready() is False
    assert notifier.watchdog() is False


# ---------------------------------------------------------------- watchdog


async def test_watchdog_pings_at_half_of_watchdog_usec(
    fake_systemd: FakeSystemd, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    env = {"NOTIFY_SOCKET": fake_systemd.address, "WATCHDOG_USEC": "30000000"}
    notifier = SystemdNotifier.from_env(env)
    start = trio.current_time()
    await nursery.start(notifier.run_watchdog, lambda: True)
    with trio.fail_after(1000):
        await fake_systemd.wait_for("WATCHDOG", count=6)
    times = [at - start for at, _ in fake_systemd.with_field("WATCHDOG", "1")][:6]
    assert times == [0.0, 15.0, 30.0, 45.0, 60.0, 75.0]


class _WedgeableLog:
    """A real EventLog whose writes can be made to block (a wedged disk).

    A wedged commit blocks in the worker thread; an attempt to commit on the
    Trio thread finds the writer busy (the wedged write holds it), as the real
    log's lock answers, and goes to a worker thread too.
    """

    def __init__(self, inner: EventLog) -> None:
        self._inner = inner
        self.unwedged = threading.Event()
        self.unwedged.set()
        self.blocked = threading.Event()

    def _wait_if_wedged(self) -> None:
        if not self.unwedged.is_set():
            self.blocked.set()
            self.unwedged.wait()

    def append(self, events: Any) -> float:
        self._wait_if_wedged()
        return self._inner.append(events)

    def append_by_topic(self, batches: Any) -> float:
        self._wait_if_wedged()
        return self._inner.append_by_topic(batches)

    def try_append_by_topic(self, batches: Any) -> float | None:
        if not self.unwedged.is_set():
            return None
        return self._inner.try_append_by_topic(batches)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_wedged_writer_stops_the_pings_and_a_recovered_one_resumes_them(
    fake_systemd: FakeSystemd,
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
) -> None:
    # The writer commits in a worker thread; an autojumping clock would race
    # ahead while that thread works, so time only moves when the test says.
    clock = autojump_clock
    clock.autojump_threshold = math.inf

    async def advance(seconds: float) -> None:
        clock.jump(seconds)
        await trio.testing.wait_all_tasks_blocked()

    inner = EventLog.open(tmp_path / "events.db")
    elog = _WedgeableLog(inner)
    hub = Hub(capacity_of(), event_log=elog)
    await hub.open()
    env = {"NOTIFY_SOCKET": fake_systemd.address, "WATCHDOG_USEC": "30000000"}
    notifier = SystemdNotifier.from_env(env)
    interval = notifier.watchdog_interval
    assert interval == 15.0
    health = WriterHealth(lambda: hub.status()["pending"], period=interval)
    hub.commit_observers.append(health.observe_commit)
    try:
        # Virtual time moves only by advance(): the commits in the worker
        # thread and the notify datagrams are bounded in real time instead.
        async with wall_clock_bound(60), trio.open_nursery() as tasks:
            await tasks.start(hub.run_writer)
            await tasks.start(notifier.run_watchdog, health)
            # Healthy: the event commits, the pings go on.
            hub.publish("orders", {"n": 1})
            assert await hub.wait("orders", 0, math.inf)
            await advance(interval)
            await fake_systemd.wait_for("WATCHDOG", count=2)
            # Wedge the writer with an event pending.
            elog.unwedged.clear()
            hub.publish("orders", {"n": 2})
            # A thread's wait cannot be cancelled: it carries its own bound.
            assert await trio.to_thread.run_sync(elog.blocked.wait, 30), "the writer never blocked"
            wedged_at = trio.current_time()
            for _ in range(10):
                await advance(interval)
            assert hub.status()["pending"] == 1 and notifier.withholding
            pings = [at - wedged_at for at, _ in fake_systemd.with_field("WATCHDOG")]
            # The next check first sees the pending event and grants it one
            # period; the one after finds it stuck and withholds from then on.
            assert [at for at in pings if at > 0] == [interval]
            # Recovery: the commit goes through and the pings resume.
            elog.unwedged.set()
            assert await hub.wait("orders", 1, math.inf)
            await advance(interval)
            await fake_systemd.wait_for("WATCHDOG", count=len(pings) + 1)
            assert not notifier.withholding
            tasks.cancel_scope.cancel()
    finally:
        elog.unwedged.set()
        inner.close()


def test_writer_health_is_defined_by_pending_and_commits() -> None:
    now = [0.0]
    pending = [0]
    health = WriterHealth(lambda: pending[0], period=15.0, clock=lambda: now[0])
    now[0] = 1000.0
    assert health()  # nothing pending: healthy however long since the last commit
    pending[0] = 5
    assert health()  # just became pending: the writer gets a full period
    now[0] = 1014.0
    assert health()
    health.observe_commit(0.01, 5)  # a commit within the period keeps it healthy
    now[0] = 1028.0
    assert health()
    now[0] = 1029.0  # pending for 29 s, the last commit 15 s ago: wedged
    assert not health()
    pending[0] = 0
    assert health()


# ---------------------------------------------------------------- a real daemon process


async def test_daemon_process_notifies_ready_after_bind_watchdog_reload_and_stopping(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    await fake.bind()
    await nursery.start(fake.run)
    sim = await nursery.start(GatewaySimulator().run)
    daemon = DaemonProcess(
        tmp_path,
        {
            "gateway": {"url": sim.base_url},
            "http": {"bind": "127.0.0.1:0"},
            "store": {"path": str(tmp_path / "events.db")},
        },
        env={"NOTIFY_SOCKET": fake.address, "WATCHDOG_USEC": "400000"},
    )
    try:
        with trio.fail_after(30):
            daemon.spawn()
            await fake.wait_for("READY")
            # READY=1 means serving: the socket is bound and answers right away.
            match = re.search(r"serving on (http://\S+)", daemon.log_text())
            assert match is not None, daemon.log_text()
            async with httpx.AsyncClient(verify=SSL_CONTEXT) as client:
                health = await client.get(f"{match.group(1)}/health")
            assert health.status_code == 200
            assert "STATUS" in fake.with_field("READY")[0][1]
            # STATUS= follows what the daemon does.
            await sim.wait_subscribed("orders", timeout=10)
            await fake.wait_status(r"connected, epoch \d+, \d+ topics")
            # Pings every 0.2 s (half of WATCHDOG_USEC).
            await fake.wait_for("WATCHDOG", count=3)
            # SIGHUP: RELOADING=1, then READY=1 again.
            daemon.send_signal(signal.SIGHUP)
            await fake.wait_for("RELOADING")
            await fake.wait_for("READY", count=2)
            reloading_at = fake.with_field("RELOADING")[0][0]
            assert fake.with_field("READY")[1][0] >= reloading_at
            code = await daemon.stop(signal.SIGTERM)
            await fake.wait_for("STOPPING")
        sim.stop()
        assert code == 0
        assert "Traceback" not in daemon.log_text()
    finally:
        daemon.kill()
        fake.close()


# ---------------------------------------------------------------- the unit file


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


def test_unit_file_is_notify_with_watchdog_dynamic_user_and_directories() -> None:
    unit = _unit_settings()
    expected = {
        "Type": "notify",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "DynamicUser": "yes",
        "StateDirectory": "bezant-trio",
        "ConfigurationDirectory": "bezant-trio",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateDevices": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "MemoryDenyWriteExecute": "yes",
        "CapabilityBoundingSet": "",
        "NoNewPrivileges": "yes",
    }
    for key, value in expected.items():
        assert unit.get(key) == [value], key
    # Enough descriptors for the default http.max_connections (1000) many times over.
    assert int(unit["LimitNOFILE"][0]) >= 16384
    assert "@system-service" in unit["SystemCallFilter"]
    assert "bezant-trio.pyz run --config" in unit["ExecStart"][0]
    # The log lives in the state directory.
    assert unit["Environment"].count("BEZANT_EVENTS_DB_PATH=/var/lib/bezant-trio/events.db") == 1


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (apt-get install systemd to check the unit)",
)
def test_unit_file_exposure_is_at_most_1_5() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout + result.stderr)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= 1.5, result.stdout
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    # verify complains about the ExecStart binary missing on a dev box; nothing else.
    problems = [
        line
        for line in (verify.stdout + verify.stderr).splitlines()
        if line.strip() and "is not executable" not in line and "No such file" not in line
    ]
    assert problems == [], problems


_MDWE_LAUNCHER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
# PR_SET_MDWE (65), PR_MDWE_REFUSE_EXEC_GAIN (1): the kernel rule behind
# MemoryDenyWriteExecute=yes; inherited by the exec'd daemon.
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(77)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def _mdwe_supported() -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", _MDWE_LAUNCHER, "-c", "pass"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


async def test_daemon_serves_under_memory_deny_write_execute(tmp_path: Path) -> None:
    if not await trio.to_thread.run_sync(_mdwe_supported):
        pytest.skip("this kernel has no prctl(PR_SET_MDWE) (Linux 6.3+)")
    (tmp_path / "launch.py").write_text(_MDWE_LAUNCHER)
    config = tmp_path / "c.yaml"
    config.write_text(
        "http: {bind: '127.0.0.1:0'}\ngateway: {url: 'http://127.0.0.1:9/v1/api'}\n"
        f"store: {{path: '{tmp_path / 'events.db'}'}}\n"
        f"sinks: [{{name: f, type: file, path: '{tmp_path / 'out.jsonl'}'}}]\n"
    )
    daemon = DaemonProcess(
        tmp_path,
        config_path=config,
        command=[sys.executable, str(tmp_path / "launch.py"), "-m", "bezant_trio"],
    )
    try:
        with trio.fail_after(30):
            url = await daemon.start()
            async with httpx.AsyncClient(verify=SSL_CONTEXT) as client:
                for path in ("/health", "/metrics", "/events/gap?since=0", "/events/_status"):
                    response = await client.get(url + path)
                    assert response.status_code == 200, (path, response.text)
            code = await daemon.stop(signal.SIGTERM)
        assert code == 0, daemon.log_text()
        assert "Traceback" not in daemon.log_text()
    finally:
        daemon.kill()
