"""The daemon against IBKR's real Client Portal gateway, run offline.

``../shared/realgw/run-offline CMD`` (or ``$BEZANT_REALGW/run-offline``) starts
IBKR's own gateway on https://127.0.0.1:5000 inside a network namespace with
only loopback, where it cannot reach IBKR: every proxied REST call hangs with
no status line, and every WebSocket upgrade is accepted and then silent
(docs/gateway.md). The outer test below re-runs this file inside that
namespace; the inner tests (``REALGW_URL`` set) run the daemon against it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from bezant_trio.config import config_from_mapping
from bezant_trio.daemon import open_daemon
from bezant_trio.testing import DaemonProcess
from helpers import SSL_CONTEXT, wait_until

ROOT = Path(__file__).resolve().parents[2]
REALGW_URL = os.environ.get("REALGW_URL")


def _run_offline() -> Path | None:
    base = os.environ.get("BEZANT_REALGW")
    candidates = [Path(base)] if base else []
    candidates.append(ROOT.parent / "shared" / "realgw")
    for candidate in candidates:
        script = candidate / "run-offline"
        if script.is_file():
            return script
    return None


@pytest.mark.timeout(
    300
)  # IBKR's Java gateway in a namespace, then an inner pytest run (its own bound: 240 s)
@pytest.mark.skipif(REALGW_URL is not None, reason="this is the inner run already")
def test_the_daemon_against_the_real_gateway_offline() -> None:
    script = _run_offline()
    if script is None:
        pytest.skip("no ../shared/realgw/run-offline here (set BEZANT_REALGW to its folder)")
    missing = [tool for tool in ("java", "ip", "cc") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(f"run-offline needs root and {', '.join(missing) or 'java, ip, cc'}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BEZANT_", "IBKR_"))}
    result = subprocess.run(
        [str(script), sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    passed = re.search(r"(\d+) passed", output)
    assert passed is not None and int(passed.group(1)) >= 2, output[-3000:]  # both inner tests ran


inner = pytest.mark.skipif(REALGW_URL is None, reason="runs inside run-offline only")


def _config(**gateway: object) -> object:
    return config_from_mapping(
        {
            "gateway": {"url": REALGW_URL, "verify_tls": False, "request_timeout": 2, **gateway},
            "http": {"bind": "127.0.0.1:0"},
            "events": {"backoff": {"min": 0.2, "max": 1}},
        }
    )


@inner
async def test_the_real_gateway_offline_is_unreachable_in_words() -> None:
    with trio.fail_after(60):
        async with open_daemon(_config()) as daemon:
            connector = daemon.connector
            assert connector is not None
            await wait_until(lambda: connector.failures["timeout"] >= 2, poll=0.05)
            async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client:
                status = (await client.get(f"{daemon.http_url}/events/_status")).json()
                ready = await client.get(f"{daemon.http_url}/health/ready")
    assert status["state"] == "gateway_unreachable"
    assert "did not answer POST /tickle within 2 s" in status["last_error"]
    assert "cannot reach IBKR" in status["last_error"]
    assert status["connected"] is False and status["topics_subscribed"] == []
    assert status["last_message_at"] is None
    assert connector.connect_count == 0  # no WebSocket is opened without a session
    assert ready.status_code == 503 and "gateway_unreachable" in ready.json()["reason"]


@inner
async def test_sigterm_while_the_real_gateway_hangs_exits_at_once(tmp_path: Path) -> None:
    daemon = DaemonProcess(
        tmp_path,
        {
            "gateway": {"url": REALGW_URL, "verify_tls": False, "request_timeout": 60},
            "http": {"bind": "127.0.0.1:0"},
            "shutdown_grace": 30,
        },
    )
    try:
        with trio.fail_after(30):
            url = await daemon.start()
            async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client:
                # The first tickle is under way (it never answers); no event crosses
                # the process boundary, so poll the status.
                while (await client.get(f"{url}/events/_status")).json()["connect_attempts"] < 1:  # noqa: ASYNC110
                    await trio.sleep(0.05)
        # A bound on the wait, below the 60 s call and the 30 s grace: a stop
        # that sat out either is killed and fails here (TooSlowError).
        code = await daemon.stop(signal.SIGTERM, timeout=10)
        assert code == 0, daemon.log_text()
    finally:
        daemon.kill()
