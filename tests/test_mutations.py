"""The mutation check: each named break of the core must turn its named tests red.

A mutation is one exact piece of text in one file of ``src/bezant_trio``
and what it becomes: a cursor assigned twice, a 412 one cursor late, an epoch
that does not move, an event visible before its commit, a checkpoint that
moves before its delivery, a token or Host check that lets everything by.
For each, this applies it to a copy of ``src/`` and runs the tests listed
with it in a child pytest whose ``sys.path`` and ``PYTHONPATH`` start with the
copy (so the daemon processes those tests start import the copy too), and
expects every one of them to fail. The children fork from a forkserver that
has imported pytest and the libraries once (tests/mutant_child.py), and a
control runs catching tests on an unmutated copy the same way: they pass, so
a red child means the mutation, not the harness. A mutation that no test notices is a blind spot of the
suite; it shows here as a red line naming the mutation and the tests that
stayed green.

Errors of the check itself fail too, each in its own words: a mutation whose
text is not found exactly once (the code moved: update the text here), a
child run that collected nothing or could not import the copy.

    .venv/bin/python -m pytest tests/test_mutations.py              # every mutation
    .venv/bin/python -m pytest tests/test_mutations.py -k restore   # one of them

Only the catching tests run per mutation, so the whole list takes about a
minute (tests/README.md, "Lanes").
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import shutil
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import pytest

import mutant_child

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
#: The child run's own bound on each of its tests (a mutation may make one hang
#: until its fail_after; the per-test timeout stops anything worse).
CHILD_TEST_TIMEOUT = 60
#: The whole child run's bound: a few tests, each bounded as above.
CHILD_RUN_TIMEOUT = 300


@dataclass(frozen=True)
class Mutation:
    """``old`` in ``path`` (under ``src/bezant_trio``) becomes ``new``; ``tests`` must fail."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation(
        "cursors_skip_one",
        "store/hub.py",
        "cursor = self._assigned.get(topic, 0) + 1",
        "cursor = self._assigned.get(topic, 0) + 2",
        (
            "tests/store/test_hub.py::test_publish_assigns_increasing_cursors_per_topic",
            "tests/store/test_durability.py::"
            "test_restart_continues_cursors_bumps_epoch_and_injects_restart_gaps",
        ),
    ),
    Mutation(
        "cursor_reused_for_the_next_event",
        "store/hub.py",
        "        self._assigned[topic] = cursor\n        ts = self._ts\n",
        "        ts = self._ts\n",
        ("tests/store/test_hub.py::test_publish_assigns_increasing_cursors_per_topic",),
    ),
    Mutation(
        "412_one_cursor_late_at_the_pruned_edge",
        "store/hub.py",
        "if pruned_upto > since:",
        "if pruned_upto > since + 1:",
        (
            "tests/store/test_durability.py::"
            "test_retention_expires_old_cursors_with_412_and_keeps_the_rest",
        ),
    ),
    Mutation(
        "412_head_cursor_names_a_pruned_event",
        "store/hub.py",
        "expired=True, oldest_cursor=pruned_upto + 1)",
        "expired=True, oldest_cursor=pruned_upto)",
        (
            "tests/store/test_durability.py::"
            "test_retention_expires_old_cursors_with_412_and_keeps_the_rest",
            "tests/test_daemon.py::"
            "test_the_retention_loop_prunes_the_log_and_pollers_get_412_at_the_oldest_kept",
        ),
    ),
    Mutation(
        "reads_behind_the_ring_expire_instead_of_reading_the_log",
        "store/hub.py",
        "        if elog is None:\n            return HubRead([], since, ring.last, expired=True,",
        "        if True:\n            return HubRead([], since, ring.last, expired=True,",
        (
            "tests/http/test_sse.py::"
            "test_resume_with_last_event_id_reads_from_the_log_across_a_restart",
            "tests/store/test_durability.py::"
            "test_a_poller_ten_rings_behind_reads_everything_from_the_log",
        ),
    ),
    Mutation(
        "epoch_not_bumped_at_a_reconnect",
        "store/hub.py",
        '        """Start a new epoch and inject a gap event into every known topic and ``gap``."""\n'
        "        self.reset_epoch += 1\n",
        '        """Start a new epoch and inject a gap event into every known topic and ``gap``."""\n',
        (
            "tests/store/test_hub.py::test_every_event_carries_the_epoch_current_when_received",
            "tests/store/test_hub.py::test_bump_epoch_injects_one_gap_per_known_topic_and_gap",
        ),
    ),
    Mutation(
        "no_gap_injected_at_a_reconnect",
        "store/hub.py",
        "        self._inject_gaps(reason, disconnected_at=disconnected_at, "
        "reconnected_at=reconnected_at)\n        return self.reset_epoch",
        "        return self.reset_epoch",
        (
            "tests/store/test_hub.py::test_bump_epoch_injects_one_gap_per_known_topic_and_gap",
            "tests/cpapi/test_connector.py::"
            "test_drops_and_stalls_bump_epoch_inject_gaps_and_restore_subscriptions",
        ),
    ),
    Mutation(
        "no_gap_injected_at_a_restart",
        "store/hub.py",
        '        if not state["empty"]:\n            self._inject_gaps(GapReason.PROCESS_RESTART',
        "        if False:\n            self._inject_gaps(GapReason.PROCESS_RESTART",
        (
            "tests/store/test_durability.py::"
            "test_restart_continues_cursors_bumps_epoch_and_injects_restart_gaps",
        ),
    ),
    Mutation(
        "visible_before_its_commit",
        "store/hub.py",
        "        if self.event_log is None or self.log_state.degraded:\n",
        "        if True:\n",
        ("tests/store/test_durability.py::test_events_become_visible_only_after_commit",),
    ),
    Mutation(
        "no_cursor_skip_after_an_unclean_stop",
        "store/hub.py",
        'skip = UNCLEAN_CURSOR_SKIP if unclean and not state["empty"] else 0',
        "skip = 0",
        (
            "tests/store/test_durability.py::test_unclean_stop_moves_cursors_ahead",
            "tests/store/test_restart.py::"
            "test_kill_9_while_the_log_is_degraded_never_reuses_a_cursor_a_poller_saw",
        ),
    ),
    Mutation(
        "sink_checkpoint_advances_before_delivery",
        "sinks/runner.py",
        "        if not await self._deliver(batch):\n            return False\n"
        "        self.checkpoints[topic] = upto\n        self.dirty[topic] = upto\n",
        "        self.checkpoints[topic] = upto\n        self.dirty[topic] = upto\n"
        "        if not await self._deliver(batch):\n            return False\n",
        (
            "tests/sinks/test_checkpoints.py::"
            "test_a_failed_checkpoint_write_is_retried_and_a_restart_redelivers_one_batch_at_most",
        ),
    ),
    Mutation(
        "failed_checkpoint_store_forgotten",
        "sinks/manager.py",
        "                    runner.restore_dirty(dirty)\n",
        "",
        (
            "tests/sinks/test_checkpoints.py::"
            "test_a_failed_checkpoint_write_is_retried_and_a_restart_redelivers_one_batch_at_most",
        ),
    ),
    Mutation(
        "retention_loop_returns_at_once",
        "daemon.py",
        "        task_status.started()\n        assert self.hub is not None\n"
        "        event_log = self.hub.event_log\n",
        "        task_status.started()\n        return\n",
        (
            "tests/test_daemon.py::"
            "test_the_retention_loop_prunes_the_log_and_pollers_get_412_at_the_oldest_kept",
        ),
    ),
    Mutation(
        "retention_loop_runs_once",
        "daemon.py",
        "            await trio.sleep(store.prune_interval)\n",
        "            return\n",
        (
            "tests/test_daemon.py::"
            "test_the_retention_loop_prunes_the_log_and_pollers_get_412_at_the_oldest_kept",
        ),
    ),
    Mutation(
        "quart_skips_the_token",
        "http/app.py",
        'if not bearer_matches(request.headers.get("authorization", ""), ctx.token):',
        "if False:",
        ("tests/http/test_http.py::test_token_required_everywhere_but_health",),
    ),
    Mutation(
        "fast_path_skips_the_token",
        "http/fastpath.py",
        "        elif not bearer_matches(\n",
        "        elif False and not bearer_matches(\n",
        ("tests/http/test_http.py::test_token_required_everywhere_but_health",),
    ),
    Mutation(
        "token_scheme_not_checked",
        "http/params.py",
        'return scheme.lower() == "bearer" and ok',
        "return ok",
        (
            "tests/reliability/test_security.py::"
            "test_401s_do_not_tell_which_part_was_wrong_and_use_compare_digest",
        ),
    ),
    Mutation(
        "any_host_allowed_without_a_token",
        "http/hosts.py",
        "        if host and not self._host_ok(host):\n            return False\n",
        "",
        (
            "tests/http/test_hosts.py::test_a_rebound_host_cannot_read_any_route_without_a_token",
            "tests/http/test_hosts.py::test_http2_authority_is_checked_like_host",
        ),
    ),
    Mutation(
        "read_timeout_while_a_request_is_answered",
        "http/server.py",
        "        if self._busy:\n            return math.inf\n",
        "",
        (
            "tests/http/test_read_timeout.py::test_an_sse_stream_lives_past_the_read_timeout",
            "tests/http/test_read_timeout.py::"
            "test_a_long_poll_at_the_longest_wait_gets_its_whole_answer_and_then_the_timeout",
        ),
    ),
    Mutation(
        "read_timeout_not_restarted_when_idle_again",
        "http/server.py",
        "                self._read_scope.deadline = self._read_deadline()\n",
        "                pass\n",
        (
            "tests/http/test_read_timeout.py::"
            "test_a_silent_connection_and_an_idle_one_are_still_cut_by_the_read_timeout",
        ),
    ),
    Mutation(
        "keep_alive_timeout_not_kept_while_a_head_trickles_in",
        "http/server.py",
        "return min(self._idle_until, trio.current_time() + self.config.read_timeout)",
        "return trio.current_time() + self.config.read_timeout",
        (
            "tests/http/test_read_timeout.py::"
            "test_a_request_head_trickled_in_is_cut_at_the_keep_alive_timeout",
        ),
    ),
    Mutation(
        "idle_connections_kept_at_shutdown",
        "http/server.py",
        "        if self.context.terminated.is_set():\n            return -math.inf\n",
        "",
        (
            "tests/http/test_read_timeout.py::"
            "test_at_shutdown_idle_connections_close_at_once_and_a_busy_one_gets_its_answer",
        ),
    ),
]


def _mutated_copy(mutation: Mutation, into: Path) -> Path:
    """A copy of ``src/`` with ``mutation`` applied; fails if its text is not there once."""
    copy = into / "src"
    # With the bytecode caches: copied with their sources' times, they stay
    # valid for every file but the mutated one, so the child compiles one file.
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("*.egg-info"))
    target = copy / "bezant_trio" / mutation.path
    text = target.read_text()
    found = text.count(mutation.old)
    if found != 1:
        pytest.fail(
            f"mutation {mutation.name}: its text occurs {found} times in "
            f"src/bezant_trio/{mutation.path}, not once; the code moved, so update "
            f"MUTATIONS in tests/test_mutations.py:\n{mutation.old}",
            pytrace=False,
        )
    target.write_text(text.replace(mutation.old, mutation.new))
    return copy


_FORKSERVER: multiprocessing.context.ForkServerContext | None = None


def _forkserver() -> multiprocessing.context.ForkServerContext:
    """The forkserver every child run forks from (tests/mutant_child.py), started once."""
    global _FORKSERVER
    if _FORKSERVER is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(mutant_child.PRELOAD)
        _FORKSERVER = context
    return _FORKSERVER


def _outcomes(junit: Path) -> dict[str, str]:
    """Test name (``file::name``) -> ``passed``, ``failed``, ``error`` or ``skipped``."""
    outcomes: dict[str, str] = {}
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        name = f"{module}.py::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "failed" if child.tag == "failure" else child.tag
        outcomes[name] = outcome
    return outcomes


def _run_child(copy: Path, tests: tuple[str, ...], tmp_path: Path) -> tuple[int | None, Path, str]:
    """``tests`` in a child run importing ``copy``: its status, junit file and output's tail."""
    junit = tmp_path / "junit.xml"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(copy), os.environ.get("PYTHONPATH", "")]),
        # tests/conftest.py checks that the copy is what gets imported.
        "BEZANT_MUTANT_SRC": str(copy),
        # Daemons fork from a server that imports the copy, started only by a
        # run that starts one (tests/conftest.py).
        "BEZANT_TEST_FORK": "lazy",
    }
    env.pop("BEZANT_SEED", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    args = [
        "-q",
        "-p",
        "no:cacheprovider",
        # Plugins no catching test uses, each a part of the child's start-up.
        *("-p", "no:schemathesis", "-p", "no:xdist", "-p", "no:xdist.looponfail"),
        f"--timeout={CHILD_TEST_TIMEOUT}",
        # The plugins imported by the forkserver cannot have their asserts rewritten.
        *("-W", "ignore::pytest.PytestAssertRewriteWarning"),
        f"--junitxml={junit}",
        "-o",
        "junit_family=xunit1",
        *tests,
    ]
    output = tmp_path / "child.log"
    child = _forkserver().Process(
        target=mutant_child.run, args=(args, env, str(REPO), str(copy), str(output))
    )
    child.start()
    child.join(CHILD_RUN_TIMEOUT)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail(f"the child run of {tests} took over {CHILD_RUN_TIMEOUT} s")
    text = output.read_text(errors="replace") if output.exists() else ""
    return child.exitcode, junit, text[-3000:]


#: Run on an unmutated copy by the control below: in-process, HTTP and daemon
#: processes (which import the copy through PYTHONPATH).
CONTROL_TESTS = (
    "tests/store/test_hub.py::test_publish_assigns_increasing_cursors_per_topic",
    "tests/http/test_http.py::test_token_required_everywhere_but_health",
    "tests/store/test_restart.py::test_kill_9_while_the_log_is_degraded_never_reuses_a_cursor_a_poller_saw",
)


@pytest.mark.timeout(CHILD_RUN_TIMEOUT + 30)
def test_the_catching_tests_pass_on_an_unmutated_copy(tmp_path: Path) -> None:
    # What makes "caught" mean the mutation: the same child runs pass without it.
    copy = tmp_path / "src"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("*.egg-info"))
    returncode, junit, tail = _run_child(copy, CONTROL_TESTS, tmp_path)
    outcomes = _outcomes(junit)
    assert returncode == 0, tail
    assert {name.split("[")[0] for name in outcomes} == set(CONTROL_TESTS), (outcomes, tail)
    assert set(outcomes.values()) == {"passed"}, (outcomes, tail)


@pytest.mark.timeout(CHILD_RUN_TIMEOUT + 30)
@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_the_mutation_is_caught(mutation: Mutation, tmp_path: Path) -> None:
    copy = _mutated_copy(mutation, tmp_path)
    returncode, junit, tail = _run_child(copy, mutation.tests, tmp_path)
    # 1: tests ran and some failed. 0 means none failed; 2-5: the check is broken
    # (interrupted, a collection error, a usage error, nothing collected).
    assert returncode in (0, 1), (
        f"mutation {mutation.name}: child pytest broke ({returncode}):\n{tail}"
    )
    outcomes = _outcomes(junit)
    expected = {test.split("[")[0] for test in mutation.tests}
    ran = {name: outcome for name, outcome in outcomes.items() if name.split("[")[0] in expected}
    missing = expected - {name.split("[")[0] for name in ran}
    assert not missing, f"mutation {mutation.name}: tests not run: {sorted(missing)}\n{tail}"
    skipped = sorted(name for name, outcome in ran.items() if outcome == "skipped")
    if skipped:
        # Only where the test cannot stage its fault (a tmpfs without root);
        # CI runs as root, so there this never skips.
        pytest.skip(f"mutation {mutation.name}: {skipped} skipped, so not proven here:\n{tail}")
    survived = sorted(name for name, outcome in ran.items() if outcome == "passed")
    assert not survived, (
        f"mutation {mutation.name} ({mutation.path}) went unnoticed by {survived}:\n"
        f"{mutation.old!r} -> {mutation.new!r}\n{tail}"
    )
