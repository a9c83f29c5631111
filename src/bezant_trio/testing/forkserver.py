"""``python -m <module>`` and ``python /abs/script.py`` children, forked from one process.

Starting ``python -m bezant_trio`` costs about a second of CPU here before
``main()`` runs, nearly all of it imports (Quart pulls in Flask, Jinja2 and
Werkzeug; httpx, trio, hypercorn, pluggy, orjson, yaml). A test suite that
starts a hundred daemons and runs sixty ``check-config`` commands spends most
of a core-minute and a half importing the same modules. A :class:`ForkServer`
is one process that imported them once (:data:`PRELOAD`) and forks a child per
run. Each child is a process of its own (its own pid, signals, ``kill -9``,
exit status, file descriptors, working directory and environment) that runs
``runpy.run_module(module, run_name="__main__")`` with ``sys.argv`` set, which
is what ``python -m module`` does once the interpreter is up; a script given
by its absolute path runs by ``runpy.run_path`` with the script's directory
first on ``sys.path``, which is what ``python script.py`` does (the bench's
gateway, baselines and load generators: about 0.5 s of CPU each, exec'd).

What a forked child does not repeat is the interpreter's start-up itself:
the imports, and whatever the environment decides at that moment (the
``PYTHON*`` variables, the locale). So :func:`forkable` accepts only
``[sys.executable, "-m", module, ...]`` and ``[sys.executable, "/abs/path.py", ...]``,
and :mod:`bezant_trio.testing.process` forks it only with an environment that
agrees with the server's on those variables; anything else (a launcher, another interpreter, a ``PYTHONPATH``
of its own) is exec'd as before, as are the tests of start-up itself (the
zipapp on a bare Python, the daemon under a launcher).

The protocol, over a ``SOCK_SEQPACKET`` socket pair: the client sends one
JSON request (argv, env, cwd) with three descriptors, a status socket and the
child's stdout and stderr. The server forks, answers ``{"pid": N}`` on the
status socket and, once it has reaped the child, ``{"returncode": N}``
(negative: killed by that signal, as :mod:`subprocess` says it), then closes
it. The server ends when its control socket closes (the client process
exited), killing whatever children it still has; each child also dies with
the server (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ForkServer", "ForkedChild", "forkable", "import_env"]

#: What the server imports before it forks anything: the daemon, the
#: simulator and the plugins in this repository (each only if installed).
PRELOAD = (
    "bezant_trio.cli",
    "bezant_trio.daemon",
    "bezant_trio.simulator",
    "bezant_trio.sinks.webhook",
    "bezant_trio_sink_example",
    "bezant_trio_nats",
    "httpx",
)
#: Environment variables the interpreter reads as it starts (imports, locale,
#: hashing, I/O encoding): a child can only be forked from a server started
#: with the same ones.
IMPORT_ENV_PREFIXES = ("PYTHON", "LANG", "LC_")
#: How long the server may take to import :data:`PRELOAD` and say so.
READY_TIMEOUT = 60.0
#: How long a started server may take to answer a fork.
REPLY_TIMEOUT = 30.0
_MESSAGE = 1 << 20


def import_env(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The variables of ``env`` the interpreter reads at start-up (:data:`IMPORT_ENV_PREFIXES`)."""
    return tuple(sorted((k, v) for k, v in env.items() if k.startswith(IMPORT_ENV_PREFIXES)))


def forkable(argv: Sequence[str]) -> str | None:
    """What a forked child would run, or None for a command that cannot fork.

    The module of ``[sys.executable, "-m", module, ...]``, or the script of
    ``[sys.executable, "/abs/script.py", ...]`` (absolute, so that ``__file__``
    and ``sys.argv[0]`` are the same path, as ``runpy.run_path`` makes them).
    """
    if len(argv) < 2 or argv[0] != sys.executable:
        return None
    if argv[1] == "-m":
        return argv[2] if len(argv) >= 3 else None
    if os.path.isabs(argv[1]) and argv[1].endswith(".py"):
        return argv[1]
    return None


# --------------------------------------------------------------------- client


class ForkedChild:
    """A child forked by a :class:`ForkServer`, with :class:`subprocess.Popen`'s ways.

    ``pid``, ``returncode``, :meth:`poll`, :meth:`wait`, :meth:`send_signal`,
    :meth:`kill`; plus :attr:`status`, a socket that turns readable once the
    child has exited (what a Trio task waits on).
    """

    def __init__(self, args: Sequence[str], pid: int, status: socket.socket) -> None:
        self.args = list(args)
        self.pid = pid
        self.status = status
        self.returncode: int | None = None
        # Signals go through a pidfd: once the server reaps the child, its pid
        # may be reused, and a pidfd still means this child (ESRCH if gone).
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None

    def __repr__(self) -> str:
        return f"<ForkedChild pid={self.pid} returncode={self.returncode}>"

    def _take(self, message: bytes) -> None:
        if message:
            self.returncode = int(json.loads(message)["returncode"])
        else:
            # The server went away without a word: its children die with it.
            self.returncode = -signal.SIGKILL
        self.status.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def poll(self) -> int | None:
        """The exit status if the child has exited, else None (never blocks)."""
        if self.returncode is None:
            try:
                message = self.status.recv(_MESSAGE, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                message = b""
            self._take(message)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Block until the child exits; :class:`subprocess.TimeoutExpired` after ``timeout``."""
        if self.returncode is None:
            self.status.settimeout(timeout)
            try:
                message = self.status.recv(_MESSAGE)
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout or 0) from None
            except OSError:
                message = b""
            finally:
                # Blocking again (a socket with a timeout waits before any
                # recv, MSG_DONTWAIT or not), for poll().
                self.status.settimeout(None)
            self._take(message)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None and self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """One server process (started at once, ready in the background) and its forks.

    ``env`` is the server's environment; :meth:`spawn` takes any other
    environment for a child, as long as :func:`import_env` of it is the
    server's (:attr:`key`). Not for use across a fork of this process.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.key = import_env(env)
        self._owner = os.getpid()
        self._lock = threading.Lock()
        self._ready = False
        control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._control = control
        log_fd, log_name = tempfile.mkstemp(prefix="bezant-forkserver-", suffix=".log")
        self.log_path = Path(log_name)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
            )
        finally:
            os.close(log_fd)
            theirs.close()

    def __repr__(self) -> str:
        return f"<ForkServer pid={self.process.pid} ready={self._ready}>"

    @property
    def usable(self) -> bool:
        """Started by this process and still running."""
        return self._owner == os.getpid() and self.process.poll() is None

    def _failure(self, what: str) -> RuntimeError:
        log = self.log_path.read_text(errors="replace")[-3000:]
        return RuntimeError(f"fork server (pid {self.process.pid}) {what}:\n{log}")

    def _wait_ready(self) -> None:
        if self._ready:
            return
        self._control.settimeout(READY_TIMEOUT)
        try:
            message = self._control.recv(_MESSAGE)
        except TimeoutError:
            raise self._failure(f"not ready after {READY_TIMEOUT} s") from None
        if not message:
            raise self._failure("exited before it was ready")
        self._ready = True

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | os.PathLike[str] | None,
        stdout: int,
        stderr: int,
    ) -> ForkedChild:
        """Fork a child that runs ``argv`` (see :func:`forkable`); returns once it has a pid."""
        if forkable(argv) is None:
            raise ValueError(
                f"not a python -m command or script of this interpreter: {list(argv)[:3]}"
            )
        if import_env(env) != self.key:
            raise ValueError("the child's PYTHON*/locale variables differ from the server's")
        cwd = os.fspath(cwd) if cwd is not None else os.getcwd()
        if not os.path.isdir(cwd):
            # What Popen raises, in the parent, for a missing working directory.
            raise FileNotFoundError(2, "No such file or directory", cwd)
        request = json.dumps({"argv": list(argv), "env": dict(env), "cwd": cwd}).encode()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with self._lock:
            try:
                self._wait_ready()
                self._control.settimeout(REPLY_TIMEOUT)
                socket.send_fds(self._control, [request], [theirs.fileno(), stdout, stderr])
            except OSError as exc:
                mine.close()
                raise self._failure(f"cannot be asked to fork ({exc})") from exc
            finally:
                theirs.close()
        mine.settimeout(REPLY_TIMEOUT)
        try:
            reply = mine.recv(_MESSAGE)
        except TimeoutError:
            mine.close()
            raise self._failure(f"did not fork within {REPLY_TIMEOUT} s") from None
        if not reply:
            mine.close()
            raise self._failure("closed the child's status socket without a pid")
        mine.settimeout(None)
        return ForkedChild(argv, int(json.loads(reply)["pid"]), mine)

    def close(self) -> None:
        """End the server (it kills the children it still has) and wait for it."""
        self._control.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log_path.unlink(missing_ok=True)


# --------------------------------------------------------------------- server


def _exit_code(code: object) -> int:
    """What the interpreter exits with for ``SystemExit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _run_child(request: dict[str, Any]) -> int:
    """In the forked child: become ``python -m module ...`` or ``python script ...``; its exit status."""
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()
    os.chdir(request["cwd"])
    argv = request["argv"]
    try:
        import runpy

        if argv[1] == "-m":
            # python -m puts the working directory first on sys.path, and runpy
            # (alter_sys) replaces argv[0] with the module's file, as it does there.
            sys.path[0] = os.getcwd()
            sys.argv = [argv[0], *argv[3:]]
            runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        else:
            # python script.py puts the script's directory, symlinks resolved,
            # first on sys.path; argv[0] and __file__ are the script's path.
            script = argv[1]
            sys.path[0] = os.path.dirname(os.path.realpath(script))
            sys.argv = [script, *argv[2:]]
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        return _exit_code(exc.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        # Python ends an uncaught KeyboardInterrupt by dying of SIGINT.
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def _die_with_parent() -> None:
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _child(request: dict[str, Any], out: int, err: int, server: int) -> None:
    """The forked side: descriptors as exec would leave them, then run; never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _die_with_parent()
        if os.getppid() != server:  # the server died before the line above
            os._exit(1)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        # Everything else the server holds (its sockets, the epoll, the pipe)
        # is closed, as Popen's close_fds leaves an exec'd child.
        os.closerange(3, 1 << 16)
        code = _run_child(request)
        atexit._run_exitfuncs()
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(code & 0xFF if code >= 0 else 1)


def serve(control: socket.socket) -> None:
    """The server's loop: fork on each request, report each exit; ends when ``control`` closes."""
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    # Imported objects move to a generation the collector never scans, so a
    # child's first collections do not touch (and copy) every page of them.
    gc.freeze()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    children: dict[int, socket.socket] = {}
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    control.sendall(json.dumps({"ready": os.getpid()}).encode())
    me = os.getpid()
    while True:
        for key, _ in selector.select():
            if key.fileobj is control:
                message, fds, _flags, _addr = socket.recv_fds(control, _MESSAGE, 3)
                if not message:
                    for pid in children:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    for pid in children:
                        with contextlib.suppress(ChildProcessError):
                            os.waitpid(pid, 0)
                    return
                status_fd, out, err = fds
                status = socket.socket(fileno=status_fd)
                request = json.loads(message)
                pid = os.fork()
                if pid == 0:
                    _child(request, out, err, me)
                os.close(out)
                os.close(err)
                children[pid] = status
                with contextlib.suppress(OSError):
                    status.sendall(json.dumps({"pid": pid}).encode())
            else:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
                _reap(children)


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock = children.pop(pid, None)
        if sock is not None:
            returncode = os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):
                sock.sendall(json.dumps({"returncode": returncode}).encode())
            sock.close()


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
