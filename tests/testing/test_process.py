"""The shared child-process helpers: environment, waits that fail with the log, stops, restarts."""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

import pytest
import trio

from bezant_trio.testing import ChildProcess, DaemonProcess, ProcessExited

PRINT_ENV = (
    "import os; print(sorted(k for k in os.environ"
    " if k.startswith(('BEZANT_', 'IBKR_', 'NOTIFY_SOCKET', 'WATCHDOG_'))))"
)
IGNORE_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    " print('ready', flush=True); time.sleep(60)"
)


async def test_a_child_gets_a_scrubbed_environment_plus_what_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("BEZANT_HTTP_TOKEN", "IBKR_ACCOUNT", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
        monkeypatch.setenv(name, "leaked")
    child = ChildProcess(
        [sys.executable, "-c", PRINT_ENV], tmp_path / "env.log", env={"WATCHDOG_PID": "1"}
    )
    with trio.fail_after(30):
        assert await child.wait() == 0
    assert child.log_text().strip() == "['WATCHDOG_PID']"


async def test_waiting_for_a_line_fails_with_the_log_when_the_child_exits_first(
    tmp_path: Path,
) -> None:
    child = ChildProcess(
        [sys.executable, "-c", "print('no such line here'); raise SystemExit(3)"],
        tmp_path / "exits.log",
    )
    with pytest.raises(ProcessExited, match=r"exited \(3\)[\s\S]*no such line here"):
        await child.wait_for(re.compile("serving on"), timeout=30)


async def test_a_child_that_ignores_sigterm_is_killed_when_the_stop_times_out(
    tmp_path: Path,
) -> None:
    child = ChildProcess([sys.executable, "-c", IGNORE_SIGTERM], tmp_path / "stubborn.log")
    await child.wait_for(re.compile("ready"), timeout=30)
    with pytest.raises(trio.TooSlowError, match="still runs"):
        await child.stop(signal.SIGTERM, timeout=0.5)
    assert child.returncode == -signal.SIGKILL


async def test_daemon_process_restarts_on_its_workdir_and_returns_exit_statuses(
    tmp_path: Path,
) -> None:
    daemon = DaemonProcess(
        tmp_path,
        {
            "gateway": {"url": "http://127.0.0.1:9/v1/api"},
            "http": {"bind": "127.0.0.1:0", "token": "t0ken-for-the-status"},
        },
    )
    try:
        with trio.fail_after(60):
            await daemon.start()
            status = await daemon.wait_status(lambda s: "head_cursors" in s)  # with the token
            assert status["connected"] is False
            assert await daemon.stop(signal.SIGTERM) == 0
            assert daemon.url is None
            await daemon.start()
            assert daemon.kill() == -signal.SIGKILL
    finally:
        daemon.kill()
    assert daemon.runs == 2
    assert daemon.log_path == tmp_path / "daemon-2.log"  # one log per run
    assert daemon.log_text(all_runs=True).count("serving on") == 2
    assert daemon.log_text().count("serving on") == 1
