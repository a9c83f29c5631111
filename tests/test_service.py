"""Running as a service: SIGTERM, SIGHUP, /health, logging, and the one-file build."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
import yaml

from bezant_trio import logs
from bezant_trio.config import config_from_mapping, config_secrets
from bezant_trio.daemon import Daemon
from bezant_trio.simulator import GatewaySimulator
from bezant_trio.store.log import EventLog
from bezant_trio.testing import DaemonProcess, Received, WebhookReceiver
from helpers import SSL_CONTEXT, wait_until

ROOT = Path(__file__).resolve().parent.parent


def _spawn(
    argv: list[str], log_path: Path, *, env: dict[str, str], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr in ``log_path`` and nothing of our environment.

    Not a DaemonProcess: the one-file build must run with a bare environment.
    """
    with open(log_path, "wb") as log:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)


def _checkpoints(db: Path, sink: str) -> dict[str, int]:
    with EventLog.open(db) as elog:
        return elog.load_checkpoints(sink)


def _cursors(request: Received) -> list[int]:
    return [event["cursor"] for event in request.events]


def _accepted_batches(receiver: WebhookReceiver) -> list[list[int]]:
    """The cursors of every batch answered 200, in order."""
    return [_cursors(request) for request in receiver.accepted]


def _committed_cursors(db: Path, topic: str) -> list[int]:
    with EventLog.open(db) as elog:
        return [e.cursor for e in elog.read_since(topic, 0, 100_000)]


async def test_sigterm_with_a_slow_sink_finishes_the_batch_persists_checkpoints_loses_nothing(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    sim = await nursery.start(GatewaySimulator().run)
    receiver = await nursery.start(WebhookReceiver().run)
    receiver.hold()  # each request waits, unanswered, until the test releases them
    db = tmp_path / "events.db"
    daemon = DaemonProcess(
        tmp_path,
        {
            "gateway": {"url": sim.base_url},
            "http": {"bind": "127.0.0.1:0"},
            "store": {"path": str(db)},
            "shutdown_grace": 10,
            "sinks": [
                {
                    "name": "hook",
                    "type": "webhook",
                    "url": receiver.url,
                    "topics": ["orders"],
                    "batch_size": 5,
                    "retry": {"min": 0.05, "max": 0.5},
                }
            ],
        },
    )
    try:
        with trio.fail_after(60):
            await daemon.start()
            await sim.wait_subscribed("orders", timeout=10)
            # Orders stream in while the sink's first batch is held in flight.
            sim.start_stream({"orders": 100.0})
            await receiver.wait_until(lambda: receiver.held == 1)
            await sim.wait_for(lambda s: s.written("orders").count >= 20, timeout=20)
            daemon.send_signal(signal.SIGTERM)
            await wait_until(lambda: "shutting down" in daemon.log_text())
            receiver.release()  # the batch in flight completes during the grace
            assert await daemon.wait(timeout=30) == 0
            sim.stop_stream()
            first_run = _accepted_batches(receiver)
            assert first_run[0][0] == 1
            # The batch in flight at SIGTERM was finished and checkpointed (the
            # sink may deliver more while the log flushes; those count too).
            checkpoint = _checkpoints(db, "hook")["orders"]
            assert checkpoint >= first_run[0][-1]
            assert checkpoint in {batch[-1] for batch in first_run}
            # What was captured and committed before the exit (frames still in
            # the socket at SIGTERM are the gateway's loss, flagged by a gap).
            committed = _committed_cursors(db, "orders")
            # Restart: the rest is delivered from the checkpoint on.
            await daemon.start()
            await receiver.wait_until(
                lambda: (
                    bool(receiver.accepted) and _cursors(receiver.accepted[-1])[-1] >= committed[-1]
                )
            )
            assert await daemon.stop(signal.SIGTERM) == 0
    finally:
        daemon.kill()
        sim.stop()
    delivered = [c for batch in _accepted_batches(receiver) for c in batch]
    # Every committed event reached the sink, in order, at least once.
    assert set(committed) <= set(delivered)
    assert delivered == sorted(delivered)
    assert "Traceback" not in daemon.log_text()


def _file_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_sighup_adds_and_removes_sinks_live_rejects_a_bad_config_and_reopens_files(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    sim = await nursery.start(GatewaySimulator().run)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    config: dict[str, Any] = {
        "gateway": {"url": sim.base_url},
        "http": {"bind": "127.0.0.1:0"},
        # resync off: the file sink's lines are counted exactly.
        "events": {"resync": False},
        "store": {"path": str(tmp_path / "events.db")},
        "sinks": [{"name": "first", "type": "file", "topics": ["orders"], "path": str(first)}],
    }
    daemon = DaemonProcess(tmp_path, config)
    config_path = tmp_path / "config.yaml"

    async def sinks(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
        return (await client.get(f"{url}/events/_status")).json()["sinks"]

    try:
        with trio.fail_after(60):
            url = await daemon.start()
            await sim.wait_subscribed("orders", timeout=10)
            await sim.emit_orders(2)
            await wait_until(lambda: len(_file_lines(first)) == 2)
            async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client:
                # Swap "first" for "second" without a restart.
                config["sinks"] = [
                    {"name": "second", "type": "file", "topics": ["orders"], "path": str(second)}
                ]
                config_path.write_text(yaml.safe_dump(config))
                daemon.send_signal(signal.SIGHUP)
                with trio.fail_after(10):
                    while list(await sinks(client, url)) != ["second"]:  # noqa: ASYNC110
                        await trio.sleep(0.02)  # state in another process: poll it
                await sim.emit_orders(1)
                # A new sink starts from the oldest event kept: all three orders.
                await wait_until(lambda: len(_file_lines(second)) == 3)
                assert len(_file_lines(first)) == 2
                # A bad config is rejected and the running sinks stay.
                config_path.write_text("sinks: [{name: broken, type: no-such-type}]\n")
                daemon.send_signal(signal.SIGHUP)
                await wait_until(lambda: "keeping the running sinks" in daemon.log_text())
                assert list(await sinks(client, url)) == ["second"]
                # logrotate moved the file away: SIGHUP reopens the configured path.
                second.rename(tmp_path / "second.jsonl.1")
                config_path.write_text(yaml.safe_dump(config))
                daemon.send_signal(signal.SIGHUP)
                await wait_until(lambda: daemon.log_text().count("SIGHUP: sinks reloaded") == 2)
                await sim.emit_orders(1)
                await wait_until(lambda: len(_file_lines(second)) == 1)
            assert await daemon.stop(signal.SIGTERM) == 0
    finally:
        daemon.kill()
        sim.stop()
    assert "no-such-type" in daemon.log_text()
    assert "Traceback" not in daemon.log_text()


# ---------------------------------------------------------------- /health


async def test_health_is_503_while_starting_or_stopping_and_200_degraded_when_disconnected(
    nursery: trio.Nursery,
) -> None:
    config = config_from_mapping(
        {"gateway": {"url": "http://127.0.0.1:9/v1/api"}, "http": {"bind": "127.0.0.1:0"}},
        env={},
    )
    daemon = Daemon(config)
    assert daemon._health() == (503, {"status": "starting"})
    with trio.fail_after(20):
        await nursery.start(daemon.run)
        async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client:
            response = await client.get(f"{daemon.http_url}/health")
            assert response.status_code == 200
            assert response.json() == {"status": "degraded", "connected": False, "log": None}
            daemon.request_stop()
            await wait_until(lambda: daemon.state == "stopping")
            assert daemon._health() == (503, {"status": "stopping"})


async def test_health_needs_no_token_and_reports_the_log(tmp_path: Path, nursery: trio.Nursery):
    config = config_from_mapping(
        {
            "http": {"bind": "127.0.0.1:0", "token": "health-needs-no-token"},
            "store": {"path": str(tmp_path / "e.db")},
        },
        env={},
    )
    daemon = Daemon(config, connect=False)
    with trio.fail_after(20):
        await nursery.start(daemon.run)
        async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client:
            response = await client.get(f"{daemon.http_url}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "connected": False, "log": "ok"}
    daemon.request_stop()


# ---------------------------------------------------------------- logging


@pytest.fixture
def captured_root() -> Iterator[io.StringIO]:
    """The daemon's logging set-up, writing into a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buffer = io.StringIO()
    yield buffer
    root.handlers[:], level = saved
    root.setLevel(level)


def _setup_into(buffer: io.StringIO, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", buffer)
    logs.setup_logging("INFO", fmt)


def test_text_lines_by_default_and_journal_lines_under_journald(
    captured_root: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    _setup_into(captured_root, "text", monkeypatch)
    logging.getLogger("bezant_trio.test").warning("plain %s", "line")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING bezant_trio.test: plain line\n",
        captured_root.getvalue(),
    )
    journal = io.StringIO()
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    _setup_into(journal, "text", monkeypatch)
    logging.getLogger("bezant_trio.test").info("hello")
    logging.getLogger("bezant_trio.test").error("bad")
    assert journal.getvalue() == "<6>bezant_trio.test: hello\n<3>bezant_trio.test: bad\n"


def test_json_lines_for_shippers(
    captured_root: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    _setup_into(captured_root, "json", monkeypatch)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("bezant_trio.test").exception("failed %d", 3)
    entry = orjson.loads(captured_root.getvalue().splitlines()[0])
    assert entry["level"] == "error" and entry["logger"] == "bezant_trio.test"
    assert entry["message"] == "failed 3" and "ValueError: boom" in entry["exc"]
    assert entry["ts"].endswith("Z")


def test_secrets_never_reach_a_log_line(
    captured_root: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = config_from_mapping(
        {
            "http": {"token": "tok-abcdef-123456"},
            "sinks": [
                {
                    "name": "hook",
                    "type": "webhook",
                    "url": "http://127.0.0.1:9/hook",
                    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                    "headers": {"Authorization": "Basic dXNlcjpwYXNzd29yZA=="},
                }
            ],
        },
        env={},
    )
    secrets = config_secrets(config)
    assert "tok-abcdef-123456" in secrets and "Basic dXNlcjpwYXNzd29yZA==" in secrets
    logs.add_secrets(secrets)
    _setup_into(captured_root, "text", monkeypatch)
    log = logging.getLogger("bezant_trio.test")
    log.info("token is %s", "tok-abcdef-123456")
    log.info("config %s", config.to_dict(mask_secrets=False))
    log.info("header Authorization: Bearer some-unconfigured-token-999")
    log.info("cookie api=%7B%22session%22%3A%22abc123session%22%7D; path=/")
    log.info('frame {"session": "0123456789abcdef"}')
    log.info("another whsec_c29tZXRoaW5nZWxzZQ== secret")
    try:
        raise RuntimeError("failed with tok-abcdef-123456")
    except RuntimeError:
        log.exception("in traceback")
    text = captured_root.getvalue()
    for secret in (
        "tok-abcdef-123456",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "dXNlcjpwYXNzd29yZA==",
        "some-unconfigured-token-999",
        "abc123session",
        "0123456789abcdef",
        "c29tZXRoaW5nZWxzZQ",
    ):
        assert secret not in text, secret
    assert text.count("***") >= 7


async def test_daemon_process_logs_for_journald_without_the_token(tmp_path: Path) -> None:
    daemon = DaemonProcess(
        tmp_path,
        {
            "gateway": {"url": "http://127.0.0.1:9/v1/api"},
            "http": {"bind": "127.0.0.1:0", "token": "a-very-secret-token-42"},
        },
        env={"JOURNAL_STREAM": "8:1234"},
    )
    try:
        with trio.fail_after(30):
            url = await daemon.start()
            async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client:
                # An invalid bearer is echoed nowhere, even at debug level.
                await client.get(
                    f"{url}/events/_status",
                    headers={"authorization": "Bearer a-very-secret-token-42x"},
                )
            assert await daemon.stop(signal.SIGTERM) == 0
    finally:
        daemon.kill()
    lines = daemon.log_text().splitlines()
    assert any(
        re.fullmatch(r"<6>bezant_trio\.daemon: serving on http://\S+ \(epoch 1\)", x) for x in lines
    )
    assert all(re.match(r"<[2-7]>", line) for line in lines), lines
    assert "a-very-secret-token-42" not in daemon.log_text()


async def test_log_file_is_reopened_on_sighup(tmp_path: Path) -> None:
    log_file = tmp_path / "bezant.log"
    config = tmp_path / "c.yaml"
    config.write_text("http: {bind: '127.0.0.1:0'}\ngateway: {url: 'http://127.0.0.1:9/v1/api'}\n")
    daemon = DaemonProcess(tmp_path, config_path=config, args=["--log-file", str(log_file)])
    try:
        with trio.fail_after(30):
            # Every line goes to --log-file, none to the captured output: wait on the file.
            daemon.spawn()
            await wait_until(lambda: log_file.exists() and "serving on" in log_file.read_text())
            log_file.rename(tmp_path / "bezant.log.1")
            daemon.send_signal(signal.SIGHUP)
            await wait_until(lambda: log_file.exists() and "SIGHUP" in log_file.read_text())
            code = await daemon.stop(signal.SIGTERM)
    finally:
        daemon.kill()
    assert code == 0
    assert "stopped" in log_file.read_text()


# ---------------------------------------------------------------- one file to deploy


def _system_python() -> str | None:
    """A Python 3.11 outside any virtualenv, with none of the daemon's dependencies."""
    for candidate in ("/usr/bin/python3.11", "/usr/bin/python3"):
        if not os.path.exists(candidate):
            continue
        probe = subprocess.run(
            [candidate, "-I", "-c", "import sys, orjson"], capture_output=True, timeout=30
        )
        version = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if probe.returncode != 0 and version.stdout.strip() == "True":
            return candidate
    return None


def _shiv_available() -> bool:
    return shutil.which("make") is not None and (
        subprocess.run([sys.executable, "-m", "shiv", "--version"], capture_output=True).returncode
        == 0
    )


def test_make_pyz_installs_with_the_uv_beside_python_or_else_with_pip(tmp_path: Path) -> None:
    """The Makefile's choice of installer, read from ``make -n`` (what it would run)."""
    if shutil.which("make") is None:
        pytest.skip("needs make")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    uv = bin_dir / "uv"
    uv.write_text("#!/bin/sh\nexit 1\n")
    uv.chmod(0o755)
    pyz = tmp_path / "dist" / "b.pyz"

    def planned(*args: str) -> str:
        done = subprocess.run(
            ["make", "-n", "pyz", f"PYZ={pyz}", f"PYTHON={bin_dir / 'python'}", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    with_uv = planned("PIP_ARGS=--no-index")
    assert f"{uv} pip install" in with_uv and f"--target {pyz}.site" in with_uv, with_uv
    assert "--no-index" in with_uv and f"--site-packages {pyz}.site" in with_uv, with_uv
    with_pip = planned("UV=", "PIP_ARGS=--no-index")
    assert "uv" not in with_pip.replace(str(tmp_path), ""), with_pip
    assert "-m shiv" in with_pip and "--no-cache-dir --no-index ." in with_pip, with_pip


@pytest.mark.timeout(240)  # uv (or pip) installs every dependency into a zipapp
@pytest.mark.slow
@pytest.mark.skipif(not _shiv_available(), reason="needs make and shiv (pip install -e '.[test]')")
async def test_make_pyz_builds_one_file_that_runs_on_a_bare_python(tmp_path: Path) -> None:
    pyz = tmp_path / "dist" / "bezant-trio.pyz"
    build = await trio.to_thread.run_sync(
        partial(
            subprocess.run,
            ["make", "-s", "pyz", f"PYZ={pyz}", f"PYTHON={sys.executable}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    )
    assert build.returncode == 0, build.stdout + build.stderr
    # Prefer an interpreter with no site-packages of ours at all; else run the
    # venv's base interpreter isolated (-I) and without site (-S).
    python = _system_python()
    command = [python, "-I"] if python else [sys._base_executable, "-I", "-S"]  # type: ignore[attr-defined]
    config = tmp_path / "c.yaml"
    config.write_text(
        "http: {bind: '127.0.0.1:0'}\ngateway: {url: 'http://127.0.0.1:9/v1/api'}\n"
        f"store: {{path: '{tmp_path / 'events.db'}'}}\n"
    )
    log_path = tmp_path / "daemon.log"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "SHIV_ROOT": str(tmp_path / "shiv"),
        "HOME": str(tmp_path),
    }
    proc = _spawn(
        [*command, str(pyz), "run", "--config", str(config)], log_path, env=env, cwd=tmp_path
    )
    try:
        with trio.fail_after(60):
            await wait_until(
                lambda: "serving on" in log_path.read_text() or proc.poll() is not None
            )
            match = re.search(r"serving on (http://\S+)", log_path.read_text())
            assert match is not None, log_path.read_text()
            async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client:
                health = await client.get(f"{match.group(1)}/health")
                metrics = await client.get(f"{match.group(1)}/metrics")
            assert health.status_code == 200 and metrics.status_code == 200
            proc.send_signal(signal.SIGTERM)
            await wait_until(lambda: proc.poll() is not None)
        assert proc.returncode == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
