"""Children forked from the fork server behave as exec'd ones: same output, statuses, signals.

The suite forks its daemons and CLI runs (tests/conftest.py); these tests
hold a forked child to what ``python -m`` gives the same command, side by
side, so a difference shows here and not as a daemon that only works forked.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bezant_trio.testing import ChildProcess, DaemonProcess, child_env, run_cli
from bezant_trio.testing.forkserver import ForkServer
from bezant_trio.testing.process import fork_children, forking

#: A module run as ``python -m probe WHAT`` from its directory (or as ``python /abs/probe.py WHAT``).
PROBE = """
import json, os, signal, sys, time
what = sys.argv[1]
if what == "report":
    print(json.dumps({
        "argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "name": __name__,
        "file": __file__, "env": os.environ.get("PROBE"), "tz": time.tzname[0],
        "spec": getattr(__spec__, "name", None), "main": sys.modules["__main__"].__file__,
        "stdin": sys.stdin.read(), "fds": sorted(os.listdir("/proc/self/fd")),
        "signals": {name: str(signal.getsignal(getattr(signal, name)))
                    for name in ("SIGINT", "SIGTERM", "SIGPIPE", "SIGCHLD", "SIGXFSZ", "SIGHUP")},
        "blocked": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "umask": os.umask(0o22),
    }))
    print("to stderr", file=sys.stderr)
    sys.exit(3)
if what == "raise":
    raise RuntimeError("the probe failed")
if what == "exit-message":
    sys.exit("the probe says no")
if what == "atexit":
    import atexit
    atexit.register(lambda: print("atexit ran", flush=True))
if what == "sleep":
    # Python makes SIGINT a KeyboardInterrupt only if it was not ignored when
    # it started, and a shell's background job starts with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print("sleeping", flush=True)
    time.sleep(60)
"""


@pytest.fixture(autouse=True, scope="module")
def _forking() -> Iterator[None]:
    """Forking on for these tests, also in a run that execs every child (BEZANT_TEST_FORK=0)."""
    if forking():
        yield
        return
    fork_children()
    try:
        yield
    finally:
        fork_children(False)


@pytest.fixture
def probe_dir(tmp_path: Path) -> Path:
    (tmp_path / "probe.py").write_text(PROBE)
    return tmp_path


async def _run(
    probe_dir: Path,
    what: str,
    *,
    fork: bool,
    env: dict[str, str] | None = None,
    script: Path | None = None,
    cwd: Path | None = None,
) -> tuple[int, str]:
    """``python -m probe WHAT`` from ``probe_dir`` (or ``python SCRIPT WHAT`` from ``cwd``)."""
    target = ["-m", "probe"] if script is None else [str(script)]
    child = ChildProcess(
        [sys.executable, *target, what],
        probe_dir / f"{what}-{fork}.log",
        cwd=cwd or probe_dir,
        env=env,
        fork=fork,
    )
    assert child.forked is fork
    code = await child.wait(timeout=30)
    return code, child.log_text()


async def test_a_forked_script_sees_what_python_script_gives_it(tmp_path: Path) -> None:
    # Run from another directory, through a symlink: sys.path[0] is where the
    # script really is, argv[0] and __file__ the path it was given.
    real = tmp_path / "real"
    real.mkdir()
    (real / "probe.py").write_text(PROBE)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link.py").symlink_to(real / "probe.py")
    reports = []
    for fork in (False, True):
        code, log = await _run(
            tmp_path,
            "report",
            fork=fork,
            env={"PROBE": "given"},
            script=tmp_path / "link.py",
            cwd=tmp_path / "elsewhere",
        )
        assert code == 3, log
        reports.append(json.loads(log.splitlines()[0]))
    exec_report, fork_report = reports
    assert fork_report == exec_report
    assert exec_report["argv"] == [str(tmp_path / "link.py"), "report"]
    assert exec_report["file"] == exec_report["main"] == str(tmp_path / "link.py")
    assert exec_report["path0"] == str(real) and exec_report["spec"] is None
    assert exec_report["cwd"] == str(tmp_path / "elsewhere")
    assert exec_report["name"] == "__main__" and exec_report["env"] == "given"


async def test_a_forked_module_sees_what_python_m_gives_it(probe_dir: Path) -> None:
    env = {"PROBE": "given", "TZ": "Asia/Tokyo"}
    results = [await _run(probe_dir, "report", fork=fork, env=env) for fork in (False, True)]
    (exec_code, exec_log), (fork_code, fork_log) = results
    assert exec_code == fork_code == 3
    exec_report: dict[str, Any] = json.loads(exec_log.splitlines()[0])
    fork_report: dict[str, Any] = json.loads(fork_log.splitlines()[0])
    assert fork_report == exec_report
    # And what they agree on is what python -m means.
    assert exec_report["argv"] == [str(probe_dir / "probe.py"), "report"]
    assert exec_report["cwd"] == exec_report["path0"] == str(probe_dir)
    assert exec_report["name"] == "__main__" and exec_report["env"] == "given"
    assert exec_report["tz"] == "JST" and exec_report["stdin"] == ""
    assert exec_report["fds"] == ["0", "1", "2", "3"]  # 3: the listing itself
    assert fork_log.splitlines()[1] == "to stderr"


@pytest.mark.parametrize(
    ("what", "code", "last_line"),
    [
        ("raise", 1, "RuntimeError: the probe failed"),
        ("exit-message", 1, "the probe says no"),
        ("atexit", 0, "atexit ran"),
    ],
)
async def test_exceptions_exit_messages_and_atexit_end_a_forked_child_as_they_end_python(
    probe_dir: Path, what: str, code: int, last_line: str
) -> None:
    for fork in (False, True):
        got_code, log = await _run(probe_dir, what, fork=fork)
        assert (got_code, log.strip().splitlines()[-1]) == (code, last_line), fork


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL, signal.SIGINT])
async def test_a_signalled_forked_child_reports_the_signal_as_an_exec_d_one(
    probe_dir: Path, signum: int
) -> None:
    codes = []
    for fork in (False, True):
        child = ChildProcess(
            [sys.executable, "-m", "probe", "sleep"],
            probe_dir / f"sleep-{fork}.log",
            cwd=probe_dir,
            fork=fork,
        )
        await child.wait_for(re.compile("sleeping"), timeout=30)
        codes.append(await child.stop(signum, timeout=30))
        assert not child.running
        child.send_signal(signal.SIGKILL)  # after the exit: a no-op, never another pid
    # SIGINT: Python's KeyboardInterrupt, a traceback and death by SIGINT.
    assert codes == [-signum, -signum]


@pytest.mark.parametrize(
    "args",
    [
        ("--version",),
        ("check-config", "--config", "/nonexistent/config.yaml"),
        ("check-config", "--config", "{config}"),
        ("check-config", "--config", "{bad}"),
        ("no-such-command",),
    ],
)
def test_run_cli_forked_gives_what_run_cli_exec_d_gives(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    (tmp_path / "config.yaml").write_text("http:\n  bind: 127.0.0.1:0\n")
    (tmp_path / "bad.yaml").write_text("http:\n  bind: 127.0.0.1:0\n  nonsense: 1\n")
    argv = [a.format(config=tmp_path / "config.yaml", bad=tmp_path / "bad.yaml") for a in args]
    execd = run_cli(*argv, cwd=tmp_path, fork=False)
    forked = run_cli(*argv, cwd=tmp_path, fork=True)
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        execd.returncode,
        execd.stdout,
        execd.stderr,
    )


def test_run_cli_forked_times_out_as_subprocess_run_does(tmp_path: Path) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        # simulate serves until stopped
        run_cli("simulate", "--port", "0", cwd=tmp_path, timeout=0.5, fork=True)


async def test_a_forked_daemon_serves_restarts_and_dies_of_kill_9(tmp_path: Path) -> None:
    config = {
        "gateway": {"url": "http://127.0.0.1:9"},
        "http": {"bind": "127.0.0.1:0"},
        "store": {"path": str(tmp_path / "events.db")},
    }
    daemon = DaemonProcess(tmp_path, config, fork=True)
    try:
        await daemon.start()
        assert daemon.process is not None and daemon.process.forked
        first = await daemon.status()
        assert await daemon.stop() == 0
        await daemon.start()
        again = await daemon.status()
        assert again["reset_epoch"] == first["reset_epoch"] + 1  # the same log, reopened
        assert daemon.kill() == -signal.SIGKILL
    finally:
        daemon.kill()


def test_children_of_a_server_that_dies_die_with_it_and_say_killed(probe_dir: Path) -> None:
    server = ForkServer(child_env())
    try:
        log = probe_dir / "orphan.log"
        with open(log, "wb") as out:
            child = server.spawn(
                [sys.executable, "-m", "probe", "sleep"],
                env=child_env(),
                cwd=probe_dir,
                stdout=out.fileno(),
                stderr=out.fileno(),
            )
        server.process.kill()
        assert child.wait(timeout=30) == -signal.SIGKILL
        # PR_SET_PDEATHSIG: the child does not outlive its server.
        deadline = time.monotonic() + 30
        while not _gone(child.pid):
            assert time.monotonic() < deadline, f"pid {child.pid} outlived its server"
            time.sleep(0.01)  # another process's end raises no event here
    finally:
        server.close()


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for its new parent counts) or reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_what_the_server_cannot_give_is_exec_d_or_refused(tmp_path: Path) -> None:
    # Not a python -m command or a script by its absolute path, or another
    # PYTHONPATH: exec'd without a word.
    other = ChildProcess([sys.executable, "-c", "pass"], tmp_path / "c.log")
    assert not other.forked
    (tmp_path / "s.py").write_text("")
    relative = ChildProcess([sys.executable, "s.py"], tmp_path / "r.log", cwd=tmp_path)
    assert not relative.forked
    elsewhere = ChildProcess(
        [sys.executable, "-m", "json.tool", "--help"],
        tmp_path / "p.log",
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert not elsewhere.forked
    # Asked to fork it anyway: refused, naming why.
    with pytest.raises(ValueError, match="cannot fork"):
        ChildProcess([sys.executable, "-c", "pass"], tmp_path / "d.log", fork=True)
    with pytest.raises(FileNotFoundError):
        ChildProcess(
            [sys.executable, "-m", "json.tool"], tmp_path / "e.log", cwd=tmp_path / "no", fork=True
        )
